"""Throw-away copies of this project for tests, and matrix documents to put in them."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_REGISTRY = "ghcr.io/acme"  # the shipped matrix.yaml's registry
SHIPPED_REPOSITORY = f"{SHIPPED_REGISTRY}/gpu-images"
WITH_LOCKS = ("templates", "requirements", "locks")


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


# One cell (cu12.8-py3.11-torch2.7.1), 8 lines: whatever a test appends starts on line 9.
ONE_CELL_MATRIX = matrix_text()


def copy_project(
    root: Path,
    parts: tuple[str, ...] = ("templates", "requirements"),
    matrix: str | None = None,
    registry: str | None = None,
) -> Path:
    """`root` holding a copy of each of `parts` (paths in the repository) and a matrix.yaml: the shipped one, or the
    text `matrix`; `registry` in place of the shipped matrix's registry when given."""
    root.mkdir(parents=True, exist_ok=True)
    for name in parts:
        shutil.copytree(REPO / name, root / name)
    if matrix is None:
        shutil.copy2(REPO / "matrix.yaml", root / "matrix.yaml")
    else:
        (root / "matrix.yaml").write_text(matrix)
    if registry:
        use_registry(root, registry)
    return root


def use_registry(root: Path, registry: str) -> None:
    """Rewrite root/matrix.yaml (the shipped one) to push to `registry`: its images then get tags of their own, which
    other tests retagging the shipped repository cannot move."""
    path = root / "matrix.yaml"
    text = path.read_text()
    assert f"registry: {SHIPPED_REGISTRY}\n" in text
    path.write_text(text.replace(f"registry: {SHIPPED_REGISTRY}\n", f"registry: {registry}\n"))


def add_serve_flavour(root: Path) -> None:
    """A `serve` flavour of the CPU cell in root/matrix.yaml (the shipped one): same torch stage, its own small app
    layer (tqdm, rich) in requirements/serve.in."""
    path = root / "matrix.yaml"
    plain = '  - {cuda: cpu, python: "3.11", torch: "2.13.0"}\n'
    text = path.read_text()
    assert plain in text, "the shipped matrix includes the CPU cell"
    path.write_text(text.replace(plain, plain + plain.replace("}", ", flavour: serve, layers: [serve]}"), 1))
    (root / "requirements" / "serve.in").write_text("tqdm\nrich>=13\n")
