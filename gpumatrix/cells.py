"""Expand a validated Matrix into immutable Cells; every compatibility decision is made here, once."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from . import compat, grammar
from .errors import UsageError
from .matrix import Include, Matrix, Settings

DEFAULT_SETTINGS = Settings(
    index_url="https://download.pytorch.org/whl/{variant}",
    nightly_index_url="https://download.pytorch.org/whl/nightly/{variant}",
    pre=False,
    archs=[],
    layers=[],
    companions=["torchvision", "torchaudio"],
    os_packages=[],
    pip="25.3",
    installer="uv",
    uv="0.13.9",
    resolver="uv",
    app_stage="runtime",
    network="default",
    torch_stage_pins=[],
)


@dataclass(frozen=True)
class ExtensionSpec:
    """One compiled extension of a cell: an sdist built against its torch, or a prebuilt wheel made for it."""

    name: str
    kind: str  # sdist | wheel
    source: str  # an http(s) URL or a path inside the project, as matrix.yaml gives it
    filename: str  # its name in the build context and in the rendered Dockerfile
    sha256: str
    env: tuple[tuple[str, str], ...] = ()
    max_jobs: str | None = None  # None: from the builder's cores and memory, at build time
    build_requires: tuple[str, ...] = ()  # exact pins installed before the build (no build isolation)
    requires: tuple[str, ...] = ()  # what it needs at run time besides torch: resolved into the cell's lock


@dataclass(frozen=True)
class Cell:
    name: str
    cuda: str
    python: str
    torch: str
    variant: str
    torch_pin: str
    companions: tuple[tuple[str, str], ...]
    variant_cuda: str | None
    cuda_patch: str | None
    ubuntu: str | None
    cudnn: str | None
    driver_floor: str | None
    base_image: str
    runtime_image: str
    index_url: str
    pre: bool
    archs: tuple[str, ...]
    wheel_archs: tuple[str, ...]
    layers: tuple[str, ...]
    os_packages: tuple[str, ...]
    pip: str
    installer: str
    uv: str
    resolver: str
    app_stage: str
    network: str
    python_source: str
    repository: str
    tags: tuple[str, ...] = field(default=())
    flavour: str | None = None  # cells of one torch stage with different app layers: name-<flavour>
    torch_stage_pins: tuple[tuple[str, str], ...] = ()  # (name, version) installed with torch from the torch index
    builder: str | None = None  # buildkit | classic as matrix.yaml sets it; None: whichever answers
    extensions: tuple[ExtensionSpec, ...] = ()

    @property
    def is_cuda(self) -> bool:
        return self.cuda != "cpu"

    @property
    def torch_stage_packages(self) -> tuple[tuple[str, str], ...]:
        """(name, exact pin) of what the torch stage asks the torch index for: torch, its companions, then the
        matrix's `torch_stage_pins`."""
        return (("torch", self.torch_pin), *self.companions, *self.torch_stage_pins)

    @property
    def require_cuda(self) -> str | None:
        """The CUDA floor for NVIDIA_REQUIRE_CUDA: the higher of the base's and the wheel's CUDA."""
        if not self.is_cuda:
            return None
        return max(self.cuda, self.variant_cuda or self.cuda, key=Version)


@dataclass(frozen=True)
class Skipped:
    cuda: str
    python: str
    torch: str
    reason: str

    @property
    def name(self) -> str:
        return cell_name(self.cuda, self.python, self.torch)


@dataclass(frozen=True)
class Expansion:
    cells: tuple[Cell, ...]
    skipped: tuple[Skipped, ...]
    matrix: Matrix


def cell_name(cuda: str, python: str, torch: str, flavour: str | None = None) -> str:
    prefix = "cpu" if cuda == "cpu" else f"cu{cuda}"
    return f"{prefix}-py{python}-torch{torch}" + (f"-{flavour}" if flavour else "")


def expand(matrix: Matrix, source: Path, requirements_dir: Path) -> Expansion:
    """Axes product minus excludes (combinations without wheels are skipped), plus includes (which must work).

    A mistyped value is one problem, said once with its line: an unknown version, an axis value or a rule that
    yields or selects no cell, an include given twice. A matrix without cells is refused, never rendered.
    """
    problems = _unknown_axis_values(matrix)
    if problems:
        raise UsageError("\n".join(problems))
    product: dict[str, Cell] = {}
    skipped: list[Skipped] = []
    refused: dict[str, list[str]] = {}
    made: list[tuple[str, str, str]] = []  # combinations that gave a cell, or would have but for a refused setting
    for cuda, python, torch in itertools.product(matrix.axes.cuda, matrix.axes.python, matrix.axes.torch):
        if any(rule.matches(cuda, python, torch) for rule in matrix.exclude):
            continue
        try:
            product.setdefault(cell_name(cuda, python, torch), make_cell(matrix, cuda, python, torch))
        except _NoWheel as exc:
            skipped.append(Skipped(cuda, python, torch, str(exc)))
            continue
        except compat.Incompatible as exc:
            refused.setdefault(str(exc), []).append(cell_name(cuda, python, torch))
        made.append((cuda, python, torch))
    problems += [f"{source}: {reason} ({_some(names)})" for reason, names in refused.items()]
    problems += _axis_values_without_cells(matrix, made, skipped) if made else [_no_product(matrix, skipped)]
    problems += _excludes_without_effect(matrix)
    included, found = _included_cells(matrix, source)
    problems += found
    cells = {**product, **{name: cell for name, cell in included.items() if name not in product}}
    problems += _missing_layers(cells.values(), source, requirements_dir)
    if not problems:
        problems += _selectors_without_cells(matrix, list(cells.values()))
    if problems:
        raise UsageError("\n".join(problems))
    ordered = tuple(sorted(cells.values(), key=_sort_key))
    return Expansion(ordered, tuple(skipped), matrix)


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} cell{'s' if len(names) > 1 else ''}: {shown}"


def _unknown_axis_values(matrix: Matrix) -> list[str]:
    """Versions the compatibility data does not know, once each with their line, before any cell is made."""
    problems = []
    for i, cuda in enumerate(matrix.axes.cuda):
        try:
            compat.cuda_base(cuda)
        except compat.Incompatible as exc:
            problems.append(f"{matrix.where('axes', 'cuda', i)}: {exc}")
    for i, torch in enumerate(matrix.axes.torch):
        try:
            compat.require_torch(torch)
        except compat.Incompatible as exc:
            problems.append(f"{matrix.where('axes', 'torch', i)}: {exc}")
    return problems


def _axis_values_without_cells(matrix: Matrix, made: list[tuple[str, str, str]], skipped: list[Skipped]) -> list[str]:
    """An axis value that yields no cell is a typo or a dead entry, never something to drop silently."""
    problems = []
    for position, axis in enumerate(("cuda", "python", "torch")):
        have = {combo[position] for combo in made}
        for i, value in enumerate(getattr(matrix.axes, axis)):
            if value in have:
                continue
            reasons = [s.reason for s in skipped if getattr(s, axis) == value]
            why = f"no wheel: {reasons[0]}" if reasons else "every combination with it is excluded"
            problems.append(f"{matrix.where('axes', axis, i)}: {value} yields no cell ({why})")
    return problems


def _no_product(matrix: Matrix, skipped: list[Skipped]) -> str:
    why = f"no wheel for any, e.g. {skipped[0].name}: {skipped[0].reason}" if skipped else "all are excluded"
    return f"{matrix.where('axes')}: no combination of the axes yields a cell ({why})"


def _excludes_without_effect(matrix: Matrix) -> list[str]:
    combos = list(itertools.product(matrix.axes.cuda, matrix.axes.python, matrix.axes.torch))
    return [f"{matrix.where('exclude', i)}: matches no combination of the axes"
            for i, rule in enumerate(matrix.exclude) if not any(rule.matches(*combo) for combo in combos)]


def _included_cells(matrix: Matrix, source: Path) -> tuple[dict[str, Cell], list[str]]:
    cells: dict[str, Cell] = {}
    first: dict[str, int] = {}
    problems = []
    for i, inc in enumerate(matrix.include):
        name = cell_name(inc.cuda, inc.python, inc.torch, inc.flavour)
        where = matrix.where("include", i)
        if name in first:
            problems.append(f"{where}: {name} is already include[{first[name]}]; give each include once "
                            "(a flavour name once per cell)")
            continue
        first[name] = i
        if inc.layers is not None and inc.flavour is None:
            problems.append(f"{where}: {name}: `layers` goes with `flavour` (a cell of the axes takes "
                            "its layers from settings and overrides)")
            continue
        if inc.flavour is not None and not inc.layers:
            problems.append(f"{where}: flavour {inc.flavour!r} needs `layers` of its own (without them it is the "
                            "plain cell under another name)")
            continue
        try:
            cells[name] = _included(matrix, inc)
        except compat.Incompatible as exc:
            problems.append(f"{where}: include[{i}] {name}: {exc}")
    return cells, problems


def _selectors_without_cells(matrix: Matrix, cells: list[Cell]) -> list[str]:
    """An override or default that selects no cell is a mistyped version: it would silently do nothing."""
    problems = [f"{matrix.where('overrides', i, 'match')}: selects no cell of the matrix"
                for i, o in enumerate(matrix.overrides)
                if not any(o.match.matches(c.cuda, c.python, c.torch) for c in cells)]
    if not any(c.python == matrix.defaults.python for c in cells):
        problems.append(f"{matrix.where('defaults', 'python')}: no cell has Python {matrix.defaults.python}")
    for cuda, torch in matrix.defaults.torch.items():
        if not any(c.cuda == cuda and c.torch == torch for c in cells):
            problems.append(f"{matrix.where('defaults', 'torch', cuda)}: no cell has torch {torch} on CUDA {cuda}")
    return problems


class _NoWheel(compat.Incompatible):
    """No wheel exists for this combination: skipped in the axes product, refused when asked for by name."""


def _included(matrix: Matrix, inc: Include) -> Cell:
    try:
        cell = make_cell(matrix, inc.cuda, inc.python, inc.torch)
    except _NoWheel as exc:
        raise compat.Incompatible(str(exc)) from None
    return cell if inc.flavour is None else flavoured(cell, inc.flavour, inc.layers)


def flavoured(cell: Cell, flavour: str, layers: list[str] | None) -> Cell:
    """The same torch stage as `cell` (same base, Python, torch, index), other app layers, its own name and tag."""
    name = cell_name(cell.cuda, cell.python, cell.torch, flavour)
    return replace(cell, name=name, flavour=flavour, tags=(f"{cell.repository}:{name}",),
                   layers=tuple(cell.layers if layers is None else layers))


def _sort_key(cell: Cell) -> tuple:
    cuda_key = (1, Version("0")) if cell.cuda == "cpu" else (0, Version(cell.cuda))
    return cuda_key, Version(cell.python), Version(cell.torch), cell.flavour or ""


def settings_for(matrix: Matrix, cuda: str, python: str, torch: str) -> Settings:
    """Built-in defaults, then the matrix's `settings`, then every matching override in order."""
    merged = DEFAULT_SETTINGS.model_dump()
    layers = [matrix.settings] + [o for o in matrix.overrides if o.match.matches(cuda, python, torch)]
    for layer in layers:
        merged.update({k: v for k, v in layer.model_dump(exclude={"match"}).items() if v is not None})
    return Settings(**merged)


def make_cell(matrix: Matrix, cuda: str, python: str, torch: str) -> Cell:
    compat.require_known(torch, cuda)  # a typo is bad input, never a combination to skip
    try:
        variant = compat.variant_for(torch, cuda)
        compat.check_python(torch, python)
    except compat.Incompatible as exc:
        raise _NoWheel(str(exc)) from None
    s = settings_for(matrix, cuda, python, torch)
    base = compat.cuda_base(cuda)
    nightly = compat.is_nightly(torch)
    archs = tuple(s.archs) if cuda != "cpu" else ()
    compat.check_archs(torch, variant, archs)
    name = cell_name(cuda, python, torch)
    repository = f"{matrix.registry}/{matrix.image}"
    fill = {"patch": base.patch, "ubuntu": base.ubuntu, "python": python}
    return Cell(
        name=name,
        cuda=cuda,
        python=python,
        torch=torch,
        variant=variant,
        torch_pin=f"{torch}+{variant}",
        companions=compat.companions(torch, variant, tuple(s.companions)),
        variant_cuda=compat.variant_cuda(variant),
        cuda_patch=base.patch,
        ubuntu=base.ubuntu,
        cudnn=base.cudnn,
        driver_floor=base.driver_floor,
        base_image=s.base_image or base.devel.format(**fill),
        runtime_image=s.runtime_image or base.runtime.format(**fill),
        index_url=(s.nightly_index_url if nightly else s.index_url).replace("{variant}", variant),
        pre=s.pre or nightly,
        archs=archs,
        wheel_archs=compat.wheel_archs(torch, variant),
        layers=tuple(s.layers),
        os_packages=tuple(s.os_packages),
        pip=s.pip,
        installer=s.installer,
        uv=s.uv,
        resolver=s.resolver,
        app_stage=s.app_stage,
        network=s.network,
        python_source=compat.python_source(cuda, python),
        repository=repository,
        tags=(f"{repository}:{name}",),
        torch_stage_pins=tuple(tuple(pin.split("==", 1)) for pin in s.torch_stage_pins),
        builder=s.builder,
        extensions=_extensions(s, torch, cuda, python, variant),
    )


def _extensions(s: Settings, torch: str, cuda: str, python: str, variant: str) -> tuple[ExtensionSpec, ...]:
    """The cell's extensions; a prebuilt wheel whose tags do not fit the cell is refused here, before any build."""
    specs = []
    for entry in s.extensions or ():
        kind = "sdist" if entry.sdist is not None else "wheel"
        source = entry.sdist or entry.wheel
        filename = grammar.file_name_of(source)
        if kind == "wheel":
            compat.check_prebuilt_wheel(entry.name, filename, torch, compat.variant_cuda(variant) or "cpu", python)
        specs.append(ExtensionSpec(entry.name, kind, source, filename, entry.sha256, tuple(sorted(entry.env.items())),
                                   entry.max_jobs, tuple(entry.build_requires), tuple(entry.requires)))
    if specs and not s.layers:
        raise compat.Incompatible("extensions need the cell to have `layers`: the cell's lock is where their own "
                                  "requirements are resolved, and what `pip check` proves complete")
    names = [canonicalize_name(spec.name) for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise compat.Incompatible(f"extension {', '.join(twice)} is listed twice")
    return tuple(specs)


def _missing_layers(cells, source: Path, requirements_dir: Path) -> list[str]:
    wanted = sorted({layer for cell in cells for layer in cell.layers})
    return [
        f"{source}: layer {layer!r}: {requirements_dir / (layer + '.in')} "
        + ("is a directory, not a requirements file" if (requirements_dir / f"{layer}.in").is_dir() else "does not exist")
        for layer in wanted
        if not (requirements_dir / f"{layer}.in").is_file()
    ]
