"""Fan the matrix out: one GitHub Actions job per cell (`matrix --format github`) and one BuildKit bake target per
cell (`bake`, docker-bake.json), so CI runners or a remote/Kubernetes buildx builder take the cells in parallel."""

from __future__ import annotations

import re
from pathlib import Path

from .cells import Cell
from .engine import build_args_for
from .images import Overrides
from .errors import UsageError
from .lockfile import check_all, verified_lock
from .project import Project, write_atomic
from .select import PLAIN
from .render import content_digest, content_tag, environment, labels, render_cell

BAKE_TARGET_STAGE = "runtime"


def github_matrix(cells: list[Cell]) -> dict:
    """strategy.matrix for GitHub Actions: `include` with one entry per cell and the filters that select exactly it."""
    return {"include": [github_entry(cell) for cell in cells]}


def github_entry(cell: Cell) -> dict:
    flavour = cell.flavour or PLAIN
    return {
        "cell": cell.name,
        "cuda": cell.cuda,
        "python": cell.python,
        "torch": cell.torch,
        "flavour": flavour,
        "filters": f"--cuda {cell.cuda} --python {cell.python} --torch {cell.torch} --flavour {flavour}",
        "make": f"CUDA={cell.cuda} PYTHON={cell.python} TORCH={cell.torch} FLAVOUR={flavour}",
    }


def bake_target_name(cell_name: str) -> str:
    """Bake target names allow [a-zA-Z0-9_-] only: the dots of a cell name become underscores."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", cell_name)


def bake_file(project: Project, image: str, cells: list[Cell], overrides: Overrides, registry: str | None,
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
        dockerfile = render_cell(env, cell, image)
        lock = verified_lock(project, cell)
        extra = overrides.build_args(cell)
        args = build_args_for(cell, lock, extra)
        tag = content_tag(cell, content_digest(dockerfile, lock, extra))
        tags = [*cell.tags, tag]
        if registry:
            repo = f"{registry.rstrip('/')}/{image}"
            tags = [f"{repo}:{t.rsplit(':', 1)[1]}" for t in tags]
        context = context_root / cell.name
        files[context / "Dockerfile"] = dockerfile.encode()
        if lock is not None:
            files[context / "app.lock"] = lock
        values = {
            "LOCK_SHA256": args["LOCK_SHA256"],
            "BASE_IMAGE": args.get("BASE_IMAGE", cell.base_image),
            "RUNTIME_IMAGE": args.get("RUNTIME_IMAGE", cell.runtime_image),
        }
        target = {
            "context": _relative(project, context),
            "dockerfile": "Dockerfile",
            "target": BAKE_TARGET_STAGE,
            "args": args,
            "tags": tags,
            "labels": {k: _substitute(v, values) for k, v in labels(cell, image)},
            "platforms": ["linux/amd64"],
        }
        network = overrides.network or cell.network
        if network and network != "default":
            target["network"] = network
        targets[bake_target_name(cell.name)] = target
    names = list(targets)
    return {"group": {"default": {"targets": ["all"]}, "all": {"targets": names}}, "target": targets}, files


def write_contexts(files: dict[Path, bytes], context_root: Path) -> None:
    """Write the contexts; remove contexts of cells that are not in this bake file."""
    keep = {path.parent for path in files}
    if context_root.is_dir():
        for old in context_root.iterdir():
            if old.is_dir() and old not in keep:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
    for path, data in files.items():
        write_atomic(path, data)


def _substitute(value: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), value)


def _relative(project: Project, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.root))
    except ValueError:
        return str(path.resolve())
