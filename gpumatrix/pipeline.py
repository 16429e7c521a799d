"""The front of the pipeline: matrix file -> project and cells, with base images pinned by digest.

Every later step (render, lock, build, test, push) starts from what `load` returns, so each compatibility decision
is made once, in cells.expand, and each base is pinned once, here.
"""

from __future__ import annotations

from pathlib import Path

from . import bases
from .cells import Expansion, expand
from .matrix import load_matrix
from .project import Project


def load(matrix_path: Path, pinned: bool = True) -> tuple[Project, Expansion]:
    """The project and its cells; with `pinned`, bases recorded in locks/bases.yaml are named by digest."""
    project = Project(matrix_path)
    matrix = load_matrix(matrix_path)
    expansion = expand(matrix, matrix_path, project.requirements)
    return project, bases.pin_cells(expansion, bases.read_pins(project.bases)) if pinned else expansion
