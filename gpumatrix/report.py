"""Everything the user reads: tables, JSON and the one-line messages. The pipeline steps only return data."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from .cells import Cell, Skipped

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def cell_record(cell: Cell, tags: list[str]) -> dict:
    return {
        "name": cell.name,
        "cuda": cell.cuda,
        "python": cell.python,
        "torch": cell.torch_pin,
        "variant": cell.variant,
        "companions": dict(cell.companions),
        "base_image": cell.base_image,
        "runtime_image": cell.runtime_image,
        "index_url": cell.index_url,
        "archs": list(cell.archs),
        "wheel_archs": list(cell.wheel_archs),
        "driver_floor": cell.driver_floor,
        "layers": list(cell.layers),
        "tags": tags,
    }


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def cells_table(records: list[dict], skipped: tuple[Skipped, ...], show_skipped: bool) -> None:
    table = Table(title=f"{len(records)} cells", title_justify="left")
    table.add_column("cell", no_wrap=True)
    for column in ("torch", "base", "target archs", "layers"):
        table.add_column(column)
    for r in records:
        archs = " ".join(r["archs"]) or "-"
        table.add_row(r["name"], r["torch"], r["base_image"], archs, " ".join(r["layers"]) or "-")
    out.print(table)
    if show_skipped:
        for s in skipped:
            out.print(f"skipped {s.name}: {s.reason}")
    elif skipped:
        out.print(f"{len(skipped)} combinations of the axes have no wheel and were skipped (list --skipped shows why)")


def problem(message: str) -> None:
    for line in message.splitlines() or [message]:
        err.print(f"error: {line}", markup=False)


def info(message: str) -> None:
    err.print(message, markup=False)
