"""Fan the matrix out: one GitHub Actions job per cell (`matrix --format github`) and one BuildKit bake target per
cell (`bake`, docker-bake.json), so CI runners or a remote/Kubernetes buildx builder take the cells in parallel."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .cells import Cell
from . import extensions, layout
from .errors import UsageError
from .lockfile import check_all, verified_lock
from .project import Project, write_atomic
from .render import environment
from .request import BuildOverrides, request_for, resolved_labels
from .select import PLAIN, cell_filters

BAKE_TARGET_STAGE = "runtime"


def github_matrix(cells: list[Cell]) -> dict:
    """strategy.matrix for GitHub Actions: `include` with one entry per cell and the filters that select exactly it."""
    return {"include": [github_entry(cell) for cell in cells]}


def github_entry(cell: Cell) -> dict:
    cli, make = cell_filters(cell)
    return {
        "cell": cell.name,
        "cuda": cell.cuda,
        "python": cell.python,
        "torch": cell.torch,
        "flavour": cell.flavour or PLAIN,
        "filters": cli,
        "make": make,
    }


def bake_target_name(cell_name: str) -> str:
    """Bake target names allow [a-zA-Z0-9_-] only: the dots of a cell name become underscores."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", cell_name)


def bake_file(project: Project, image: str, cells: list[Cell], overrides: BuildOverrides, registry: str | None,
              context_root: Path) -> tuple[dict, dict[Path, bytes]]:
    """The bake definition and the build contexts it names (context_root/<cell>/{Dockerfile,app.lock}).

    Each context holds exactly what the engine build sends (the rendered Dockerfile and the verified lock), the
    build arguments and tags are those of `build.py build` (content tag included), so a bake build and an SDK build
    of a cell are the same image. Paths are relative to the project root, where `docker buildx bake` runs.
    """
    stale = check_all(project, cells)
    if stale:  # every missing or stale lock at once, before anything is written
        raise UsageError("\n".join(stale))  # each line names its fix
    env = environment(project.templates)
    targets: dict[str, dict] = {}
    files: dict[Path, bytes] = {}
    for cell in cells:
        req = request_for(env, cell, image, verified_lock(project, cell), overrides,
                          context_files=extensions.context_files(project, cell))
        tags = req.tags
        if registry:
            repo = f"{registry.rstrip('/')}/{image}"
            tags = [f"{repo}:{t.rsplit(':', 1)[1]}" for t in tags]
        context = context_root / cell.name
        files[context / "Dockerfile"] = req.dockerfile.encode()
        if req.lock is not None:
            files[context / layout.LOCK_IN_CONTEXT] = req.lock
        for name, path in req.context_files:
            files[context / name] = path.read_bytes()
        target = {
            "context": _relative(project, context),
            "dockerfile": "Dockerfile",
            "target": BAKE_TARGET_STAGE,
            "args": req.build_args,
            "tags": tags,
            "labels": resolved_labels(cell, image, req.build_args),
            "platforms": ["linux/amd64"],
        }
        if req.network and req.network != "default":
            target["network"] = req.network
        targets[bake_target_name(cell.name)] = target
    names = list(targets)
    return {"group": {"default": {"targets": ["all"]}, "all": {"targets": names}}, "target": targets}, files


def write_contexts(files: dict[Path, bytes], context_root: Path) -> None:
    """Write the contexts; remove contexts of cells that are not in this bake file."""
    keep = {context_root / path.relative_to(context_root).parts[0] for path in files}
    if context_root.is_dir():
        for old in context_root.iterdir():
            if old.is_dir() and old not in keep:
                shutil.rmtree(old)
    for path, data in files.items():
        write_atomic(path, data)


def _relative(project: Project, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.root))
    except ValueError:
        return str(path.resolve())
