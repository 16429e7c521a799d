"""The per-arch kernel check of compiled extensions: cuobjdump output parsing, the failure lines, the real cuobjdump of
the nvidia-cuda-cuobjdump wheel, and the suite's test_extensions.py run against this host (testinfra's local backend)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pydantic_core
import pytest

from gpumatrix import imagetest
from gpumatrix.cells import ExtensionSpec, expand
from gpumatrix.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("checklib", REPO / "gpumatrix" / "imagechecks" / "checklib.py")
checklib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checklib)

# cuobjdump 13.5 --list-elf / --list-ptx of a module with SASS for sm_80 and sm_90 and PTX for sm_90.
ELF = "ELF file    1: demo.1.sm_80.cubin\nELF file    2: demo.2.sm_90.cubin\n"
PTX = "PTX file    1: demo.1.sm_90.ptx\n"
DEMO = "gpumatrix_demo_kernel/_C.cpython-311-x86_64-linux-gnu.so"
NO_KERNELS = Path(pydantic_core._pydantic_core.__file__)  # a compiled module without device code


def test_cuobjdump_output_gives_sass_then_ptx_named_compute():
    assert checklib.cuobjdump_archs(ELF, PTX) == ["sm_80", "sm_90", "compute_90"]


def test_cuobjdump_archs_are_unique_in_arch_order_and_keep_arch_specific_suffixes():
    elf = ("ELF file    1: m.1.sm_120.cubin\nELF file    2: m.2.sm_90a.cubin\nELF file    3: m.3.sm_80.cubin\n"
           "ELF file    4: m.4.sm_120.cubin\nELF file   10: m.10.sm_100a.cubin\n")
    ptx = "PTX file    1: m.1.sm_120.ptx\nPTX file    2: m.2.sm_120.ptx\n"
    assert checklib.cuobjdump_archs(elf, ptx) == ["sm_80", "sm_90a", "sm_100a", "sm_120", "compute_120"]


def test_cuobjdump_archs_of_no_output_are_none():
    assert checklib.cuobjdump_archs("", "") == []
    assert checklib.cuobjdump_archs("\ncuobjdump info    : File 'x.so' does not contain device code\n", "") == []


def test_targets_covered_by_sass_give_no_lines():
    # sm_86 runs the sm_80 SASS (same major, lower minor)
    assert checklib.uncovered_kernels(DEMO, ["sm_80", "sm_86", "sm_90"], ["sm_80", "sm_90"]) == []


def test_a_missing_target_gives_one_line_naming_the_module_and_what_was_compiled():
    assert checklib.uncovered_kernels(DEMO, ["sm_80", "sm_86", "sm_90"], ["sm_80", "sm_86"]) == [
        "expected gpumatrix_demo_kernel/_C.cpython-311-x86_64-linux-gnu.so to have sm_90 kernels, found sm_80 sm_86"]


def test_ptx_covers_a_newer_gpu_and_sass_alone_does_not():
    assert checklib.uncovered_kernels(DEMO, ["sm_90", "sm_120"], ["sm_90", "compute_90"]) == []
    assert checklib.uncovered_kernels(DEMO, ["sm_90", "sm_120"], ["sm_80", "sm_90"]) == [
        "expected gpumatrix_demo_kernel/_C.cpython-311-x86_64-linux-gnu.so to have sm_120 kernels, found sm_80 sm_90"]


def test_arch_specific_sass_covers_only_its_own_gpu():
    assert checklib.uncovered_kernels("m.so", ["sm_90"], ["sm_90a"]) == []  # gpumatrix.archs: sm_90a runs on sm_90
    assert checklib.uncovered_kernels("m.so", ["sm_100", "sm_103"], ["sm_100a"]) == [
        "expected m.so to have sm_103 kernels, found sm_100a"]


def test_a_module_without_kernels_says_found_none():
    assert checklib.uncovered_kernels("m.so", ["sm_80", "sm_90"], []) == [
        "expected m.so to have sm_80 kernels, found none", "expected m.so to have sm_90 kernels, found none"]


@pytest.fixture(scope="module")
def cuobjdump() -> str:
    tool = checklib.cuobjdump_path()
    assert tool, "no cuobjdump: pip install -r requirements-tool.txt (nvidia-cuda-cuobjdump)"
    return tool


def test_cuobjdump_comes_from_the_wheel_in_this_python(cuobjdump):
    assert Path(cuobjdump).parent.parent.parent.name == "nvidia" and Path(cuobjdump).name == "cuobjdump", cuobjdump
    assert "release 13.5" in subprocess.run([cuobjdump, "--version"], capture_output=True, text=True).stdout


def test_real_cuobjdump_reads_a_module_without_device_code_as_no_kernels(cuobjdump):
    result = subprocess.run([cuobjdump, "--list-elf", str(NO_KERNELS)], capture_output=True, text=True)
    assert result.returncode == 255 and "does not contain device code" in result.stderr  # what kernel_archs maps
    compiled = checklib.kernel_archs(cuobjdump, str(NO_KERNELS))
    assert compiled == []
    assert checklib.uncovered_kernels("pydantic_core/x.so", ["sm_80"], compiled) == [
        "expected pydantic_core/x.so to have sm_80 kernels, found none"]


def test_real_cuobjdump_failing_otherwise_is_an_error_naming_its_message(cuobjdump, tmp_path):
    text = tmp_path / "not-elf.so"
    text.write_text("not a binary\n")
    with pytest.raises(checklib.CuobjdumpError, match=r"exited with code 1: cuobjdump fatal\s*: Invalid fatbin header"):
        checklib.kernel_archs(cuobjdump, str(text))


def test_the_expectations_name_the_cells_extensions():
    path = REPO / "matrix.yaml"
    expansion = expand(load_matrix(path), path, REPO / "requirements")
    cell = next(c for c in expansion.cells if c.cuda != "cpu")
    cell = dataclasses.replace(cell, extensions=(
        ExtensionSpec("flash-attn", "wheel", "https://h.example/w.whl",
                      "flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", "a" * 64),
        ExtensionSpec("gpumatrix-demo-kernel", "sdist", "extensions/x.tar.gz", "gpumatrix_demo_kernel-0.1.0.tar.gz",
                      "b" * 64)))
    expect = imagetest.expectations(cell, expansion.matrix.image, None, imagetest.Options(), mode="local",
                                    inspect=None, require_cuda=(True, None, "x"), gpu=False, python_exe="python")
    assert expect["extensions"] == ["flash-attn", "gpumatrix-demo-kernel"]
    assert expect["extension_versions"] == {"flash-attn": "2.8.3+cu12torch2.7cxx11abitrue",  # PEP 440 normal form
                                            "gpumatrix-demo-kernel": "0.1.0"}


def run_extension_checks(tmp_path: Path, extensions: list[str], archs: list[str]) -> dict[str, dict]:
    """The suite's test_extensions.py against this host's Python (testinfra's local backend)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path, junit = tmp_path / "expect.json", tmp_path / "extensions.xml"
    path.write_text(json.dumps({"mode": "local", "python_exe": sys.executable, "extensions": extensions,
                                "archs": archs}))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "gpumatrix" / "imagechecks" / "test_extensions.py"),
         "--hosts=local://", "--expect", str(path), f"--junitxml={junit}", "-p", "no:cacheprovider", "-q",
         "--color=no", f"--basetemp={tmp_path / 'base'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    return {c["name"]: c for c in imagetest.parse_junit(junit)}


INSTALLED = "test_extensions_are_installed_with_compiled_modules"
KERNELS = "test_extension_modules_have_kernels_for_the_target_archs"


def test_the_suite_fails_a_module_without_kernels_and_a_missing_extension(tmp_path):
    cases = run_extension_checks(tmp_path, ["pydantic-core", "no-such-extension"], ["sm_80"])
    assert cases[INSTALLED]["outcome"] == "failed"
    assert cases[INSTALLED]["message"] == (
        "expected extension no-such-extension to be installed, found no distribution of that name")
    assert cases[KERNELS]["outcome"] == "failed"
    assert cases[KERNELS]["message"] == (
        f"expected pydantic_core/{NO_KERNELS.name} to have sm_80 kernels, found none")


def test_the_suite_skips_a_cpu_cell_and_a_cell_without_extensions(tmp_path):
    for extensions, archs in ((["pydantic-core"], []), ([], ["sm_80"])):
        cases = run_extension_checks(tmp_path / str(len(archs)), extensions, archs)
        assert {n: c["outcome"] for n, c in cases.items()} == {INSTALLED: "skipped", KERNELS: "skipped"}


def test_a_module_in_a_container_is_copied_out_with_the_docker_sdk(monkeypatch, tmp_path):
    """local_copy with testinfra's docker backend: get_archive's tar stream becomes the one file under dest_dir."""
    import io
    import tarfile

    import docker

    monkeypatch.syspath_prepend(str(REPO / "gpumatrix" / "imagechecks"))
    spec = importlib.util.spec_from_file_location("gpumatrix_test_extensions",
                                                  REPO / "gpumatrix" / "imagechecks" / "test_extensions.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    payload, buf = b"\x7fELF module bytes", io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("_C.cpython-311-x86_64-linux-gnu.so")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data, asked = buf.getvalue(), []

    class Container:
        def get_archive(self, path):
            asked.append(path)
            return iter([data[:700], data[700:]]), {}

    client = types.SimpleNamespace(containers=types.SimpleNamespace(get=lambda name: asked.append(name) or Container()),
                                   close=lambda: None)
    monkeypatch.setattr(docker, "from_env", lambda: client)
    host = types.SimpleNamespace(backend=types.SimpleNamespace(NAME="docker", name="abc123"))
    path = "/opt/venv/lib/python3.11/site-packages/gpumatrix_demo_kernel/_C.cpython-311-x86_64-linux-gnu.so"
    local = suite.local_copy(host, path, tmp_path / "0")
    assert asked == ["abc123", path]
    assert Path(local) == tmp_path / "0" / "_C.cpython-311-x86_64-linux-gnu.so" and Path(local).read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["_C.cpython-311-x86_64-linux-gnu.so"]
    assert suite.local_copy(types.SimpleNamespace(backend=types.SimpleNamespace(NAME="local")), path, tmp_path) == path
