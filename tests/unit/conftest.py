"""Shared helpers for the unit tests: a throw-away project copy, matrix writers and CLI runners."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpumatrix.cells import Expansion, expand
from gpumatrix.matrix import load_matrix
from support.cli import build_py
from support.projects import REPO, copy_project, matrix_text


def write_matrix(project_dir: Path, text: str, name: str = "matrix.yaml") -> Path:
    """Write a matrix file into the project directory and return its path."""
    path = project_dir / name
    path.write_text(text)
    return path


def make_project(dest: Path, with_docker: bool = False) -> Path:
    """Copy templates/, requirements/ and matrix.yaml (and optionally the rendered docker/) into dest."""
    return copy_project(dest, ("templates", "requirements", *(["docker"] if with_docker else [])))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project (no docker/ directory) in a temporary directory."""
    return make_project(tmp_path / "proj")


@pytest.fixture
def rendered_project(tmp_path: Path) -> Path:
    """A copy of the project including the committed docker/ tree."""
    return make_project(tmp_path / "proj", with_docker=True)


def expand_file(path: Path) -> Expansion:
    """Load and expand a matrix file the way the CLI does (requirements/ beside the matrix)."""
    return expand(load_matrix(path), path, path.resolve().parent / "requirements")


def expand_text(project_dir: Path, text: str) -> Expansion:
    return expand_file(write_matrix(project_dir, text))


def snapshot(directory: Path) -> dict[str, bytes] | None:
    """Every file under `directory` with its bytes; None when the directory does not exist."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_build(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python build.py ARGS` as a user would, capturing text output."""
    return build_py(*args, cwd=cwd, timeout=60)


# The helpers as fixtures: test modules must not `import conftest` (tests/integration has one too).


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _helper_fixture(helper):
    """A session fixture named like `helper` whose value is `helper`."""
    return pytest.fixture(scope="session", name=helper.__name__)(lambda: helper)


_matrix_text_fixture = _helper_fixture(matrix_text)
_write_matrix_fixture = _helper_fixture(write_matrix)
_expand_text_fixture = _helper_fixture(expand_text)
_expand_file_fixture = _helper_fixture(expand_file)
_snapshot_fixture = _helper_fixture(snapshot)
_run_build_fixture = _helper_fixture(run_build)
_make_project_fixture = _helper_fixture(make_project)


@pytest.fixture
def cli(capsys):
    """Call gpumatrix.cli.main in-process; returns (exit code, stdout, stderr)."""
    from gpumatrix.cli import main

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return call
