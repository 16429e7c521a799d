"""Render one Dockerfile per cell from templates/Dockerfile.j2, and derive the content tag."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import layout
from .archs import torch_cuda_arch_list
from .cells import Cell
from .errors import UsageError
from .extensions import BUILD_TOOLS, COMPILE_JOB_GIB
from .lockfile import TORCH_STAGE_PREFIX
from .project import Project, write_atomic
from .select import cell_filters

TEMPLATE = "Dockerfile.j2"
RENDERED_MARK = "# Rendered by gpumatrix from templates/Dockerfile.j2"  # how every rendered file begins


def environment(templates: Path) -> jinja2.Environment:
    if not (templates / TEMPLATE).is_file():
        raise UsageError(f"{templates / TEMPLATE}: no such template; the project root is the directory that holds "
                         "the matrix file, and it needs templates/ (give --matrix inside the project)")
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
    return list(oci.items()) + [(layout.label(k), v) for k, v in ours.items()]


def expected_versions(cell: Cell) -> dict[str, str | None]:
    wanted = {"torch": cell.torch_pin, **dict(cell.companions)}
    wanted["torch.version.cuda"] = cell.variant_cuda
    return wanted


def render_cell(env: jinja2.Environment, cell: Cell, image: str, builder: str = "buildkit") -> str:
    """The cell's Dockerfile for `builder`: BuildKit's variant mounts the download caches, the classic one does not."""
    text = _render(env, cell, image, builder)
    guard_instructions(text, _render(env, _skeleton(cell), image, builder), cell.name)
    return text


def committed_variant(cell: Cell) -> str:
    """What docker/<cell>/Dockerfile holds: the classic variant for a cell set to `builder: classic`, else BuildKit's."""
    return "classic" if cell.builder == "classic" else "buildkit"


def _render(env: jinja2.Environment, cell: Cell, image: str, builder: str) -> str:
    """The template rendered for `cell`; a template the project broke is one line naming its file and line."""
    try:
        return env.get_template(TEMPLATE).render(
            cell=cell,
            packages=cell.torch_stage_packages,
            expected=expected_versions(cell),
            labels=labels(cell, image),
            layout=layout.for_template(),
            cache_mounts=builder == "buildkit",
            lock_format={"torch_stage_prefix": TORCH_STAGE_PREFIX},
            relock="make lock " + cell_filters(cell)[1],
            extension_tools=BUILD_TOOLS,
            compile_job_gib=COMPILE_JOB_GIB,
            arch_list=torch_cuda_arch_list(cell.archs),
        )
    except jinja2.TemplateSyntaxError as exc:
        raise UsageError(f"{exc.filename or TEMPLATE}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise UsageError(f"templates/{TEMPLATE}: cannot render cell {cell.name}: {exc}") from None


def _skeleton(cell: Cell) -> Cell:
    """The cell with every value reduced to characters no Dockerfile syntax is made of: its instruction list is
    the template's own for this cell's branches."""
    def plain(value):
        if isinstance(value, str):
            return re.sub(r"[^A-Za-z0-9._+-]", "", value) or "x"
        if isinstance(value, tuple):
            return tuple(plain(v) for v in value)
        if dataclasses.is_dataclass(value):
            return dataclasses.replace(value, **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value

    return dataclasses.replace(cell, **{f.name: plain(getattr(cell, f.name)) for f in dataclasses.fields(cell)})


def instructions(dockerfile: str) -> list[str]:
    """The instruction keywords of a Dockerfile, in order (continuation lines joined, comments skipped)."""
    found, continued = [], False
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not continued and stripped and not stripped.startswith("#"):
            found.append(stripped.split(None, 1)[0].upper())
        if continued and stripped.startswith("#"):
            continue  # a comment inside a continuation neither ends nor starts an instruction
        continued = bool(re.search(r"\\$", line))
    return found


def guard_instructions(text: str, skeleton: str, name: str) -> None:
    """The last guard: a value that slipped past its grammar must not add, drop or change an instruction."""
    got, want = instructions(text), instructions(skeleton)
    if len(text.splitlines()) != len(skeleton.splitlines()):
        raise UsageError(f"{name}: a value of this cell spans lines in the rendered Dockerfile, which could add "
                         "instructions to it; nothing was written")
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise UsageError(f"{name}: the rendered Dockerfile has instructions the template does not ({len(got)} against "
                         f"{len(want)}, first difference at instruction {at + 1}); a value of this cell contains "
                         "Dockerfile syntax; nothing was written")


@dataclass(frozen=True)
class RenderResult:
    written: tuple[Path, ...]
    removed: tuple[Path, ...]
    stale: tuple[str, ...]
    kept: tuple[Path, ...] = ()  # leftover directories holding more than a rendered Dockerfile: left alone


def render_all(project: Project, cells: tuple[Cell, ...], image: str, check: bool = False) -> RenderResult:
    """Write docker/<cell>/Dockerfile for every cell and remove the rendered directories of cells that are gone.

    With check=True nothing is written; `stale` names every file that differs, is missing or is left over.
    """
    if not cells:
        raise UsageError(f"{project.matrix}: no cells to render; nothing was written or removed")
    if project.docker.exists() and not project.docker.is_dir():
        raise UsageError(f"{project.docker}: is a file, where the rendered Dockerfiles' directory belongs")
    env = environment(project.templates)
    texts = {cell.name: render_cell(env, cell, image, committed_variant(cell)) for cell in cells}
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
    removable = [d for d in leftovers if _only_a_rendered_dockerfile(d)]
    for directory in removable:
        shutil.rmtree(directory)
    kept = tuple(d for d in leftovers if d not in removable)
    return RenderResult(tuple(written), tuple(removable), (), kept)


def _state(path: Path) -> str:
    return "stale" if path.exists() else "missing"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        what = "is a directory" if isinstance(exc, IsADirectoryError) else f"cannot be read ({exc})"
        raise UsageError(f"{path}: {what}, where a rendered Dockerfile belongs; move it away") from None


def _leftover_dirs(docker_dir: Path, names: set[str]) -> list[Path]:
    if not docker_dir.is_dir():
        return []
    return sorted(p for p in docker_dir.iterdir() if p.is_dir() and p.name not in names)


def _only_a_rendered_dockerfile(directory: Path) -> bool:
    """Only what render itself wrote is removed; anything a person put there is reported and left alone."""
    entries = list(directory.iterdir())
    if [p.name for p in entries] != ["Dockerfile"] or not entries[0].is_file():
        return False
    try:
        with open(entries[0], encoding="utf-8") as fh:
            return fh.read(4096).lstrip().startswith(RENDERED_MARK)
    except (OSError, UnicodeDecodeError):
        return False


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
