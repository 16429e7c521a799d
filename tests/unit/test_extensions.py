"""`extensions:` in matrix.yaml: the schema refuses what is unpinned or unknown, a prebuilt wheel whose tags do not fit
the cell is refused before any build, the rendered extension stage, TORCH_CUDA_ARCH_LIST, the lock's extra input, and
the sha256 check of the files handed to the build."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gpumatrix import extensions
from gpumatrix.archs import torch_cuda_arch_list
from gpumatrix.errors import UsageError
from gpumatrix.lockfile import input_texts
from gpumatrix.project import Project
from gpumatrix.render import environment, instructions, render_cell

REPO = Path(__file__).resolve().parents[1].parent
SHA = "a" * 64
CU130 = "cu13.0-py3.11-torch2.14.1"


def ext_matrix(matrix_text, entry: str, layers: str = "[app]") -> str:
    return matrix_text(cuda=("13.0",), torch=("2.14.1",)) + (
        "settings:\n"
        "  archs: [sm_80, sm_90]\n"
        f"  layers: {layers}\n"
        "  extensions:\n" + entry)


FLASH = ("    - name: flash-attn\n"
         "      sdist: https://files.pythonhosted.org/packages/ab/flash_attn-2.8.3.post2.tar.gz\n"
         f"      sha256: {SHA}\n"
         "      env: {FLASH_ATTENTION_FORCE_BUILD: \"TRUE\"}\n"
         "      max_jobs: 4\n"
         "      build_requires: [psutil==7.0.0]\n"
         "      requires: [einops]\n")


def refused(expand_text, project: Path, text: str) -> str:
    with pytest.raises(UsageError) as info:
        expand_text(project, text)
    return str(info.value)


def test_an_sdist_entry_becomes_the_cells_extension(project, expand_text, matrix_text):
    (cell,) = expand_text(project, ext_matrix(matrix_text, FLASH)).cells
    (ext,) = cell.extensions
    assert (ext.name, ext.kind, ext.filename, ext.sha256) == ("flash-attn", "sdist", "flash_attn-2.8.3.post2.tar.gz", SHA)
    assert ext.env == (("FLASH_ATTENTION_FORCE_BUILD", "TRUE"),)
    assert (ext.max_jobs, ext.build_requires, ext.requires) == ("4", ("psutil==7.0.0",), ("einops",))


@pytest.mark.parametrize("entry, says", [
    ("    - name: x\n      sdist: https://h.example/x-1.tar.gz\n", "extensions[0].sha256: required key is missing"),
    (f"    - name: x\n      sha256: {SHA}\n", "give exactly one of `sdist`"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA[:-1]}\n", "64 lower-case hex digits"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA}\n      colour: red\n",
     "extensions[0].colour: unknown key"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA}\n      env: {{MAX_JOBS: '8'}}\n",
     "MAX_JOBS is set by gpumatrix"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA}\n      env: {{A: 'x\"; rm -rf /'}}\n",
     "no quotes, $ or backslashes"),
    (f"    - name: x\n      sdist: https://user:pw@h.example/x-1.tar.gz\n      sha256: {SHA}\n", "holds credentials"),
    (f"    - name: x\n      sdist: ../outside/x-1.tar.gz\n      sha256: {SHA}\n", "nor a path inside the project"),
    (f"    - name: x\n      sdist: https://h.example/x-1.whl\n      sha256: {SHA}\n", "`sdist` names a wheel"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA}\n      build_requires: [ninja]\n",
     "an exact pin name==version"),
    (f"    - name: x\n      sdist: https://h.example/x-1.tar.gz\n      sha256: {SHA}\n      requires: [torch]\n",
     "torch is pinned by the cell's `torch`"),
    (f"    - name: x\n      wheel: https://h.example/x-1-cp311-cp311-linux_x86_64.whl\n      sha256: {SHA}\n"
     "      max_jobs: 2\n", "a prebuilt wheel is installed as it is"),
])
def test_bad_entries_are_one_located_line(project, expand_text, matrix_text, entry, says):
    message = refused(expand_text, project, ext_matrix(matrix_text, entry))
    assert says in message and "matrix.yaml:" in message, message
    assert "\n" not in message.strip()


@pytest.mark.parametrize("wheel, says", [
    ("flash_attn-2.8.3+cu13torch2.14cxx11abiTRUE-cp310-cp310-linux_x86_64.whl",
     "is for cp310, the cell has Python 3.11 (cp311)"),
    ("flash_attn-2.8.3+cu12torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
     "was built for CUDA 12, torch 2.14, cxx11abi TRUE; the cell needs CUDA 13, torch 2.14, cxx11abi TRUE"),
    ("flash_attn-2.8.3+cu13torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", "torch 2.13"),
    ("flash_attn-2.8.3+cu13torch2.14cxx11abiFALSE-cp311-cp311-linux_x86_64.whl", "cxx11abi FALSE; the cell needs"),
    ("flash_attn-2.8.3+cu13torch2.14cxx11abiTRUE-cp311-cp311-macosx_11_0_arm64.whl", "not Linux x86_64"),
    ("other-1.0+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", "is of other, not flash-attn"),
])
def test_a_prebuilt_wheel_that_does_not_fit_the_cell_is_refused(project, expand_text, matrix_text, wheel, says):
    entry = f"    - name: flash-attn\n      wheel: https://github.com/x/releases/download/v1/{wheel}\n      sha256: {SHA}\n"
    message = refused(expand_text, project, ext_matrix(matrix_text, entry))
    assert says in message and CU130 in message, message


def test_a_fitting_prebuilt_wheel_is_taken(project, expand_text, matrix_text):
    wheel = "flash_attn-2.8.3%2Bcu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"  # as GitHub's URL spells it
    entry = f"    - name: flash-attn\n      wheel: https://github.com/x/releases/download/v1/{wheel}\n      sha256: {SHA}\n"
    (cell,) = expand_text(project, ext_matrix(matrix_text, entry)).cells
    assert cell.extensions[0].filename == "flash_attn-2.8.3+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"


def test_extensions_need_a_layer_for_their_requirements(project, expand_text, matrix_text):
    message = refused(expand_text, project, ext_matrix(matrix_text, FLASH, layers="[]"))
    assert "extensions need the cell to have `layers`" in message


@pytest.mark.parametrize("archs, expected", [
    (["sm_80", "sm_90"], "8.0;9.0+PTX"),
    (["sm_90", "sm_80", "sm_86", "sm_120"], "8.0;8.6;9.0;12.0+PTX"),
    (["sm_80", "sm_90a"], "8.0+PTX;9.0a"),
    ([], ""),
])
def test_torch_cuda_arch_list(archs, expected):
    assert torch_cuda_arch_list(archs) == expected


def test_the_extension_stage_as_rendered(project, expand_text, matrix_text):
    (cell,) = expand_text(project, ext_matrix(matrix_text, FLASH)).cells
    env = environment(REPO / "templates")
    buildkit, classic = render_cell(env, cell, "img", "buildkit"), render_cell(env, cell, "img", "classic")
    assert "FROM torch AS extension-1\n" in buildkit
    assert "COPY extensions/flash_attn-2.8.3.post2.tar.gz /tmp/gpumatrix-extension/flash_attn-2.8.3.post2.tar.gz\n" in buildkit
    assert f'echo "{SHA}  /tmp/gpumatrix-extension/flash_attn-2.8.3.post2.tar.gz" | sha256sum --check' in buildkit
    assert "MAX_JOBS=4 \\\n    && export MAX_JOBS TORCH_CUDA_ARCH_LIST=\"8.0;9.0+PTX\" FLASH_ATTENTION_FORCE_BUILD=\"TRUE\"" in buildkit
    assert "pip wheel --cache-dir /root/.cache/pip --no-build-isolation --no-deps --wheel-dir /tmp/gpumatrix-wheels /tmp/gpumatrix-build/*/" in buildkit
    assert "setuptools==84.2.1 wheel==0.48.0 ninja==1.13.2 psutil==7.0.0" in buildkit
    assert "--mount=type=cache,id=gpumatrix-ccache,target=/root/.cache/ccache" in buildkit
    assert 'PYTORCH_NVCC="ccache nvcc"' in buildkit and "ccache" not in classic
    assert "COPY --from=extension-1 /opt/extension-layer/ /\n" in buildkit
    # the extension's files reach the runtime stage before the lock is installed there
    assert buildkit.index("COPY --from=extension-1") < buildkit.index("COPY app.lock")
    assert instructions(buildkit) == instructions(classic)
    # nvcc and g++ killed by the OOM killer say "died due to signal 9 (Kill signal)" / "Killed signal terminated"
    assert "grep -qiE 'killed|signal 9|out of memory' /tmp/extension-build.log" in buildkit
    assert ("gpumatrix: the compile of extension flash-attn was killed, most likely for memory, with MAX_JOBS=$MAX_JOBS: "
            "give it a lower max_jobs in matrix.yaml") in buildkit


def test_an_unset_max_jobs_comes_from_the_builders_cores_and_memory(project, expand_text, matrix_text):
    entry = FLASH.replace("      max_jobs: 4\n", "")
    (cell,) = expand_text(project, ext_matrix(matrix_text, entry)).cells
    text = render_cell(environment(REPO / "templates"), cell, "img", "buildkit")
    assert 'os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (4 << 30)' in text
    assert "min(os.cpu_count() or 1," in text


def test_the_extensions_requirements_are_an_input_of_the_lock(project, expand_text, matrix_text):
    (cell,) = expand_text(project, ext_matrix(matrix_text, FLASH)).cells
    texts = input_texts(Project(project / "matrix.yaml"), cell)
    extra = texts[project / "requirements" / "_extensions.in"]
    assert extra.splitlines()[1:] == ["einops  # flash-attn"]


def test_a_file_whose_sha256_differs_from_the_pin_is_refused(project, expand_text, matrix_text):
    wheel = "demo-1.0-cp311-cp311-linux_x86_64.whl"
    (project / "wheels").mkdir()
    (project / "wheels" / wheel).write_bytes(b"some bytes")
    entry = f"    - name: demo\n      wheel: wheels/{wheel}\n      sha256: {SHA}\n"
    (cell,) = expand_text(project, ext_matrix(matrix_text, entry)).cells
    with pytest.raises(UsageError) as info:
        extensions.context_files(Project(project / "matrix.yaml"), cell)
    found = hashlib.sha256(b"some bytes").hexdigest()
    assert f"extension demo: {wheel} has sha256 {found}, matrix.yaml pins {SHA}; nothing was built" in str(info.value)
    entry = entry.replace(SHA, found)
    (cell,) = expand_text(project, ext_matrix(matrix_text, entry)).cells
    assert extensions.context_files(Project(project / "matrix.yaml"), cell) == (
        (f"extensions/{wheel}", project / "wheels" / wheel),)
