"""A compiled CUDA extension through the pipeline: gpumatrix-demo-kernel (devtools/demo_kernel), a real torch
CUDAExtension, built from its sdist for sm_80 and sm_90 against the CUDA 13.0 build of torch 2.14.1 (PyPI's wheel,
relabelled 2.14.1+cu130 by the loopback index, as test_imagetest_cuda.py explains) on the devel stand-in: the stand-in
base plus g++, the Python headers and NVIDIA's nvcc wheels at /usr/local/cuda. The runtime base is the plain
stand-in, with no compiler.

What is checked: the lock holds the extension's own requirement (einops); the image holds the extension and no
compiler; the build report and the image record the built wheel's sha256; the image suite reads the module's kernels
with cuobjdump and passes, and fails on an arch the build left out; a lock change rebuilds no extension stage; a
wrong sha256 is refused before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from devtools.standins import ensure_standin_devel_base
from support.cli import cli
from support.containers import product_containers
from devtools.demo_extension import DEMO_DIST, DEMO_IMPORT, demo_flags, demo_matrix, demo_project, demo_sdist
from support.projects import REPO
from support.reports import check_results, suite_with_arch_added

CELL = "cu13.0-py3.11-torch2.14.1"
WHEEL = re.compile(r"^gpumatrix_demo_kernel-0\.1\.0-cp311-cp311-linux_x86_64\.whl$")
MODULE_SO = "gpumatrix_demo_kernel/_C.cpython-311-x86_64-linux-gnu.so"


@pytest.fixture(scope="module")
def devel_base(docker_client, cache_dir, standin_base) -> str:
    return ensure_standin_devel_base(docker_client, cache_dir, standin_base)


@pytest.fixture(scope="module")
def flags(devel_base, standin_base, cu130_index) -> list[str]:
    return demo_flags(devel_base, standin_base, cu130_index.url)


@pytest.fixture(scope="module")
def project(tmp_path_factory, flags) -> Path:
    root = demo_project(tmp_path_factory.mktemp("ext") / "project", REPO / "templates")
    locked = cli(root, "lock", *flags, timeout=1200)
    assert locked.returncode == 0, locked.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def first_build(project, flags) -> dict:
    started = time.monotonic()
    result = cli(project, "build", "--locked", *flags, timeout=3000)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    print(f"cold build with the extension: {seconds:.0f}s")
    (record,) = json.loads((project / "out" / "build-report.json").read_text())["cells"]
    return {"seconds": seconds, "record": record}


def _extension_runs(record: dict) -> list[dict]:
    """The RUN steps of the extension stage (its compile, install and record)."""
    return [s for s in record["steps"] if s["stage"].startswith("extension") and s["instruction"].startswith("RUN")]


@pytest.mark.slow
def test_the_lock_holds_the_extensions_own_requirement(project):
    lock = (project / "locks" / f"{CELL}.txt").read_text()
    assert re.search(r"^einops==[0-9.]+ \\$", lock, re.MULTILINE), lock
    assert re.search(r"^six==[0-9.]+ \\$", lock, re.MULTILINE), lock
    assert "gpumatrix-demo-kernel" not in lock.split("\n\n", 1)[1].replace("# gpumatrix-demo-kernel", "")


@pytest.mark.slow
def test_the_extension_is_built_installed_and_recorded(project, first_build, containers):
    record = first_build["record"]
    assert record["status"] == "built"
    runs = _extension_runs(record)
    assert runs and not any(s["cached"] for s in runs), runs
    wheels = record["extension_wheels"]
    assert set(wheels) == {DEMO_DIST}
    assert WHEEL.match(wheels[DEMO_DIST]["wheel"]) and re.fullmatch(r"[0-9a-f]{64}", wheels[DEMO_DIST]["sha256"])
    in_image = containers.run_in(record["image_id"], ["cat", f"/opt/gpumatrix/extensions/{DEMO_DIST}.sha256"])
    assert in_image.split() == [wheels[DEMO_DIST]["sha256"], wheels[DEMO_DIST]["wheel"]]
    ran = containers.run_in(record["image_id"], [
        "python", "-W", "error", "-W", "ignore:Failed to initialize NumPy:UserWarning", "-c",  # no numpy here
        f"import torch, {DEMO_IMPORT}, einops; from importlib.metadata import version; "
        f"print(version('{DEMO_DIST}'), {DEMO_IMPORT}.__name__)"])
    assert ran.split() == ["0.1.0", DEMO_IMPORT]
    tools = containers.run_in(record["image_id"], [
        "sh", "-c", "for t in nvcc g++ gcc c++ ccache ninja; do command -v $t; done; "
                    "ls /usr/local/cuda /tmp/gpumatrix-wheels /tmp/gpumatrix-extension 2>&1 | grep -v 'No such' ; true"])
    assert tools.strip() == "", f"the runtime image holds build tools or build files: {tools}"


@pytest.mark.slow
def test_the_image_suite_reads_the_extensions_kernels(project, first_build, devel_base, standin_base):
    result = cli(project, "test", "--cuda", "13.0", "--base-image", devel_base, "--runtime-image", standin_base)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    record, cases = check_results(project / "out" / "tests", CELL)
    assert record["passed"] is True
    assert cases["test_extension_modules_have_kernels_for_the_target_archs"]["outcome"] == "passed"
    assert cases["test_compiled_extensions_import_with_warnings_as_errors"]["outcome"] == "passed"


@pytest.mark.slow
def test_an_arch_the_build_left_out_fails_the_kernel_check(project, first_build, docker_client, tmp_path):
    """The image was built for sm_80 and sm_90 (SASS for both, PTX of sm_90). Expecting sm_75 too, which torch's own
    kernels cover and the extension's do not, fails the extension check alone, naming the module and what it has."""
    image_id = first_build["record"]["image_id"]
    code, cases = suite_with_arch_added(docker_client, project, CELL, image_id, "sm_75", tmp_path)
    assert code == 1
    failed = {n for n, c in cases.items() if c["outcome"] == "failed"}
    assert failed == {"test_extension_modules_have_kernels_for_the_target_archs"}, failed
    message = cases["test_extension_modules_have_kernels_for_the_target_archs"]["message"]
    assert f"expected {MODULE_SO} to have sm_75 kernels, found sm_80 sm_90 compute_90" in message, message
    assert not product_containers(docker_client, "imagetest", image=image_id)


@pytest.mark.slow
def test_a_lock_change_rebuilds_no_extension_stage(project, first_build, flags):
    (project / "requirements" / "ext.in").write_text("six\ntyping-extensions\n")
    locked = cli(project, "lock", *flags, timeout=1200)
    assert locked.returncode == 0, locked.stderr[-3000:]
    started = time.monotonic()
    result = cli(project, "build", "--locked", *flags, timeout=3000)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    (record,) = json.loads((project / "out" / "build-report.json").read_text())["cells"]
    runs = _extension_runs(record)
    print(f"rebuild after a lock change: {seconds:.0f}s against {first_build['seconds']:.0f}s cold")
    assert runs and all(s["cached"] for s in runs), [(s["stage"], s["cached"]) for s in runs]
    assert record["extension_wheels"] == first_build["record"]["extension_wheels"]
    assert seconds < first_build["seconds"], (seconds, first_build["seconds"])


@pytest.mark.slow
def test_a_wrong_sha256_is_refused_before_anything_is_built(project, flags, tmp_path):
    wheel = tmp_path / "other_kernel-1.0+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"not the pinned bytes")
    (project / "extensions" / wheel.name).write_bytes(wheel.read_bytes())
    pinned = hashlib.sha256(b"the bytes someone pinned").hexdigest()
    found = hashlib.sha256(wheel.read_bytes()).hexdigest()
    sha256 = hashlib.sha256((project / "extensions" / "gpumatrix_demo_kernel-0.1.0.tar.gz").read_bytes()).hexdigest()
    (project / "matrix.yaml").write_text(demo_matrix(sha256, extra_entry=(
        "    - name: other-kernel\n"
        f"      wheel: extensions/{wheel.name}\n"
        f"      sha256: {pinned}\n")))
    result = cli(project, "build", "--locked", *flags)
    assert result.returncode == 2, result.stderr
    assert (f"extension other-kernel: {wheel.name} has sha256 {found}, matrix.yaml pins {pinned}; nothing was built"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_failed_compile_names_the_extension_and_shows_the_compilers_lines(project, flags):
    """The kernel source with a line nvcc refuses: exit 1, the compiler's error, then the line naming the extension."""
    _, sha256 = demo_sdist(project / "extensions", broken=True)
    (project / "matrix.yaml").write_text(demo_matrix(sha256))
    result = cli(project, "build", "--locked", *flags, timeout=1800)
    shown = result.stdout + result.stderr
    assert result.returncode == 1, shown[-4000:]
    assert "add_one.cu" in shown and "error" in shown, shown[-4000:]
    assert "gpumatrix: extension gpumatrix-demo-kernel failed to compile; the compiler's errors are above" in shown
    assert "Traceback" not in result.stderr
