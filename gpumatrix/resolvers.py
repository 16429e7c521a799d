"""The two resolvers of the lock step: uv (`uv pip compile`, the default) and pip-tools (`pip-compile`). Each gets the
same request and writes the same lock body (pip-tools' format, which lockfile.py owns); this module owns their command
lines and what their failures mean. lock.py runs them in the lock container."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename,
                             parse_wheel_filename)
from packaging.version import InvalidVersion

from .cells import Cell
from .errors import UsageError, WorkFailed
from .lockfile import RESOLVERS, resolver_version
from .secrets import redact

NAME = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
# pip (the torch stage's dry run, and pip-compile): a requirement that no index serves
PIP_NOT_FOUND = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the "
                           rf"requirement) {NAME}")
# pip-compile prints no "The conflict is caused by" (that is pip's own command line); what it leaves is pip's one
# ERROR line and the resolver's causes in the ResolutionImpossible it raises: each a requirement and the candidate
# that asked for it (None: the .in files or the constraints).
PIP_CANNOT = re.compile(r"ERROR: (Cannot install .*? because these package versions have conflicting dependencies)")
PIP_CAUSE = re.compile(r"RequirementInformation\(requirement=\w+\('([^']+)'\), parent=(?:None|\w+\('([^'\s]+))")
# uv's first cause when a requirement is on no index: the package, or the version asked for
UV_NOT_FOUND = re.compile(rf"^\s*cause: Because (?:{NAME} was not found in the package registry"
                          rf"|there (?:is|are) no versions? of {NAME})", re.MULTILINE)
UV_NO_SOLUTION = re.compile(r"^error: No solution found when resolving dependencies.*$", re.MULTILINE)
UV_UNREACHED = re.compile(r"^\s*cause: Failed to fetch: (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Request:
    """What a resolver is asked: the cell's layers against its torch stage, with hashes, for one interpreter."""
    cell: Cell
    tools: str  # the venv that holds both resolvers
    python: str  # the interpreter to resolve for: the base venv's
    index_url: str  # the cell's torch index, an extra index beside PyPI
    constraints: str  # the torch stage's freeze
    never_written: list[str]  # the torch stage's package names: resolved against, never in the lock
    output: str  # the output file; what it holds when the resolver starts is its starting point
    layers: list[str]


def install_pins(cell: Cell) -> list[str]:
    """Both resolvers (their names are their PyPI projects), at the versions a lock's header names."""
    return [f"{name}=={resolver_version(cell, name)}" for name in RESOLVERS]


def command(req: Request) -> list[str]:
    return _uv(req) if req.cell.resolver == "uv" else _pip_compile(req)


def _uv(req: Request) -> list[str]:
    """pip-compile's flags in uv's words. The torch index is an extra index with pip's meaning (the best version
    across both indexes, `unsafe-best-match`), not uv's default of taking a package only from the first index that
    has it; uv writes no header, no index URL and no extras or markers by default."""
    return [
        f"{req.tools}/bin/uv", "pip", "compile", "--quiet", "--no-header", "--generate-hashes", "--system-certs",
        "--python", req.python, "--extra-index-url", req.index_url, "--index-strategy", "unsafe-best-match",
        "--constraint", req.constraints, *(["--prerelease", "allow"] if req.cell.pre else []),
        *[f"--no-emit-package={n}" for n in req.never_written],
        "--output-file", req.output, *req.layers,
    ]


def _pip_compile(req: Request) -> list[str]:
    return [
        f"{req.tools}/bin/pip-compile", "--quiet", "--no-header", "--generate-hashes", "--no-allow-unsafe",
        "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
        "--extra-index-url", req.index_url, "--constraint", req.constraints,
        *(["--pre"] if req.cell.pre else []),
        *[f"--unsafe-package={n}" for n in req.never_written],
        "--output-file", req.output, *req.layers,
    ]


def title(cell: Cell) -> str:
    return "uv pip compile" if cell.resolver == "uv" else "pip-compile"


def failure(cell: Cell, index_url: str, output: str, where: Callable[[str], str]) -> Exception | None:
    """What a failed resolver run means, from all it printed: an index that did not answer (exit 1), a conflict or a
    requirement on no index (the user's input, exit 2; `where` names the .in line of a package); None for anything
    else (then the resolver's own last lines are the message)."""
    uv = cell.resolver == "uv"
    unreached = UV_UNREACHED.search(output) if uv else None
    if unreached:
        return WorkFailed(f"an index stopped answering during uv pip compile ({redact(unreached.group(1))}); "
                          "no lock written: a lock resolved without that index's answer cannot be trusted")
    missing = (UV_NOT_FOUND if uv else PIP_NOT_FOUND).search(output)
    if missing:
        name = next(group for group in missing.groups() if group)
        return UsageError(f"{where(name)}: {name}: no such package or version on PyPI or {redact(index_url)} "
                          f"(cell {cell.name})")
    causes = _uv_causes(output) if uv else _pip_causes(output)
    if not causes:
        return None
    return UsageError(f"{cell.name}: the app layers cannot be resolved together with the torch stage:\n"
                      + "\n".join(f"  {line}" for line in causes[:8])
                      + f"\n  (the torch stage's versions, the lock's `# torch-stage:` set, are constraints: torch "
                        f"{cell.torch_pin} comes with them from the torch index {redact(index_url)}, and they are "
                        "fixed; loosen the .in lines that ask for others, or pin a version with torch: "
                        "`torch_stage_pins` in matrix.yaml)")


def _uv_causes(output: str) -> list[str]:
    """uv's "Because ..." lines after "No solution found"; uv does not mark constraints, so the note after them says
    which versions are the torch stage's."""
    found = UV_NO_SOLUTION.search(output)
    if found is None:
        return []
    return [re.sub(r"^cause:\s*", "", line.strip()) for line in output[found.end():].splitlines() if line.strip()]


def _pip_causes(output: str) -> list[str]:
    """pip's ERROR line, then each requirement and who asked for it, without the traceback around them."""
    head = PIP_CANNOT.search(output)
    causes = list(dict.fromkeys(PIP_CAUSE.findall(output)))
    return ([head.group(1)] if head else []) + [
        f"{_candidate(url)} depends on {requirement}" if url
        else f"the .in files or the torch stage ask for {requirement}"
        for requirement, url in causes]


def _candidate(url: str) -> str:
    """`name version` of the distribution file a URL names; the file name itself when it is none."""
    filename = url.rsplit("/", 1)[-1]
    for parse in (parse_wheel_filename, parse_sdist_filename):
        try:
            name, version, *_ = parse(filename)
            return f"{name} {version}"
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
    return filename
