"""Expansion of a matrix into cells: product, exclude, include, skipped, overrides, names and tags."""

from __future__ import annotations

import dataclasses
import re

import pytest

from gpumatrix.cells import cell_name
from gpumatrix.errors import UsageError


DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def names(expansion) -> set[str]:
    return {c.name for c in expansion.cells}


def by_name(expansion, name):
    return next(c for c in expansion.cells if c.name == name)


# ---- the shipped matrix ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(expand_file, repo):
    return expand_file(repo / "matrix.yaml")


def test_shipped_matrix_cells(shipped):
    gpu = {(c.cuda, c.torch) for c in shipped.cells if c.is_cuda}
    assert gpu == {
        ("12.4", "2.5.1"),
        ("12.4", "2.6.0"),
        ("12.8", "2.7.1"),
        ("12.8", "2.11.0"),
        ("13.0", "2.9.1"),
        ("13.0", "2.14.1"),
    }
    assert all(c.python in ("3.10", "3.11", "3.12") for c in shipped.cells)
    for cuda, torch in gpu:
        assert {c.python for c in shipped.cells if (c.cuda, c.torch) == (cuda, torch)} == {"3.10", "3.11", "3.12"}
    cpu = [c for c in shipped.cells if not c.is_cuda]
    assert [c.name for c in cpu] == ["cpu-py3.11-torch2.13.0"]
    assert len(shipped.cells) == 19


def test_shipped_matrix_cuda_13_only_has_torch_2_9_and_newer(shipped):
    from packaging.version import Version

    assert all(Version(c.torch) >= Version("2.9") for c in shipped.cells if c.cuda == "13.0")


def test_shipped_matrix_variants(shipped):
    expected = {
        ("12.4", "2.5.1"): "cu124",
        ("12.4", "2.6.0"): "cu124",
        ("12.8", "2.7.1"): "cu128",
        ("12.8", "2.11.0"): "cu128",
        ("13.0", "2.9.1"): "cu130",
        ("13.0", "2.14.1"): "cu130",
        ("cpu", "2.13.0"): "cpu",
    }
    for cell in shipped.cells:
        assert cell.variant == expected[(cell.cuda, cell.torch)], cell.name
        assert cell.torch_pin == f"{cell.torch}+{expected[(cell.cuda, cell.torch)]}"
        assert cell.index_url == f"https://download.pytorch.org/whl/{cell.variant}"


def test_shipped_blackwell_archs_on_12_8_and_13_0(shipped):
    for cell in shipped.cells:
        if cell.cuda in ("12.8", "13.0"):
            assert "sm_120" in cell.archs
        elif cell.cuda == "12.4":
            assert cell.archs == ("sm_80", "sm_86", "sm_90")


def test_shipped_cpu_cell(shipped):
    cpu = by_name(shipped, "cpu-py3.11-torch2.13.0")
    assert cpu.archs == ()  # settings.archs does not reach a CPU cell
    assert cpu.companions == ()
    assert cpu.layers == ("cpu",)
    assert cpu.torch_pin == "2.13.0+cpu"


def test_skipped_torch_2_5_1_on_13_0_carries_reason(shipped):
    skipped = {s.name: s.reason for s in shipped.skipped}
    reason = skipped["cu13.0-py3.11-torch2.5.1"]
    assert "for CUDA 13.0 use torch >= 2.9.0" in reason
    assert "runs on CUDA 12.4" in reason


def test_excluded_combos_are_neither_cells_nor_skipped(shipped):
    # exclude: {cuda: 12.8, torch: [2.5.1, 2.6.0, 2.9.1, 2.14.1]}: 2.6.0 and 2.9.1 would work on 12.8 but are excluded
    excluded = "cu12.8-py3.11-torch2.6.0"
    assert excluded not in names(shipped)
    assert excluded not in {s.name for s in shipped.skipped}


# ---- include / exclude -----------------------------------------------------------------------------------------


def test_exclude_removes_matching_product_cells(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.8",), python=("3.10", "3.11"), torch=("2.7.1", "2.11.0"),
        extra="""\
        exclude:
          - {python: "3.10", torch: "2.11.0"}
        """,
    )
    assert names(expand_text(project, text)) == {
        "cu12.8-py3.10-torch2.7.1",
        "cu12.8-py3.11-torch2.7.1",
        "cu12.8-py3.11-torch2.11.0",
    }


def test_exclude_with_list_values(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.4", "12.8"), python=("3.11", "3.12"), torch=("2.5.1", "2.6.0"),
        extra="""\
        exclude:
          - {cuda: ["12.4", "12.8"], python: ["3.11"], torch: "2.6.0"}
        """,
    )
    assert names(expand_text(project, text)) == {
        "cu12.4-py3.11-torch2.5.1", "cu12.8-py3.11-torch2.5.1",
        "cu12.4-py3.12-torch2.5.1", "cu12.8-py3.12-torch2.5.1",
        "cu12.4-py3.12-torch2.6.0", "cu12.8-py3.12-torch2.6.0",
    }


def test_excluding_every_combination_is_one_error_not_an_empty_matrix(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.4", "12.8"), python=("3.11",), torch=("2.6.0",),
        extra="""\
        exclude:
          - {cuda: ["12.4", "12.8"], python: ["3.11"]}
        """,
    )
    with pytest.raises(UsageError) as info:
        expand_text(project, text)
    assert str(info.value).splitlines() == [
        f"{project / 'matrix.yaml'}:3: axes: no combination of the axes yields a cell (all are excluded)"]


def test_include_adds_a_cell_outside_the_product_even_if_excluded(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.8",), python=("3.11", "3.12"), torch=("2.7.1", "2.11.0"),
        extra="""\
        exclude:
          - {python: "3.12", torch: "2.7.1"}
        include:
          - {cuda: "12.8", python: "3.12", torch: "2.7.1"}
          - {cuda: cpu, python: "3.11", torch: "2.13.0"}
        """,
    )
    assert names(expand_text(project, text)) == {
        "cu12.8-py3.11-torch2.7.1", "cu12.8-py3.11-torch2.11.0", "cu12.8-py3.12-torch2.11.0",
        "cu12.8-py3.12-torch2.7.1", "cpu-py3.11-torch2.13.0"}


def test_include_duplicating_a_product_cell_gives_one_cell(project, matrix_text, expand_text):
    text = matrix_text(
        extra="""\
        include:
          - {cuda: "12.8", python: "3.11", torch: "2.7.1"}
        """,
    )
    assert [c.name for c in expand_text(project, text).cells] == ["cu12.8-py3.11-torch2.7.1"]


def test_incompatible_product_combos_are_skipped_with_reasons(project, matrix_text, expand_text):
    text = matrix_text(cuda=("12.4", "13.0"), python=("3.11", "3.13"), torch=("2.5.1", "2.9.1"))
    exp = expand_text(project, text)
    assert names(exp) == {
        "cu12.4-py3.11-torch2.5.1",
        "cu13.0-py3.11-torch2.9.1",
        "cu13.0-py3.13-torch2.9.1",
    }
    skipped = {s.name: s.reason for s in exp.skipped}
    assert set(skipped) == {
        "cu12.4-py3.11-torch2.9.1",  # no cu12x build <= 12.4
        "cu12.4-py3.13-torch2.5.1",  # Python 3.13 not supported by 2.5.1
        "cu12.4-py3.13-torch2.9.1",
        "cu13.0-py3.11-torch2.5.1",
        "cu13.0-py3.13-torch2.5.1",
    }
    assert "3.13" in skipped["cu12.4-py3.13-torch2.5.1"]
    assert "for CUDA 13.0 use torch >= 2.9.0" in skipped["cu13.0-py3.11-torch2.5.1"]
    assert all(reason for reason in skipped.values())


@pytest.mark.parametrize(
    ("include", "needle"),
    [
        ('{cuda: "13.0", python: "3.11", torch: "2.5.1"}', "for CUDA 13.0 use torch >= 2.9.0"),
        ('{cuda: "12.8", python: "3.13", torch: "2.5.1"}', "2.5.1"),
        ('{cuda: cpu, python: "3.9", torch: "2.9.1"}', "3.9"),
    ],
)
def test_incompatible_include_is_an_error(project, include, needle, matrix_text, expand_text):
    text = matrix_text(extra=f"include:\n  - {{cuda: cpu, python: '3.11', torch: '2.13.0'}}\n  - {include}\n")
    path = project / "matrix.yaml"
    with pytest.raises(UsageError) as info:
        expand_text(project, text)
    message = str(info.value)
    assert "include[1]" in message
    assert "include[0]" not in message
    assert str(path) in message
    assert needle in message


def test_arch_refusal_in_axes_is_an_error_not_a_skip(project, matrix_text, expand_text):
    text = matrix_text(
        torch=("2.7.1",),
        extra="""\
        settings:
          archs: [sm_70]
        """,
    )
    with pytest.raises(UsageError, match="sm_70"):
        expand_text(project, text)


def test_sm120_on_torch_2_6_is_refused(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.4",), torch=("2.6.0",),
        extra="""\
        settings:
          archs: [sm_120]
        """,
    )
    with pytest.raises(UsageError, match="sm_120"):
        expand_text(project, text)


def test_unknown_torch_in_axes_is_an_error(project, matrix_text, expand_text):
    """A typo'd torch release is bad input, not a combination 'without a wheel' to skip silently."""
    text = matrix_text(torch=("2.7.1", "2.99.0"))
    with pytest.raises(UsageError, match="2.99.0"):
        expand_text(project, text)


def test_unknown_cuda_in_axes_is_an_error(project, matrix_text, expand_text):
    text = matrix_text(cuda=("12.8", "12.9"))
    with pytest.raises(UsageError, match="12.9"):
        expand_text(project, text)


# ---- settings and overrides ------------------------------------------------------------------------------------


def test_overrides_apply_in_order_and_only_to_matching_cells(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.4", "12.8"), python=("3.11", "3.12"), torch=("2.6.0",),
        extra="""\
        settings:
          archs: [sm_80]
          os_packages: [git]
        overrides:
          - match: {cuda: "12.8"}
            archs: [sm_86]
            os_packages: [curl]
          - match: {cuda: "12.8", python: "3.12"}
            archs: [sm_90]
          - match: {python: "3.12"}
            base_image: registry.example/base:1
        """,
    )
    exp = expand_text(project, text)
    cell = {c.name: c for c in exp.cells}
    assert cell["cu12.4-py3.11-torch2.6.0"].archs == ("sm_80",)
    assert cell["cu12.4-py3.11-torch2.6.0"].os_packages == ("git",)
    assert cell["cu12.4-py3.11-torch2.6.0"].base_image == "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    assert cell["cu12.8-py3.11-torch2.6.0"].archs == ("sm_86",)
    assert cell["cu12.8-py3.11-torch2.6.0"].os_packages == ("curl",)
    assert cell["cu12.8-py3.12-torch2.6.0"].archs == ("sm_90",)  # the later override wins
    assert cell["cu12.8-py3.12-torch2.6.0"].os_packages == ("curl",)  # untouched keys stay from the earlier one
    assert cell["cu12.8-py3.12-torch2.6.0"].base_image == "registry.example/base:1"
    assert cell["cu12.4-py3.12-torch2.6.0"].base_image == "registry.example/base:1"
    assert cell["cu12.4-py3.12-torch2.6.0"].archs == ("sm_80",)


def test_later_override_can_clear_a_list(project, matrix_text, expand_text):
    text = matrix_text(
        extra="""\
        settings:
          archs: [sm_80]
        overrides:
          - match: {}
            archs: [sm_90]
          - match: {torch: "2.7.1"}
            archs: []
        """,
    )
    assert expand_text(project, text).cells[0].archs == ()


def test_defaults_without_settings(project, matrix_text, expand_text):
    cell = expand_text(project, matrix_text()).cells[0]
    assert cell.index_url == "https://download.pytorch.org/whl/cu128"
    assert cell.pre is False
    assert cell.layers == ()
    assert dict(cell.companions) == {"torchvision": "0.22.1+cu128", "torchaudio": "2.7.1+cu128"}
    assert cell.base_image == "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"


def test_index_url_variant_placeholder(project, matrix_text, expand_text):
    text = matrix_text(
        torch=("2.6.0",),
        extra="""\
        settings:
          index_url: "http://127.0.0.1:8080/simple/{variant}"
        """,
    )
    assert expand_text(project, text).cells[0].index_url == "http://127.0.0.1:8080/simple/cu126"


def test_cpu_cells_ignore_target_archs(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("cpu",), torch=("2.13.0",),
        extra="""\
        settings:
          archs: [sm_120]
        """,
    )
    cell = expand_text(project, text).cells[0]
    assert cell.name == "cpu-py3.11-torch2.13.0"
    assert cell.archs == ()
    assert cell.require_cuda is None


def test_require_cuda_is_the_higher_of_base_and_wheel(project, matrix_text, expand_text):
    cell = expand_text(project, matrix_text(torch=("2.6.0",))).cells[0]
    assert cell.variant == "cu126"
    assert cell.require_cuda == "12.8"


def test_missing_layer_file_is_an_error(project, matrix_text, expand_text):
    text = matrix_text(
        extra="""\
        settings:
          layers: [app, nosuchlayer]
        """,
    )
    with pytest.raises(UsageError) as info:
        expand_text(project, text)
    message = str(info.value)
    assert "nosuchlayer" in message
    assert "requirements/nosuchlayer.in" in message
    assert "'app'" not in message  # requirements/app.in exists


def test_layer_present_in_project_copy_is_accepted(project, matrix_text, expand_text):
    (project / "requirements" / "extra.in").write_text("tqdm\n")
    text = matrix_text(extra="settings:\n  layers: [extra]\n")
    assert expand_text(project, text).cells[0].layers == ("extra",)


def test_cell_is_immutable(project, matrix_text, expand_text):
    cell = expand_text(project, matrix_text()).cells[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.torch = "2.6.0"  # type: ignore[misc]


# ---- names and tags --------------------------------------------------------------------------------------------


def test_cell_names():
    assert cell_name("12.8", "3.11", "2.7.1") == "cu12.8-py3.11-torch2.7.1"
    assert cell_name("cpu", "3.11", "2.13.0") == "cpu-py3.11-torch2.13.0"
    assert cell_name("13.0", "3.10", "2.14.1") == "cu13.0-py3.10-torch2.14.1"


def test_every_shipped_cell_name_is_a_valid_docker_tag(shipped):
    for cell in shipped.cells:
        assert DOCKER_TAG.fullmatch(cell.name), cell.name
    for skipped in shipped.skipped:
        assert DOCKER_TAG.fullmatch(skipped.name), skipped.name


def test_tags_are_registry_image_cell(shipped):
    cell = by_name(shipped, "cu12.8-py3.11-torch2.7.1")
    assert cell.repository == "ghcr.io/acme/gpu-images"
    assert cell.tags == ("ghcr.io/acme/gpu-images:cu12.8-py3.11-torch2.7.1",)
    for c in shipped.cells:
        repo, _, tag = c.tags[0].rpartition(":")
        assert repo == "ghcr.io/acme/gpu-images" and tag == c.name


def test_cells_are_sorted_by_version_not_text(project, matrix_text, expand_text):
    text = matrix_text(cuda=("12.8", "cpu"), python=("3.10", "3.11"), torch=("2.7.1", "2.11.0"))
    order = [c.name for c in expand_text(project, text).cells]
    assert order.index("cu12.8-py3.10-torch2.7.1") < order.index("cu12.8-py3.10-torch2.11.0")
    assert order.index("cu12.8-py3.10-torch2.11.0") < order.index("cu12.8-py3.11-torch2.7.1")
    assert order[-1].startswith("cpu-")
