"""The image suite's pure helpers and imagetest's expectations and result files, without an engine."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpumatrix import imagetest
from gpumatrix.cells import expand
from gpumatrix.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("checklib", REPO / "gpumatrix" / "imagechecks" / "checklib.py")
checklib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checklib)


@pytest.mark.parametrize("target, compiled, found", [
    ("sm_86", ["sm_80", "sm_86", "sm_90"], "sm_86"),
    ("sm_89", ["sm_80", "sm_86", "sm_90"], "sm_86"),  # Ada runs sm_86 code
    ("sm_89", ["sm_75", "sm_80"], "sm_80"),
    ("sm_120", ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], "sm_120"),
    ("sm_120", ["sm_80", "sm_90", "sm_100"], None),  # another major: SASS does not run
    ("sm_120", ["sm_90", "compute_90"], "compute_90"),  # PTX is JIT-compiled for newer GPUs
    ("sm_70", ["sm_75", "sm_80", "compute_120"], None),  # cu130 dropped everything before sm_75
    ("sm_90", ["sm_90a"], "sm_90a"),  # an arch-specific build runs on exactly that GPU...
    ("sm_100", ["sm_100a", "sm_90"], "sm_100a"),
    ("sm_103", ["sm_100a"], None),  # ...and no other
])
def test_covering(target, compiled, found):
    assert checklib.covering(target, compiled) == found


def test_compiled_archs_fall_back_to_the_arch_flags():
    assert checklib.compiled_archs([], "sm_75 sm_80 sm_120") == ["sm_75", "sm_80", "sm_120"]
    assert checklib.compiled_archs(["sm_80"], "sm_75") == ["sm_80"]
    assert checklib.compiled_archs([], None) == []


def test_diff_sets_lists_extra_missing_and_different_by_pep440_equality():
    extra, missing, different = checklib.diff_sets(
        {"numpy": "2.4.6", "torch": "2.13.0+cpu", "tqdm": "4.67.1", "six": "1.0"},
        {"numpy": "2.4.1", "torch": "2.13.0+cpu", "requests": "2.34.2", "six": "1.0.0"},
    )
    assert extra == ["requests==2.34.2"] and missing == ["tqdm==4.67.1"]
    assert different == ["numpy: expected 2.4.6, found 2.4.1"]


def test_guard_requirements_cross_the_major_and_leave_the_pin():
    assert checklib.other_major_spec("2.4.6") == "<2" and checklib.other_major_spec("1.26.4") == ">=2"
    assert checklib.other_torch_version("2.13.0+cpu") == "2.4.1"
    assert checklib.other_torch_version("2.4.1+cu124") == "2.5.1"
    assert checklib.freeze_lines("Jinja2==3.1.6\n# c\ntyping_extensions==4.16.0\n") == {
        "jinja2": "3.1.6", "typing-extensions": "4.16.0"}


LOCK = """# gpumatrix lock for x.
# torch-stage: Jinja2==3.1.6
# torch-stage: torch==2.13.0+cpu

numpy==2.4.6 \\
    --hash=sha256:00
tqdm==4.67.1 \\
    --hash=sha256:11
"""


def test_lock_parts_split_the_torch_stage_from_the_pins():
    stage, locked = imagetest.lock_parts(LOCK)
    assert stage == {"Jinja2": "3.1.6", "torch": "2.13.0+cpu"}
    assert locked == {"numpy": "2.4.6", "tqdm": "4.67.1"}
    assert imagetest.lock_parts(None) == (None, None)


@pytest.fixture
def cpu_cell():
    path = REPO / "matrix.yaml"
    expansion = expand(load_matrix(path), path, REPO / "requirements")
    return next(c for c in expansion.cells if c.cuda == "cpu"), expansion.matrix.image


def test_expectations_resolve_the_labels_build_arguments(cpu_cell):
    cell, image_name = cpu_cell
    options = imagetest.Options(base_image="standin:1", runtime_image="standin:2")
    expect = imagetest.expectations(cell, image_name, LOCK.encode(), options, mode="docker", inspect=None,
                                    require_cuda=(True, None, "CPU cell"), gpu=False, python_exe="python")
    labels = expect["labels"]
    assert labels["io.gpumatrix.lock-sha256"] == hashlib.sha256(LOCK.encode()).hexdigest()
    assert labels["io.gpumatrix.base-image"] == "standin:1" and labels["io.gpumatrix.runtime-image"] == "standin:2"
    assert labels["io.gpumatrix.torch"] == "2.13.0+cpu" and labels["org.opencontainers.image.version"] == cell.name
    assert not any("${" in v for v in labels.values())
    assert expect["image"] == f"ghcr.io/acme/gpu-images:{cell.name}" and expect["cuda"] is None
    assert expect["env"]["PIP_CONSTRAINT"] == "/opt/gpumatrix/constraints.txt"
    assert "NVIDIA_VISIBLE_DEVICES" not in expect["env"]
    no_lock = imagetest.expected_labels(cell, image_name, None, imagetest.Options())
    assert no_lock["io.gpumatrix.lock-sha256"] == "none" and no_lock["io.gpumatrix.base-image"] == cell.base_image
    facts = expect["cell_facts"]
    assert (facts["name"], facts["base_image"], facts["runtime_image"]) == (cell.name, "standin:1", "standin:2")


def test_require_cuda_falls_back_to_the_rendered_default_when_the_base_sets_none(cpu_cell):
    class Images:
        def get(self, ref):
            return type("Image", (), {"attrs": {"Config": {"Env": ["PATH=/bin"]}}})()

    client = type("Client", (), {"images": Images()})()
    cell, _ = cpu_cell
    assert imagetest.expected_require_cuda(client, cell, imagetest.Options()) == (True, None, "CPU cell: not set")
    assert imagetest.expected_require_cuda(None, cell, imagetest.Options())[0] is True


# --- the metadata checks state labels and env from the cell's facts, not from render.labels/RUNTIME_ENV -------------
# What two cells' images must carry, written out by hand from the README and compat.yaml (CUDA 12.8: patch 12.8.1,
# driver floor 570.124.06; torch 2.7.1's cu128 wheels compile sm_75..sm_120; the matrix targets sm_80..sm_120).
# The bases are overridden so that a later `make bases` (digest pins) does not change these values.

CPU_NAME, CUDA_NAME = "cpu-py3.11-torch2.13.0", "cu12.8-py3.11-torch2.7.1"
CPU_BASES = ("mirror.local/python:3.11-bookworm", "mirror.local/python:3.11-slim-bookworm")
CUDA_BASES = ("mirror.local/nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04",
              "mirror.local/nvidia/cuda:12.8.1-base-ubuntu24.04")
BASE_REQUIRE = "cuda>=12.8 brand=tesla,driver>=535,driver<536"  # an NVIDIA base's own value, kept by the image
LOCK_SHA = hashlib.sha256(LOCK.encode()).hexdigest()
IMAGE_ENV = ["PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV=/opt/venv", "PIP_NO_CACHE_DIR=1",
             "PIP_DISABLE_PIP_VERSION_CHECK=1", "PYTHONUNBUFFERED=1", "PIP_CONSTRAINT=/opt/gpumatrix/constraints.txt"]
CELLS = {
    CPU_NAME: {
        "bases": CPU_BASES,
        "base_env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        "env": IMAGE_ENV,
        "labels": {
            "org.opencontainers.image.title": "gpu-images",
            "org.opencontainers.image.version": CPU_NAME,
            "org.opencontainers.image.description": "torch 2.13.0+cpu, Python 3.11, CPU",
            "org.opencontainers.image.base.name": CPU_BASES[1],
            "io.gpumatrix.cell": CPU_NAME,
            "io.gpumatrix.cuda": "cpu",
            "io.gpumatrix.python": "3.11",
            "io.gpumatrix.torch": "2.13.0+cpu",
            "io.gpumatrix.variant": "cpu",
            "io.gpumatrix.archs": "",
            "io.gpumatrix.wheel-archs": "",
            "io.gpumatrix.driver-floor": "",
            "io.gpumatrix.lock-sha256": LOCK_SHA,
            "io.gpumatrix.base-image": CPU_BASES[0],
            "io.gpumatrix.runtime-image": CPU_BASES[1],
        },
    },
    CUDA_NAME: {
        "bases": CUDA_BASES,
        "base_env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "NVIDIA_REQUIRE_CUDA": BASE_REQUIRE},
        "env": [*IMAGE_ENV, f"NVIDIA_REQUIRE_CUDA={BASE_REQUIRE}", "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
        "labels": {
            "org.opencontainers.image.title": "gpu-images",
            "org.opencontainers.image.version": CUDA_NAME,
            "org.opencontainers.image.description": "torch 2.7.1+cu128, Python 3.11, CUDA 12.8.1",
            "org.opencontainers.image.base.name": CUDA_BASES[1],
            "io.gpumatrix.cell": CUDA_NAME,
            "io.gpumatrix.cuda": "12.8",
            "io.gpumatrix.python": "3.11",
            "io.gpumatrix.torch": "2.7.1+cu128",
            "io.gpumatrix.variant": "cu128",
            "io.gpumatrix.archs": "sm_80,sm_86,sm_90,sm_120",
            "io.gpumatrix.wheel-archs": "sm_75,sm_80,sm_86,sm_90,sm_100,sm_120",
            "io.gpumatrix.driver-floor": "570.124.06",
            "io.gpumatrix.lock-sha256": LOCK_SHA,
            "io.gpumatrix.base-image": CUDA_BASES[0],
            "io.gpumatrix.runtime-image": CUDA_BASES[1],
        },
    },
}
METADATA_CHECKS = {"test_labels", "test_env", "test_nvidia_require_cuda", "test_cell_facts_agree_with_the_cell_name"}


@pytest.fixture(scope="module")
def shipped_cells():
    path = REPO / "matrix.yaml"
    expansion = expand(load_matrix(path), path, REPO / "requirements")
    return {c.name: c for c in expansion.cells}, expansion.matrix.image


def tool_expectations(shipped_cells, name: str, image_labels: dict, image_env: list[str]) -> dict:
    """What `build.py test` writes for an image with these labels and env (its inspect attrs)."""
    cells, image_name = shipped_cells
    cell, spec = cells[name], CELLS[name]
    options = imagetest.Options(base_image=spec["bases"][0], runtime_image=spec["bases"][1])
    require = spec["base_env"].get("NVIDIA_REQUIRE_CUDA")
    return imagetest.expectations(
        cell, image_name, LOCK.encode(), options, mode="docker",
        inspect={"Config": {"Labels": image_labels, "Env": image_env}},
        require_cuda=(True, require, "the runtime base sets it" if require else "CPU cell: not set"),
        gpu=False, python_exe="python", base_env=spec["base_env"])


def run_metadata_checks(expect: dict, tmp_path: Path) -> dict[str, dict]:
    """The image checks' metadata and cell-facts checks, run as `build.py test` runs the suite, on `expect`'s inspect.
    They read only the expectations, so testinfra's local backend stands in for a container."""
    path, junit = tmp_path / "expect.json", tmp_path / "metadata.xml"
    path.write_text(json.dumps(expect))
    suite = REPO / "gpumatrix" / "imagechecks"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite / "test_metadata.py"),
         f"{suite / 'test_versions.py'}::test_cell_facts_agree_with_the_cell_name", "--hosts=local://",
         "--expect", str(path), f"--junitxml={junit}", "-p", "no:cacheprovider", "-q", "--color=no"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    return {c["name"]: c for c in imagetest.parse_junit(junit)}


@pytest.mark.parametrize("name", [CPU_NAME, CUDA_NAME])
def test_the_tools_own_labels_are_the_hand_written_ones(shipped_cells, name):
    """render.labels (through imagetest.expected_labels) against the labels written out above."""
    cells, image_name = shipped_cells
    bases = CELLS[name]["bases"]
    options = imagetest.Options(base_image=bases[0], runtime_image=bases[1])
    assert imagetest.expected_labels(cells[name], image_name, LOCK.encode(), options) == CELLS[name]["labels"]


@pytest.mark.parametrize("name", [CPU_NAME, CUDA_NAME])
def test_metadata_checks_pass_on_the_promised_labels_and_env(shipped_cells, name, tmp_path):
    spec = CELLS[name]
    cases = run_metadata_checks(tool_expectations(shipped_cells, name, spec["labels"], spec["env"]), tmp_path)
    assert {n: c["outcome"] for n, c in cases.items()} == dict.fromkeys(METADATA_CHECKS, "passed"), cases


@pytest.mark.parametrize("name, label, wrong", [
    (CPU_NAME, "io.gpumatrix.torch", "2.4.1+cu124"),
    (CUDA_NAME, "io.gpumatrix.driver-floor", "525.60"),
])
def test_a_wrong_label_and_env_fail_although_the_tools_expectations_agree_with_them(shipped_cells, name, label, wrong,
                                                                                    tmp_path):
    """An image whose label and env are wrong the way a mistake in render.labels or RUNTIME_ENV would make them, with
    an expectations file whose "labels", "env" and "nvidia_require_cuda" carry the same mistake (the same code writes
    both): the checks fail, because they state their own expectations from the cell's facts."""
    spec = CELLS[name]
    labels = {**spec["labels"], label: wrong}
    env = [e.replace("PIP_CONSTRAINT=/opt/gpumatrix/constraints.txt", "PIP_CONSTRAINT=/opt/gpumatrix/torch.txt")
           .replace(f"NVIDIA_REQUIRE_CUDA={BASE_REQUIRE}", "NVIDIA_REQUIRE_CUDA=cuda>=12.4") for e in spec["env"]]
    expect = tool_expectations(shipped_cells, name, labels, env)
    expect["labels"] = dict(labels)
    expect["env"] = {k: v for k, v in (e.split("=", 1) for e in env) if k != "PATH" and k != "NVIDIA_REQUIRE_CUDA"}
    if name == CUDA_NAME:
        expect["nvidia_require_cuda"] = "cuda>=12.4"
    cases = run_metadata_checks(expect, tmp_path)
    failed = {n for n, c in cases.items() if c["outcome"] == "failed"}
    assert failed == {"test_labels", "test_env"} | ({"test_nvidia_require_cuda"} if name == CUDA_NAME else set())
    assert f"{label}: expected {spec['labels'][label]!r}, found {wrong!r}" in cases["test_labels"]["message"]
    assert ("PIP_CONSTRAINT: expected '/opt/gpumatrix/constraints.txt', found '/opt/gpumatrix/torch.txt'"
            in cases["test_env"]["message"])
    if name == CUDA_NAME:
        assert f"expected NVIDIA_REQUIRE_CUDA={BASE_REQUIRE!r}" in cases["test_nvidia_require_cuda"]["message"]


def test_facts_that_disagree_with_the_cell_name_fail(shipped_cells, tmp_path):
    spec = CELLS[CUDA_NAME]
    expect = tool_expectations(shipped_cells, CUDA_NAME, spec["labels"], spec["env"])
    expect["cell_facts"]["torch_pin"] = "2.7.1+cu126"
    cases = run_metadata_checks(expect, tmp_path)
    failed = {n for n, c in cases.items() if c["outcome"] == "failed"}
    assert failed == {"test_cell_facts_agree_with_the_cell_name", "test_labels"}, failed
    message = cases["test_cell_facts_agree_with_the_cell_name"]["message"]
    assert "torch_pin: expected '2.7.1+cu128', found '2.7.1+cu126'" in message


FACTS = {
    "name": CUDA_NAME, "image_name": "gpu-images", "cuda": "12.8", "cuda_patch": "12.8.1", "python": "3.11",
    "torch": "2.7.1", "torch_pin": "2.7.1+cu128", "variant": "cu128", "wheel_cuda": "12.8", "archs": ["sm_80"],
    "wheel_archs": ["sm_80"], "driver_floor": "570.124.06", "base_image": "d", "runtime_image": "r",
    "runtime_base_env": {},
}


@pytest.mark.parametrize("change, problem", [
    ({"name": "cu12.4-py3.11-torch2.7.1"}, "cuda: the name says '12.4', the facts say '12.8'"),
    ({"python": "3.12"}, "python: the name says '3.11', the facts say '3.12'"),
    ({"variant": "cu126", "torch_pin": "2.7.1+cu126"}, "variant: expected 'cu128', found 'cu126'"),
    ({"torch_pin": "2.7.1"}, "torch_pin: expected '2.7.1+cu128', found '2.7.1'"),
    ({"driver_floor": None}, "driver_floor: expected the driver floor of CUDA 12.8, found none"),
    ({"cuda_patch": "12.4.1"}, "cuda_patch: expected a patch of CUDA 12.8, found '12.4.1'"),
    ({"name": "cu12.8-python3.11"}, "cell name 'cu12.8-python3.11': expected"),
])
def test_fact_problems(change, problem):
    assert checklib.fact_problems(FACTS) == []
    found = checklib.fact_problems({**FACTS, **change})
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize("facts, expected", [
    ({}, (True, "cuda>=12.8")),  # a base that sets none: cuda>= the base's CUDA ...
    ({"cuda": "12.4", "name": "cu12.4-py3.11-torch2.7.1", "cuda_patch": "12.4.1", "wheel_cuda": "12.6"},
     (True, "cuda>=12.6")),  # ... or the wheel's, when that is higher
    ({"runtime_base_env": {"NVIDIA_REQUIRE_CUDA": BASE_REQUIRE}}, (True, BASE_REQUIRE)),  # the base's own value
    ({"runtime_base_env": None}, (False, None)),  # base not on the engine: unknown
    ({"cuda": "cpu", "runtime_base_env": None}, (True, None)),  # a CPU image sets none
])
def test_expected_require_cuda(facts, expected):
    assert checklib.expected_require_cuda({**FACTS, **facts})[:2] == expected


def test_expected_env_of_a_cpu_image_keeps_the_bases_nvidia_variables():
    cpu = {**FACTS, "cuda": "cpu"}
    assert checklib.expected_env({**cpu, "runtime_base_env": {}})["NVIDIA_VISIBLE_DEVICES"] is None  # must be unset
    assert "NVIDIA_VISIBLE_DEVICES" not in checklib.expected_env({**cpu, "runtime_base_env": None})  # unknown
    assert checklib.expected_env(FACTS)["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="gpumatrix-image" tests="3">
<testcase classname="test_versions" name="test_python_version" time="0.1"/>
<testcase classname="test_packages" name="test_pip_check[docker://abc123]" time="0.2">
<failure message="AssertionError: expected `pip check` to exit 0, found exit code 1:&#10;  requests 2.34.2 requires urllib3&#10;assert 1 == 0">tb</failure></testcase>
<testcase classname="test_gpu" name="test_gpu_matmul_matches_cpu[local://]" time="0">
<skipped type="pytest.skip" message="no GPU visible (torch.cuda.is_available() is False)">skip</skipped></testcase>
</testsuite></testsuites>"""


def test_parse_junit_and_the_markdown_summary(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(JUNIT)
    cases = imagetest.parse_junit(path)
    assert [c["name"] for c in cases] == ["test_python_version", "test_pip_check", "test_gpu_matmul_matches_cpu"]
    assert [c["outcome"] for c in cases] == ["passed", "failed", "skipped"]
    assert cases[1]["message"] == "expected `pip check` to exit 0, found exit code 1:\n  requests 2.34.2 requires urllib3"
    result = imagetest.CellResult(cell="c", mode="docker", image="r:c", image_id="sha256:" + "a" * 64, passed=False,
                                  gpu=False, junit="out/tests/c.xml", summary="out/tests/c.md",
                                  counts=imagetest.counts_of(cases), pytest_exit=1, duration_s=3)
    md = imagetest.summary_markdown(result, cases)
    assert md.startswith("### Image checks: c FAILED")
    assert "1 passed, 1 failed, 1 skipped" in md
    assert "| test_packages::test_pip_check | failed | expected `pip check` to exit 0" in md
    assert "test_python_version" not in md  # passing checks are counted, not listed
    assert set(result.record()) >= {"cell", "image", "image_id", "passed", "gpu", "junit", "summary"}


def test_fallback_junit_is_readable(tmp_path):
    path = tmp_path / "f.xml"
    path.write_text(imagetest._fallback_junit("pytest exited with code 4 before writing results"))
    (case,) = imagetest.parse_junit(path)
    assert case["outcome"] == "error" and "code 4" in case["message"]


def test_the_suite_refuses_to_run_without_expect():
    result = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "gpumatrix" / "imagechecks"), "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 4
    assert "the image checks (gpumatrix/imagechecks) check one built image and need --expect PATH" in result.stderr


def test_make_test_does_not_collect_the_image_suite():
    text = (REPO / "pyproject.toml").read_text()
    assert 'testpaths = ["tests/unit", "tests/integration"]' in text
