"""Compiled extensions (flash-attn, ...): installed, and their .so files hold GPU kernels for the cell's target archs.

The kernels are read with cuobjdump on the checker's host (the nvidia-cuda-cuobjdump wheel of requirements-tool.txt),
never with one in the image: each .so is copied out of the container (docker backend) or read in place (local).
"""

import json
import os
import shutil
import tarfile

import pytest

from checklib import CuobjdumpError, cuobjdump_path, kernel_archs, run_python, tail, uncovered_kernels

LIST_MODULES = (
    "import importlib.metadata as md, json, os\n"
    "try:\n"
    "    dist = md.distribution(NAME)\n"
    "except md.PackageNotFoundError:\n"
    "    print('GPUMATRIX-EXTENSION null')\n"
    "else:\n"
    "    files = [f for f in dist.files or () if f.name.endswith('.so') and f.parts[0] != '..']\n"
    "    print('GPUMATRIX-EXTENSION ' + json.dumps([[str(f), os.path.realpath(dist.locate_file(f))] for f in files]))\n"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="module")
def extension_modules(expect, host, py) -> dict:
    """{distribution name: [(path relative to site-packages, absolute path), ...] of its .so files, or why none}."""
    names = expect.get("extensions") or []
    if not names:
        pytest.skip("the cell has no compiled extensions")
    if not expect.get("archs"):
        pytest.skip("the cell has no target GPU archs (CPU cell)")
    out = {}
    for name in names:
        result = run_python(host, py, f"NAME = {name!r}\n" + LIST_MODULES)
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith("GPUMATRIX-EXTENSION ")), None)
        if result.rc != 0 or line is None:
            pytest.fail(f"expected to list the files of {name} with {py}, found exit code {result.rc}: "
                        + " ".join(tail(result, 3).split()))
        files = json.loads(line.split(" ", 1)[1])
        if files is None:
            out[name] = f"expected extension {name} to be installed, found no distribution of that name"
        elif not files:
            out[name] = f"expected extension {name} to have compiled modules (.so), found none in its RECORD"
        else:
            out[name] = [tuple(f) for f in files]
    return out


def test_extensions_are_installed_with_compiled_modules(extension_modules):
    problems = [v for v in extension_modules.values() if isinstance(v, str)]
    assert not problems, "; ".join(problems)


def local_copy(host, path: str, dest_dir) -> str:
    """`path` on the checker's host: as it is (local backend), or copied out of the container (docker backend)."""
    if host.backend.NAME == "local":
        return path
    if host.backend.NAME != "docker":
        pytest.fail(f"expected the docker or local testinfra backend to read {path} through, "
                    f"found {host.backend.NAME}")
    import docker
    from docker.errors import DockerException

    dest_dir.mkdir(parents=True)
    archive, dest = dest_dir / "module.tar", dest_dir / os.path.basename(path)
    try:
        client = docker.from_env()
        try:
            stream, _ = client.containers.get(host.backend.name).get_archive(path)
            with open(archive, "wb") as fh:
                for chunk in stream:
                    fh.write(chunk)
        finally:
            client.close()
    except DockerException as exc:
        pytest.fail(f"expected to copy {path} out of container {host.backend.name}, found {exc}")
    with tarfile.open(archive) as tar:
        member = tar.next()
        src = tar.extractfile(member) if member is not None and member.isfile() else None
        if src is None:
            pytest.fail(f"expected {path} to come out of container {host.backend.name} as a file, found "
                        f"{'nothing' if member is None else 'a ' + ('link' if member.issym() else 'non-file')}")
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    archive.unlink()
    return str(dest)


def test_extension_modules_have_kernels_for_the_target_archs(expect, extension_modules, host, tmp_path):
    targets = expect["archs"]
    tool = cuobjdump_path()
    if tool is None:
        message = "no cuobjdump in the checker; pip install nvidia-cuda-cuobjdump"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    found = {name: v for name, v in extension_modules.items() if not isinstance(v, str)}
    if not found:
        pytest.skip("no extension is installed with compiled modules (see test_extensions_are_installed_...)")
    problems = []
    for name, modules in found.items():
        compiled = {relative: _kernels(host, tool, relative, path, tmp_path / f"{name}-{i}")
                    for i, (relative, path) in enumerate(modules)}
        # A host-code helper library beside the kernels (vllm's cumem_allocator) holds none, and needs none.
        with_kernels = {relative: archs for relative, archs in compiled.items() if archs} or compiled
        for relative, archs in with_kernels.items():
            problems += uncovered_kernels(relative, targets, archs)
    assert not problems, "; ".join(problems)


def _kernels(host, tool: str, relative: str, path: str, dest_dir) -> list[str]:
    local = local_copy(host, path, dest_dir)
    try:
        return kernel_archs(tool, local)
    except CuobjdumpError as exc:
        pytest.fail(f"expected cuobjdump to list the kernels of {relative}, found {exc}")
    finally:
        if local != path:
            os.unlink(local)  # a copy out of the container (flash-attn's is hundreds of MB)
