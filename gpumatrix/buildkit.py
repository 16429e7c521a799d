"""Build a cell's image through BuildKit, driven by the buildx CLI (docker-py cannot drive BuildKit,
docker/docker-py#2230), and decide which builder a run uses.

The build reads buildx's plain progress: each `[stage n/m]` vertex is a step, `CACHED` marks a cache hit and
`DONE 1.2s` gives the step's own time, so the report and the progress lines are those of the classic builder.
The image lands in the engine (`--load`); the docker SDK tags and inspects it as it does after a classic build.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from . import engine, layout
from .engine import BuildOutcome, Listener, Step
from .errors import UsageError
from .request import BuildRequest
from .secrets import redact

BUILDERS = ("buildkit", "classic")
# BuildKit runs a build's steps in these network modes only; a named Docker network needs the classic builder.
BUILDKIT_NETWORKS = ("default", "host", "none")
MIN_BUILDX = (0, 10)  # --load and --iidfile as used here, the plain progress format read here
CANCEL_GRACE = 20  # seconds buildx gets to cancel the build after SIGINT before it is killed

VERTEX_RE = re.compile(r"^#(\d+) (.*)$")
STEP_RE = re.compile(r"^\[(\S+) (\d+)/(\d+)\] (.*)$")
DONE_RE = re.compile(r"^DONE (\d+(?:\.\d+)?)s$")
OUTPUT_RE = re.compile(r"^\d+\.\d+ (.*)$")


@dataclass(frozen=True)
class BuilderChoice:
    builder: str
    why: str  # shown once per run: "builder: buildkit (docker buildx answers)"


@functools.cache
def buildx_problem() -> str | None:
    """None when `docker buildx` answers with a usable version and a running builder; else why not, in words."""
    try:
        version = _buildx("version")
    except FileNotFoundError:
        return "the docker CLI is not installed"
    except subprocess.TimeoutExpired:
        return "`docker buildx version` did not answer within 30 s"
    if version.returncode != 0:
        return "docker buildx is not installed (`docker buildx version` failed)"
    found = buildx_version(version.stdout)
    if found is None or found < MIN_BUILDX:
        shown = ".".join(map(str, found)) if found else version.stdout.strip()[:60]
        return f"docker buildx {shown} is older than {'.'.join(map(str, MIN_BUILDX))}"
    try:
        inspect = _buildx("inspect", "--bootstrap")
    except subprocess.TimeoutExpired:
        return "the current buildx builder did not start within 30 s"
    if inspect.returncode != 0:
        reason = (inspect.stderr.strip().splitlines() or ["no builder"])[-1][:160]
        return f"docker buildx has no working builder ({redact(reason)})"
    return None


def buildx_version(text: str) -> tuple[int, ...] | None:
    """(0, 13, 1) out of `github.com/docker/buildx 0.13.1+ds1 ...` or `... v0.17.1 abc123`."""
    match = re.search(r"\bv?(\d+)\.(\d+)(?:\.(\d+))?", text.split(None, 1)[1] if " " in text.strip() else text)
    return tuple(int(part) for part in match.groups() if part is not None) if match else None


def _buildx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "buildx", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def choose(asked: str | None, network: str | None = None) -> BuilderChoice:
    """The builder for a build: the one asked for (--builder, or `builder` in matrix.yaml), else BuildKit where
    buildx answers and classic otherwise. BuildKit asked for but not usable is the user's to fix: exit 2."""
    if asked == "classic":
        return BuilderChoice("classic", "asked for")
    if network and network not in BUILDKIT_NETWORKS:
        if asked == "buildkit":
            raise UsageError(f"--builder buildkit: BuildKit builds in the network modes {', '.join(BUILDKIT_NETWORKS)} "
                             f"only, not {network!r}; use --builder classic or another --network")
        return BuilderChoice("classic", f"network {network!r} needs the classic builder")
    problem = buildx_problem()
    if problem is None:
        return BuilderChoice("buildkit", "asked for" if asked else "docker buildx answers")
    if asked == "buildkit":
        raise UsageError(f"builder buildkit was asked for, but {problem}; install docker-buildx "
                         "or build with --builder classic")
    return BuilderChoice("classic", f"falling back: {problem}")


def build(client: docker.DockerClient, req: BuildRequest, listener: Listener) -> BuildOutcome:
    """Run one BuildKit build and follow its progress; never raises for a failed build (the outcome says what
    failed). Ctrl-C or SIGTERM cancels the build in buildx before it is passed on: nothing is tagged."""
    started = time.monotonic()
    outcome = BuildOutcome(req.cell.name, "failed", req.tags)
    with tempfile.TemporaryDirectory(prefix="gpumatrix-context-") as context:
        iidfile = _write_context(Path(context), req)
        process = subprocess.Popen(
            _command(req, context, iidfile), env=_environment(req), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(process)
        try:
            failure = _follow(process.stdout, outcome, listener)
            returncode = process.wait()
        except BaseException:
            _cancel(process)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(process)
        image_id = iidfile.read_text().strip() if iidfile.exists() else ""
    if returncode == 0 and image_id:
        _finish(client, req, outcome, image_id)
    else:
        outcome.error = _failure_text(outcome, failure, returncode)
    outcome.duration = time.monotonic() - started
    return outcome


def _write_context(context: Path, req: BuildRequest) -> Path:
    """The build context as the classic build sends it (engine.context_tar): the Dockerfile, the lock and the
    extensions' files (hard-linked where they can be: a wheel can be hundreds of MB)."""
    (context / "ctx").mkdir()
    (context / "ctx" / "Dockerfile").write_text(req.dockerfile)
    for name, path in req.context_files:
        (context / "ctx" / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, context / "ctx" / name)
        except OSError:
            shutil.copyfile(path, context / "ctx" / name)
    if req.lock is not None:
        (context / "ctx" / layout.LOCK_IN_CONTEXT).write_bytes(req.lock)
    return context / "iid"


def _command(req: BuildRequest, context: str, iidfile: Path) -> list[str]:
    command = ["docker", "buildx", "build", "--progress=plain", "--load", "--iidfile", str(iidfile),
               "--tag", req.content_tag, "--file", f"{context}/ctx/Dockerfile"]
    for name in req.build_args:
        command += ["--build-arg", name]  # the value comes from the environment: an index password stays off argv
    if req.target:
        command += ["--target", req.target]
    if req.network:
        command += ["--network", req.network]
    if req.nocache:
        command.append("--no-cache")
    # The image carries its own cache (inline), so a build on another machine that names it in --cache-from reuses
    # every step it can, the torch stage included, without a cache exporter or a second image.
    command += ["--cache-to", "type=inline"]
    for ref in req.cache_from:
        command += ["--cache-from", f"type=registry,ref={ref}"]
    return [*command, f"{context}/ctx"]


def _environment(req: BuildRequest) -> dict[str, str]:
    return {**os.environ, **req.build_args, "BUILDKIT_PROGRESS": "plain"}


# Every buildx this process runs, so Ctrl-C or SIGTERM in the main thread reaches builds that workers run.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_SIGNALLED: set[int] = set()


def cancel_all() -> None:
    """The first call asks every running buildx to cancel its build (SIGINT); a later call kills what is left. The
    signal goes to buildx's process group: the docker CLI does not pass it on to its buildx plugin."""
    with _LIVE_LOCK:
        live = [p for p in _LIVE if p.poll() is None]
    for process in live:
        _signal_group(process, signal.SIGKILL if process.pid in _SIGNALLED else signal.SIGINT)
        _SIGNALLED.add(process.pid)


def _cancel(process: subprocess.Popen) -> None:
    """buildx cancels the solve on SIGINT; a buildx that does not stop in time is killed."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGINT)
    try:
        process.wait(timeout=CANCEL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: its group is its pid
    except ProcessLookupError:
        pass


class _Progress:
    """The state of buildx's plain progress: vertex number -> step, and the lines after the last vertex."""

    def __init__(self, outcome: BuildOutcome, listener: Listener):
        self.outcome, self.listener = outcome, listener
        self.steps: dict[str, Step] = {}
        self.failed: Step | None = None
        self.errors: list[str] = []

    def line(self, text: str) -> None:
        text = redact(text.rstrip("\n"))
        vertex = VERTEX_RE.match(text)
        if vertex is None:
            if text.startswith("ERROR:") or text.startswith("error:"):
                self.errors.append(text)
            return
        number, rest = vertex.groups()
        step = self.steps.get(number)
        if step is None:
            self._maybe_new_step(number, rest)
            return
        self._on_step_line(step, rest)

    def _maybe_new_step(self, number: str, rest: str) -> None:
        found = STEP_RE.match(rest)
        if found is None:
            if rest.startswith("ERROR"):
                self.errors.append(rest)
            return
        stage, n, total, instruction = found.groups()
        step = Step(int(n), int(total), instruction, stage)
        self.steps[number] = step
        self.outcome.steps.append(step)
        self.listener(self.outcome.cell, step, None)

    def _on_step_line(self, step: Step, rest: str) -> None:
        if rest == "CACHED":  # said as the classic builder says it, so -v shows the step was served by the cache
            step.cached = True
            step.output.append("CACHED")
            self.listener(self.outcome.cell, step, "CACHED")
            return
        done = DONE_RE.match(rest)
        if done:
            step.seconds = float(done.group(1))
            return
        if rest.startswith("ERROR"):
            self.failed = step
            self.errors.append(rest)
            return
        if STEP_RE.match(rest):  # the vertex's header again, after another vertex's output
            return
        output = OUTPUT_RE.match(rest)
        line = output.group(1) if output else rest
        step.output.append(line)
        self.listener(self.outcome.cell, step, line)


def _follow(stream, outcome: BuildOutcome, listener: Listener) -> _Progress:
    progress = _Progress(outcome, listener)
    for text in stream:
        progress.line(text)
    return progress


def _failure_text(outcome: BuildOutcome, progress: _Progress, returncode: int) -> str:
    message = progress.errors[-1] if progress.errors else f"docker buildx build exited with {returncode}"
    if _engine_gone():
        return f"the Docker engine stopped answering during the build ({message[:200]})"
    step = progress.failed
    if step is None:
        return message.strip()
    tail = "\n".join(step.output[-engine.TAIL_LINES:])
    return f"step {step.number}/{step.total} ({step.stage}) failed: {step.instruction}\n{tail}\n{message.strip()}"


def _engine_gone() -> bool:
    try:
        engine.connect()
    except UsageError:
        return True
    return False


def _finish(client: docker.DockerClient, req: BuildRequest, outcome: BuildOutcome, image_id: str) -> None:
    try:
        engine.finish(client, req, outcome, image_id)
    except engine.CONNECTION_LOST as exc:
        outcome.status = "failed"
        outcome.error = f"the Docker engine stopped answering after the build ({engine.first_line(exc)})"
