"""Bad .in files are refused before any container starts: exit 2, file:line, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp_project(tmp_path: Path) -> Path:
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "matrix.yaml", tmp_path / "matrix.yaml")
    return tmp_path


def lock(project: Path, *args: str) -> subprocess.CompletedProcess:
    # DOCKER_HOST points nowhere: validation must answer before the engine is needed.
    return subprocess.run([sys.executable, str(REPO / "build.py"), "--matrix", str(project / "matrix.yaml"), "lock",
                           "--cuda", "cpu", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": "tcp://127.0.0.1:9"})


@pytest.mark.parametrize("bad", ["numpy>>2", "numpy==", "safetensors["])
def test_invalid_requirement_line_is_refused_with_file_and_line(tmp_project, bad):
    layer = tmp_project / "requirements" / "cpu.in"
    lines = layer.read_text().splitlines()
    layer.write_text("\n".join(lines + [bad]) + "\n")
    before = sorted(p.read_bytes() for p in (tmp_project / "locks").iterdir())
    result = lock(tmp_project)
    assert result.returncode == 2, result.stderr
    assert f"requirements/cpu.in:{len(lines) + 1}: invalid requirement" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.read_bytes() for p in (tmp_project / "locks").iterdir()) == before


def test_include_of_a_missing_file_is_refused(tmp_project):
    layer = tmp_project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "-r extra.in\n")
    result = lock(tmp_project)
    assert result.returncode == 2
    assert "extra.in: no such requirements file" in result.stderr


def test_index_options_in_a_layer_are_refused(tmp_project):
    layer = tmp_project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "--extra-index-url https://example.invalid/simple\n")
    result = lock(tmp_project)
    assert result.returncode == 2
    assert "option '--extra-index-url' is not allowed in a layer" in result.stderr
