"""The build request: everything that defines one cell's image, assembled in one place.

A request is the rendered Dockerfile, the lock, the build arguments (the command line's overrides plus the lock's
sha256), the labels those arguments resolve to, and the content tag (a digest of all of it). `build` builds
requests, `bake` writes them down for BuildKit, `list` shows their tags and the image checks expect their labels:
all through `request_for`, so a bake target and an SDK build of a cell are the same image by construction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .cells import Cell
from .render import content_digest, content_tag, labels, render_cell


@dataclass(frozen=True)
class BuildOverrides:
    """The command line's --base-image, --runtime-image, --index-url, --network and --builder. The first three travel
    as build arguments (the network as the build's network mode), so the committed Dockerfiles stay valid."""

    base_image: str | None = None
    runtime_image: str | None = None
    index_url: str | None = None
    network: str | None = None
    builder: str | None = None  # buildkit | classic; None: the cell's `builder`, else whichever answers

    def build_args(self, cell: Cell) -> dict[str, str]:
        args = {
            "BASE_IMAGE": self.base_image,
            "RUNTIME_IMAGE": self.runtime_image,
            "TORCH_INDEX_URL": self.index_url.replace("{variant}", cell.variant) if self.index_url else None,
        }
        return {k: v for k, v in args.items() if v}


@dataclass(frozen=True)
class BuildRequest:
    cell: Cell
    dockerfile: str
    lock: bytes | None
    build_args: dict[str, str]
    content_tag: str
    network: str | None = None
    target: str | None = None  # a stage to stop after ("base", "torch"), or None for the whole image
    nocache: bool = False
    builder: str = "buildkit"  # what builds it: buildkit (the buildx CLI) or classic (the docker SDK)
    cache_from: tuple[str, ...] = ()  # images in a registry whose inline BuildKit cache the build may reuse
    context_files: tuple[tuple[str, Path], ...] = ()  # (name in the build context, local file): extension sources

    @property
    def tags(self) -> list[str]:
        return [*self.cell.tags, self.content_tag] if self.target is None else [self.content_tag]

    @property
    def base_image(self) -> str:
        return self.build_args.get("BASE_IMAGE", self.cell.base_image)

    @property
    def runtime_image(self) -> str:
        return self.build_args.get("RUNTIME_IMAGE", self.cell.runtime_image)

    @property
    def index_url(self) -> str:
        return self.build_args.get("TORCH_INDEX_URL", self.cell.index_url)

    @property
    def base_images(self) -> list[str]:
        """The images the build pulls FROM: the devel base, and the runtime base unless it stops at a stage."""
        return [self.base_image] if self.target is not None else [self.base_image, self.runtime_image]


def build_args_for(cell: Cell, lock: bytes | None, overrides: BuildOverrides) -> dict[str, str]:
    return {**overrides.build_args(cell), "LOCK_SHA256": hashlib.sha256(lock).hexdigest() if lock is not None else "none"}


def resolved_labels(cell: Cell, image: str, build_args: dict[str, str]) -> dict[str, str]:
    """The image's labels as the build resolves them: each ${ARG} of render.labels replaced by its value."""
    values = {
        "LOCK_SHA256": build_args["LOCK_SHA256"],
        "BASE_IMAGE": build_args.get("BASE_IMAGE", cell.base_image),
        "RUNTIME_IMAGE": build_args.get("RUNTIME_IMAGE", cell.runtime_image),
    }
    return {key: re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), value)
            for key, value in labels(cell, image)}


def request_for(env: jinja2.Environment, cell: Cell, image: str, lock: bytes | None, overrides: BuildOverrides,
                target: str | None = None, nocache: bool = False, builder: str = "buildkit",
                context_files: tuple[tuple[str, Path], ...] = ()) -> BuildRequest:
    """The request for one cell. The content tag covers the Dockerfile, the lock and the overrides' build arguments.

    The Dockerfile is the builder's variant (BuildKit's has cache mounts, which the classic builder cannot read);
    the tag is always the BuildKit variant's, so both builders give a cell the same tag and either finds the other's
    image in a registry.
    """
    dockerfile = render_cell(env, cell, image, builder)
    tagged = dockerfile if builder == "buildkit" else render_cell(env, cell, image, "buildkit")
    extra = overrides.build_args(cell)
    digest = content_digest(tagged, lock, extra)
    return BuildRequest(
        cell=cell,
        dockerfile=dockerfile,
        lock=lock,
        build_args=build_args_for(cell, lock, overrides),
        content_tag=content_tag(cell, digest, stage=target),
        network=overrides.network or cell.network,
        target=target,
        nocache=nocache,
        builder=builder,
        context_files=context_files,
    )
