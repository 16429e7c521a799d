"""`build.py test` on the CUDA 13.0 cell, built on the stand-in base with the CUDA build of torch 2.14.1 from PyPI
(about 3 GB of wheels, cached under .cache). A module of its own so that its images, about 11 GB, are removed before
the next module starts, and the CPU images of test_imagetest.py are gone before it starts.

The torch wheel is PyPI's, not the PyTorch index's. PyPI publishes it as plain 2.14.1, so this test's loopback index
relabels it 2.14.1+cu130 itself (LoopbackIndex.fill(local_version=...): `wheel pack --local-version`, which rewrites
the METADATA version) before the build installs `torch==2.14.1+cu130`. The pin checks of the suite therefore see the
test's own relabel as the distribution's version. torch.__version__ (2.14.1+cu130), torch.version.cuda (13.0) and
the compiled archs are the wheel's own. No wheel from download.pytorch.org is installed or checked here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support.cli import cli
from support.containers import product_containers
from support.projects import copy_project, matrix_text
from support.reports import check_results, suite_with_arch_added
from support.standins import base_flags, standin_flags

CU130_CELL = "cu13.0-py3.11-torch2.14.1"
CU130_MATRIX = matrix_text(cuda=("13.0",), torch=("2.14.1",), extra=(
    "  torch: {}\n"
    "settings:\n"
    "  archs: [sm_80, sm_90, sm_120]\n"
    "  layers: []\n"
    "  companions: []\n"))


@pytest.fixture(scope="module")
def cu130_project(tmp_path_factory, standin_base, cu130_index) -> Path:
    root = copy_project(tmp_path_factory.mktemp("cu130"), matrix=CU130_MATRIX)
    listed = cli(root, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    (cell,) = json.loads(listed.stdout)
    assert cell["name"] == CU130_CELL and cell["torch"] == "2.14.1+cu130" and cell["archs"] == ["sm_80", "sm_90", "sm_120"]
    started = time.monotonic()
    result = cli(root, "build", "--cuda", "13.0", *standin_flags(standin_base, cu130_index.url), timeout=3000)
    assert result.returncode == 0, result.stderr[-5000:]
    print(f"cu130 build: {time.monotonic() - started:.0f}s")
    return root


@pytest.mark.slow
def test_cuda13_cell_with_pypi_torch_relabelled_cu130_by_the_test_passes_without_a_gpu(cu130_project, standin_base,
                                                                                      containers):
    """The torch distribution the pin checks accept as 2.14.1+cu130 is PyPI's 2.14.1 wheel relabelled by this test's
    index (see the module docstring), not a wheel of the PyTorch index."""
    started = time.monotonic()
    result = cli(cu130_project, "test", "--cuda", "13.0", *base_flags(standin_base))
    print(f"suite on the cu130 image: {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    record, cases = check_results(cu130_project / "out" / "tests", CU130_CELL)
    assert record["passed"] is True and record["gpu"] is False
    archs = cases["test_compiled_archs_cover_the_target_archs"]
    assert archs["outcome"] == "passed"
    assert cases["test_torch_cuda_is_the_variants_cuda"]["outcome"] == "passed"
    assert cases["test_nvidia_require_cuda"]["outcome"] == "passed"
    expect = json.loads((cu130_project / "out" / "tests" / f"{CU130_CELL}.expect.json").read_text())
    assert expect["cuda"] == "13.0" and expect["torch_pin"] == "2.14.1+cu130"
    facts = containers.run_in(
        record["image_id"], ["python", "-c", "import torch; print(torch.version.cuda, *torch.cuda.get_arch_list(), "
                             "torch._C._cuda_getArchFlags())"])
    words = facts.split()
    assert words[0] == "13.0" and {"sm_80", "sm_90", "sm_120"} <= set(words[1:]), words


@pytest.mark.slow
def test_cuda13_copy_claiming_sm70_fails_the_arch_check(cu130_project, docker_client, tmp_path):
    """The same code path as `build.py test` (engine.container + run_suite), with sm_70 added to the expectations."""
    image = docker_client.images.get(json.loads(
        (cu130_project / "out" / "tests" / f"{CU130_CELL}.expect.json").read_text())["image"])
    code, cases = suite_with_arch_added(docker_client, cu130_project, CU130_CELL, image.id, "sm_70", tmp_path)
    assert code == 1
    failed = {n for n, c in cases.items() if c["outcome"] == "failed"}
    assert failed == {"test_compiled_archs_cover_the_target_archs"}, failed
    message = cases["test_compiled_archs_cover_the_target_archs"]["message"]
    assert "expected torch's compiled archs to cover the target archs sm_70 sm_80 sm_90 sm_120" in message
    assert "no kernels for sm_70" in message and "sm_75" in message
    assert not product_containers(docker_client, "imagetest", image=image.id)
