"""The build step: cells -> build requests (rendered Dockerfile, lock, build args) -> images and a JSON report."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import requests as http

from . import buildkit, engine, extensions
from .cells import Cell
from .engine import BuildOutcome, Listener
from .errors import UsageError
from .lockfile import verified_lock
from .parallel import run_parallel
from .project import Project, read_input, write_atomic
from .registry import Lookup
from .secrets import redact
from .render import content_tag, environment
from .request import BuildOverrides, BuildRequest, request_for


def prepare(
    project: Project, image: str, cells: list[Cell], overrides: BuildOverrides, target: str | None = None,
    nocache: bool = False, say=None,
) -> list[BuildRequest]:
    """One request per cell, for the builder it gets (`say` hears each choice once: "builder: buildkit (...)").
    target="base" stops after the base stage (for locking: no lock needed yet)."""
    env = environment(project.templates)
    requests, told = [], set()
    for cell in cells:
        choice = buildkit.choose(overrides.builder or cell.builder, overrides.network or cell.network)
        if say is not None and choice not in told:
            told.add(choice)
            say(f"builder: {choice.builder} ({choice.why})")
        whole = target is None
        requests.append(request_for(env, cell, image, verified_lock(project, cell) if whole else None,
                                    overrides, target=target, nocache=nocache, builder=choice.builder,
                                    context_files=extensions.context_files(project, cell, say) if whole else ()))
    return requests


def base_stage_key(req: BuildRequest) -> tuple:
    """What the `base` stage depends on: cells with the same key share that stage."""
    cell = req.cell
    return req.base_image, cell.python, cell.pip, cell.os_packages, req.builder


def torch_stage_key(req: BuildRequest) -> tuple:
    """What the `torch` stage depends on: the flavours of a cell share it."""
    cell = req.cell
    return base_stage_key(req), cell.torch_stage_packages, req.index_url, cell.pre, req.builder


def shared_stages(requests: list[BuildRequest]) -> list[BuildRequest]:
    """One build per stage that two or more cells share (`base`, then `torch`), so parallel builds don't repeat it."""
    stages = []
    for key, target in ((base_stage_key, "base"), (torch_stage_key, "torch")):
        groups: dict[tuple, list[BuildRequest]] = {}
        for req in requests:
            groups.setdefault(key(req), []).append(req)
        stages += [stage_request(group[0], target) for group in groups.values() if len(group) > 1]
    return stages


def stage_request(req: BuildRequest, target: str) -> BuildRequest:
    digest = req.content_tag.rsplit("-", 1)[1]
    return replace(req, lock=None, target=target, content_tag=content_tag(req.cell, digest, stage=target))


def check_index(url: str, cell: Cell) -> None:
    """The torch index must answer for torch before a build spends minutes on the base stage.

    requests, not urllib: an index URL's user:password@ becomes basic auth, as pip does it.
    """
    probe = url.rstrip("/") + "/torch/"
    try:
        with http.get(probe, timeout=20, stream=True) as response:
            response.raise_for_status()
    except (http.RequestException, ValueError) as exc:
        raise UsageError(f"{cell.name}: the torch index does not answer at {redact(probe)} ({_reason(exc)}); "
                         "check --index-url or `index_url` in matrix.yaml") from None


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)  # "Connection refused" out of urllib3's long chain
    return redact(errno.group(1) if errno else (text.splitlines() or [type(exc).__name__])[0])[:200]


IN_REGISTRY = "in registry"  # a cell's status when its content tag is in the registry: tested, pushed, done


def run_builds(requests: list[BuildRequest], jobs: int, force: bool, listener: Listener,
               lookup: Lookup | None = None) -> list[BuildOutcome]:
    """Check the bases first (bad ones are refused before anything builds), then build with `jobs` workers.

    A cell whose content tag is on the engine is skipped; one whose content tag is in the registry (`lookup`) is
    done: that image was tested before it was pushed. With more than one worker, a `base` stage that several cells
    share is built once, before the cells.
    """
    client = engine.connect()
    pending, probed = [], set()
    for req in requests:
        skipped = None if force else engine.skip_if_present(client, req)
        if skipped:
            listener(req.cell.name, None, "content tag present: skipped (--force rebuilds)")
            pending.append(skipped)
            continue
        pushed = None if force or lookup is None or req.target else _in_registry(client, req, lookup, listener)
        if pushed:
            pending.append(pushed)
            continue
        req = _with_registry_cache(req, lookup)
        for image in dict.fromkeys(req.base_images):
            engine.ensure_base(client, image, req.cell)
        if req.index_url not in probed:
            check_index(req.index_url, req.cell)
            probed.add(req.index_url)
        pending.append(req)
    todo = [item for item in pending if isinstance(item, BuildRequest)]
    if jobs > 1:
        for stage in shared_stages([r for r in todo if not r.nocache]):
            build_image(client, stage, listener)  # its progress shows on the first cell of the group
    # On Ctrl-C, running buildx builds are cancelled and waited for; classic builds end with the connection.
    grace = buildkit.CANCEL_GRACE if any(r.builder == "buildkit" for r in todo) else 0.0
    built = iter(run_parallel(lambda req: _build_one(req, listener), todo, jobs, on_cancel=buildkit.cancel_all,
                              grace=grace))
    return [item if isinstance(item, BuildOutcome) else next(built) for item in pending]


def _in_registry(client, req: BuildRequest, lookup: Lookup, listener: Listener) -> BuildOutcome | None:
    digest = lookup.digest(client, req.content_tag)
    if digest is None:
        return None
    ref = lookup.ref(req.content_tag)
    listener(req.cell.name, None, f"content tag in the registry: {ref}@{digest[:19]}, tested before it was pushed; "
                                  "nothing to build (--force builds it)")
    return BuildOutcome(req.cell.name, IN_REGISTRY, [ref], digest=digest)


def _with_registry_cache(req: BuildRequest, lookup: Lookup | None) -> BuildRequest:
    """BuildKit reuses the inline cache of the cell's last pushed image (`<registry>/<image>:<cell>`): on a fresh
    machine whose only change is the lock, the base and torch stages and the copy of the torch environment come from
    there, and only the app layer is built. A registry the lookup could not reach is not asked again."""
    if lookup is None or lookup.gone or req.builder != "buildkit" or req.nocache:
        return req
    return replace(req, cache_from=(lookup.cell_ref(req.cell.name),))


def _build_one(req: BuildRequest, listener: Listener) -> BuildOutcome:
    """A cell whose engine went away before its build started fails like one that lost it mid-build."""
    try:
        client = engine.connect()
    except UsageError as exc:
        return BuildOutcome(req.cell.name, "failed", req.tags, error=str(exc))
    return build_image(client, req, listener)


def build_image(client, req: BuildRequest, listener: Listener) -> BuildOutcome:
    """The request's builder builds it: BuildKit through the buildx CLI, or the classic builder through the SDK."""
    return (buildkit.build if req.builder == "buildkit" else engine.build)(client, req, listener)


MAX_BUILD_RECORDS = 500  # builds.json keeps the newest; an image older than that is tested against its cell's bases


def record_bases(project: Project, requests: list[BuildRequest], outcomes: list[BuildOutcome]) -> None:
    """Remember, by image id, the bases each image was built on (--base-image/--runtime-image included), so the
    image checks expect the labels of this build without being given the overrides again."""
    records = read_build_records(project)
    for req, outcome in zip(requests, outcomes):
        if outcome.image_id:
            records.pop(outcome.image_id, None)
            records[outcome.image_id] = {"cell": req.cell.name, "base_image": req.base_image,
                                         "runtime_image": req.runtime_image}
    newest = dict(list(records.items())[-MAX_BUILD_RECORDS:])
    write_atomic(project.build_records, json.dumps(newest, indent=2) + "\n")


def read_build_records(project: Project) -> dict[str, dict]:
    """image id -> {"cell", "base_image", "runtime_image"}; empty when there are none or the file is no such record
    (it is gpumatrix's own output, rewritten by the next build)."""
    try:
        data = json.loads(read_input(project.build_records, "build records"))
    except (UsageError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and all(
        isinstance(v.get(f), str) for f in ("cell", "base_image", "runtime_image"))}


def read_in_registry(path: Path) -> dict[str, str]:
    """cell -> `<registry>/<image>:<tag>@<digest>` for each cell the build report at `path` found in the registry;
    empty when there is no such report (it is gpumatrix's own output, rewritten by the next build)."""
    try:
        data = json.loads(read_input(path, "build report"))
    except (UsageError, ValueError):
        return {}
    records = data.get("cells") if isinstance(data, dict) else None
    return {r["cell"]: f"{r['tags'][0]}@{r['digest']}" for r in records or [] if isinstance(r, dict)
            and r.get("status") == IN_REGISTRY and isinstance(r.get("cell"), str) and isinstance(r.get("digest"), str)
            and isinstance(r.get("tags"), list) and r["tags"] and isinstance(r["tags"][0], str)}


def write_report(path: Path, outcomes: list[BuildOutcome]) -> None:
    records = []
    for o in outcomes:
        record = asdict(o)
        record["steps"] = [{k: v for k, v in s.items() if k != "output"} for s in record["steps"]]
        record["cache_hits"] = o.cache_hits
        record["layer_steps"] = o.layer_steps
        records.append(record)
    write_atomic(path, json.dumps({"cells": records}, indent=2) + "\n")
