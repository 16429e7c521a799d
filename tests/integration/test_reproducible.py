"""Reproducibility between two copies of the project in one test session: byte-identical renders and locks, and two
`--no-cache` builds of the same cell from the same inputs that hold the same files and the same `pip freeze`.

A copy here is the working tree's files that git tracks or would add (`git ls-files --cached --others
--exclude-standard`: uncommitted edits and new files included, ignored files not) copied into a directory of its
own, as a clone of the next commit would lay them out. The two copies are not independent machines or runs. They
share this session's Docker engine, one stand-in base image, one loopback index (the same wheel files at the same
URL), and PyPI at nearly the same moment. The second copy's lock also reuses the torch stage the engine cached for
the first, because both send the same Dockerfile and build arguments. So these tests show that the renders, locks
and builds do not depend on the directory or on anything the first copy left behind. They do not show that another
machine, another stand-in base or another day's index gives the same bytes. The second build runs with --no-cache,
so it repeats every install instead of reusing the first build's layers.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from support.cli import build_py
from support.projects import REPO, use_registry
from support.standins import STANDIN_CELL as CELL

REPOSITORY = "gpumatrix.test/repro/gpu-images"

# Every regular file of the environment and the app layer with its sha256; bytecode is left out because pip
# compiles it at install time with the install's timestamps (it is rebuilt from the sources it is checked against).
FILE_SET = r"""
cd / && find opt/venv opt/gpumatrix -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
"""


def checkout(target: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    use_registry(target, "gpumatrix.test/repro")
    return target


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The copy's own build.py, run in the copy; asserts that it succeeds."""
    result = build_py(*args, cwd=project, script=project / "build.py")
    assert result.returncode == 0, f"build.py {' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> tuple[Path, Path]:
    return checkout(tmp_path_factory.mktemp("checkout-a")), checkout(tmp_path_factory.mktemp("checkout-b"))


def differing(a: Path, b: Path) -> list[str]:
    """Files that differ between two trees, or exist in one only (recursively)."""
    cmp = filecmp.dircmp(a, b)
    found = [str(Path(a.name) / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files]
    for sub in cmp.common_dirs:
        found += differing(a / sub, b / sub)
    return found


def test_render_is_byte_identical_in_two_copies_of_the_project(checkouts):
    """render uses no engine or index: two directories, the same Dockerfiles, equal to the committed ones."""
    a, b = checkouts
    for root in checkouts:
        shutil.rmtree(root / "docker")
        cli(root, "render")
    assert differing(a / "docker", b / "docker") == []
    # the registry differs from the shipped matrix; tags carry it, the Dockerfiles never do
    assert differing(REPO / "docker", a / "docker") == []


def test_lock_is_byte_identical_in_two_copies_sharing_one_engine_base_and_index(checkouts, stand_ins):
    """Both locks are compiled with the same stand-in base and loopback index on one engine (the second in the torch
    stage the engine cached for the first). This shows the lock does not depend on the copy, not that another
    machine would write the same bytes."""
    a, b = checkouts
    for root in checkouts:
        (root / "locks" / f"{CELL}.txt").unlink()
        cli(root, "lock", "--cuda", "cpu", *stand_ins)
    assert (a / "locks" / f"{CELL}.txt").read_bytes() == (b / "locks" / f"{CELL}.txt").read_bytes()


def test_two_no_cache_builds_sharing_one_base_and_index_hold_the_same_files_and_freeze(checkouts, stand_ins,
                                                                                       docker_client, containers):
    """One --no-cache build per copy, on one engine, from the same stand-in base and loopback index."""
    a, b = checkouts
    images = []
    try:
        for root in checkouts:
            cli(root, "build", "--cuda", "cpu", "--no-cache", *stand_ins)
            image = docker_client.images.get(f"{REPOSITORY}:{CELL}")
            images.append(image.id)
            docker_client.images.remove(f"{REPOSITORY}:{CELL}")  # the second build must make its own
        first, second = images
        assert first != second, "the second build reused the first image instead of building"
        freeze = [containers.run_in(i, "pip freeze --all") for i in images]
        assert freeze[0] == freeze[1]
        assert "torch==2.13.0+cpu" in freeze[0]
        files = [containers.run_in(i, FILE_SET) for i in images]
        assert len(files[0].splitlines()) > 1000
        only = set(files[0].splitlines()) ^ set(files[1].splitlines())
        assert not only, f"{len(only)} files differ, e.g. {sorted(only)[:10]}"
    finally:
        for image_id in images:
            for tagged in docker_client.images.list(name=REPOSITORY):
                if tagged.id == image_id:
                    for tag in tagged.tags:
                        docker_client.images.remove(tag)
