"""Pure helpers of the image suite: arch coverage, name canonicalisation, set differences, and the labels and env an
image must carry, stated from the cell's facts. No testinfra here."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess

from gpumatrix.archs import covering, parse_arch  # noqa: F401 - the one coverage rule, shared with doctor


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def compiled_archs(arch_list: list[str] | None, arch_flags: str | None) -> list[str]:
    """torch.cuda.get_arch_list(), or torch._C._cuda_getArchFlags() (space separated) when the former is empty."""
    if arch_list:
        return list(arch_list)
    return (arch_flags or "").split()


def diff_sets(expected: dict[str, str], installed: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(extra, missing, different) lines between two {canonical name: version} maps."""
    extra = [f"{n}=={installed[n]}" for n in sorted(set(installed) - set(expected))]
    missing = [f"{n}=={expected[n]}" for n in sorted(set(expected) - set(installed))]
    different = [
        f"{n}: expected {expected[n]}, found {installed[n]}"
        for n in sorted(set(expected) & set(installed))
        if not same_version(expected[n], installed[n])
    ]
    return extra, missing, different


def same_version(a: str, b: str) -> bool:
    """Equal as PEP 440 versions (1.0 == 1.0.0), the local label included; text equality otherwise."""
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:
        return a == b


def other_major_spec(version: str) -> str:
    """A requirement on the other side of the major version: numpy 2.4.6 -> numpy<2, numpy 1.26.4 -> numpy>=2."""
    major = int(version.split(".")[0])
    return f"<{major}" if major >= 2 else f">={major + 1}"


def other_torch_version(pin: str) -> str:
    """A torch release that is not the pinned one (for the guard's dry run)."""
    release = pin.split("+")[0]
    return "2.4.1" if release != "2.4.1" else "2.5.1"


def freeze_lines(text: str) -> dict[str, str]:
    """{canonical name: version} of `name==version` lines (pip freeze, constraints files)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def run_python(host, py: str, code: str, *flags: str):
    """Run a snippet with the environment's Python (`py` already shell-quoted); testinfra's CommandResult."""
    return host.run(" ".join([py, *flags, "-c", shlex.quote(code)]))


def tail(result, lines: int = 15) -> str:
    """The last lines of a command's output, for failure messages."""
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join(text[-lines:])


# --- GPU kernels in extension modules, read with cuobjdump on the checker's host -------------------------------------

CUOBJDUMP_FILE = re.compile(r"^(ELF|PTX) file\s+\d+:.*\.sm_(\d{2,}[a-z]?)\.(?:cubin|ptx)$")
NO_DEVICE_CODE = "does not contain device code"


def cuobjdump_archs(list_elf_output: str, list_ptx_output: str) -> list[str]:
    """The archs of `cuobjdump --list-elf` (x.1.sm_80.cubin -> sm_80) and `--list-ptx` (x.1.sm_90.ptx -> compute_90,
    gpumatrix.archs' name for PTX) output: unique, SASS then PTX, each in arch order."""
    found = set()
    for text, kind, prefix in ((list_elf_output, "ELF", "sm_"), (list_ptx_output, "PTX", "compute_")):
        for line in text.splitlines():
            m = CUOBJDUMP_FILE.match(line.strip())
            if m and m.group(1) == kind:
                found.add(prefix + m.group(2))
    return sorted(found, key=lambda arch: (arch.startswith("compute_"), parse_arch(arch)[1:]))


def cuobjdump_path() -> str | None:
    """The cuobjdump of the nvidia-cuda-cuobjdump wheel in the checker's Python (nvidia/cu13/bin/cuobjdump), else the
    one on PATH; None when there is neither."""
    try:
        files = importlib.metadata.files("nvidia-cuda-cuobjdump") or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for f in files:
        if f.name == "cuobjdump" and f.parent.name == "bin":
            path = str(f.locate())
            if os.access(path, os.X_OK):
                return path
    return shutil.which("cuobjdump")


class CuobjdumpError(Exception):
    """cuobjdump failed for another reason than a file without device code."""


def kernel_archs(tool: str, path: str) -> list[str]:
    """The archs compiled into one binary (cuobjdump_archs); [] when it has no device code (cuobjdump exits 255)."""
    outputs = []
    for flag in ("--list-elf", "--list-ptx"):
        result = subprocess.run([tool, flag, path], capture_output=True, text=True, errors="replace")
        if result.returncode == 255 and NO_DEVICE_CODE in result.stdout + result.stderr:
            outputs.append("")
        elif result.returncode != 0:
            said = " ".join((result.stderr.strip() or result.stdout.strip() or "no output").split())
            raise CuobjdumpError(f"{tool} {flag} {path} exited with code {result.returncode}: {said[:500]}")
        else:
            outputs.append(result.stdout)
    return cuobjdump_archs(*outputs)


def uncovered_kernels(module: str, targets: list[str], compiled: list[str]) -> list[str]:
    """One line per target arch no compiled arch covers (gpumatrix.archs.covering); `module` relative to
    site-packages: expected m.so to have sm_90 kernels, found sm_80 sm_86."""
    found = " ".join(compiled) or "none"
    return [f"expected {module} to have {target} kernels, found {found}"
            for target in targets if covering(target, compiled) is None]


# --- what the image's metadata must say, stated here from the cell's facts ------------------------------------------
# These are the promises of the README ("The rendered Dockerfile", "Image checks"), written out on their own: nothing
# here comes from gpumatrix.render.labels or gpumatrix.layout, which gave the image its labels, paths and env,
# so a mistake there fails the checks instead of being expected.

CELL_NAME = re.compile(
    r"(?:cpu|cu(?P<cuda>\d+\.\d+))-py(?P<python>\d+\.\d+)-torch(?P<torch>[^-]+)(?:-(?P<flavour>.+))?")
IMAGE_ENV = {
    "VIRTUAL_ENV": "/opt/venv",
    "PIP_CONSTRAINT": "/opt/gpumatrix/constraints.txt",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}
CUDA_IMAGE_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}


def fact_problems(cell: dict) -> list[str]:
    """Where the cell's facts disagree with its name, or with each other (a CPU cell has no archs, a CUDA cell's
    variant is its wheel's CUDA, the pin is the release plus the variant)."""
    m = CELL_NAME.fullmatch(cell["name"])
    if not m:
        return [f"cell name {cell['name']!r}: expected cuX.Y-pyX.Y-torchA.B.C or cpu-pyX.Y-torchA.B.C"]
    problems = [f"{key}: the name says {said!r}, the facts say {cell[key]!r}"
                for key, said in (("cuda", m["cuda"] or "cpu"), ("python", m["python"]), ("torch", m["torch"]))
                if cell[key] != said]
    if cell["cuda"] == "cpu":
        wanted = {"variant": "cpu", "wheel_cuda": None, "archs": [], "wheel_archs": [], "driver_floor": None}
    else:
        wheel = cell["wheel_cuda"] or ""
        wanted = {"variant": "cu" + wheel.replace(".", "")}
        if not wheel:
            problems.append(f"wheel_cuda: expected the CUDA of the {cell['variant']} wheels, found {wheel!r}")
        if not cell["driver_floor"]:
            problems.append(f"driver_floor: expected the driver floor of CUDA {cell['cuda']}, found none")
        if not str(cell["cuda_patch"]).startswith(cell["cuda"] + "."):
            problems.append(f"cuda_patch: expected a patch of CUDA {cell['cuda']}, found {cell['cuda_patch']!r}")
    wanted["torch_pin"] = f"{cell['torch']}+{cell['variant']}"
    problems += [f"{key}: expected {value!r}, found {cell[key]!r}"
                 for key, value in wanted.items() if cell[key] != value]
    return problems


def expected_labels(cell: dict, lock_text: str | None) -> dict[str, str]:
    """Every label of the image: the OCI ones and io.gpumatrix.*, the build arguments resolved."""
    cpu = cell["cuda"] == "cpu"
    return {
        "org.opencontainers.image.title": cell["image_name"],
        "org.opencontainers.image.version": cell["name"],
        "org.opencontainers.image.description": f"torch {cell['torch_pin']}, Python {cell['python']}, "
        + ("CPU" if cpu else f"CUDA {cell['cuda_patch']}"),
        "org.opencontainers.image.base.name": cell["runtime_image"],
        "io.gpumatrix.cell": cell["name"],
        "io.gpumatrix.cuda": cell["cuda"],
        "io.gpumatrix.python": cell["python"],
        "io.gpumatrix.torch": cell["torch_pin"],
        "io.gpumatrix.variant": cell["variant"],
        "io.gpumatrix.archs": ",".join(cell["archs"]),
        "io.gpumatrix.wheel-archs": ",".join(cell["wheel_archs"]),
        "io.gpumatrix.driver-floor": cell["driver_floor"] or "",
        "io.gpumatrix.lock-sha256": hashlib.sha256(lock_text.encode()).hexdigest() if lock_text is not None else "none",
        "io.gpumatrix.base-image": cell["base_image"],
        "io.gpumatrix.runtime-image": cell["runtime_image"],
    }


def expected_env(cell: dict) -> dict[str, str | None]:
    """{name: value} the image's env must hold; None: must be unset. A CPU image sets no NVIDIA_* variables of its
    own (it keeps whatever its runtime base sets; unchecked when the base's env is unknown)."""
    if cell["cuda"] != "cpu":
        return {**IMAGE_ENV, **CUDA_IMAGE_ENV}
    base = cell["runtime_base_env"]
    return {**IMAGE_ENV, **({key: base.get(key) for key in CUDA_IMAGE_ENV} if base is not None else {})}


def expected_require_cuda(cell: dict) -> tuple[bool, str | None, str]:
    """(known, NVIDIA_REQUIRE_CUDA the image must carry (None: unset), why).

    The image keeps its runtime base's own value (NVIDIA's carries forward-compatibility exceptions); a CUDA image on
    a base that sets none gets cuda>= the higher of the base's and the wheel's CUDA; a CPU image sets none."""
    base, runtime = cell["runtime_base_env"], cell["runtime_image"]
    if base is not None and base.get("NVIDIA_REQUIRE_CUDA"):
        return True, base["NVIDIA_REQUIRE_CUDA"], f"the runtime base {runtime} sets it"
    if cell["cuda"] == "cpu":
        return True, None, "CPU cell: not set"
    if base is None:
        return False, None, f"the runtime base {runtime} is not on the engine: its own value is unknown"
    from packaging.version import Version

    floor = max(cell["cuda"], cell["wheel_cuda"] or cell["cuda"], key=Version)
    return True, f"cuda>={floor}", (f"the runtime base sets none: the higher of the base's CUDA {cell['cuda']} and "
                                    f"the wheel's {cell['wheel_cuda']}")
