"""Nightly torch cells: pinned to one dated build from the nightly index, with --pre, and the lock says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpumatrix.cells import expand
from gpumatrix.errors import UsageError
from gpumatrix.lockfile import format_lock, inputs_digest
from gpumatrix.matrix import load_matrix
from gpumatrix.project import Project
from gpumatrix.render import environment, render_cell

REPO = Path(__file__).resolve().parents[2]
NIGHTLY = "2.16.0.dev20261120"


@pytest.fixture
def nightly_project(tmp_path: Path) -> Project:
    for name in ("templates", "requirements"):
        shutil.copytree(REPO / name, tmp_path / name)
    (tmp_path / "matrix.yaml").write_text(
        "image: gpu-images\nregistry: ghcr.io/acme\n"
        f'axes: {{cuda: ["13.0"], python: ["3.12"], torch: ["{NIGHTLY}"]}}\n'
        'defaults: {python: "3.12"}\nsettings: {archs: [sm_90, sm_120], layers: [app]}\n'
    )
    return Project(tmp_path / "matrix.yaml")


def only_cell(project: Project):
    expansion = expand(load_matrix(project.matrix), project.matrix, project.requirements)
    assert len(expansion.cells) == 1, expansion.skipped
    return expansion.cells[0]


def test_nightly_cell_pins_the_dated_build_from_the_nightly_index(nightly_project):
    cell = only_cell(nightly_project)
    assert cell.name == f"cu13.0-py3.12-torch{NIGHTLY}"
    assert cell.torch_pin == f"{NIGHTLY}+cu130"
    assert cell.index_url == "https://download.pytorch.org/whl/nightly/cu130"
    assert cell.pre is True
    assert dict(cell.companions)["torchvision"] == "0.31.0.dev20261120+cu130"


def test_nightly_dockerfile_installs_with_pre_and_exact_pins(nightly_project):
    cell = only_cell(nightly_project)
    text = render_cell(environment(nightly_project.templates), cell, "gpu-images")
    assert '--index-url "${TORCH_INDEX_URL}" --pre' in text
    assert f"torch=={NIGHTLY}+cu130" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/nightly/cu130" in text


def test_nightly_lock_header_records_the_build_date(nightly_project):
    cell = only_cell(nightly_project)
    text = format_lock(cell, inputs_digest(nightly_project, cell), "einops==0.8.1\n", [f"torch=={NIGHTLY}+cu130"],
                       "uv")
    assert f"# nightly: {NIGHTLY}+cu130 (the nightly of 2026-11-20;" in text
    assert "refresh with `make lock`" in text


def test_nightly_of_an_unknown_release_is_refused(nightly_project):
    nightly_project.matrix.write_text(nightly_project.matrix.read_text().replace(NIGHTLY, "2.99.0.dev20261120"))
    with pytest.raises(UsageError, match="2.99.0.dev20261120 is not in the compatibility data"):
        only_cell(nightly_project)
