"""The push step: tested images -> a registry, every tag, verified by digest -> the catalog of pushed images.

Only an image whose checks passed for that exact image id (out/tests/<cell>.json, written by `build.py test`) is
pushed. The docker SDK reports push failures inside the response stream, never as exceptions: every chunk is read
and an `error` chunk is a failure. Transient failures (connection refused/reset, 5xx) are retried with bounded
exponential backoff (tenacity); authentication failures are not. After each push the manifest digest is read back
from the registry through the engine (the SDK's registry data) and must equal the digest the push reported.
Credentials come from the docker config or REGISTRY_USER / REGISTRY_PASSWORD and never reach any output.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound
from requests.exceptions import RequestException
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from . import catalog, engine, grammar, sbom
from .cells import Cell
from .errors import UsageError, WorkFailed
from .imagetest import MISSING, read_test_record
from .project import Project
from .select import cell_filters
from .build import IN_REGISTRY, read_in_registry
from .registry import AuthError, Credentials, PushError, Scrubber, TransientPushError, classify, explain

Listener = Callable[[str, str], None]  # (cell name, one line for the user)

def login(client: docker.DockerClient, registry: str, creds: Credentials, scrub: Scrubber, settings: RetrySettings) -> None:
    """SDK login (the engine checks the credentials against the registry); kept in the client, never written."""
    host = grammar.registry_host(registry)

    def attempt() -> None:
        try:
            client.login(username=creds.username, password=creds.password, registry=host, reauth=True)
        except (DockerException, RequestException) as exc:
            raise classify(scrub(explain(exc))) from None

    try:
        _retrying(settings, lambda rs: None)(attempt)
    except PushError as exc:
        raise type(exc)(f"login to {host} as {creds.username} failed: {exc}") from None


# ---- the plan: which images may be pushed -----------------------------------------------------------------------


@dataclass(frozen=True)
class PushRequest:
    cell: Cell
    image_id: str
    size: int | None
    labels: dict[str, str]
    tags: tuple[str, ...]  # tag names of the cell's image: <cell> and its content tag(s)
    repository: str  # where they go: <registry>/<image>
    sbom: dict | None = None  # the catalog's record of this image's SBOM (gpumatrix.sbom.for_push)


def refusal(project: Project, client: docker.DockerClient, cell: Cell) -> str | None:
    """Why this cell may not be pushed, or None: its image must exist and have passed its checks as that image id."""
    cli, make = cell_filters(cell)
    run_test = f"run `make test-image {make}` (python build.py test {cli})"
    try:
        image = client.images.get(cell.tags[0])
    except ImageNotFound:
        return f"{cell.name}: no image {cell.tags[0]} on the engine; run `make image {make}`, then {run_test.removeprefix('run ')}"
    path = project.test_record(cell.name)
    record, why = read_test_record(path)
    if why == MISSING:
        return f"{cell.name}: not tested (no {project.relative(path)}); {run_test}"
    if why:
        return f"{cell.name}: the test record {project.relative(path)} {why}; {run_test}"
    if not record.passed:
        return f"{cell.name}: the image checks did not pass ({project.relative(path)}); fix the image, then {run_test.removeprefix('run ')}"
    if record.image_id != image.id:
        tested = record.image_id[:19]
        return (f"{cell.name}: the tested image ({tested}) is not the current image {image.id[:19]} "
                f"(rebuilt since the test); {run_test}")
    return None


def cell_tags(cell: Cell, image) -> tuple[str, ...]:
    """Every tag of the cell on its image: `<cell>` and the content tags `<cell>-<sha12>` (never stage tags)."""
    pattern = re.compile(rf"{re.escape(cell.repository)}:({re.escape(cell.name)}(-[0-9a-f]{{12}})?)")
    names = {m.group(1) for t in image.tags if (m := pattern.fullmatch(t))}
    return tuple(sorted(names, key=lambda n: (n != cell.name, n)))


def plan(project: Project, client: docker.DockerClient, cells: list[Cell], registry: str, image_name: str) -> list[PushRequest]:
    """One request per cell; UsageError naming each cell that may not be pushed (nothing is pushed then)."""
    refused = [r for cell in cells if (r := refusal(project, client, cell))]
    if refused:
        raise UsageError("push refused, nothing was pushed:\n" + "\n".join(refused))
    repository = f"{registry.rstrip('/')}/{image_name}"
    requests = []
    for cell in cells:
        image = client.images.get(cell.tags[0])
        requests.append(PushRequest(cell, image.id, image.attrs.get("Size"), dict(image.labels or {}),
                                    cell_tags(cell, image), repository))
    return requests


# ---- pushing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 3
    wait_min: float = 2.0
    wait_max: float = 30.0


@dataclass
class PushOutcome:
    cell: str
    status: str  # pushed | in registry | failed
    repository: str
    tags: list[str]
    digest: str | None = None
    image_id: str | None = None
    size: int | None = None
    attempts: int = 0
    duration: float = 0.0
    error: str | None = None

    @property
    def reference(self) -> str | None:
        return f"{self.repository}@{self.digest}" if self.digest else None


def _retrying(settings: RetrySettings, before_sleep: Callable[[RetryCallState], None]) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(TransientPushError),
        stop=stop_after_attempt(max(1, settings.attempts)),
        wait=wait_exponential(multiplier=settings.wait_min, min=settings.wait_min, max=settings.wait_max),
        before_sleep=before_sleep,
        reraise=True,
    )


def push_cell(client: docker.DockerClient, req: PushRequest, settings: RetrySettings, listener: Listener,
              scrub: Scrubber) -> PushOutcome:
    """Tag and push every tag of the cell, then read each digest back; never raises, the outcome says what failed."""
    started = time.monotonic()
    outcome = PushOutcome(req.cell.name, "failed", req.repository, list(req.tags), image_id=req.image_id, size=req.size)
    try:
        image = client.images.get(req.image_id)
        digests = set()
        for tag in req.tags:
            image.tag(req.repository, tag)
            digests.add(_push_tag(client, req, tag, settings, listener, scrub, outcome))
        if len(digests) != 1:
            raise PushError(f"the tags of one image were pushed with different digests: {sorted(digests)}")
        outcome.digest = digests.pop()
        outcome.status = "pushed"
    except PushError as exc:
        kind = "authentication failed (not retried)" if isinstance(exc, AuthError) else "push failed"
        outcome.error = scrub(f"{kind}: {exc}")
    except (DockerException, RequestException) as exc:
        outcome.error = scrub(f"push failed: {explain(exc)}")
    outcome.duration = time.monotonic() - started
    return outcome


def _push_tag(client, req: PushRequest, tag: str, settings: RetrySettings, listener: Listener, scrub: Scrubber,
              outcome: PushOutcome) -> str:
    ref = f"{req.repository}:{tag}"

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        listener(req.cell.name, scrub(f"{ref}: {exc}; retrying in {wait:.0f}s "
                                      f"(attempt {state.attempt_number + 1}/{settings.attempts})"))

    def once() -> str:
        outcome.attempts += 1
        listener(req.cell.name, f"pushing {ref}")
        try:
            stream = client.api.push(req.repository, tag=tag, stream=True, decode=True)
        except (DockerException, RequestException) as exc:
            raise classify(f"the engine refused the push: {explain(exc)}") from None
        pushed = read_push_stream(stream, lambda line: listener(req.cell.name, f"tag {tag}: {line}"))
        found = registry_digest(client, ref)
        if found != pushed:
            raise PushError(f"{ref}: the registry holds manifest {found}, the push reported {pushed}")
        listener(req.cell.name, f"tag {tag}: {pushed} (read back from the registry)")
        return pushed

    return _retrying(settings, before_sleep)(once)


def read_push_stream(stream, progress: Callable[[str], None] = lambda line: None) -> str:
    """Read every chunk; an `error` chunk raises (classified); returns the manifest digest the engine reported."""
    digest, layers, done, countdown = None, set(), set(), {}
    try:
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error") or "unknown error"
                raise classify(str(message).strip())
            aux = chunk.get("aux") or {}
            if aux.get("Digest"):
                digest = aux["Digest"]
            layer, status = chunk.get("id"), chunk.get("status", "")
            if layer and status == "Preparing":
                layers.add(layer)
            elif layer and (status in ("Pushed", "Mounted from") or status.startswith(("Layer already exists", "Mounted"))):
                if layer not in done:
                    done.add(layer)
                    progress(f"{len(done)}/{len(layers)} layers ({status.lower()}: {layer})")
            elif layer and status.startswith("Retrying"):  # the engine's own retry counts down once a second
                seconds = int(re.sub(r"\D", "", status) or 0)
                if seconds >= countdown.get(layer, 0):
                    progress(f"layer {layer}: the engine is {status.lower()}")
                countdown[layer] = seconds
    except (DockerException, RequestException) as exc:
        raise classify(f"the engine stopped answering: {explain(exc)}") from None
    if digest is None:
        raise TransientPushError("the push stream ended without a manifest digest")
    return digest


def registry_digest(client: docker.DockerClient, ref: str) -> str:
    """The manifest digest the registry holds for ref (distribution inspect through the engine)."""
    try:
        return client.images.get_registry_data(ref).id
    except (DockerException, RequestException) as exc:
        raise classify(f"reading {ref} back from the registry failed: {explain(exc)}") from None


def push_all(client: docker.DockerClient, requests: list[PushRequest], settings: RetrySettings, listener: Listener,
             scrub: Scrubber) -> list[PushOutcome]:
    """One cell after another (pushes share the uplink)."""
    return [push_cell(client, req, settings, listener, scrub) for req in requests]


# ---- the step: plan, SBOMs, login, push, catalog ------------------------------------------------------------------


def run(project: Project, cells: list[Cell], registry: str, image_name: str, catalog_dir: Path,
        settings: RetrySettings, log: Callable[[str], None]) -> list[PushOutcome]:
    """Push every cell or none: the catalog and every cell's image and test record are checked before anything is
    pushed; each image's SBOM rides in the catalog; the catalog records what was pushed and drops what failed.
    A cell with no image on the engine that the last build found in this registry (its build report says "in
    registry") was pushed before: it is left as it is there and in the catalog."""
    creds = Credentials.from_env()
    scrub = Scrubber()
    if creds:
        scrub.add(creds.password, creds.username)
    catalog.load_catalog(catalog_dir)  # a catalog that is no catalog is refused before the engine is asked
    client = engine.connect()
    repository = f"{registry.rstrip('/')}/{image_name}"
    found = read_in_registry(project.out / "build-report.json")
    done = [o for cell in cells if (o := already_pushed(client, cell, repository, found))]
    cells = [cell for cell in cells if cell.name not in {o.cell for o in done}]
    if not cells:
        return done
    requests = plan(project, client, cells, registry, image_name)
    requests = sbom.for_push(project, client, requests, log)
    if creds:
        try:
            login(client, registry, creds, scrub, settings)
        except PushError as exc:
            failed = [PushOutcome(r.cell.name, "failed", r.repository, list(r.tags)) for r in requests]
            catalog.update_catalog(catalog_dir, requests, failed)
            raise WorkFailed(scrub(str(exc))) from None
        log(f"logged in to {grammar.registry_host(registry)} as {creds.username} (REGISTRY_USER)")
    outcomes = push_all(client, requests, settings, lambda cell, line: log(scrub(f"{cell}: {line}")), scrub)
    catalog.update_catalog(catalog_dir, requests, outcomes)
    return done + outcomes


def already_pushed(client: docker.DockerClient, cell: Cell, repository: str, found: dict[str, str]) -> PushOutcome | None:
    """The cell's image is not here, and the last build found it in this repository: nothing to push."""
    ref = found.get(cell.name)
    if ref is None or not ref.startswith(f"{repository}:") or engine.present(client, cell.tags[0]) is not None:
        return None
    tagged, digest = ref.rsplit("@", 1)
    return PushOutcome(cell.name, IN_REGISTRY, repository, [tagged.rsplit(":", 1)[1]], digest=digest)
