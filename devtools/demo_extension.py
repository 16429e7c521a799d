"""The demo CUDA extension of the compiled-extension tests: gpumatrix-demo-kernel, a real torch CUDAExtension
(devtools/demo_kernel) small enough to compile in well under a minute on two cores.

demo_sdist() packs it as an sdist, byte for byte the same on every run (sorted entries, fixed mtimes and owners,
gzip mtime 0), so that its sha256 can be pinned in a lock. It is packed with tarfile, not `setup.py sdist`: setup.py
imports torch, which the host does not have.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

DEMO_DIST = "gpumatrix-demo-kernel"
DEMO_VERSION = "0.1.0"
DEMO_IMPORT = "gpumatrix_demo_kernel"
DEMO_MODULE = f"{DEMO_IMPORT}._C"
DEMO_REQUIRES = ("torch", "einops")  # einops: a small pure-Python runtime requirement, as flash-attn has
DEMO_SOURCE = Path(__file__).parent / "demo_kernel"
DEMO_SDIST_NAME = f"{DEMO_IMPORT}-{DEMO_VERSION}.tar.gz"

_MTIME = 1_700_000_000  # 2023-11-14: any fixed time; not 0, which some tools take for "no time"


def demo_pkg_info() -> str:
    """The sdist's PKG-INFO (core metadata 2.1)."""
    lines = ["Metadata-Version: 2.1", f"Name: {DEMO_DIST}", f"Version: {DEMO_VERSION}",
             "Summary: A tiny torch CUDA extension (add_one) used by gpumatrix's tests",
             *(f"Requires-Dist: {requirement}" for requirement in DEMO_REQUIRES)]
    return "\n".join(lines) + "\n"


def demo_files() -> dict[str, bytes]:
    """The sdist's files by their path under its top directory: the sources as they are in the tree, and PKG-INFO."""
    files = {path.relative_to(DEMO_SOURCE).as_posix(): path.read_bytes()
             for path in DEMO_SOURCE.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".so", ".o")}
    files["PKG-INFO"] = demo_pkg_info().encode()
    return files


BROKEN_KERNEL_LINE = "this line is no CUDA C++;\n"  # nvcc stops at it with a syntax error


def demo_sdist(dest: Path, broken: bool = False) -> tuple[Path, str]:
    """Write gpumatrix_demo_kernel-0.1.0.tar.gz into `dest` (a directory); return its path and sha256 (hex).
    broken=True: the kernel source ends with a line nvcc refuses, so its compile fails."""
    dest.mkdir(parents=True, exist_ok=True)
    files = demo_files()
    if broken:
        files["csrc/add_one.cu"] += BROKEN_KERNEL_LINE.encode()
    data = _sdist_bytes(files, f"{DEMO_IMPORT}-{DEMO_VERSION}")
    path = dest / DEMO_SDIST_NAME
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _sdist_bytes(files: dict[str, bytes], top: str) -> bytes:
    """A gzipped ustar archive of `files` under `top/`, with its directories, in sorted order and nothing that
    depends on when or by whom it was made."""
    dirs = {top} | {f"{top}/{parent}" for name in files for parent in _parents(name)}
    entries = sorted([(name, None) for name in dirs] + [(f"{top}/{name}", data) for name, data in files.items()])
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "root", "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    gz_buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=gz_buffer, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(tar_buffer.getvalue())
    return gz_buffer.getvalue()


def _parents(name: str) -> list[str]:
    """'a/b/c.py' -> ['a', 'a/b']."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def demo_matrix(sha256: str, registry: str = "ghcr.io/acme", extra_entry: str = "") -> str:
    """A matrix of the CUDA 13.0 cell of torch 2.14.1 (Python 3.11, no companions, archs sm_80 and sm_90) with the
    demo extension, its sdist at extensions/ in the project, and the app layer requirements/ext.in."""
    return (
        "image: gpu-images\n"
        f"registry: {registry}\n"
        "axes:\n"
        '  cuda: ["13.0"]\n'
        '  python: ["3.11"]\n'
        '  torch: ["2.14.1"]\n'
        "defaults:\n"
        '  python: "3.11"\n'
        "settings:\n"
        "  archs: [sm_80, sm_90]\n"
        "  layers: [ext]\n"
        "  companions: []\n"
        "  extensions:\n"
        f"    - name: {DEMO_DIST}\n"
        f"      sdist: extensions/{DEMO_SDIST_NAME}\n"
        f"      sha256: {sha256}\n"
        "      max_jobs: 2\n"
        "      requires: [einops]\n" + extra_entry)


def demo_flags(devel_base: str, runtime_base: str, index_url: str) -> list[str]:
    """build.py's flags for the demo cell on the stand-ins: the devel stand-in builds (nvcc, g++), the plain stand-in
    runs (the runtime image gets no compiler), torch from the loopback index, which the host network reaches."""
    return ["--cuda", "13.0", "--base-image", devel_base, "--runtime-image", runtime_base, "--index-url", index_url,
            "--network", "host"]


def demo_project(root: Path, templates: Path, registry: str = "ghcr.io/acme") -> Path:
    """`root` as a project of the demo cell: templates/ copied from `templates`, the sdist, matrix.yaml and
    requirements/ext.in (six: a small app layer beside the extension's own einops)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(templates, root / "templates")
    _, sha256 = demo_sdist(root / "extensions")
    (root / "matrix.yaml").write_text(demo_matrix(sha256, registry))
    (root / "requirements").mkdir()
    (root / "requirements" / "ext.in").write_text("six\n")
    return root
