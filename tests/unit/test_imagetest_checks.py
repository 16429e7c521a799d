"""The image suite's pure helpers and imagetest's expectations and result files, without an engine."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from gpumatrix import imagetest
from gpumatrix.cells import expand
from gpumatrix.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("checklib", REPO / "tests" / "image" / "checklib.py")
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


def test_require_cuda_falls_back_to_the_rendered_default_when_the_base_sets_none(cpu_cell):
    class Images:
        def get(self, ref):
            return type("Image", (), {"attrs": {"Config": {"Env": ["PATH=/bin"]}}})()

    client = type("Client", (), {"images": Images()})()
    cell, _ = cpu_cell
    assert imagetest.expected_require_cuda(client, cell, imagetest.Options()) == (True, None, "CPU cell: not set")
    assert imagetest.expected_require_cuda(None, cell, imagetest.Options())[0] is True


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
    result = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "image"), "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 4
    assert "tests/image checks one built image and needs --expect PATH" in result.stderr


def test_make_test_does_not_collect_the_image_suite():
    text = (REPO / "pyproject.toml").read_text()
    assert 'testpaths = ["tests/unit", "tests/integration"]' in text
