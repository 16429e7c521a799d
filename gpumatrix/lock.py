"""The lock step: pip-compile each cell's app layers inside a container of that cell's torch stage.

The torch stage (torch, its companions and everything pip installed with them) is never part of a lock: it is
computed from the stage's own `pip freeze` and passed to pip-compile as unsafe packages with --no-allow-unsafe.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from . import build, engine, layout
from .cells import Cell
from .errors import UsageError, WorkFailed
from .lockfile import (
    PIP_TOOLS_VERSION,
    REQ_LINE,
    content_problems,
    format_lock,
    input_texts,
    inputs_digest,
    validate_inputs,
    where_required,
)
from .parallel import run_parallel
from .project import Project, write_atomic
from .request import BuildOverrides, BuildRequest
from .secrets import redact

TOOLS = "/tmp/gpumatrix-tools"
WORK = "/tmp/gpumatrix-lock"

@dataclass(frozen=True)
class LockJob:
    cell: Cell
    torch_image: str
    network: str | None
    index_url: str


def compile_lock(client, project: Project, job: LockJob) -> str:
    """Run pip-compile in a container of the torch stage and return the finished lock text."""
    container = _start(client, tools_image(client, job), job.network)
    try:
        container.put_archive("/", _inputs_tar(project, job.cell))
        freeze = _exec(container, f"cat {layout.TORCH_CONSTRAINTS}", "read the torch-stage freeze")
        torch_stage = [line for line in freeze.splitlines() if REQ_LINE.match(line)]
        _compile(container, project, job, torch_stage)
        body = _read_file(container, f"{WORK}/lock.txt")
    finally:
        _remove(container)
    return format_lock(job.cell, inputs_digest(project, job.cell), body, torch_stage)


NOT_FOUND = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the requirement) "
                       r"([A-Za-z0-9][A-Za-z0-9._-]*)")


# pip skips an index page it cannot fetch after its retries and resolves on without it, exit status 0.
RETRIES_USED_UP = re.compile(r"Retrying \(Retry\(total=0\b.*': (\S+)$", re.MULTILINE)


def _compile(container, project: Project, job: LockJob, torch_stage: list[str]) -> None:
    """pip-compile; a requirement that exists on no index is bad input (exit 2), naming the .in line.

    A lock resolved while an index did not answer is refused: it may lack what only that index has.
    """
    try:
        output = _exec(container, _compile_script(project, job, torch_stage), "pip-compile")
    except WorkFailed as exc:
        missing = NOT_FOUND.search(str(exc))
        if missing is None:
            raise
        name = missing.group(1)
        raise UsageError(f"{where_required(project, job.cell, name)}: {name}: no such package or version on PyPI "
                         f"or {redact(job.index_url)} (cell {job.cell.name})") from None
    _refuse_partial_answers(job, output)


def _refuse_partial_answers(job: LockJob, output: str) -> None:
    unreached = sorted(set(RETRIES_USED_UP.findall(output)))
    if unreached:
        raise WorkFailed(f"an index stopped answering during pip-compile (retries used up for {', '.join(unreached)}); "
                         "no lock written: a lock resolved without that index's answer cannot be trusted")
    try:
        build.check_index(job.index_url, job.cell)
    except UsageError as exc:
        raise WorkFailed(f"the torch index stopped answering during the lock; no lock written: {exc}") from None


def tools_image(client, job: LockJob) -> str:
    """The torch stage plus pip-tools in a venv of its own (never in the image's env), kept for the next lock."""
    key = hashlib.sha256(f"{job.torch_image} {job.cell.pip} {PIP_TOOLS_VERSION}".encode()).hexdigest()[:16]
    tag = f"gpumatrix-locktools:{key}"
    if engine.present(client, tag):
        return tag
    container = _start(client, job.torch_image, job.network)
    try:
        _exec(container, _install_tools_script(job.cell), "install pip-tools")
        container.commit(repository="gpumatrix-locktools", tag=key)
    finally:
        _remove(container)
    return tag


_cancelled = threading.Event()  # set on Ctrl-C or SIGTERM: no new lock container may start


def _start(client, image: str, network: str | None):
    container = client.containers.run(image, ["sleep", "infinity"], detach=True, network_mode=network or "default",
                                      entrypoint=[], labels=layout.container_labels("lock"))
    if _cancelled.is_set():
        _remove(container)
        raise WorkFailed("cancelled")
    return container


def _remove(container) -> None:
    container.remove(force=True)


def remove_live() -> None:
    """Remove every lock container of this process; a worker still creating one removes it itself (_cancelled)."""
    _cancelled.set()
    client = engine.connect()
    # sparse: no inspect per container, which fails for one a worker removes in the meantime
    mine = {"label": f"{layout.OWNER_LABEL}={os.getpid()}"}
    for container in client.containers.list(all=True, sparse=True, filters=mine):
        try:
            _remove(container)
        except Exception:  # already gone: the worker's own cleanup won
            pass


def _inputs_tar(project: Project, cell: Cell) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, text in input_texts(project, cell).items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{WORK.lstrip('/')}/{path.relative_to(project.root)}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _exec(container, script: str, what: str) -> str:
    code, output = container.exec_run(["bash", "-o", "pipefail", "-c", script], workdir="/")
    text = output.decode(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise WorkFailed(redact(f"{what} failed (exit {code}):\n{tail}"))
    return text


def _install_tools_script(cell: Cell) -> str:
    return (f"python -m venv {TOOLS} && {TOOLS}/bin/python -m pip install -q --no-cache-dir "
            f"pip=={cell.pip} pip-tools=={PIP_TOOLS_VERSION}")


def _compile_script(project: Project, job: LockJob, torch_stage: list[str]) -> str:
    names = sorted({REQ_LINE.match(line).group(1) for line in torch_stage})
    layers = [str(project.requirements.relative_to(project.root) / f"{layer}.in") for layer in job.cell.layers]
    args = [
        f"{TOOLS}/bin/pip-compile", "--quiet", "--no-header", "--generate-hashes", "--no-allow-unsafe",
        "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
        "--extra-index-url", job.index_url, "--constraint", layout.TORCH_CONSTRAINTS,
        *(["--pre"] if job.cell.pre else []),
        *[f"--unsafe-package={n}" for n in names],
        "--output-file", "lock.txt", *layers,
    ]
    return f"cd {WORK} && " + shlex.join(args)


def _read_file(container, path: str) -> str:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        return tar.extractfile(member).read().decode()


def write_lock(project: Project, cell: Cell, text: str) -> Path:
    found, _ = content_problems(project.relative(project.lock(cell.name)), cell, text)
    if found:  # pip-compile wrote what no build may use (a torch-stage package, a pin without hashes): write nothing
        raise WorkFailed("\n".join(found))
    if _cancelled.is_set():
        raise WorkFailed("cancelled: an interrupted run writes no lock")
    path = project.lock(cell.name)
    write_atomic(path, text)
    return path


@dataclass
class LockResult:
    cell: str
    path: Path | None = None
    error: str | None = None


def lock_cells(project: Project, image: str, cells: list[Cell], overrides: BuildOverrides, jobs: int,
               listener: engine.Listener, log) -> list[LockResult]:
    """Build each cell's torch stage (engine cache), then pip-compile in it; `jobs` cells at a time."""
    cells = [c for c in cells if c.layers]
    for cell in cells:
        validate_inputs(project, cell)
    requests = build.prepare(project, image, cells, overrides, target="torch")
    built = build.run_builds(requests, jobs, force=False, listener=listener)

    def one(req: BuildRequest, outcome: engine.BuildOutcome) -> LockResult:
        if outcome.status == "failed":
            return LockResult(req.cell.name, error=f"torch stage failed: {outcome.error}")
        log(f"{req.cell.name}: pip-compile in the torch stage ({outcome.image_id[7:19]})")
        job = LockJob(req.cell, outcome.image_id, req.network, req.index_url)
        try:
            text = compile_lock(engine.connect(), project, job)
            return LockResult(req.cell.name, path=write_lock(project, req.cell, text))
        except WorkFailed as exc:
            return LockResult(req.cell.name, error=str(exc))

    return run_parallel(lambda pair: one(*pair), list(zip(requests, built)), jobs, on_cancel=remove_live, grace=15)
