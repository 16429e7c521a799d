"""Render one Dockerfile per cell from templates/Dockerfile.j2, and derive the content tag."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .cells import Cell
from .project import Project, write_atomic

TEMPLATE = "Dockerfile.j2"
LABEL_PREFIX = "io.gpumatrix"


def environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    return env


def labels(cell: Cell, image: str) -> list[tuple[str, str]]:
    ours = {
        "cell": cell.name,
        "cuda": cell.cuda,
        "python": cell.python,
        "torch": cell.torch_pin,
        "variant": cell.variant,
        "archs": ",".join(cell.archs),
        "wheel-archs": ",".join(cell.wheel_archs),
        "driver-floor": cell.driver_floor or "",
        "lock-sha256": "${LOCK_SHA256}",
        "base-image": "${BASE_IMAGE}",
        "runtime-image": "${RUNTIME_IMAGE}",
    }
    oci = {
        "org.opencontainers.image.title": image,
        "org.opencontainers.image.version": cell.name,
        "org.opencontainers.image.description": f"torch {cell.torch_pin}, Python {cell.python}"
        + (f", CUDA {cell.cuda_patch}" if cell.is_cuda else ", CPU"),
        "org.opencontainers.image.base.name": "${RUNTIME_IMAGE}",
    }
    return list(oci.items()) + [(f"{LABEL_PREFIX}.{k}", v) for k, v in ours.items()]


def expected_versions(cell: Cell) -> dict[str, str | None]:
    wanted = {"torch": cell.torch_pin, **dict(cell.companions)}
    wanted["torch.version.cuda"] = cell.variant_cuda
    return wanted


def render_cell(env: jinja2.Environment, cell: Cell, image: str) -> str:
    return env.get_template(TEMPLATE).render(
        cell=cell,
        packages=[("torch", cell.torch_pin), *cell.companions],
        expected=expected_versions(cell),
        labels=labels(cell, image),
    )


@dataclass(frozen=True)
class RenderResult:
    written: tuple[Path, ...]
    removed: tuple[Path, ...]
    stale: tuple[str, ...]


def render_all(project: Project, cells: tuple[Cell, ...], image: str, check: bool = False) -> RenderResult:
    """Write docker/<cell>/Dockerfile for every cell and remove directories of cells that are gone.

    With check=True nothing is written; `stale` names every file that differs, is missing or is left over.
    """
    env = environment(project.templates)
    texts = {cell.name: render_cell(env, cell, image) for cell in cells}
    stale = [name for name, text in texts.items() if _read(project.dockerfile(name)) != text]
    leftovers = _leftover_dirs(project.docker, set(texts))
    if check:
        problems = [f"docker/{n}/Dockerfile is {_state(project.dockerfile(n))}" for n in stale]
        problems += [f"docker/{p.name}/ belongs to no cell" for p in leftovers]
        return RenderResult((), (), tuple(problems))
    written = []
    for name in stale:
        write_atomic(project.dockerfile(name), texts[name])
        written.append(project.dockerfile(name))
    for directory in leftovers:
        shutil.rmtree(directory)
    return RenderResult(tuple(written), tuple(leftovers), ())


def _state(path: Path) -> str:
    return "stale" if path.exists() else "missing"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _leftover_dirs(docker_dir: Path, names: set[str]) -> list[Path]:
    if not docker_dir.is_dir():
        return []
    return sorted(p for p in docker_dir.iterdir() if p.is_dir() and p.name not in names)


def content_digest(dockerfile: str, lock: bytes | None, build_args: dict[str, str]) -> str:
    """sha256 over everything that defines the image: the Dockerfile, the lock and the build arguments."""
    h = hashlib.sha256()
    for part in (dockerfile.encode(), lock or b"<no lock>", json.dumps(build_args, sort_keys=True).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def content_tag(cell: Cell, digest: str, stage: str | None = None) -> str:
    """The immutable tag; a partial build (stage="torch") gets its own tag so it is never taken for the image."""
    middle = f"-{stage}stage" if stage else ""
    return f"{cell.repository}:{cell.name}{middle}-{digest[:12]}"
