"""The push step: tested images -> a registry, every tag, verified by digest -> the catalog of pushed images.

Only an image whose checks passed for that exact image id (out/tests/<cell>.json, written by `build.py test`) is
pushed. The docker SDK reports push failures inside the response stream, never as exceptions: every chunk is read
and an `error` chunk is a failure. Transient failures (connection refused/reset, 5xx) are retried with bounded
exponential backoff (tenacity); authentication failures are not. After each push the manifest digest is read back
from the registry through the engine (the SDK's registry data) and must equal the digest the push reported.
Credentials come from the docker config or REGISTRY_USER / REGISTRY_PASSWORD and never reach any output.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound
from requests.exceptions import RequestException
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .cells import Cell
from .errors import UsageError
from .project import MAX_INPUT_BYTES, Project, read_input, write_atomic
from .secrets import Secrets

TRANSIENT_RE = re.compile(
    r"connection refused|connection reset|broken pipe|\bEOF\b|i/o timeout|TLS handshake timeout|timed out"
    r"|(status|code)[: ]+5\d\d|\b50[0-4] [A-Z]|internal server error|bad gateway|service unavailable"
    r"|gateway timeout|too many requests|toomanyrequests",
    re.IGNORECASE,
)
AUTH_RE = re.compile(
    r"unauthori[sz]ed|authentication required|no basic auth credentials|denied|forbidden|\b401\b|\b403\b"
    r"|incorrect username or password",
    re.IGNORECASE,
)

Listener = Callable[[str, str], None]  # (cell name, one line for the user)


class PushError(Exception):
    """A push that failed and is not worth retrying."""


class TransientPushError(PushError):
    """Connection refused or reset, a 5xx: worth another attempt after a pause."""


class AuthError(PushError):
    """The registry refused the credentials (or there were none): never retried."""


def classify(message: str) -> PushError:
    if AUTH_RE.search(message):
        return AuthError(message)
    if TRANSIENT_RE.search(message):
        return TransientPushError(message)
    return PushError(message)


# ---- credentials ------------------------------------------------------------------------------------------------


class Scrubber(Secrets):
    """Masks the registry password in every form (plain, URL-quoted, base64 of user:password) and every credential
    gpumatrix.secrets recognises: the one implementation behind every line the CLI prints (report.py redacts with
    the secrets `cli.main` remembers, REGISTRY_PASSWORD among them)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_env(cls, env=os.environ) -> Credentials | None:
        """REGISTRY_USER / REGISTRY_PASSWORD; None when unset (the docker config's credentials then apply)."""
        user, password = env.get("REGISTRY_USER"), env.get("REGISTRY_PASSWORD")
        if not user and not password:
            return None
        if not user or not password:
            missing = "REGISTRY_USER" if not user else "REGISTRY_PASSWORD"
            raise UsageError(f"{missing} is not set: give both REGISTRY_USER and REGISTRY_PASSWORD, or neither")
        return cls(user, password)


def registry_host(registry: str) -> str:
    """The registry part of `ghcr.io/acme` or `127.0.0.1:5000`; Docker Hub when the first part is no host name."""
    first = registry.split("/", 1)[0]
    if "." in first or ":" in first or first == "localhost":
        return first
    return "docker.io"


def login(client: docker.DockerClient, registry: str, creds: Credentials, scrub: Scrubber, settings: RetrySettings) -> None:
    """SDK login (the engine checks the credentials against the registry); kept in the client, never written."""
    host = registry_host(registry)

    def attempt() -> None:
        try:
            client.login(username=creds.username, password=creds.password, registry=host, reauth=True)
        except (DockerException, RequestException) as exc:
            raise classify(scrub(_explain(exc))) from None

    try:
        _retrying(settings, lambda rs: None)(attempt)
    except PushError as exc:
        raise type(exc)(f"login to {host} as {creds.username} failed: {exc}") from None


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc).strip()


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

    @property
    def refs(self) -> list[str]:
        return [f"{self.repository}:{t}" for t in self.tags]


def _cell_filters(cell: Cell) -> tuple[str, str]:
    make = f"CUDA={cell.cuda} PYTHON={cell.python} TORCH={cell.torch}"
    cli = f"--cuda {cell.cuda} --python {cell.python} --torch {cell.torch}"
    return make, cli


def refusal(project: Project, client: docker.DockerClient, cell: Cell) -> str | None:
    """Why this cell may not be pushed, or None: its image must exist and have passed its checks as that image id."""
    make, cli = _cell_filters(cell)
    run_test = f"run `make test-image {make}` (python build.py test {cli})"
    try:
        image = client.images.get(cell.tags[0])
    except ImageNotFound:
        return f"{cell.name}: no image {cell.tags[0]} on the engine; run `make image {make}`, then {run_test.removeprefix('run ')}"
    path = project.test_record(cell.name)
    record, why = read_test_record(path)
    if why == "missing":
        return f"{cell.name}: not tested (no {project.relative(path)}); {run_test}"
    if why:
        return f"{cell.name}: the test record {project.relative(path)} {why}; {run_test}"
    if record.get("passed") is not True:
        return f"{cell.name}: the image checks did not pass ({project.relative(path)}); fix the image, then {run_test.removeprefix('run ')}"
    if record.get("image_id") != image.id:
        tested = str(record.get("image_id"))[:19]
        return (f"{cell.name}: the tested image ({tested}) is not the current image {image.id[:19]} "
                f"(rebuilt since the test); {run_test}")
    return None


def read_test_record(path: Path) -> tuple[dict, str | None]:
    """The record `build.py test` wrote, or why it cannot be used ("missing", or what is wrong with it)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        return {}, "missing"
    except IsADirectoryError:
        return {}, "is a directory, not a file"
    except OSError as exc:
        return {}, f"cannot be read ({exc.strerror or exc})"
    if len(raw) > MAX_INPUT_BYTES:
        return {}, f"is larger than {MAX_INPUT_BYTES:,} bytes, which no test run writes"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return {}, f"is not UTF-8 text (byte {exc.start})"
    except ValueError as exc:
        return {}, f"is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return {}, f"is a JSON {type(record).__name__}, not the object `build.py test` writes"
    for key, kind in (("passed", bool), ("image_id", str)):
        if not isinstance(record.get(key), kind):
            return {}, f"has no {key!r} ({'true or false' if kind is bool else 'an image id'})"
    return record, None


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
    status: str  # pushed | failed
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
        outcome.error = scrub(f"push failed: {_explain(exc)}")
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
            raise classify(f"the engine refused the push: {_explain(exc)}") from None
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
        raise classify(f"the engine stopped answering: {_explain(exc)}") from None
    if digest is None:
        raise TransientPushError("the push stream ended without a manifest digest")
    return digest


def registry_digest(client: docker.DockerClient, ref: str) -> str:
    """The manifest digest the registry holds for ref (distribution inspect through the engine)."""
    try:
        return client.images.get_registry_data(ref).id
    except (DockerException, RequestException) as exc:
        raise classify(f"reading {ref} back from the registry failed: {_explain(exc)}") from None


def push_all(client: docker.DockerClient, requests: list[PushRequest], settings: RetrySettings, listener: Listener,
             scrub: Scrubber) -> list[PushOutcome]:
    """One cell after another (pushes share the uplink)."""
    return [push_cell(client, req, settings, listener, scrub) for req in requests]


# ---- the catalog ------------------------------------------------------------------------------------------------


def catalog_entry(req: PushRequest, outcome: PushOutcome) -> dict:
    cell = req.cell
    return {
        "cell": cell.name,
        "repository": outcome.repository,
        "tags": list(outcome.tags),
        "reference": outcome.reference,
        "digest": outcome.digest,
        "image_id": outcome.image_id,
        "size": outcome.size,
        "cuda": cell.cuda,
        "driver_floor": cell.driver_floor,
        "require_cuda": cell.require_cuda,
        "python": cell.python,
        "torch": cell.torch_pin,
        "variant": cell.variant,
        "archs": list(cell.wheel_archs),
        "target_archs": list(cell.archs),
        "sbom": req.sbom,
        "pushed_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


# What an entry must hold (catalog_entry writes them all): the merge refuses an entry without them, and the
# optional keys the Markdown view shows must have the type catalog_entry gives them.
REQUIRED_KEYS = {"cell": str, "repository": str, "tags": list, "reference": str, "digest": str, "cuda": str}
OPTIONAL_KEYS = {"size": int, "driver_floor": str, "archs": list, "sbom": dict}
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def load_catalog(directory: Path) -> dict[str, dict]:
    """The catalog in `directory` (none yet: empty); UsageError, one line per problem, when it is not one."""
    path = directory / "images.json"
    if not path.exists() and not path.is_symlink():
        return {}
    return read_catalog(path)


def read_catalog(path: Path) -> dict[str, dict]:
    """Entries by cell from an images.json; every problem (not UTF-8, not JSON, not the shape catalog_entry
    writes, a required key missing, the same cell twice) is one line naming the file and the entry and key."""
    entries, problems = _catalog_entries(path)
    if problems:
        raise UsageError("\n".join(problems))
    return entries


def _catalog_entries(path: Path) -> tuple[dict[str, dict], list[str]]:
    text = read_input(path, "catalog (images.json)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {}, [f"{path}: not valid JSON ({exc}); remove it or restore it"]
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return {}, [f"{path}: not a catalog: expected an object {{\"images\": [...]}} as `build.py push` writes"]
    entries, problems, first = {}, [], {}
    for i, entry in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        found = _entry_problems(entry)
        if found:
            problems += [f"{where}: {p}" for p in found]
            continue
        if entry["cell"] in first:
            problems.append(f"{where}: cell {entry['cell']!r} appears twice (also images[{first[entry['cell']]}])")
            continue
        first[entry["cell"]] = i
        entries[entry["cell"]] = entry
    return entries, problems


def _entry_problems(entry) -> list[str]:
    if not isinstance(entry, dict):
        return [f"is a JSON {type(entry).__name__}, not an object"]
    problems = []
    for key, kind in REQUIRED_KEYS.items():
        value = entry.get(key)
        if key not in entry:
            problems.append(f"missing required key {key!r}")
        elif not isinstance(value, kind) or not value:
            problems.append(f"{key}: expected a non-empty {_kind(kind)}, got {_json(value)}")
    for key, kind in OPTIONAL_KEYS.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"{key}: expected {_kind(kind)} or null, got {_json(value)}")
    if problems:
        return problems
    if not all(isinstance(t, str) and t for t in entry["tags"]):
        problems.append(f"tags: expected tag names (strings), got {_json(entry['tags'])}")
    if not all(isinstance(a, str) for a in entry.get("archs") or []):
        problems.append(f"archs: expected arch names (strings), got {_json(entry['archs'])}")
    if not DIGEST_RE.fullmatch(entry["digest"]):
        problems.append(f"digest: expected sha256:<64 hex digits>, got {_json(entry['digest'])}")
    elif entry["reference"] != f"{entry['repository']}@{entry['digest']}":
        problems.append(f"reference: expected repository@digest ({entry['repository']}@{entry['digest']}), "
                        f"got {_json(entry['reference'])}")
    sbom = entry.get("sbom")
    if sbom is not None:
        for key, kind in (("path", str), ("sha256", str), ("components", int)):
            if not isinstance(sbom.get(key), kind) or isinstance(sbom.get(key), bool):
                problems.append(f"sbom.{key}: expected {_kind(kind)}, got {_json(sbom.get(key))}")
    return problems


def _kind(kind: type) -> str:
    return {str: "string", list: "list", int: "whole number", dict: "object"}[kind]


def _json(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def update_catalog(directory: Path, requests: list[PushRequest], outcomes: list[PushOutcome]) -> dict[str, dict]:
    """Add the pushed cells, drop every cell whose push failed (no stale entry survives), write both files."""
    entries = load_catalog(directory)
    for req, outcome in zip(requests, outcomes):
        if outcome.status == "pushed":
            entries[req.cell.name] = catalog_entry(req, outcome)
        else:
            entries.pop(req.cell.name, None)
    write_catalog(directory, entries)
    return entries


def merge_catalogs(directory: Path, parts: list[Path]) -> dict[str, dict]:
    """Merge catalogs of CI jobs (one cell each) into one; a later part wins for the same cell. Each part is a
    catalog directory or an images.json file. Every part and the catalog itself are read and checked first: any
    problem in any of them (each one line naming the file, entry and key) and nothing is written."""
    entries, problems = {}, []
    files = [directory / "images.json"] if (directory / "images.json").exists() else []
    files += [part / "images.json" if part.is_dir() else part for part in parts]
    for path in files:
        found, wrong = _catalog_entries(path)
        entries.update(found)
        problems += wrong
    if problems:
        raise UsageError("\n".join(problems))  # nothing written: the catalog stays as it was
    write_catalog(directory, entries)
    return entries


def write_catalog(directory: Path, entries: dict[str, dict]) -> None:
    ordered = [entries[k] for k in sorted(entries)]
    write_atomic(directory / "images.json", json.dumps({"images": ordered}, indent=2) + "\n")
    write_atomic(directory / "images.md", catalog_markdown(ordered))


def catalog_markdown(entries: list[dict]) -> str:
    lines = [
        "# Pushed images",
        "",
        "Pin the reference (repo@sha256:...) in RunPod templates and job specs; tags can move, digests cannot.",
        "",
        "| cell | tags | reference | size | CUDA (driver floor) | compiled archs | SBOM |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cuda = "CPU" if e["cuda"] == "cpu" else f"{e['cuda']} (driver >= {e.get('driver_floor') or '?'})"
        tags = "<br>".join(f"`{t}`" for t in e["tags"])
        archs = " ".join(e.get("archs") or []) or "-"
        lines.append(f"| {e['cell']} | {tags} | `{e['reference']}` | {human_size(e.get('size'))} | {cuda} | {archs} "
                     f"| {sbom_cell(e.get('sbom'))} |")
    return "\n".join(lines) + "\n"


def sbom_cell(sbom: dict | None) -> str:
    if not sbom:
        return "-"
    return f"`{sbom['path']}` ({sbom['components']} components, sha256 `{sbom['sha256'][:12]}`)"


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "-"


def outcome_record(outcome: PushOutcome) -> dict:
    return {**asdict(outcome), "reference": outcome.reference}
