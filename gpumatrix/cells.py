"""Expand a validated Matrix into immutable Cells; every compatibility decision is made here, once."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import Version

from . import compat
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
    app_stage="runtime",
    network="default",
)


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
    app_stage: str
    network: str
    python_source: str
    repository: str
    tags: tuple[str, ...] = field(default=())
    flavour: str | None = None  # cells of one torch stage with different app layers: name-<flavour>

    @property
    def is_cuda(self) -> bool:
        return self.cuda != "cpu"

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
    """Axes product minus excludes (combinations without wheels are skipped), plus includes (which must work)."""
    cells: dict[str, Cell] = {}
    skipped: list[Skipped] = []
    problems: list[str] = []
    for cuda, python, torch in itertools.product(matrix.axes.cuda, matrix.axes.python, matrix.axes.torch):
        if any(rule.matches(cuda, python, torch) for rule in matrix.exclude):
            continue
        try:
            cells.setdefault(cell_name(cuda, python, torch), make_cell(matrix, cuda, python, torch))
        except _NoWheel as exc:
            skipped.append(Skipped(cuda, python, torch, str(exc)))
        except compat.Incompatible as exc:
            problems.append(f"{source}: {cell_name(cuda, python, torch)}: {exc}")
    for i, inc in enumerate(matrix.include):
        name = cell_name(inc.cuda, inc.python, inc.torch, inc.flavour)
        if inc.layers is not None and inc.flavour is None:
            problems.append(f"{source}: include[{i}] {name}: `layers` goes with `flavour` (a cell of the axes takes "
                            "its layers from settings and overrides)")
            continue
        try:
            cells.setdefault(name, _included(matrix, inc))
        except compat.Incompatible as exc:
            problems.append(f"{source}: include[{i}] {name}: {exc}")
    problems += _missing_layers(cells.values(), source, requirements_dir)
    if problems:
        raise UsageError("\n".join(problems))
    ordered = tuple(sorted(cells.values(), key=_sort_key))
    return Expansion(ordered, tuple(skipped), matrix)


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
        app_stage=s.app_stage,
        network=s.network,
        python_source=compat.python_source(cuda, python),
        repository=repository,
        tags=(f"{repository}:{name}",),
    )


def _missing_layers(cells, source: Path, requirements_dir: Path) -> list[str]:
    wanted = sorted({layer for cell in cells for layer in cell.layers})
    return [
        f"{source}: layer {layer!r}: {requirements_dir / (layer + '.in')} does not exist"
        for layer in wanted
        if not (requirements_dir / f"{layer}.in").is_file()
    ]
