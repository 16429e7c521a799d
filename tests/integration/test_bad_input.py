"""Bad input that only the real components can reveal: exit 2, one clear line, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CELL = "cpu-py3.11-torch2.13.0"


@pytest.fixture
def project(tmp_project: Path) -> Path:
    return tmp_project


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "build.py"), "--matrix", str(project / "matrix.yaml"), *args],
                          capture_output=True, text=True, timeout=900)


def test_a_package_that_does_not_exist_names_the_in_line(project, standin_base, torch_index):
    layer = project / "requirements" / "cpu.in"
    lines = layer.read_text().splitlines()
    layer.write_text("\n".join(lines + ["gpumatrix-no-such-package-4711>=1"]) + "\n")
    before = (project / "locks" / f"{CELL}.txt").read_bytes()
    result = cli(project, "lock", "--cuda", "cpu", "--base-image", standin_base, "--index-url", torch_index.url,
                 "--network", "host")
    assert result.returncode == 2, result.stderr
    assert f"requirements/cpu.in:{len(lines) + 1}: gpumatrix-no-such-package-4711: no such package" in result.stderr
    assert "Traceback" not in result.stderr
    assert (project / "locks" / f"{CELL}.txt").read_bytes() == before


def test_an_index_that_does_not_answer_is_refused_before_building(project, standin_base, docker_client):
    result = cli(project, "build", "--cuda", "cpu", "--base-image", standin_base, "--runtime-image", standin_base,
                 "--index-url", "http://user:s3cret@127.0.0.1:9/simple", "--network", "host")
    assert result.returncode == 2, result.stderr
    assert "the torch index does not answer at http://***@127.0.0.1:9/simple/torch/" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert not (project / "out" / "build-report.json").exists()
