"""Flavours: more cells on one torch stage, with other app layers. Naming, selection, and the stage they share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpumatrix.errors import UsageError
from gpumatrix.build import prepare, shared_stages
from gpumatrix.request import BuildOverrides
from gpumatrix.project import Project
from gpumatrix.select import Filters, choose_one, select

REPO = Path(__file__).resolve().parents[2]

PLAIN, SERVE = "cpu-py3.11-torch2.13.0", "cpu-py3.11-torch2.13.0-serve"
INCLUDES = """\
include:
  - {cuda: cpu, python: "3.11", torch: "2.13.0"}
  - {cuda: cpu, python: "3.11", torch: "2.13.0", flavour: serve, layers: [serve]}
overrides:
  - match: {cuda: cpu}
    layers: [cpu]
    companions: []
"""


@pytest.fixture
def flavoured_project(project, matrix_text, write_matrix):
    (project / "requirements" / "serve.in").write_text("tqdm\n")
    write_matrix(project, matrix_text(cuda=("12.8",), torch=("2.7.1",), extra=INCLUDES))
    return project


@pytest.fixture
def expansion(flavoured_project, expand_file):
    return expand_file(flavoured_project / "matrix.yaml")


def cell(expansion, name):
    return next(c for c in expansion.cells if c.name == name)


def test_a_flavour_is_its_own_cell_on_the_same_torch_stage(expansion):
    plain, serve = cell(expansion, PLAIN), cell(expansion, SERVE)
    assert serve.flavour == "serve" and plain.flavour is None
    assert serve.layers == ("serve",) and plain.layers == ("cpu",)
    assert serve.tags == (f"ghcr.io/acme/gpu-images:{SERVE}",)
    same = ("torch_pin", "companions", "base_image", "runtime_image", "index_url", "python", "pip", "os_packages")
    assert {k: getattr(serve, k) for k in same} == {k: getattr(plain, k) for k in same}


def test_one_cell_means_the_plain_one_unless_a_flavour_is_asked_for(expansion):
    assert choose_one(expansion, Filters(cuda="cpu"))[0].name == PLAIN
    assert choose_one(expansion, Filters(cuda="cpu", flavour="serve"))[0].name == SERVE
    assert [c.name for c in select(expansion, Filters(cuda="cpu"))] == [PLAIN, SERVE]
    assert [c.name for c in select(expansion, Filters(cuda="cpu", flavour="none"))] == [PLAIN]
    with pytest.raises(UsageError, match="--flavour train"):
        select(expansion, Filters(cuda="cpu", flavour="train"))


def test_the_shared_base_and_torch_stages_are_built_once_for_both(flavoured_project, expansion):
    cells = [cell(expansion, PLAIN), cell(expansion, SERVE)]
    requests = prepare(Project(flavoured_project / "matrix.yaml"), "gpu-images", cells, BuildOverrides(), target="torch")
    stages = shared_stages(requests)
    assert [s.target for s in stages] == ["base", "torch"]
    assert stages[1].content_tag.startswith(f"ghcr.io/acme/gpu-images:{PLAIN}-torchstage-")
    assert stages[1].content_tag.rsplit("-", 1)[1] == requests[0].content_tag.rsplit("-", 1)[1]
    other_torch = prepare(Project(flavoured_project / "matrix.yaml"), "gpu-images", cells[:1],
                          BuildOverrides(index_url="http://127.0.0.1:9/{variant}"), target="torch")
    assert [s.target for s in shared_stages([requests[0], *other_torch])] == ["base"]


@pytest.mark.parametrize("include, message", [
    ('{cuda: cpu, python: "3.11", torch: "2.13.0", layers: [serve]}', "`layers` goes with `flavour`"),
    ('{cuda: cpu, python: "3.11", torch: "2.13.0", flavour: none}', "what --flavour none means"),
    ('{cuda: cpu, python: "3.11", torch: "2.13.0", flavour: Serve_1}', "include[0].flavour: 'Serve_1' is not valid "
                                                                       "here (a flavour is lower case"),
])
def test_bad_flavours_are_refused(project, matrix_text, write_matrix, include, message):
    path = write_matrix(project, matrix_text(extra=f"include:\n  - {include}\n"))
    result = subprocess.run([sys.executable, "build.py", "--matrix", str(path), "list"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
