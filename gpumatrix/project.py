"""Where a project's files live: everything is relative to the directory that holds matrix.yaml."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError, WorkFailed

MAX_INPUT_BYTES = 1_000_000  # a matrix, .in file, lock or pin file past this is no hand-written input: refuse at once


@dataclass(frozen=True)
class Project:
    matrix: Path

    @property
    def root(self) -> Path:
        return self.matrix.resolve().parent

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def docker(self) -> Path:
        return self.root / "docker"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def bases(self) -> Path:
        """The base images' digests (`build.py bases`), beside the locks they share a purpose with."""
        return self.locks / "bases.yaml"

    @property
    def requirements(self) -> Path:
        return self.root / "requirements"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def dockerfile(self, cell_name: str) -> Path:
        return self.docker / cell_name / "Dockerfile"

    def lock(self, cell_name: str) -> Path:
        return self.locks / f"{cell_name}.txt"

    @property
    def build_records(self) -> Path:
        """Written by `build.py build`, read by `build.py test`: the bases each image id was built on."""
        return self.out / "builds.json"

    def test_record(self, cell_name: str, out: Path | None = None) -> Path:
        """Written by `build.py test`, read by `build.py push`: did this image id pass its checks?"""
        return (out or self.out / "tests") / f"{cell_name}.json"

    def relative(self, path: Path) -> str:
        """`path` relative to the project root when it lies under it, for messages and records."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)


def read_input(path: Path, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """A user's file as UTF-8 text; missing, a directory, too large or not UTF-8 is one line naming it (UsageError)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: cannot read the {what}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise UsageError(f"{path}: the {what} is larger than {limit:,} bytes, the limit for hand-written input")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    A directory in the way is the user's input (UsageError); a write that fails (a full disk) is WorkFailed.
    """
    raw = data.encode() if isinstance(data, str) else data
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory; give a file path, or move the directory away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot write {path}: a file stands where a directory of its path belongs") from None
    except OSError as exc:
        raise WorkFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, above all: the old file stays as it was
            raise WorkFailed(f"cannot write {path}: {exc.strerror or exc}; the previous file is unchanged") from None
        raise
