"""What a refresh moved, as the body of its pull request: compatibility rows, base-image digests and lock pins.

`changes --save DIR` keeps a copy of the refreshed files before the refresh (the generated compatibility rows,
locks/bases.yaml and the cells' locks); `changes --since DIR` compares the files now with that copy and writes one
markdown table, a row per thing that moved.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import bases, compat, compatsources
from .lockfile import pinned
from .project import Project, read_input

COMPAT_COPY = "compat-generated.yaml"
LOCKS_COPY = "locks"


@dataclass(frozen=True)
class Change:
    what: str
    before: str
    after: str


def save(project: Project, where: Path, generated: Path | None = None) -> None:
    """Copy what a refresh may rewrite into `where` (emptied first)."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copy2(generated or compat.generated_path(), where / COMPAT_COPY)
    if project.locks.is_dir():
        shutil.copytree(project.locks, where / LOCKS_COPY)


def since(project: Project, where: Path, generated: Path | None = None) -> list[Change]:
    return (compat_changes(where / COMPAT_COPY, generated or compat.generated_path())
            + base_changes(where / LOCKS_COPY / project.bases.name, project.bases)
            + lock_changes(where / LOCKS_COPY, project.locks))


def compat_changes(before: Path, after: Path) -> list[Change]:
    moved = compatsources.row_changes(compat.read_generated(before), compat.read_generated(after))
    return [Change(f"compat: {what}", "", how) for what, how in moved]


def base_changes(before: Path, after: Path) -> list[Change]:
    old, new = _digests(before), _digests(after)
    return [Change(f"base `{ref}`", old.get(ref, "none"), new.get(ref, "none"))
            for ref in sorted(set(old) | set(new)) if old.get(ref) != new.get(ref)]


def _digests(path: Path) -> dict[str, str]:
    return {ref: pin.digest[:19] for ref, pin in bases.read_pins(path).items()}  # sha256: and 12 hex digits


def lock_changes(before: Path, after: Path) -> list[Change]:
    changes = []
    names = {path.name for folder in (before, after) if folder.is_dir() for path in folder.glob("*.txt")}
    for name in sorted(names):
        old, new = _pins(before / name), _pins(after / name)
        cell = name.removesuffix(".txt")
        if old is None or new is None:
            changes.append(Change(f"lock `{cell}`", "none" if old is None else f"{len(old)} packages",
                                  "none" if new is None else f"{len(new)} packages"))
            continue
        changes += [Change(f"lock `{cell}`: {package}", old.get(package, "none"), new.get(package, "none"))
                    for package in sorted(set(old) | set(new)) if old.get(package) != new.get(package)]
    return changes


def _pins(path: Path) -> dict[str, str] | None:
    return pinned(read_input(path, "lock")) if path.is_file() else None


def table(changes: list[Change]) -> str:
    if not changes:
        return "Nothing moved: the compatibility rows, base digests and locks are as their sources say.\n"
    rows = ["| what | before | after |", "|---|---|---|"]
    rows += [f"| {c.what} | {c.before or ''} | {c.after} |" for c in changes]
    return "\n".join(rows) + "\n"
