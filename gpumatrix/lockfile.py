"""The lock file format: the header that records what a lock was compiled from, and the checks on it.

A lock is a header block and a body. The header block is the leading `#` lines up to the first empty line; the
body is everything after that empty line (the bytes after the file's first "\\n\\n"), exactly as pip-compile wrote it
minus its unsafe-packages section. The header's `# body-sha256:` is the sha256 of the body's UTF-8 bytes, so a lock
cut short or edited by hand is refused before it is used.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .cells import Cell
from .errors import UsageError
from .project import Project, read_input
from .select import cell_filters

PIP_TOOLS_VERSION = "7.6.2"
TORCH_STAGE_PATTERNS = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")
REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")
INCLUDE_LINE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)\s+(\S+)")
HEADER_FIELD = re.compile(r"^# (inputs-sha256|torch-constraints-sha256|body-sha256|pip-tools|uv|nightly): (\S+)$",
                          re.MULTILINE)
RESOLVERS = ("uv", "pip-tools")  # the header field that names the resolver, and its version, is one of these
HEADER_START = "# gpumatrix lock for "
HASH_LINE = re.compile(r"\s+--hash=sha256:[0-9a-f]{64}(\s+\\)?")


def fix(cell: Cell, rel: str) -> str:
    """The narrowest command that re-makes this one lock, and what to commit."""
    cli, make = cell_filters(cell)
    return f"run `make lock {make}` (python build.py lock {cli}) and commit {rel}"


# ---- the .in files ----

@dataclass(frozen=True)
class _Include:
    source: Path  # the .in file that holds the line
    number: int
    option: str  # -r, --requirement, -c or --constraint
    target: str  # as written
    path: Path  # resolved


def _where(project: Project, inc: _Include) -> str:
    target = inc.target if inc.target.isprintable() else repr(inc.target)
    return f"{project.relative(inc.source)}:{inc.number}: {inc.option} {target}"


def _resolve(path: Path) -> Path | None:
    """The real path, or None for one that is no usable path (a NUL byte, a symlink loop, a name too long)."""
    try:
        return path.resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def _read_in(project: Project, path: Path, via: _Include | None, cell: Cell) -> str:
    real = _resolve(path)
    if real is None:
        raise UsageError(f"{_where(project, via) if via else project.relative(path)}: not a usable file path "
                         f"(cell {cell.name})")
    if not real.is_relative_to(project.root):
        if via is not None:
            raise UsageError(f"{_where(project, via)}: resolves to {real}, outside the project ({project.root}); "
                             "layers may include only files inside the project (the lock step copies nothing else)")
        raise UsageError(f"{project.relative(path)}: resolves to {real}, outside the project ({project.root}); "
                         f"layer files must live inside the project (cell {cell.name})")
    if not os.path.lexists(path):
        missing = f"no such requirements file {project.relative(path)}"
        raise UsageError(f"{_where(project, via)}: {missing}" if via else f"{missing} (a layer of cell {cell.name})")
    try:
        return read_input(path, "requirements file")
    except UsageError as exc:
        raise UsageError(f"{_where(project, via)}: {exc}" if via else f"{exc} (a layer of cell {cell.name})") from None


def _includes(path: Path, text: str) -> list[_Include]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        m = INCLUDE_LINE.match(line)
        if m:
            target = path.parent / m.group(2)
            found.append(_Include(path, number, m.group(1), m.group(2), _resolve(target) or target))
    return found


def input_texts(project: Project, cell: Cell) -> dict[Path, str]:
    """Every .in file of the cell with its text, in a stable order (the layers, then their includes breadth first).

    Refused (UsageError, one line): a file that cannot be read as UTF-8 text of at most 1 MB, an include that
    resolves outside the project, and an include loop (pip would follow it forever).
    """
    roots = [project.requirements / f"{layer}.in" for layer in cell.layers]
    texts: dict[Path, str] = {}
    edges: dict[Path, list[_Include]] = {}
    for root in roots:
        if root in edges:
            continue
        texts[root] = _read_in(project, root, None, cell)
        edges[root] = _includes(root, texts[root])
        # depth-first with an explicit stack: `stack[i]` was reached through `via[i]`
        stack, via, todo = [root], [None], [iter(edges[root])]
        while todo:
            inc = next(todo[-1], None)
            if inc is None:  # every include of stack[-1] followed: it is done
                stack.pop()
                via.pop()
                todo.pop()
                continue
            if inc.path in stack:
                chain = [*via[stack.index(inc.path) + 1:], inc]
                links = " -> ".join(f"{project.relative(i.source)}:{i.number} {i.option} {i.target}" for i in chain)
                raise UsageError(f"{project.relative(chain[0].source)}:{chain[0].number}: include loop: {links} -> "
                                 f"back to {project.relative(inc.path)}; pip would follow it forever: break the loop")
            if inc.path in edges:
                continue
            texts[inc.path] = _read_in(project, inc.path, inc, cell)
            edges[inc.path] = _includes(inc.path, texts[inc.path])
            stack.append(inc.path)
            via.append(inc)
            todo.append(iter(edges[inc.path]))
    ordered: dict[Path, str] = {}
    queue = list(roots)
    while queue:
        path = queue.pop(0)
        if path in ordered:
            continue
        ordered[path] = texts[path]
        queue += [inc.path for inc in edges[path]]
    extensions = extension_requirements(cell)
    if extensions:
        ordered[project.requirements / EXTENSIONS_IN] = extensions
    return ordered


EXTENSIONS_IN = "_extensions.in"  # the extensions' requirements, as the resolver reads them


def extension_requirements(cell: Cell) -> str:
    """The `requires` of the cell's extensions as one more input of its lock (no file on disk holds it; its name
    cannot be a layer's, whose names start with a letter or digit); empty when they have none."""
    lines = [f"{req}  # {spec.name}\n" for spec in cell.extensions for req in spec.requires]
    if not lines:
        return ""
    return "".join(["# the `requires` of the cell's extensions in matrix.yaml\n", *lines])


def input_files(project: Project, cell: Cell) -> list[Path]:
    """The cell's layer files plus every file they pull in with -r/-c, in a stable order."""
    return list(input_texts(project, cell))


def validate_inputs(project: Project, cell: Cell) -> None:
    """Every line of the cell's .in files is a requirement or a -r/-c include: anything else is named and refused."""
    problems = []
    for path, text in input_texts(project, cell).items():
        rel = project.relative(path)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#") or INCLUDE_LINE.match(line):
                continue
            if line.startswith("-"):
                problems.append(f"{rel}:{number}: option {line.split()[0]!r} is not allowed "
                                "in a layer (only -r/-c includes; indexes come from matrix.yaml)")
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                problems.append(f"{rel}:{number}: invalid requirement {line!r}: {exc}")
                continue
            if TORCH_STAGE_PATTERNS.match(canonicalize_name(req.name)):
                problems.append(f"{rel}:{number}: {req.name} is a torch-stage package: the torch stage installs it "
                                f"from the torch index ({cell.torch_pin} for cell {cell.name}), and a second copy "
                                "from PyPI would replace it; remove the line (the torch version is chosen in "
                                "matrix.yaml)")
    if problems:
        raise UsageError("\n".join(problems))


def requirement_lines(project: Project, cell: Cell):
    """(`file:line`, the line as written, its Requirement) for every requirement line of the cell's .in files."""
    for path, text in input_texts(project, cell).items():
        for number, raw in enumerate(text.splitlines(), start=1):
            try:
                req = Requirement(raw.split(" #", 1)[0].strip())
            except InvalidRequirement:
                continue
            yield f"{project.relative(path)}:{number}", raw.strip(), req


def where_required(project: Project, cell: Cell, name: str) -> str:
    """file:line of the .in line that names `name`, for messages about a requirement."""
    wanted = canonicalize_name(name)
    for where, _, req in requirement_lines(project, cell):
        if canonicalize_name(req.name) == wanted:
            return where
    return "a dependency of the cell's layers"


def inputs_digest(project: Project, cell: Cell) -> str:
    """What the lock was compiled from: the .in files and the cell's torch stage definition."""
    h = hashlib.sha256()
    for path, text in input_texts(project, cell).items():
        h.update(str(path.relative_to(project.root)).encode() + b"\0" + text.encode("utf-8") + b"\0")
    stage = (cell.python, cell.torch_pin, cell.companions, cell.pre)
    h.update(repr(stage + ((cell.torch_stage_pins,) if cell.torch_stage_pins else ())).encode())
    return h.hexdigest()


# ---- the lock: header and body ----

def split_lock(lock_text: str) -> tuple[str, str | None]:
    """(header block, body): the body is everything after the first empty line; None when there is none."""
    end = lock_text.find("\n\n")
    if end < 0:
        return lock_text, None
    return lock_text[:end + 1], lock_text[end + 2:]


def body_digest(body: str) -> str:
    """The `# body-sha256:` of a lock: sha256 of the UTF-8 bytes after the header block's empty line."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def header_fields(lock_text: str) -> dict[str, str]:
    return dict(HEADER_FIELD.findall(split_lock(lock_text)[0]))


def pinned(lock_text: str) -> dict[str, str]:
    """name -> version of every requirement line in a lock."""
    return {canonicalize_name(m.group(1)): m.group(3) for m in map(REQ_LINE.match, lock_text.splitlines()) if m}


TORCH_STAGE_PREFIX = "# torch-stage: "
UNSAFE_SECTION = "# The following packages are considered to be unsafe"


def resolver_version(cell: Cell, resolver: str) -> str:
    """The version of `resolver` that locks this cell: uv is the cell's own `uv` (the one that installs the lock)."""
    return cell.uv if resolver == "uv" else PIP_TOOLS_VERSION


def format_lock(cell: Cell, inputs_sha256: str, body: str, torch_stage: list[str], resolver: str) -> str:
    """The header block, an empty line, the body. `# body-sha256:` covers the body: every byte after that empty line
    (split_lock and body_digest read it back). pip-compile's unsafe-packages section is cut from the body (uv writes
    none: it is told not to emit those packages at all)."""
    body = body.split(UNSAFE_SECTION)[0].rstrip() + "\n"
    constraints = "\n".join(torch_stage) + "\n"
    lines = [
        f"{HEADER_START}{cell.name}. Written by `python build.py lock`; do not edit by hand.",
        f"# layers: {' '.join(cell.layers)}",
        f"# inputs-sha256: {inputs_sha256}",
        f"# torch-constraints-sha256: {hashlib.sha256(constraints.encode()).hexdigest()}",
        f"# body-sha256: {body_digest(body)}",
        f"# {resolver}: {resolver_version(cell, resolver)}",
        *_nightly_lines(cell),
        "# The torch stage installs these; they are never installed from this lock:",
        *[f"{TORCH_STAGE_PREFIX}{line}" for line in torch_stage],
        "",
    ]
    return "\n".join(lines) + "\n" + body


def _nightly_lines(cell: Cell) -> list[str]:
    """A nightly pin is valid for that one dated build only; the header says which."""
    date = re.search(r"\.dev(\d{4})(\d{2})(\d{2})$", cell.torch)
    if not date:
        return []
    day = "-".join(date.groups())
    return [f"# nightly: {cell.torch_pin} (the nightly of {day}; valid for that build only, refresh with `make lock`)"]


def torch_stage_pins(lock_text: str) -> dict[str, str]:
    """name (as the torch stage's freeze wrote it) -> version, from the header's `# torch-stage:` lines."""
    header = split_lock(lock_text)[0]
    pins = {}
    for line in header.splitlines():
        if line.startswith(TORCH_STAGE_PREFIX):
            name, _, version = line[len(TORCH_STAGE_PREFIX):].strip().partition("==")
            pins[name] = version
    return pins


def torch_stage_names(lock_text: str) -> set[str]:
    return {canonicalize_name(name) for name in torch_stage_pins(lock_text)}


def body_problems(body: str, first_line: int) -> list[tuple[int, str]]:
    """(line, why) for each place where `body` is no pip-tools lock of exact, hashed pins.

    The format pip-compile --generate-hashes writes: `name==version \\`, then `--hash=sha256:<64 hex>` lines joined
    by trailing backslashes (the last without one), comments (`# via ...`, indented or not) and empty lines.
    """
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None  # the requirement awaiting its hashes, and its line
    hashes = 0
    continued = False
    number = first_line - 1
    last = first_line + len(body.splitlines()) - 1

    def close() -> None:
        if pending is not None and hashes == 0:
            out.append((pending[0], f"{pending[1]} has no --hash=sha256 line (every pin must be hashed)"))

    for number, line in enumerate(body.splitlines(), start=first_line):
        if continued:
            m = HASH_LINE.fullmatch(line)
            if m is not None:
                hashes += 1
                continued = m.group(1) is not None
                continue
            ends = " (the lock ends here: cut short)" if number == last else ""
            out.append((number, f"expected `--hash=sha256:<64 hex>` continuing line {number - 1}, "
                                f"found {line.strip()[:80]!r}{ends}"))
            pending, continued = None, False
            if not line.strip() or line[0].isspace():
                continue  # said once: a requirement line that follows is read as one
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            out.append((number, f"{stripped[:60]!r} belongs to no requirement (a hash or option line whose "
                                "requirement or `\\` is gone)"))
            continue
        close()
        pending, hashes = None, 0
        text, continued = (line[:-1].rstrip(), True) if line.endswith("\\") else (line, False)
        why = _not_an_exact_pin(text)
        if why:
            out.append((number, why))
            continue
        pending = (number, text)
    if continued:
        out.append((number, "the lock ends after a `\\`, in the middle of a hash block (cut short)"))
    else:
        close()
    return out


def _not_an_exact_pin(text: str) -> str | None:
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return f"{text[:60]!r} is no requirement line of a pip-tools lock"
    specs = list(req.specifier)
    if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
        return f"{text[:60]!r} is not an exact `name==version` pin"
    return None


def content_problems(rel: str, cell: Cell, lock_text: str) -> tuple[list[str], bool]:
    """What is wrong with the lock itself, whatever the inputs: header block, body format, torch-stage packages,
    the body's digest. At most one line for each damage; each line names the file (and line) and the fix.
    The flag says the lock is past reading (no header block): then nothing else about it is worth saying."""
    header, body = split_lock(lock_text)
    if not lock_text.startswith(HEADER_START):
        return [f"{cell.name}: {rel}:1: not a gpumatrix lock (the `{HEADER_START.strip()} ...` header block of "
                f"`make lock` is missing); {fix(cell, rel)}"], True
    if body is None:
        return [f"{cell.name}: {rel}: the header block never ends (no empty line before the requirements): "
                f"cut short or hand-edited; {fix(cell, rel)}"], True
    out = []
    for number, line in enumerate(header.splitlines(), start=1):
        if not line.startswith("#"):
            out.append(f"{cell.name}: {rel}:{number}: {line[:60]!r} in the header block, where only `#` lines "
                       f"belong: hand-edited; {fix(cell, rel)}")
    first_body_line = header.count("\n") + 2
    for number, why in body_problems(body, first_body_line):
        out.append(f"{cell.name}: {rel}:{number}: {why}; the lock was cut short or hand-edited: {fix(cell, rel)}")
    banned = torch_stage_names(lock_text)
    intruders = [n for n in pinned(body) if n in banned or TORCH_STAGE_PATTERNS.match(n)]
    if intruders:
        out.append(f"{cell.name}: {rel} contains torch-stage package(s) {', '.join(sorted(intruders))}; "
                   "the torch stage owns them; remove them and run `make lock`")
    recorded = header_fields(lock_text).get("body-sha256")
    if recorded is None:
        out.append(f"{cell.name}: {rel} has no `# body-sha256:` header line (written by an older gpumatrix, or "
                   f"hand-edited), so its body cannot be verified; {fix(cell, rel)}")
    elif not out and recorded != body_digest(body):
        out.append(f"{cell.name}: {rel}: the body does not match its `# body-sha256:` header (cut short or "
                   f"hand-edited); {fix(cell, rel)}")
    return out, False


def problems(project: Project, cell: Cell, lock_text: str | None) -> list[str]:
    """Why a lock cannot be used: missing, stale, damaged, or holding a package of the torch stage."""
    rel = project.relative(project.lock(cell.name))
    if lock_text is None:
        return [f"{cell.name}: {rel} is missing; {fix(cell, rel)}"]
    damage, unreadable = content_problems(rel, cell, lock_text)
    if unreadable:
        return damage
    return [f"{cell.name}: {rel} {why}; {fix(cell, rel)}" for why in _stale(project, cell, lock_text)] + damage


def _stale(project: Project, cell: Cell, lock_text: str) -> list[str]:
    found = header_fields(lock_text)
    out = []
    if found.get("inputs-sha256") != inputs_digest(project, cell):
        out.append("is stale (requirements/*.in or the torch pins changed since it was compiled)")
    resolver = next((name for name in RESOLVERS if name in found), None)
    if resolver is None:
        out.append("names no resolver (no `# uv:` or `# pip-tools:` header line)")
    elif found[resolver] != resolver_version(cell, resolver):
        out.append(f"was compiled with {resolver} {found[resolver]}, not {resolver_version(cell, resolver)}")
    return out


def remake_reason(project: Project, cell: Cell, lock_text: str | None) -> str | None:
    """Why `make image` should make this lock before it builds: none yet, or an intact lock that is stale. None for
    a lock that is current, and for a damaged one (the build refuses that; re-making it could lose someone's edit)."""
    if lock_text is None:
        return "no lock yet"
    if content_problems("", cell, lock_text)[0]:
        return None
    stale = _stale(project, cell, lock_text)
    return f"the lock {stale[0]}" if stale else None


def read_lock(project: Project, cell: Cell) -> str | None:
    """The cell's lock as text; None when there is none. A directory, a file over 1 MB or one that is not UTF-8
    is bad input (UsageError, one line)."""
    path = project.lock(cell.name)
    if not path.exists() and not path.is_symlink():
        return None
    return read_input(path, "lock")


def verified_lock(project: Project, cell: Cell) -> bytes | None:
    """The lock bytes a build may use (None for a cell without app layers); anything else is a UsageError."""
    if not cell.layers:
        return None
    text = read_lock(project, cell)
    found = problems(project, cell, text)
    if found:
        raise UsageError("\n".join(found))
    return text.encode("utf-8")


def check_all(project: Project, cells: list[Cell]) -> list[str]:
    out = []
    for cell in cells:
        if not cell.layers:
            continue
        out += problems(project, cell, read_lock(project, cell))
    return out


def orphan_locks(project: Project, all_cells: list[Cell]) -> list[str]:
    """Each locks/*.txt that is the lock of no cell of the matrix (the whole matrix, whatever the filters)."""
    names = {cell.name for cell in all_cells}
    if not project.locks.is_dir():
        return []
    return [f"{project.relative(path)}: the lock of no cell of the matrix (no cell is named {path.stem!r}); "
            f"delete it (git rm {project.relative(path)})"
            for path in sorted(project.locks.glob("*.txt")) if not path.name.startswith(".") and path.stem not in names]
