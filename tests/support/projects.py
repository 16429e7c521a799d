"""Throw-away copies of this project for tests, and the smallest valid matrix."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One cell (cu12.8-py3.11-torch2.7.1), 8 lines: whatever a test appends starts on line 9.
ONE_CELL_MATRIX = """\
image: gpu-images
registry: ghcr.io/acme
axes:
  cuda: ["12.8"]
  python: ["3.11"]
  torch: ["2.7.1"]
defaults:
  python: "3.11"
"""


def copy_project(root: Path, parts: tuple[str, ...] = ("templates", "requirements")) -> Path:
    """`root` holding the shipped matrix.yaml and a copy of each of `parts` (directories of the repository)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in parts:
        shutil.copytree(REPO / name, root / name)
    shutil.copy2(REPO / "matrix.yaml", root / "matrix.yaml")
    return root
