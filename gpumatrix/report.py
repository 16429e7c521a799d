"""Everything the user reads: tables, JSON and the one-line messages. The pipeline steps only return data."""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console
from rich.table import Table

from .cells import Cell, Skipped
from .secrets import redact


class _Console(Console):
    """Every string printed goes through secrets.redact: no credential reaches a terminal or a CI log."""

    def print(self, *objects, **kwargs) -> None:
        super().print(*(redact(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _width(stream) -> int | None:
    """A terminal's own width. Elsewhere (a CI log, a file) rich would cut tables at 80 columns: take $COLUMNS when
    it is set, else a width every table here fits in."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else NOT_A_TERMINAL_WIDTH


NOT_A_TERMINAL_WIDTH = 250
out = _Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = _Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


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


class BuildProgress:
    """Live progress of the builds: cell, stage, step n/m, elapsed; step output only with --verbose."""

    def __init__(self, names: list[str], verbose: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.verbose = verbose
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[stage]:>8} step {task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.tasks = {n: self.progress.add_task(n, total=None, stage="", start=False) for n in names}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, cell: str, step, line: str | None) -> None:
        task = self.tasks[cell]
        if step is None:
            self.progress.update(task, stage="done", total=1, completed=1)
            self.progress.console.print(f"{cell}: {line}", markup=False)
            return
        self.progress.start_task(task)
        self.progress.update(task, stage=step.stage, total=step.total, completed=step.number)
        if line is not None and self.verbose:
            self.progress.console.print(f"{cell} | {line}", markup=False)


def build_summary(outcomes) -> None:
    for o in outcomes:
        if o.error:
            err.print(f"\n{o.cell} failed:\n{o.error}", markup=False)
    table = Table(title="build summary", title_justify="left")
    for column in ("cell", "status", "image id", "size", "duration", "cache"):
        table.add_column(column, no_wrap=True)
    for o in outcomes:
        table.add_row(
            o.cell,
            o.status,
            (o.image_id or "-").removeprefix("sha256:")[:12],
            human_size(o.size),
            f"{o.duration:.1f}s",
            f"{o.cache_hits}/{o.layer_steps} cached" if o.steps else "-",
        )
    err.print(table)


def human_size(size: int | None) -> str:
    """1000-based, as registries and `docker images` show sizes: 812 B, 1.2 MB, 7.9 GB; "-" when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "-"
