"""The lock step: resolve each cell's app layers against the torch stage that the build will install.

No torch is installed and no torch-stage image is built. In a container of the cell's `base` stage (its OS, its
Python, its venv and its pip, without torch), pip resolves what the torch stage's `pip install` would install from the
torch index's metadata (`pip install --dry-run --report`: PEP 658 metadata, no multi-GB wheel downloaded). That set,
plus what the base venv already holds, is exactly the torch stage's freeze. The cell's resolver (`uv pip compile`
by default, or pip-compile) then resolves the app layers with that set as constraints and as packages never written
(--no-emit-package, pip-compile's --unsafe-package), so none of it is in the lock; the lock's header records it, and
the build refuses a torch stage that differs from it. The cell's current lock, when intact, is the resolver's
starting point: both keep its pins where the inputs still allow them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from . import build, engine, layout, resolvers
from .cells import Cell
from .errors import UsageError, WorkFailed
from .lockfile import (
    EXTENSIONS_IN,
    REQ_LINE,
    content_problems,
    extension_requirements,
    format_lock,
    input_texts,
    inputs_digest,
    read_lock,
    requirement_lines,
    split_lock,
    validate_inputs,
    where_required,
)
from .parallel import run_parallel
from .project import Project, write_atomic
from .request import BuildOverrides, BuildRequest
from .secrets import redact

TOOLS = "/tmp/gpumatrix-tools"
WORK = "/tmp/gpumatrix-lock"
STAGE_REPORT = f"{WORK}/torch-stage.json"  # pip's installation report of the torch stage's dry run
STAGE_CONSTRAINTS = f"{WORK}/torch-stage.txt"  # the torch stage's freeze as resolved, the resolver's constraints
LOCK_OUT = f"{WORK}/lock.txt"  # the resolver's output file; the current lock's body is put there first, as its start


# pip skips an index page it cannot fetch after its retries and resolves on without it, exit status 0.
RETRIES_USED_UP = re.compile(r"Retrying \(Retry\(total=0\b.*': (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class LockJob:
    cell: Cell
    base_image: str  # the cell's `base` stage: Python, venv and pip, no torch
    network: str | None
    index_url: str


def compile_lock(client, project: Project, job: LockJob) -> str:
    """Resolve the torch stage from the index's metadata, then resolve the app layers against it; return the
    finished lock text."""
    container = _start(client, tools_image(client, job), job.network)
    try:
        container.put_archive("/", _inputs_tar(project, job.cell))
        torch_stage = resolve_torch_stage(container, job)
        refuse_conflicts(project, job, torch_stage)
        container.put_archive("/", _tar({STAGE_CONSTRAINTS: "\n".join(torch_stage) + "\n",
                                         LOCK_OUT: starting_point(project, job.cell)}))
        _compile(container, project, job, torch_stage)
        body = _read_file(container, LOCK_OUT)
    finally:
        _remove(container)
    return format_lock(job.cell, inputs_digest(project, job.cell), body, torch_stage, job.cell.resolver)


def starting_point(project: Project, cell: Cell) -> str:
    """The body of the cell's current lock when it is intact (stale is fine: its pins are preferences, not
    requirements), else nothing: a relock then moves no pin that the inputs still allow."""
    text = read_lock(project, cell)
    if text is None or content_problems("", cell, text)[0]:
        return ""
    return split_lock(text)[1]


def resolve_torch_stage(container, job: LockJob) -> list[str]:
    """`name==version` lines, sorted as `pip freeze` sorts them, of the environment the torch stage leaves: the base
    venv's own packages, updated by what the stage's `pip install` would install (pip's dry-run report)."""
    seeds = _exec(container, f"{layout.VENV_PYTHON} -m pip freeze --all --exclude pip", "read the base venv")
    _dry_run(container, job)
    report = json.loads(_read_file(container, STAGE_REPORT))
    stage = {canonicalize_name(m.group(1)): (m.group(1), m.group(3))
             for m in map(REQ_LINE.match, seeds.splitlines()) if m}
    for item in report.get("install", []):
        meta = item["metadata"]
        stage[canonicalize_name(meta["name"])] = (meta["name"], meta["version"])
    return [f"{name}=={version}" for name, version in sorted(stage.values(), key=lambda nv: nv[0].lower())]


def _dry_run(container, job: LockJob) -> None:
    """The torch stage's install as a dry run; an index that did not answer, or answered without the pins, is one
    line (exit 1) instead of pip's output."""
    try:
        _exec(container, _dry_run_script(job), "resolve the torch stage from the torch index")
    except ExecFailed as exc:
        index = redact(job.index_url)
        if RETRIES_USED_UP.search(exc.output):
            raise WorkFailed(f"the torch index {index} stopped answering while the torch stage was resolved from it; "
                             "no lock written") from None
        refused = python_refused(exc.output, job.cell)
        if refused is not None:
            raise UsageError(refused) from None
        missing = resolvers.PIP_NOT_FOUND.search(exc.output)
        if missing:
            pins = " ".join(f"{name}=={pin}" for name, pin in job.cell.torch_stage_packages)
            raise WorkFailed(f"the torch index {index} serves no {missing.group(1)} that the torch stage's "
                             f"`pip install {pins}` can use for Python {job.cell.python} (cell {job.cell.name}); "
                             "no lock written") from None
        raise


IGNORED_FOR_PYTHON = re.compile(r"Ignored the following versions that require a different python version: (.*)$",
                                re.IGNORECASE | re.MULTILINE)


def python_refused(output: str, cell: Cell) -> str | None:
    """The torch stage's pins that pip ignored for their Requires-Python (torchvision 0.27 declares `!=3.14.1`):
    the cell's Python cannot have that torch stage, which is the matrix's choice. None when pip ignored none."""
    ignored = dict(entry.strip().split(" Requires-Python ", 1)
                   for found in IGNORED_FOR_PYTHON.findall(output) for entry in found.split(";")
                   if " Requires-Python " in entry)
    hits = []
    for name, pin in cell.torch_stage_packages:
        declared = ignored.get(pin) or ignored.get(pin.split("+")[0])
        if declared:
            hits.append(f"{name} {pin} declares Requires-Python {declared}")
    if not hits:
        return None
    return (f"{cell.name}: {'; '.join(hits)}, which the Python {cell.python} of its base does not meet, so its "
            f"torch stage cannot be installed; exclude Python {cell.python} for torch {cell.torch} in matrix.yaml, "
            "or use a base with another Python patch")


def _dry_run_script(job: LockJob) -> str:
    """The torch stage's own `pip install` (templates/Dockerfile.j2), as a dry run that writes pip's report."""
    pins = [f"{name}=={pin}" for name, pin in job.cell.torch_stage_packages]
    args = [layout.VENV_PYTHON, "-m", "pip", "install", "--dry-run", "--quiet", "--no-cache-dir",
            "--report", STAGE_REPORT, "--index-url", job.index_url, *(["--pre"] if job.cell.pre else []), *pins]
    return f"mkdir -p {WORK} && " + shlex.join(args)


def refuse_conflicts(project: Project, job: LockJob, torch_stage: list[str]) -> None:
    """An .in line that asks for another version of a package the torch stage installs can never be met: the torch
    stage's version comes with torch from the torch index. Said as the user's input, exit 2, before resolving."""
    versions = {canonicalize_name(m.group(1)): m.group(3) for m in map(REQ_LINE.match, torch_stage) if m}
    found = []
    for where, line, req in requirement_lines(project, job.cell):
        have = versions.get(canonicalize_name(req.name))
        if have is not None and not req.specifier.contains(have, prereleases=True):
            found.append(f"{where}: {line} conflicts with the torch stage: "
                         f"torch {job.cell.torch_pin} comes with {req.name} {have} from the torch index "
                         f"({redact(job.index_url)}), and the torch stage's versions are fixed (cell "
                         f"{job.cell.name}); allow {have} in this line, or install {req.name} with torch: "
                         f"`torch_stage_pins: [\"{req.name}==...\"]` in matrix.yaml (README, \"The locked "
                         "application layer\")")
    if found:
        raise UsageError("\n".join(found))


def _compile(container, project: Project, job: LockJob, torch_stage: list[str]) -> None:
    """The cell's resolver; a requirement that exists on no index is bad input (exit 2), naming the .in line.

    A lock resolved while an index did not answer is refused: it may lack what only that index has.
    """
    request = resolvers.Request(
        cell=job.cell, tools=TOOLS, python=layout.VENV_PYTHON, index_url=job.index_url, constraints=STAGE_CONSTRAINTS,
        never_written=sorted({REQ_LINE.match(line).group(1) for line in torch_stage}), output=LOCK_OUT,
        layers=[str(path.relative_to(project.root)) for path in resolver_inputs(project, job.cell)])
    try:
        output = _exec(container, f"cd {WORK} && " + shlex.join(resolvers.command(request)),
                       resolvers.title(job.cell))
    except ExecFailed as exc:
        found = resolvers.failure(job.cell, job.index_url, exc.output,
                                  lambda name: where_required(project, job.cell, name))
        raise (found or exc) from None
    _refuse_partial_answers(job, output)


def resolver_inputs(project: Project, cell: Cell) -> list[Path]:
    """The files the resolver is given: the layers' .in files, and the extensions' requirements when there are any."""
    inputs = [project.requirements / f"{layer}.in" for layer in cell.layers]
    return inputs + ([project.requirements / EXTENSIONS_IN] if extension_requirements(cell) else [])


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
    """The base stage plus both resolvers (pip-tools and uv) in a venv of their own (never in the image's env), kept
    for the next lock."""
    tools = " ".join([job.base_image, job.cell.pip, *resolvers.install_pins(job.cell)])
    key = hashlib.sha256(tools.encode()).hexdigest()[:16]
    tag = f"gpumatrix-locktools:{key}"
    with _tools_lock(tag):  # cells on one base stage (`-j`) wait for the first to make it instead of each making it
        if engine.present(client, tag):
            return tag
        container = _start(client, job.base_image, job.network)
        try:
            _exec(container, _install_tools_script(job.cell), "install the resolvers (pip-tools and uv)")
            container.commit(repository="gpumatrix-locktools", tag=key)
        finally:
            _remove(container)
    return tag


_tools_locks: dict[str, threading.Lock] = {}
_tools_locks_guard = threading.Lock()


def _tools_lock(tag: str) -> threading.Lock:
    with _tools_locks_guard:
        return _tools_locks.setdefault(tag, threading.Lock())


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
    return _tar({f"{WORK}/{path.relative_to(project.root)}": text for path, text in input_texts(project, cell).items()})


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ExecFailed(WorkFailed):
    """A command in the lock container failed: the message ends with its last lines; `output` is all of it (a
    resolver's explanation can come before a long traceback)."""

    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


def _exec(container, script: str, what: str) -> str:
    code, output = container.exec_run(["bash", "-o", "pipefail", "-c", script], workdir="/")
    text = output.decode(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise ExecFailed(redact(f"{what} failed (exit {code}):\n{tail}"), redact(text))
    return text


def _install_tools_script(cell: Cell) -> str:
    return (f"python -m venv {TOOLS} && {TOOLS}/bin/python -m pip install -q --no-cache-dir "
            + shlex.join([f"pip=={cell.pip}", *resolvers.install_pins(cell)]))


def _read_file(container, path: str) -> str:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        return tar.extractfile(member).read().decode()


def write_lock(project: Project, cell: Cell, text: str) -> Path:
    found, _ = content_problems(project.relative(project.lock(cell.name)), cell, text)
    if found:  # the resolver wrote what no build may use (a torch-stage package, a pin without hashes): write nothing
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
    bad_input: bool = False  # the cell's .in files ask for what cannot be (exit 2 once every cell is done)


def lock_cells(project: Project, image: str, cells: list[Cell], overrides: BuildOverrides, jobs: int,
               listener: engine.Listener, log) -> list[LockResult]:
    """Build each cell's base stage (engine cache; no torch), resolve its torch stage from the index and the app
    layers against it; `jobs` cells at a time. A cell that fails does not stop the others; a conflict with the torch
    stage (the user's input) is a UsageError once every cell is done."""
    cells = [c for c in cells if c.layers]
    for cell in cells:
        validate_inputs(project, cell)
    requests = build.prepare(project, image, cells, overrides, target="base")
    built = build.run_builds(requests, jobs, force=False, listener=listener)

    def one(req: BuildRequest, outcome: engine.BuildOutcome) -> LockResult:
        if outcome.status == "failed":
            return LockResult(req.cell.name, error=f"base stage failed: {outcome.error}")
        log(f"{req.cell.name}: resolving the torch stage from {redact(req.index_url)}, then {req.cell.resolver} "
            f"(base stage {outcome.image_id[7:19]})")
        job = LockJob(req.cell, outcome.image_id, req.network, req.index_url)
        try:
            text = compile_lock(engine.connect(), project, job)
            return LockResult(req.cell.name, path=write_lock(project, req.cell, text))
        except WorkFailed as exc:
            return LockResult(req.cell.name, error=str(exc))
        except UsageError as exc:
            return LockResult(req.cell.name, error=str(exc), bad_input=True)

    return run_parallel(lambda pair: one(*pair), list(zip(requests, built)), jobs, on_cancel=remove_live, grace=15)
