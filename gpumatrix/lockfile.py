"""The lock file format: the header that records what a lock was compiled from, and the checks on it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .cells import Cell
from .errors import UsageError
from .project import Project

PIP_TOOLS_VERSION = "7.6.2"
TORCH_STAGE_PATTERNS = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")
REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")
INCLUDE_LINE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)\s+(\S+)")
HEADER_FIELD = re.compile(r"^# (inputs-sha256|torch-constraints-sha256|pip-tools|nightly): (\S+)$", re.MULTILINE)


def input_files(project: Project, cell: Cell) -> list[Path]:
    """The cell's layer files plus every file they pull in with -r/-c, in a stable order."""
    seen: dict[Path, None] = {}
    todo = [project.requirements / f"{layer}.in" for layer in cell.layers]
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        if not path.is_file():
            raise UsageError(f"{path}: no such requirements file (named by cell {cell.name})")
        seen[path] = None
        for line in path.read_text().splitlines():
            m = INCLUDE_LINE.match(line)
            if m:
                todo.append((path.parent / m.group(2)).resolve())
    return list(seen)


def validate_inputs(project: Project, cell: Cell) -> None:
    """Every line of the cell's .in files is a requirement or a -r/-c include: anything else is named and refused."""
    problems = []
    for path in input_files(project, cell):
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#") or INCLUDE_LINE.match(line):
                continue
            if line.startswith("-"):
                problems.append(f"{path.relative_to(project.root)}:{number}: option {line.split()[0]!r} is not allowed "
                                "in a layer (only -r/-c includes; indexes come from matrix.yaml)")
                continue
            try:
                Requirement(line)
            except InvalidRequirement as exc:
                problems.append(f"{path.relative_to(project.root)}:{number}: invalid requirement {line!r}: {exc}")
    if problems:
        raise UsageError("\n".join(problems))


def where_required(project: Project, cell: Cell, name: str) -> str:
    """file:line of the .in line that names `name`, for messages about a requirement."""
    wanted = canonicalize_name(name)
    for path in input_files(project, cell):
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            try:
                if canonicalize_name(Requirement(raw.split(" #", 1)[0].strip()).name) == wanted:
                    return f"{path.relative_to(project.root)}:{number}"
            except InvalidRequirement:
                continue
    return "a dependency of the cell's layers"


def inputs_digest(project: Project, cell: Cell) -> str:
    """What the lock was compiled from: the .in files and the cell's torch stage definition."""
    h = hashlib.sha256()
    for path in input_files(project, cell):
        h.update(str(path.relative_to(project.root)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr((cell.python, cell.torch_pin, cell.companions, cell.pre)).encode())
    return h.hexdigest()


def header_fields(lock_text: str) -> dict[str, str]:
    return dict(HEADER_FIELD.findall(lock_text))


def pinned(lock_text: str) -> dict[str, str]:
    """name -> version of every requirement line in a lock."""
    return {canonicalize_name(m.group(1)): m.group(3) for m in map(REQ_LINE.match, lock_text.splitlines()) if m}


def torch_stage_names(lock_text: str) -> set[str]:
    return {canonicalize_name(n) for n in re.findall(r"^# torch-stage: ([^=\s]+)==", lock_text, re.MULTILINE)}


def problems(project: Project, cell: Cell, lock_text: str | None) -> list[str]:
    """Why a lock cannot be used: missing, stale, or holding a package of the torch stage."""
    rel = project.lock(cell.name).relative_to(project.root)
    if lock_text is None:
        return [f"{cell.name}: {rel} is missing"]
    found = header_fields(lock_text)
    out = []
    if found.get("inputs-sha256") != inputs_digest(project, cell):
        out.append(f"{cell.name}: {rel} is stale (requirements/*.in or the torch pins changed since it was compiled)")
    if found.get("pip-tools") != PIP_TOOLS_VERSION:
        out.append(f"{cell.name}: {rel} was compiled with pip-tools {found.get('pip-tools')}, not {PIP_TOOLS_VERSION}")
    banned = torch_stage_names(lock_text)
    intruders = [n for n in pinned(lock_text) if n in banned or TORCH_STAGE_PATTERNS.match(n)]
    if intruders:
        out.append(f"{cell.name}: {rel} contains torch-stage package(s) {', '.join(sorted(intruders))}; "
                   "the torch stage owns them; remove them and run `make lock`")
    return out


def verified_lock(project: Project, cell: Cell) -> bytes | None:
    """The lock bytes a build may use (None for a cell without app layers); anything else is a UsageError."""
    if not cell.layers:
        return None
    path = project.lock(cell.name)
    data = path.read_bytes() if path.is_file() else None
    found = problems(project, cell, data.decode() if data is not None else None)
    if found:
        raise UsageError("\n".join(found) + "\nrun `make lock` (python build.py lock) and commit locks/")
    return data


def check_all(project: Project, cells: list[Cell]) -> list[str]:
    out = []
    for cell in cells:
        if not cell.layers:
            continue
        path = project.lock(cell.name)
        out += problems(project, cell, path.read_text() if path.is_file() else None)
    return out
