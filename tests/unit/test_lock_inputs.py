"""Bad .in files are refused before any container starts: exit 2, file:line, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gpumatrix.lock import python_refused
from gpumatrix.pipeline import load
from gpumatrix.select import Filters, select

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


# What pip printed (its wording since pip 22) for a torch stage whose torchvision declares `!=3.14.1`, on a base whose
# Python is 3.14.1; the versions and specifiers are written here by hand.
PIP_IGNORED_FOR_PYTHON = """\
ERROR: Ignored the following versions that require a different python version: 0.27.0+cu130 Requires-Python \
!=3.14.1,>=3.10; 0.26.0+cu130 Requires-Python >=3.10,<3.14
ERROR: Could not find a version that satisfies the requirement torchvision==0.27.0+cu130 (from versions: none)
ERROR: No matching distribution found for torchvision==0.27.0+cu130
"""


def _cell(cuda: str, python: str, torch: str):
    _, expansion = load(REPO / "matrix.yaml")
    (cell,) = select(expansion, Filters(cuda, python, torch, None))
    return cell


def test_a_torch_stage_pin_refused_for_its_requires_python_names_the_pin_and_the_cell():
    cell = _cell("13.0", "3.12", "2.14.1")
    cell = replace(cell, companions=(("torchvision", "0.27.0+cu130"),))
    assert python_refused(PIP_IGNORED_FOR_PYTHON, cell) == (
        "cu13.0-py3.12-torch2.14.1: torchvision 0.27.0+cu130 declares Requires-Python !=3.14.1,>=3.10, which the "
        "Python 3.12 of its base does not meet, so its torch stage cannot be installed; exclude Python 3.12 for "
        "torch 2.14.1 in matrix.yaml, or use a base with another Python patch")


def test_pip_ignoring_other_versions_is_no_refusal_of_the_pins():
    assert python_refused(PIP_IGNORED_FOR_PYTHON, _cell("13.0", "3.12", "2.14.1")) is None  # pins 0.29.1+cu130
