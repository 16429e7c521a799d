"""Answers compatibility questions from data/compat.yaml; never hard-codes a version table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from pydantic import BaseModel, ConfigDict, StringConstraints

from .archs import arch_of_capability


class Incompatible(ValueError):
    """A combination that cannot work; the message says why and names valid neighbours."""


@dataclass(frozen=True)
class CudaBase:
    cuda: str
    patch: str | None
    ubuntu: str | None
    cudnn: str | None
    driver_floor: str | None
    devel: str
    runtime: str


def _v(text: str) -> Version:
    return Version(text)


HAND = "data/compat.yaml"
GENERATED = "data/compat-generated.yaml"  # written by `compat refresh` (compatsources.py), and only by it
ROW_KINDS = {"torch": "torch_kept", "nightly": "nightly_kept"}  # generated rows -> the hand-kept fields over them
ROW_FIELDS = ("variants", "python", "torchvision", "torchaudio", "source")


def generated_path() -> Path:
    return Path(str(resources.files("gpumatrix").joinpath(GENERATED)))


def read_generated(path: Path | None = None) -> dict:
    """The generated rows as written (no hand-kept field applied): {"torch": {...}, "nightly": {...}}."""
    data = yaml.safe_load((path or generated_path()).read_text()) or {}
    return {kind: dict(data.get(kind) or {}) for kind in ROW_KINDS}


@cache
def facts() -> dict:
    """compat.yaml with the torch and nightly rows of compat-generated.yaml, each under its hand-kept fields."""
    merged = yaml.safe_load(resources.files("gpumatrix").joinpath(HAND).read_text())
    generated = read_generated()
    for kind, kept in ROW_KINDS.items():
        merged[kind] = _apply_kept(generated[kind], merged.get(kept) or {}, kind)
    return merged


def _apply_kept(rows: dict, kept: dict, kind: str) -> dict:
    merged = {release: {**rows.get(release, {}), **fields} for release, fields in kept.items()}
    merged = {**rows, **merged}
    for release, row in merged.items():
        missing = [name for name in ROW_FIELDS if name not in row]
        if missing:
            raise ValueError(f"gpumatrix/{HAND}: the {kind} row {release} has no {', '.join(missing)} "
                             f"(not in gpumatrix/{GENERATED} either)")
    return merged


def torch_releases() -> list[str]:
    return sorted(facts()["torch"], key=_v)


def known_cudas() -> list[str]:
    return list(facts()["cuda"])


def is_nightly(torch: str) -> bool:
    return _v(torch).is_devrelease


def _torch_row(torch: str) -> dict:
    if is_nightly(torch):
        row = facts()["nightly"].get(_v(torch).base_version)
        known = ", ".join(f"{v}.devYYYYMMDD" for v in facts()["nightly"])
    else:
        row = facts()["torch"].get(torch)
        known = ", ".join(torch_releases())
    if row is None:
        raise Incompatible(f"torch {torch} is not in the compatibility data; known: {known}")
    return row


def cuda_base(cuda: str) -> CudaBase:
    row = facts()["cuda"].get(cuda)
    if row is None:
        raise Incompatible(f"CUDA {cuda} is not in the compatibility data; known: {', '.join(known_cudas())}")
    return CudaBase(cuda, row["patch"], row["ubuntu"], row["cudnn"], row["driver_floor"], row["devel"], row["runtime"])


def variant_cuda(variant: str) -> str | None:
    return facts()["variants"][variant]["cuda"]


def _same_major(a: str, b: str) -> bool:
    return _v(a).major == _v(b).major


def _variant_fits(variant: str, cuda: str) -> bool:
    vc = variant_cuda(variant)
    return vc is not None and _same_major(vc, cuda) and _v(vc) <= _v(cuda)


def require_known(torch: str, cuda: str) -> None:
    require_torch(torch)
    cuda_base(cuda)


def require_torch(torch: str) -> None:
    """Incompatible unless the release (or nightly series) is in the compatibility data."""
    _torch_row(torch)


def variant_for(torch: str, cuda: str) -> str:
    """The newest variant of `torch` whose CUDA is <= `cuda` within the same CUDA major; `cpu` for CPU cells."""
    row = _torch_row(torch)
    cuda_base(cuda)
    if cuda == "cpu":
        return "cpu"
    fitting = [v for v in row["variants"] if _variant_fits(v, cuda)]
    if not fitting:
        raise Incompatible(_no_variant_message(torch, cuda))
    return max(fitting, key=lambda v: _v(variant_cuda(v)))


def _no_variant_message(torch: str, cuda: str) -> str:
    builds = ", ".join(_torch_row(torch)["variants"])
    usable = torches_for_cuda(cuda)
    hint = f"for CUDA {cuda} use torch >= {usable[0]}" if usable else f"no known torch has a build for CUDA {cuda}"
    runs_on = cudas_for_torch(torch)
    where = f"torch {torch} runs on CUDA {', '.join(runs_on)}" if runs_on else f"torch {torch} builds: {builds}"
    return f"torch {torch} has no CUDA {_v(cuda).major} build at or below {cuda} (builds: {builds}); {hint}; {where}"


def torches_for_cuda(cuda: str) -> list[str]:
    return [t for t in torch_releases() if any(_variant_fits(v, cuda) for v in facts()["torch"][t]["variants"])]


def cudas_for_torch(torch: str) -> list[str]:
    variants = _torch_row(torch)["variants"]
    return [c for c in known_cudas() if c != "cpu" and any(_variant_fits(v, c) for v in variants)]


def python_range(torch: str) -> tuple[str, str]:
    low, high = _torch_row(torch)["python"]
    return low, high


def check_python(torch: str, python: str) -> None:
    low, high = python_range(torch)
    if not _v(low) <= _v(python) <= _v(high):
        raise Incompatible(f"torch {torch} has wheels for Python {low} to {high}, not {python}")


def companions(torch: str, variant: str, wanted: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(name, local version) of each wanted companion package that exists for this torch release."""
    row = _torch_row(torch)
    dev = f".dev{_v(torch).dev}" if is_nightly(torch) else ""
    return tuple((name, f"{row[name]}{dev}+{variant}") for name in wanted if row.get(name))


def wheel_archs(torch: str, variant: str) -> tuple[str, ...]:
    for rule in facts()["archs"]:
        if rule["variant"] == variant and SpecifierSet(rule["torch"]).contains(_v(torch), prereleases=True):
            return tuple(rule["archs"])
    raise Incompatible(f"no arch data for torch {torch}+{variant}; add a row under `archs:` in compat.yaml")


def check_archs(torch: str, variant: str, targets: tuple[str, ...]) -> None:
    compiled = wheel_archs(torch, variant)
    missing = [a for a in targets if a not in compiled]
    if not missing:
        return
    fixes = _arch_alternatives(missing)
    raise Incompatible(
        f"torch {torch}+{variant} has no kernels for {', '.join(missing)} (it has {' '.join(compiled) or 'none'})"
        + (f"; {fixes}" if fixes else "")
    )


def _arch_alternatives(missing: list[str]) -> str:
    options = []
    for rule in facts()["archs"]:
        if all(a in rule["archs"] for a in missing):
            options.append(f"torch {rule['torch']} on {rule['variant']}")
    return f"wheels with {', '.join(missing)}: " + "; ".join(options) if options else ""


def cxx11_abi(torch: str) -> bool:
    """Whether torch's Linux wheels of this release use the C++11 ABI (a nightly counts as its release)."""
    return _v(_v(torch).base_version) in SpecifierSet(facts()["cxx11_abi"]["torch"])


# flash-attn's naming of what a prebuilt wheel was built against: +cu12torch2.7cxx11abiTRUE
WHEEL_BUILD_LABEL = re.compile(r"cu(?P<cuda>\d+)torch(?P<torch>\d+\.\d+)cxx11abi(?P<abi>TRUE|FALSE)", re.IGNORECASE)


def check_prebuilt_wheel(name: str, filename: str, torch: str, cuda: str, python: str) -> None:
    """Incompatible unless the wheel's tags fit the cell: its CPython, Linux x86_64, and where the local version label
    says what it was built against (flash-attn's +cu12torch2.7cxx11abiTRUE), the same CUDA major, torch release and
    C++ ABI."""
    try:
        dist, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise Incompatible(f"extension {name}: {filename} is not a wheel file name ({exc})") from None
    if canonicalize_name(dist) != canonicalize_name(name):
        raise Incompatible(f"extension {name}: the wheel {filename} is of {dist}, not {name}")
    cp = "cp" + python.replace(".", "")
    if not any(t.interpreter in (cp, "py3") and (t.abi in (cp, "abi3", "none")) for t in tags):
        found = ", ".join(sorted({t.interpreter for t in tags}))
        raise Incompatible(f"extension {name}: the wheel {filename} is for {found}, the cell has Python {python} ({cp})")
    if not any(t.platform in ("linux_x86_64", "any")
               or (t.platform.startswith("manylinux") and t.platform.endswith("_x86_64")) for t in tags):
        found = ", ".join(sorted({t.platform for t in tags}))
        raise Incompatible(f"extension {name}: the wheel {filename} is for {found}, not Linux x86_64")
    label = WHEEL_BUILD_LABEL.fullmatch(version.local or "")
    if label is None:
        return
    built_for = f"CUDA {label['cuda'][:2]}, torch {label['torch']}, cxx11abi {label['abi'].upper()}"
    torch_abi = "TRUE" if cxx11_abi(torch) else "FALSE"
    wanted = f"CUDA {cuda.split('.')[0]}, torch {_v(torch).major}.{_v(torch).minor}, cxx11abi {torch_abi}"
    if cuda == "cpu" or built_for != wanted:
        raise Incompatible(f"extension {name}: the wheel {filename} was built for {built_for}; the cell needs "
                           + ("a CPU build" if cuda == "cpu" else wanted))


def python_source(cuda: str, python: str) -> str:
    """Where the cell's Python comes from: the base image, Ubuntu's archive, or the deadsnakes PPA."""
    base = cuda_base(cuda)
    if base.ubuntu is None:
        return "base"
    return "apt" if facts()["ubuntu_python"].get(base.ubuntu) == python else "deadsnakes"


# ---- driver branches and GPU models (doctor) ------------------------------------------------------------------------


def forward_compat_branches(cuda: str) -> tuple[int, ...]:
    """Older driver branches the CUDA row's base image accepts for forward compatibility (its NVIDIA_REQUIRE_CUDA)."""
    cuda_base(cuda)
    row = facts()["cuda"][cuda].get("forward_compat") or {}
    return tuple(int(branch) for branch in row.get("branches", ()))


class GpuModel(BaseModel):
    """A row of data/gpus.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    capability: Annotated[str, StringConstraints(pattern=r"^\d+\.\d$")]
    segment: Literal["datacenter", "workstation", "consumer"]
    also: tuple[str, ...] = ()
    source: str

    @property
    def arch(self) -> str:
        return arch_of_capability(self.capability)

    @property
    def datacenter(self) -> bool:
        return self.segment == "datacenter"


@cache
def gpu_models() -> tuple[GpuModel, ...]:
    data = yaml.safe_load(resources.files("gpumatrix").joinpath("data/gpus.yaml").read_text())
    models = tuple(GpuModel(**row) for row in data["gpus"])
    unknown = {m.source for m in models} - set(data["sources"])
    if unknown:
        raise ValueError(f"gpumatrix/data/gpus.yaml: rows name unknown sources: {', '.join(sorted(unknown))}")
    return models


_BRAND_WORDS = ("nvidia", "geforce", "tesla", "quadro")


def _plain_gpu_name(name: str) -> str:
    """Lower case, single spaces, without the leading brand words: "NVIDIA GeForce RTX 4090" -> "rtx 4090"."""
    words = name.casefold().split()
    while words and words[0] in _BRAND_WORDS:
        words = words[1:]
    return " ".join(words)


def _starts_gpu_name(prefix: str, name: str) -> bool:
    """`prefix` is `name` or its start up to a space or a dash (A100 starts A100-SXM4-80GB, A10 does not)."""
    return name == prefix or (name.startswith(prefix) and not name[len(prefix)].isalnum())


def find_gpu(name: str) -> GpuModel | None:
    """The model whose name (or another name of it) starts the given name, the longest match; None when unknown."""
    plain = _plain_gpu_name(name)
    found = [(len(known), model) for model in gpu_models() for known in map(_plain_gpu_name, (model.name, *model.also))
             if known and _starts_gpu_name(known, plain)]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def known_gpu_names() -> list[str]:
    return [model.name for model in gpu_models()]


# ---- the data's own consistency (compat --check) --------------------------------------------------------------------


def data_problems(generated: dict) -> list[str]:
    """What `compat --check` names without asking any source: rows whose variants, sources or dates are unknown."""
    problems = []
    known_sources, known_variants = set(facts()["sources"]), set(facts()["variants"])
    for kind in ROW_KINDS:
        for release, row in generated[kind].items():
            where = f"gpumatrix/{GENERATED}: {kind} {release}"
            if row.get("source") == "index" and not row.get("checked"):
                problems.append(f"{where}: read from the index, but no `checked` date")
        for release, row in _apply_kept(generated[kind], facts().get(ROW_KINDS[kind]) or {}, kind).items():
            where = f"{kind} {release}"
            unknown = [v for v in row["variants"] if v not in known_variants]
            if unknown:
                problems.append(f"{where}: variant {', '.join(unknown)} has no row under `variants:` in "
                                f"gpumatrix/{HAND}")
            if len(row["python"]) != 2:
                problems.append(f"{where}: python must be [lowest, highest], not {row['python']}")
            sources = {s.strip() for s in str(row["source"]).split(",")}
            if not sources <= known_sources:
                problems.append(f"{where}: source {', '.join(sorted(sources - known_sources))} is not under "
                                f"`sources:` in gpumatrix/{HAND}")
    return problems
