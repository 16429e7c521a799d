"""The files of a cell's compiled extensions: each sdist or prebuilt wheel fetched once, checked against the sha256
that matrix.yaml pins, and handed to the build context under its file name.

Downloads are kept by sha256 under the user's cache (`$XDG_CACHE_HOME/gpumatrix/extensions`, else
`~/.cache/gpumatrix/extensions`): a file whose bytes match its pin is never fetched again, and one that does not match
is never used. A path inside the project is read in place.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import requests as http
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from . import layout
from .cells import Cell, ExtensionSpec
from .errors import UsageError, WorkFailed
from .project import Project
from .secrets import redact

BUILD_TOOLS = ("setuptools==84.2.1", "wheel==0.48.0", "ninja==1.13.2")  # what an sdist build gets, no isolation
COMPILE_JOB_GIB = 4  # memory per compile job when max_jobs is unset: MAX_JOBS = min(cores, memory / 4 GiB)
CHUNK = 1 << 20


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gpumatrix" / "extensions"


def context_files(project: Project, cell: Cell, say: Callable[[str], None] | None = None) -> tuple[tuple[str, Path], ...]:
    """(name in the build context, local file) of every extension of the cell, each checked against its sha256."""
    return tuple((f"{layout.EXTENSIONS_IN_CONTEXT}/{spec.filename}", local_file(project, spec, say))
                 for spec in cell.extensions)


def local_file(project: Project, spec: ExtensionSpec, say: Callable[[str], None] | None = None) -> Path:
    if "://" not in spec.source:
        path = project.root / spec.source
        if not path.is_file():
            raise UsageError(f"{project.matrix}: extension {spec.name}: {spec.source} is not a file in the project")
        _check_sha256(project, spec, path)
        return path
    kept = cache_dir() / spec.sha256 / spec.filename
    if kept.is_file() and sha256_of(kept) == spec.sha256:
        return kept
    if say is not None:
        say(f"extension {spec.name}: fetching {redact(spec.source)}")
    _download(spec, kept)
    _check_sha256(project, spec, kept)
    return kept


def sha256_of(path: Path) -> str:
    """The file's sha256, read once per process for the same size and mtime: cells and flavours share files."""
    stat = path.stat()
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_sha256(project: Project, spec: ExtensionSpec, path: Path) -> None:
    found = sha256_of(path)
    if found != spec.sha256:
        if path.is_relative_to(cache_dir()):
            path.unlink()
        raise UsageError(f"{project.matrix}: extension {spec.name}: {spec.filename} has sha256 {found}, matrix.yaml "
                         f"pins {spec.sha256}; nothing was built (a changed upstream file, or a wrong pin)")


def _retryable(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return isinstance(exc, http.RequestException) and (response is None or response.status_code >= 500)


@retry(retry=retry_if_exception(_retryable), stop=stop_after_attempt(3), wait=wait_exponential(min=1, max=8),
       reraise=True)
def _fetch(url: str, dest: Path) -> None:
    with http.get(url, timeout=60, stream=True) as response:
        response.raise_for_status()
        with open(dest, "wb") as fh:
            for block in response.iter_content(CHUNK):
                fh.write(block)


def _download(spec: ExtensionSpec, dest: Path) -> None:
    """Into a temporary file beside `dest`, renamed into place only when whole: a failed fetch leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    os.close(fd)
    try:
        _fetch(spec.source, Path(tmp))
        os.replace(tmp, dest)
    except http.RequestException as exc:
        response = getattr(exc, "response", None)
        where = f"extension {spec.name}: {redact(spec.source)}"
        if response is not None and response.status_code < 500:
            raise UsageError(f"{where}: HTTP {response.status_code} {response.reason}; check the URL in "
                             "matrix.yaml") from None
        raise WorkFailed(f"{where} cannot be fetched ({type(exc).__name__}); nothing was built") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
