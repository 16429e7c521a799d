"""Build a cell's image on a Docker engine through the docker SDK's low-level build API."""

from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound
from docker.types import DeviceRequest

from . import grammar, layout
from .cells import Cell
from .errors import UsageError
from .request import BuildRequest
from .secrets import has_space_or_control, redact, remember_url, shown, url_userinfo

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
STAGE_RE = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)", re.IGNORECASE)
TAIL_LINES = 40
# What a stream from an engine that died (killed, restarted, socket gone) raises: never a DockerException.
CONNECTION_LOST = (APIError, DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


def connect() -> docker.DockerClient:
    """A client for the engine in DOCKER_HOST (or the default socket); UsageError when nobody answers.

    A DOCKER_HOST that is no engine address (a bad scheme, port or IPv6 bracket, userinfo, a space or control
    character) is refused in one line naming it, before any connection is tried; any password in it is masked.
    """
    host = os.environ.get("DOCKER_HOST") or None
    where = host or "unix:///var/run/docker.sock"
    if host is not None:
        _check_docker_host(host)
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except (DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError,
            ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(redact(
            f"cannot reach the Docker engine at {where} (DOCKER_HOST): {reason}; start dockerd or set DOCKER_HOST"
        )) from None


def _check_docker_host(host: str) -> None:
    problem = _docker_host_problem(host)
    if problem:
        remember_url(host, token_alone=False, loose=True)  # a password with a bare @ or / is no userinfo to a parser
        raise UsageError(redact(f"DOCKER_HOST={shown(host)} {problem}; "
                                "use unix:///var/run/docker.sock, tcp://HOST:PORT or ssh://HOST"))


def _docker_host_problem(host: str) -> str | None:
    from docker.utils import parse_host

    if has_space_or_control(host):
        return "holds a space or a control character"
    scheme = host.partition("://")[0].lower() if "://" in host else ""
    if scheme in ("tcp", "http", "https") and url_userinfo(host, loose=True) is not None:
        return ("takes no user:password@: a tcp:// engine authenticates with TLS client certificates "
                "(DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)")
    try:
        parse_host(host, False, tls=bool(os.environ.get("DOCKER_TLS_VERIFY")))
    except (DockerException, ValueError, TypeError, IndexError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        if "port" in reason.lower():  # the SDK quotes the "port", which may be half of a password
            reason = "its port is no number from 1 to 65535, or is missing"
        return f"is not an engine address ({reason})"
    return None


@dataclass
class Step:
    number: int
    total: int
    instruction: str
    stage: str
    cached: bool = False
    seconds: float = 0.0  # from this step's header to the next one's (or the end of the build)
    output: list[str] = field(default_factory=list)

    @property
    def makes_layer(self) -> bool:
        """FROM and ARG steps never report a cache hit; every other step does when the cache serves it."""
        return self.instruction.split(" ", 1)[0].upper() not in ("FROM", "ARG")


@dataclass
class BuildOutcome:
    cell: str
    status: str  # built | skipped | in registry | failed
    tags: list[str]
    image_id: str | None = None
    size: int | None = None
    duration: float = 0.0
    steps: list[Step] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    digest: str | None = None  # the registry's manifest digest, for a cell found there (status "in registry")
    extension_wheels: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"wheel", "sha256"}

    @property
    def cache_hits(self) -> int:
        return sum(1 for s in self.steps if s.cached)

    @property
    def layer_steps(self) -> int:
        return sum(1 for s in self.steps if s.makes_layer)



Listener = Callable[[str, Step | None, str | None], None]  # (cell name, current step, output line)


def context_tar(dockerfile: str, lock: bytes | None, files: tuple[tuple[str, Path], ...] = ()) -> IO[bytes]:
    """The whole build context: the Dockerfile, the lock and the extensions' files, with fixed metadata so it is
    reproducible. Spooled to disk past 64 MB: an extension's wheel can be hundreds of MB."""
    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "Dockerfile", dockerfile.encode())
        if lock is not None:
            _add(tar, layout.LOCK_IN_CONTEXT, lock)
        for name, path in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    buf.seek(0)
    return buf


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def present(client: docker.DockerClient, ref: str) -> docker.models.images.Image | None:
    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


@contextmanager
def container(client: docker.DockerClient, image: str, cell: Cell, role: str, gpu: bool = False):
    """A running container of `image` (`sleep infinity`, no network, GPUs when asked), labelled with its role;
    always removed on the way out, also on Ctrl-C or SIGTERM."""
    created = None
    try:
        created = _create(client, image, cell, role, gpu)
        try:
            created.start()
        except APIError as exc:  # e.g. --gpu on an engine without the NVIDIA runtime
            raise _cannot_start(exc, image, cell, gpu) from None
        yield created
    finally:
        if created is not None:
            try:
                created.remove(force=True)
            except (APIError, DockerException):
                pass


def _create(client, image: str, cell: Cell, role: str, gpu: bool):
    try:
        return client.containers.create(
            image, ["sleep", "infinity"], entrypoint=[], network_mode="none",
            name=f"gpumatrix-{role}-{cell.name}-{uuid.uuid4().hex[:8]}".replace("+", "_"),
            labels=layout.container_labels(role, cell.name),
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else None,
        )
    except APIError as exc:
        raise _cannot_start(exc, image, cell, gpu) from None


def _cannot_start(exc: APIError, image: str, cell: Cell, gpu: bool) -> UsageError:
    reason = (exc.explanation or str(exc)).splitlines()[0][:200]
    hint = "; --no-gpu runs the checks without GPUs" if gpu else ""
    return UsageError(f"{cell.name}: cannot start a container of {image[:19]}: {reason}{hint}")


def ensure_base(client: docker.DockerClient, image: str, cell: Cell) -> None:
    """Pull a base image that is not on the engine; one line naming image and registry when that fails."""
    if present(client, image):
        return
    try:
        client.images.pull(image)
    except (APIError, DockerException) as exc:
        registry = grammar.registry_of_image(image)
        reason = (getattr(exc, "explanation", None) or str(exc)).splitlines()[0][:160]
        raise UsageError(
            f"{cell.name}: base image {image} cannot be pulled from {registry} ({reason}); "
            "point the cell at a mirror with --base-image/--runtime-image or `base_image`/`runtime_image` in matrix.yaml"
        ) from None


def build(client: docker.DockerClient, req: BuildRequest, listener: Listener) -> BuildOutcome:
    """Run one build and follow its stream; never raises for a failed build, the outcome says what failed."""
    started = time.monotonic()
    outcome = BuildOutcome(req.cell.name, "failed", req.tags)
    try:
        stream = client.api.build(
            fileobj=context_tar(req.dockerfile, req.lock, req.context_files),
            custom_context=True,
            tag=req.content_tag,
            buildargs=req.build_args,
            network_mode=req.network,
            target=req.target,
            nocache=req.nocache,
            rm=True,
            forcerm=True,
            decode=True,
        )
        image_id = _follow(stream, outcome, listener)
        if image_id and outcome.error is None:
            finish(client, req, outcome, image_id)
    except CONNECTION_LOST as exc:
        outcome.status = "failed"
        outcome.error = f"the Docker engine stopped answering during the build ({first_line(exc)})"
    outcome.duration = time.monotonic() - started
    return outcome


def _follow(stream, outcome: BuildOutcome, listener: Listener) -> str | None:
    image_id, stage = None, "base"
    clock = StepClock(outcome)
    for chunk in stream:
        if "error" in chunk:
            clock.stop()
            outcome.error = _failure_text(outcome, chunk)
            return None
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        for line in chunk.get("stream", "").splitlines():
            stage = _on_line(line, outcome, stage, listener)
        clock.tick()
    clock.stop()
    return image_id


class StepClock:
    """Times each step of a build from its header to the next step's header (or the end of the stream)."""

    def __init__(self, outcome: BuildOutcome):
        self.outcome = outcome
        self.count = 0
        self.since = time.monotonic()

    def tick(self) -> None:
        if len(self.outcome.steps) != self.count:
            now = time.monotonic()
            if self.count:
                self.outcome.steps[self.count - 1].seconds = round(now - self.since, 2)
            self.count, self.since = len(self.outcome.steps), now

    def stop(self) -> None:
        if self.count:
            self.outcome.steps[self.count - 1].seconds = round(time.monotonic() - self.since, 2)


def first_line(exc: Exception) -> str:
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _on_line(line: str, outcome: BuildOutcome, stage: str, listener: Listener) -> str:
    line = redact(line)  # pip masks index passwords itself; a RUN step's own echo might not
    step = STEP_RE.match(line)
    if step:
        instruction = step.group(3)
        named = STAGE_RE.match(instruction)
        stage = named.group(1) if named else stage
        outcome.steps.append(Step(int(step.group(1)), int(step.group(2)), instruction, stage))
        listener(outcome.cell, outcome.steps[-1], None)
        return stage
    if not outcome.steps:
        return stage
    current = outcome.steps[-1]
    if line.strip() == "---> Using cache":
        current.cached = True
    current.output.append(line)
    listener(outcome.cell, current, line)
    return stage


def _failure_text(outcome: BuildOutcome, chunk: dict) -> str:
    message = redact(chunk.get("errorDetail", {}).get("message") or chunk["error"])
    if not outcome.steps:
        return message.strip()
    step = outcome.steps[-1]
    tail = "\n".join(step.output[-TAIL_LINES:])
    return f"step {step.number}/{step.total} ({step.stage}) failed: {step.instruction}\n{tail}\n{message.strip()}"


def finish(client: docker.DockerClient, req: BuildRequest, outcome: BuildOutcome, image_id: str) -> None:
    image = client.images.get(image_id)
    if req.target is None:
        tag_cell(image, req.cell)
    outcome.status = "built"
    record_image(outcome, image, req.cell if req.target is None else None)


def tag_cell(image, cell: Cell) -> None:
    for ref in cell.tags:
        repo, tag = ref.rsplit(":", 1)
        image.tag(repo, tag)


def record_image(outcome: BuildOutcome, image, cell: Cell | None = None) -> None:
    outcome.image_id = image.id
    outcome.size = image.attrs.get("Size")
    outcome.labels = dict(image.labels or {})
    if cell is not None and cell.extensions:
        outcome.extension_wheels = extension_wheels(image)


def extension_wheels(image) -> dict[str, dict[str, str]]:
    """name -> {"wheel", "sha256"} of each extension as the image records it (layout.EXTENSION_RECORDS): the wheel
    its files were installed from."""
    box = image.client.containers.create(image.id, command=["true"], labels=layout.container_labels("records"))
    try:
        stream, _ = box.get_archive(layout.EXTENSION_RECORDS)
        with tempfile.TemporaryFile() as buf:
            for chunk in stream:
                buf.write(chunk)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                texts = {Path(m.name).stem: tar.extractfile(m).read().decode() for m in tar.getmembers()
                         if m.isfile() and m.name.endswith(".sha256")}
    finally:
        box.remove(force=True)
    found = {}
    for name, text in texts.items():
        sha256, _, wheel = text.strip().partition("  ")
        found[name] = {"wheel": wheel, "sha256": sha256}
    return found


def skip_if_present(client: docker.DockerClient, req: BuildRequest) -> BuildOutcome | None:
    """When the content tag is already on the engine the image is up to date: tag it and skip the build."""
    image = present(client, req.content_tag)
    if image is None:
        return None
    if req.target is None:
        tag_cell(image, req.cell)
    outcome = BuildOutcome(req.cell.name, "skipped", req.tags)
    record_image(outcome, image, req.cell if req.target is None else None)
    return outcome
