"""Shared helpers for the unit tests: a throw-away project copy, matrix writers and CLI runners."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpumatrix.cells import Expansion, expand
from gpumatrix.matrix import load_matrix
from support.projects import ONE_CELL_MATRIX

REPO = Path(__file__).resolve().parents[2]
BUILD_PY = REPO / "build.py"

# A small valid matrix; tests append sections to it or build their own with matrix_text().
MINIMAL = ONE_CELL_MATRIX


def matrix_text(
    cuda=("12.8",),
    python=("3.11",),
    torch=("2.7.1",),
    default_python="3.11",
    default_torch: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """A valid matrix document with the given axes; `extra` is appended verbatim (dedented)."""

    def flow(values) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    head = (
        "image: gpu-images\n"
        "registry: ghcr.io/acme\n"
        "axes:\n"
        f"  cuda: {flow(cuda)}\n"
        f"  python: {flow(python)}\n"
        f"  torch: {flow(torch)}\n"
        "defaults:\n"
        f'  python: "{default_python}"\n'
    )
    if default_torch:
        head += "  torch: {" + ", ".join(f'"{k}": "{v}"' for k, v in default_torch.items()) + "}\n"
    return head + textwrap.dedent(extra)


def write_matrix(project_dir: Path, text: str, name: str = "matrix.yaml") -> Path:
    """Write a matrix file into the project directory and return its path."""
    path = project_dir / name
    path.write_text(text)
    return path


def make_project(dest: Path, with_docker: bool = False) -> Path:
    """Copy templates/, requirements/ and matrix.yaml (and optionally the rendered docker/) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "templates", dest / "templates")
    shutil.copytree(REPO / "requirements", dest / "requirements")
    shutil.copy2(REPO / "matrix.yaml", dest / "matrix.yaml")
    if with_docker:
        shutil.copytree(REPO / "docker", dest / "docker")
    return dest


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
    return subprocess.run(
        [sys.executable, str(BUILD_PY), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


# The helpers as fixtures: test modules must not `import conftest` (tests/integration has one too).


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", name="matrix_text")
def _matrix_text_fixture():
    return matrix_text


@pytest.fixture(scope="session", name="write_matrix")
def _write_matrix_fixture():
    return write_matrix


@pytest.fixture(scope="session", name="expand_text")
def _expand_text_fixture():
    return expand_text


@pytest.fixture(scope="session", name="expand_file")
def _expand_file_fixture():
    return expand_file


@pytest.fixture(scope="session", name="snapshot")
def _snapshot_fixture():
    return snapshot


@pytest.fixture(scope="session", name="run_build")
def _run_build_fixture():
    return run_build


@pytest.fixture(scope="session", name="make_project")
def _make_project_fixture():
    return make_project


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
