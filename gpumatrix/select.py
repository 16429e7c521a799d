"""Pick cells by --cuda/--python/--torch; a filter that matches nothing says why."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version

from . import compat
from .cells import Cell, Expansion, cell_name
from .errors import UsageError


PLAIN = "none"  # --flavour none: only the cells without a flavour (CI jobs select exactly one cell with it)


@dataclass(frozen=True)
class Filters:
    cuda: str | None = None
    python: str | None = None
    torch: str | None = None
    flavour: str | None = None

    def matches(self, cell: Cell) -> bool:
        return all(
            want is None or want == got
            for want, got in ((self.cuda, cell.cuda), (self.python, cell.python), (self.torch, cell.torch),
                              (self.flavour, cell.flavour or PLAIN))
        )

    def describe(self) -> str:
        given = [f"--{k} {v}" for k, v in (("cuda", self.cuda), ("python", self.python), ("torch", self.torch),
                                           ("flavour", self.flavour)) if v]
        return " ".join(given) or "(no filters)"


def cell_filters(cell: Cell) -> tuple[str, str]:
    """(command-line flags, make variables) that select exactly this cell, its flavour (or none) included."""
    flavour = cell.flavour or PLAIN
    cli = f"--cuda {cell.cuda} --python {cell.python} --torch {cell.torch} --flavour {flavour}"
    make = f"CUDA={cell.cuda} PYTHON={cell.python} TORCH={cell.torch} FLAVOUR={flavour}"
    return cli, make


def select(expansion: Expansion, filters: Filters) -> list[Cell]:
    """Every cell that matches the filters; none at all is a UsageError that explains why."""
    found = [cell for cell in expansion.cells if filters.matches(cell)]
    if not found:
        raise UsageError(explain_no_match(expansion, filters))
    return found


def choose_one(expansion: Expansion, filters: Filters) -> tuple[Cell, str]:
    """One cell: the matrix's default Python and the default torch for the CUDA, unless the filters narrow them."""
    candidates = select(expansion, filters)
    reasons = []
    if filters.flavour is None and any(c.flavour is None for c in candidates):
        candidates = [c for c in candidates if c.flavour is None]  # a flavour is only built when asked for
    if filters.python is None:
        default_py = expansion.matrix.defaults.python
        if any(c.python == default_py for c in candidates):
            candidates = [c for c in candidates if c.python == default_py]
            reasons.append(f"Python {default_py} is the matrix default")
        else:
            newest = max((c.python for c in candidates), key=Version)
            candidates = [c for c in candidates if c.python == newest]
            reasons.append(f"Python {newest} is the newest for these filters (default {default_py} has no cell)")
    if filters.torch is None:
        candidates, why = _default_torch(expansion, candidates)
        reasons.append(why)
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise UsageError(f"{filters.describe()} matches {len(candidates)} cells ({names}); add --cuda or use --all")
    return candidates[0], "; ".join(reasons)


def _default_torch(expansion: Expansion, candidates: list[Cell]) -> tuple[list[Cell], str]:
    cudas = {c.cuda for c in candidates}
    pinned = {expansion.matrix.defaults.torch.get(cuda) for cuda in cudas}
    if len(cudas) == 1 and None not in pinned:
        torch = pinned.pop()
        chosen = [c for c in candidates if c.torch == torch]
        if chosen:
            return chosen, f"torch {torch} is defaults.torch for CUDA {cudas.pop()}"
    newest = max((c.torch for c in candidates), key=Version)
    return [c for c in candidates if c.torch == newest], f"torch {newest} is the newest torch for these filters"


def explain_no_match(expansion: Expansion, filters: Filters) -> str:
    """Why nothing matched: an incompatible combination (with the reason), or simply not in the matrix."""
    head = f"no cell matches {filters.describe()}"
    reason = _incompatibility(filters) or _skipped_reason(expansion, filters)
    if reason:
        return f"{head}: {reason}"
    return f"{head}: not in the matrix; {_neighbours(expansion, filters)}"


def _incompatibility(filters: Filters) -> str | None:
    try:
        if filters.cuda:
            compat.cuda_base(filters.cuda)
        if filters.torch:
            if filters.cuda:
                compat.variant_for(filters.torch, filters.cuda)
            if filters.python:
                compat.check_python(filters.torch, filters.python)
    except compat.Incompatible as exc:
        return str(exc)
    return None


def _skipped_reason(expansion: Expansion, filters: Filters) -> str | None:
    for skipped in expansion.skipped:
        if filters.cuda and filters.python and filters.torch:
            if skipped.name == cell_name(filters.cuda, filters.python, filters.torch):
                return skipped.reason
    return None


def _neighbours(expansion: Expansion, filters: Filters) -> str:
    loose = [c for c in expansion.cells if filters.cuda is None or c.cuda == filters.cuda]
    pool = loose or list(expansion.cells)
    label = f"cells for CUDA {filters.cuda}" if loose and filters.cuda else "cells in the matrix"
    names = ", ".join(c.name for c in pool[:8]) + (", ..." if len(pool) > 8 else "")
    return f"{label}: {names}"
