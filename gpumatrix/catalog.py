"""The catalog of pushed images: out/catalog/images.json (one entry per cell, keyed by cell name) and images.md.

`push` adds what it pushed (and drops a cell whose push failed), `catalog` merges the catalogs of several CI jobs,
and `doctor --catalog` reads it. Entries are validated wherever a catalog is read.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .project import read_input, write_atomic
from .report import human_size

if TYPE_CHECKING:
    from .push import PushOutcome, PushRequest


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
