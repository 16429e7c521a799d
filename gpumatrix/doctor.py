"""`make doctor`: which of our images starts on this driver and has kernels for these GPUs, and which one to take.

The host (driver version, each GPU's name and compute capability) comes from `nvidia-smi`, from a recording of its
output, or from the command line. The images are the matrix's cells or a catalog's pushed entries. For each one:

- starts: the driver is at or above the floor of the image's CUDA patch (compat.yaml `driver_floor`), or it is on a
  driver branch the base image lists for forward compatibility (compat.yaml `forward_compat`) and every GPU is a
  datacenter GPU (gpus.yaml; NVIDIA's forward compatibility works only there);
- kernels: every GPU is covered by the archs compiled into torch (gpumatrix.archs, the image checks' rule);
- fits: both. CPU images run on any host but are not a GPU answer: they never fit.

The recommended image is the newest torch release that fits. This module decides and builds what is shown (the
table, the JSON, the lines at the end); the CLI only prints them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version
from rich import box
from rich.table import Table

from . import archs, compat
from .cells import Cell, cell_name
from .errors import UsageError
from .project import read_input

DRIVER_PATTERN = r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?"
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"]
NVIDIA_SMI_TIMEOUT = 20.0  # seconds; nvidia-smi answers in well under a second on a healthy host
ASK_BY_HAND = ("give the host by hand: --driver VERSION --gpu NAME|sm_XY (e.g. --driver 570.124.06 --gpu H100), or "
               "--nvidia-smi-output FILE with what `nvidia-smi --query-gpu=name,driver_version,compute_cap "
               "--format=csv,noheader` printed there")


# ---- the host ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str  # as nvidia-smi printed it or as given (an arch given as such: sm_90)
    arch: str  # sm_90
    datacenter: bool | None  # None: not known (given as an arch, or a name not in gpus.yaml)

    @property
    def label(self) -> str:
        return self.name if self.name == self.arch else f"{self.name} ({self.arch})"

    @property
    def description(self) -> str:
        """The label, saying when the GPU is a datacenter one: H100 (sm_90, datacenter)."""
        if not self.datacenter:
            return self.label
        return f"{self.name} ({self.arch}, datacenter)" if self.name != self.arch else f"{self.arch} (datacenter)"


@dataclass(frozen=True)
class Host:
    driver: str | None  # None: not given (only --gpu)
    gpus: tuple[Gpu, ...]
    source: str  # where the facts came from: nvidia-smi, a file, the command line


def is_driver_version(text: str) -> bool:
    return re.fullmatch(DRIVER_PATTERN, text, re.ASCII) is not None


def gpu_of_model(name: str, arch: str) -> Gpu:
    """A GPU nvidia-smi reported: its own compute capability, the segment from gpus.yaml when the name is there."""
    model = compat.find_gpu(name)
    return Gpu(name, arch, model.datacenter if model else None)


def gpu_from_argument(value: str) -> Gpu:
    """--gpu sm_90 (an arch: the segment is not known) or --gpu H100 (a name in gpus.yaml)."""
    text = value.strip()
    if archs.is_arch(text) and text.startswith("sm_"):
        return Gpu(text, text, None)
    model = compat.find_gpu(text)
    if model is None:
        raise UsageError(f"--gpu {value!r}: not an arch such as sm_90 and not a GPU gpumatrix/data/gpus.yaml knows; "
                         f"known: {', '.join(compat.known_gpu_names())}")
    return Gpu(model.name, model.arch, model.datacenter)


def host_from_arguments(driver: str | None, gpus: list[str]) -> Host:
    """--driver and --gpu; a --gpu value may name several GPUs separated by commas (make doctor GPU="H100,sm_120")."""
    named = [part for value in gpus for part in value.split(",")]
    return Host(driver, tuple(gpu_from_argument(g) for g in named), "the command line")


def parse_nvidia_smi(text: str, where: str) -> Host:
    """The host from `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`: one line per
    GPU, `NAME, DRIVER, MAJOR.MINOR`. Anything else is one line naming the first line that is not that."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1].lower().startswith("no devices were found"):
        said = f"`{lines[0][1]}`" if lines else "nothing"
        raise UsageError(f"{where}: nvidia-smi lists no GPU (it printed {said}); this host has none to run a CUDA "
                         f"image on; {ASK_BY_HAND}")
    gpus, drivers = [], set()
    for number, line in lines:
        gpu, driver = _gpu_line(line, number, where)
        gpus.append(gpu)
        drivers.add(driver)
    if len(drivers) > 1:
        raise UsageError(f"{where}: the lines name different drivers ({', '.join(sorted(drivers))}); one host has "
                         "one driver: record each host's nvidia-smi on its own")
    return Host(drivers.pop(), tuple(gpus), where)


def _gpu_line(line: str, number: int, where: str) -> tuple[Gpu, str]:
    fields = [f.strip() for f in line.split(",")]
    shown = line if len(line) <= 80 else line[:77] + "..."
    expected = "expected `NAME, DRIVER_VERSION, COMPUTE_CAP` (e.g. `NVIDIA H100 80GB HBM3, 580.82.07, 9.0`)"
    if len(fields) != 3 or not fields[0] or not is_driver_version(fields[1]):
        raise UsageError(f"{where}: line {number} is not nvidia-smi's name,driver_version,compute_cap CSV: "
                         f"{shown!r}; {expected}")
    name, driver, capability = fields
    try:
        return gpu_of_model(name, archs.arch_of_capability(capability)), driver
    except ValueError:
        model = compat.find_gpu(name)  # [N/A] or [Not Supported]: the table knows the GPU, or nobody does
        if model is None:
            raise UsageError(f"{where}: line {number}: compute capability {capability!r} of {name!r} is not "
                             "MAJOR.MINOR and the GPU is not in gpumatrix/data/gpus.yaml; give it as --gpu sm_XY"
                             ) from None
        return Gpu(name, model.arch, model.datacenter), driver


def read_nvidia_smi_output(path: Path) -> Host:
    return parse_nvidia_smi(read_input(path, "nvidia-smi output"), str(path))


def run_nvidia_smi(timeout: float | None = None) -> Host:
    """Ask this host's nvidia-smi. No nvidia-smi, a failing one or one that hangs is bad input to doctor (exit 2),
    with what to give instead."""
    limit = NVIDIA_SMI_TIMEOUT if timeout is None else timeout
    try:
        done = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=limit)
    except FileNotFoundError:
        raise UsageError(f"nvidia-smi not found: this host has no NVIDIA driver (or none on PATH), so no GPU to run "
                         f"a CUDA image on; {ASK_BY_HAND}") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"nvidia-smi did not answer within {limit:g} s (a hung driver?); {ASK_BY_HAND}") from None
    except OSError as exc:
        raise UsageError(f"nvidia-smi could not be run: {exc.strerror or exc}; {ASK_BY_HAND}") from None
    said = (done.stdout.strip() or done.stderr.strip()).splitlines()
    if done.returncode != 0:
        first = said[0] if said else "no output"
        raise UsageError(f"nvidia-smi failed (exit code {done.returncode}): {first}; {ASK_BY_HAND}")
    return parse_nvidia_smi(done.stdout, "nvidia-smi")


def find_host(driver: str | None, gpus: list[str], recording: Path | None) -> Host:
    """The command line's driver and GPUs, a recording of nvidia-smi, or this host's nvidia-smi, in that order."""
    if recording is not None and (driver or gpus):
        raise UsageError("--nvidia-smi-output reads the driver and the GPUs from a recording; --driver/--gpu give "
                         "them by hand: pick one")
    if recording is not None:
        return read_nvidia_smi_output(recording)
    if driver or gpus:
        return host_from_arguments(driver, gpus)
    return run_nvidia_smi()


# ---- the images -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A matrix cell or a pushed catalog entry, with what doctor needs to judge it."""

    name: str
    cuda: str  # "12.8", or "cpu"
    python: str
    torch: str  # the release, 2.7.1
    torch_pin: str  # 2.7.1+cu128
    cuda_patch: str | None
    driver_floor: str | None
    wheel_archs: tuple[str, ...]
    image: str  # the tag of a cell; the repo@sha256 reference of a catalog entry
    flavour: str | None = None

    @property
    def is_cpu(self) -> bool:
        return self.cuda == "cpu"

    @property
    def is_nightly(self) -> bool:
        return Version(self.torch).is_devrelease


def candidate_of_cell(cell: Cell) -> Candidate:
    return Candidate(cell.name, cell.cuda, cell.python, cell.torch, cell.torch_pin, cell.cuda_patch,
                     cell.driver_floor, tuple(cell.wheel_archs), cell.tags[0], cell.flavour)


# What doctor needs of a catalog entry beyond the keys every entry has (catalog.REQUIRED_KEYS), and their form.
DOCTOR_KEYS = {"python": r"\d+\.\d+", "torch": r"\d+\.\d+\.\d+(?:\.dev\d+)?\+[a-z0-9]+", "archs": None,
               "driver_floor": DRIVER_PATTERN}


def candidate_of_entry(entry: dict, where: str) -> Candidate:
    """A catalog entry as catalog.read_catalog validated it; the keys doctor needs beyond those must be there too."""
    problems = [_entry_key_problem(entry, key, pattern) for key, pattern in DOCTOR_KEYS.items()
                if not (key == "driver_floor" and entry["cuda"] == "cpu")]
    problems = [p for p in problems if p]
    if problems:
        raise UsageError(f"{where}: entry {entry['cell']!r}: {'; '.join(problems)}: doctor needs them as "
                         "`build.py push` writes them (push the image again)")
    release = entry["torch"].split("+", 1)[0]
    plain = cell_name(entry["cuda"], entry["python"], release)
    flavour = entry["cell"][len(plain) + 1:] if entry["cell"].startswith(plain + "-") else None
    row_patch = _cuda_patch(entry["cuda"], entry.get("driver_floor"))
    return Candidate(entry["cell"], entry["cuda"], entry["python"], release, entry["torch"], row_patch,
                     entry.get("driver_floor"), tuple(entry["archs"]), entry["reference"], flavour)


def _entry_key_problem(entry: dict, key: str, pattern: str | None) -> str | None:
    value = entry.get(key)
    if value is None:
        return f"no {key}"
    if pattern is None:
        return None if isinstance(value, list) else f"{key} is not a list"
    if not isinstance(value, str) or not re.fullmatch(pattern, value, re.ASCII):
        return f"{key} {value!r} is not a {key} as push writes it"
    return None


def _cuda_patch(cuda: str, floor: str | None) -> str | None:
    """The CUDA patch compat.yaml pins for this minor, when the entry's floor is that patch's (else unknown)."""
    try:
        base = compat.cuda_base(cuda)
    except compat.Incompatible:
        return None
    return base.patch if base.driver_floor == floor else None


def catalog_candidates(path: Path, filters) -> list[Candidate]:
    """The entries of a catalog (a directory holding images.json, or the file) that match the filters."""
    from .catalog import read_catalog

    file = path / "images.json" if path.is_dir() else path
    entries = read_catalog(file)
    if not entries:
        raise UsageError(f"{file}: the catalog lists no images; push some first (make push)")
    found = [c for c in (candidate_of_entry(e, str(file)) for e in entries.values()) if filters.matches(c)]
    if not found:
        raise UsageError(f"{file}: no catalog entry matches {filters.describe()} (entries: "
                         f"{', '.join(sorted(entries))})")
    return found


# ---- the judgement ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not checked (nothing given to check it against)
    why: str


@dataclass(frozen=True)
class Answer:
    candidate: Candidate
    starts: Verdict
    kernels: tuple[tuple[Gpu, Verdict], ...]

    @property
    def fits(self) -> bool:
        """Starts and has kernels for every GPU; a CPU image never fits (it is not a GPU answer); what was not
        checked does not count against it, but something must have been checked."""
        if self.candidate.is_cpu:
            return False
        verdicts = [self.starts, *(v for _, v in self.kernels)]
        return all(v.ok is not False for v in verdicts) and any(v.ok for v in verdicts)


@dataclass(frozen=True)
class Diagnosis:
    host: Host
    answers: tuple[Answer, ...]
    recommended: Answer | None
    why: str  # why that one, or why none


def starts_on(candidate: Candidate, host: Host) -> Verdict:
    """Whether the image's CUDA runs on the host's driver, and why."""
    if candidate.is_cpu:
        return Verdict(True, "CPU image: needs no NVIDIA driver")
    if host.driver is None:
        return Verdict(None, "not checked: no driver given (--driver)")
    driver, floor = Version(host.driver), Version(candidate.driver_floor)
    cuda = f"CUDA {candidate.cuda_patch or candidate.cuda}"
    if driver >= floor:
        return Verdict(True, f"driver {host.driver} >= {candidate.driver_floor}, the floor of {cuda}")
    below = f"driver {host.driver} < {candidate.driver_floor}, the floor of {cuda}"
    return _forward_compatibility(candidate, host, driver.major, below)


def _forward_compatibility(candidate: Candidate, host: Host, branch: int, below: str) -> Verdict:
    try:
        listed = compat.forward_compat_branches(candidate.cuda)
    except compat.Incompatible:  # a catalog entry of a CUDA compat.yaml no longer knows
        listed = ()
    if branch not in listed:
        return Verdict(False, f"{below}; branch {branch} is not a forward-compatibility branch of its base "
                              f"({', '.join(map(str, listed)) or 'none'})")
    clause = f"branch {branch} is listed in the base's NVIDIA_REQUIRE_CUDA for forward compatibility"
    only = "which works only on datacenter GPUs"
    if not host.gpus:
        return Verdict(False, f"{below}; {clause}, {only}: name the GPU (--gpu H100)")
    others = list(dict.fromkeys(g.label for g in host.gpus if g.datacenter is False))
    if others:
        return Verdict(False, f"{below}; {clause}, {only}; {', '.join(others)} {'is' if len(others) == 1 else 'are'}"
                              " not")
    unknown = list(dict.fromkeys(g.label for g in host.gpus if g.datacenter is None))
    if unknown:
        return Verdict(False, f"{below}; {clause}, {only}; not known for {', '.join(unknown)}: name the GPU "
                              "(--gpu H100)")
    every = "the GPU is" if len(host.gpus) == 1 else "every GPU is"
    return Verdict(True, f"forward compatibility: {below}, but {clause} and {every} a datacenter GPU")


def kernels_for(candidate: Candidate, gpu: Gpu) -> Verdict:
    """Whether torch in the image has code for the GPU (compiled SASS of its major, or PTX to JIT)."""
    if candidate.is_cpu:
        return Verdict(False, "CPU-only torch: no GPU kernels")
    covering = archs.covering(gpu.arch, candidate.wheel_archs)
    return Verdict(covering is not None, archs.how_covered(gpu.arch, candidate.wheel_archs))


def judge(candidate: Candidate, host: Host) -> Answer:
    return Answer(candidate, starts_on(candidate, host), tuple((g, kernels_for(candidate, g)) for g in host.gpus))


def recommend(answers: list[Answer], prefer_python: str | None) -> tuple[Answer | None, str]:
    """The newest torch release that fits (nightlies only when no release does); among its images the preferred
    Python (the matrix default), then the newest Python, the newest CUDA, and the image without a flavour."""
    fitting = [a for a in answers if a.fits]
    if not fitting:
        return None, _why_none(answers)

    def rank(answer: Answer) -> tuple:
        c = answer.candidate
        return (not c.is_nightly, Version(c.torch), c.python == prefer_python, Version(c.python),
                Version(c.cuda), c.flavour is None)

    best = max(fitting, key=rank)
    c = best.candidate
    python = (f"Python {c.python} is the matrix default" if c.python == prefer_python
              else f"Python {c.python} is the newest of its cells")
    return best, (f"torch {c.torch} is the newest torch that starts and has kernels here ({len(fitting)} of "
                  f"{len(answers)} images fit); {python}, CUDA {c.cuda}")


def _why_none(answers: list[Answer]) -> str:
    if all(a.candidate.is_cpu for a in answers):
        return "only CPU images were asked about: they run anywhere but use no GPU, so they are no GPU answer"
    gpu_answers = [a for a in answers if not a.candidate.is_cpu]
    if not any(a.starts.ok is not False for a in gpu_answers):
        return "no image starts on this driver (see `starts`); a newer driver, or a datacenter GPU on a listed branch"
    return "no image that starts has kernels for every GPU (see `kernels`)"


def diagnose(host: Host, candidates: list[Candidate], prefer_python: str | None = None) -> Diagnosis:
    answers = tuple(judge(c, host) for c in candidates)
    best, why = recommend(list(answers), prefer_python)
    return Diagnosis(host, answers, best, why)


# ---- what the CLI prints ----------------------------------------------------------------------------------------


def _yes_no(ok: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[ok]


def as_json(diagnosis: Diagnosis) -> dict:
    host = diagnosis.host
    best = diagnosis.recommended
    return {
        "host": {"source": host.source, "driver": host.driver,
                 "gpus": [{"name": g.name, "arch": g.arch, "datacenter": g.datacenter} for g in host.gpus]},
        "images": [{
            "cell": a.candidate.name,
            "image": a.candidate.image,
            "cuda": a.candidate.cuda,
            "python": a.candidate.python,
            "torch": a.candidate.torch_pin,
            "driver_floor": a.candidate.driver_floor,
            "starts": a.starts.ok,
            "starts_why": a.starts.why,
            "kernels": [{"gpu": g.name, "arch": g.arch, "ok": v.ok, "why": v.why} for g, v in a.kernels],
            "fits": a.fits,
        } for a in diagnosis.answers],
        "recommended": None if best is None else {"cell": best.candidate.name, "image": best.candidate.image,
                                                  "why": diagnosis.why},
        "why": diagnosis.why,
    }


def host_line(host: Host) -> str:
    gpus = ", ".join(f"{count}x {label}" if count > 1 else label for label, count in _distinct_gpus(host))
    gpus = gpus or "none given"
    return f"host ({host.source}): driver {host.driver or 'not given'}; GPUs: {gpus}"


def _distinct_gpus(host: Host) -> list[tuple[str, int]]:
    """(label, how many) in the order nvidia-smi listed them: 8 H100s are one line, not eight."""
    counts: dict[str, int] = {}
    for g in host.gpus:
        label = g.description
        counts[label] = counts.get(label, 0) + 1
    return list(counts.items())


def _distinct_archs(answer: Answer) -> list[tuple[str, Verdict]]:
    seen: dict[str, Verdict] = {}
    for gpu, verdict in answer.kernels:
        seen.setdefault(gpu.arch, verdict)
    return list(seen.items())


def _starts_cell(answer: Answer) -> str:
    if answer.starts.ok and answer.starts.why.startswith("forward compatibility"):
        return "fwd-compat"
    return _yes_no(answer.starts.ok)


def table(diagnosis: Diagnosis) -> Table:
    """One row per image: starts, kernels per GPU arch, fits. The reasons follow in reason_lines()."""
    fits = sum(a.fits for a in diagnosis.answers)
    out = Table(title=f"{fits} of {len(diagnosis.answers)} images fit (yes: fits; fwd-compat: starts through "
                      "forward compatibility)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("image", "torch", "starts", "kernels", "fits"):
        out.add_column(column, no_wrap=column != "kernels")
    for a in diagnosis.answers:
        kernels = ", ".join(f"{arch} {_yes_no(v.ok)}" for arch, v in _distinct_archs(a)) or "- (no GPU given)"
        out.add_row(a.candidate.name, a.candidate.torch_pin, _starts_cell(a), kernels,
                    "yes" if a.fits else ("CPU" if a.candidate.is_cpu else "no"))
    return out


def reason_lines(diagnosis: Diagnosis) -> list[str]:
    """Why each image starts or not (the same for every image of one CUDA) and why it has kernels or not (the same
    for every image of one torch build), each said once."""
    starts: dict[str, str] = {}
    kernels: dict[str, str] = {}
    for a in diagnosis.answers:
        c = a.candidate
        starts.setdefault("CPU" if c.is_cpu else f"CUDA {c.cuda_patch or c.cuda}", a.starts.why)
        per_arch = "; ".join(dict.fromkeys(v.why for _, v in _distinct_archs(a)))
        if per_arch:
            kernels.setdefault(c.torch_pin, per_arch)
    return ([f"starts, {what}: {why}" for what, why in starts.items()]
            + [f"kernels, torch {pin}: {why}" for pin, why in kernels.items()])


def summary_lines(diagnosis: Diagnosis) -> list[str]:
    lines = [host_line(diagnosis.host), *reason_lines(diagnosis)]
    if any(a.candidate.is_cpu for a in diagnosis.answers):
        lines.append("CPU images run on any host, GPU or not, but use no GPU: they are never the answer here")
    best = diagnosis.recommended
    if best is None:
        lines.append(f"no image fits: {diagnosis.why}")
    else:
        lines.append(f"recommended: {best.candidate.name}: {best.candidate.image}")
        lines.append(f"  because {diagnosis.why}")
    return lines
