"""GPU architectures: the one rule for whether code compiled for some archs runs on a GPU.

`make doctor` and the image checks (gpumatrix/imagechecks) both ask this module, so the rule exists once:

- SASS (``sm_XY``) runs on GPUs of the same major with minor >= Y: sm_86 code runs on an sm_89 GPU (Ada).
- PTX (``compute_XY``) is JIT-compiled by the driver for any GPU >= XY.
- Arch-specific variants (``sm_90a``) run only on exactly that GPU, so they never cover another one.
"""

from __future__ import annotations

import re

ARCH_RE = re.compile(r"^(sm|compute)_(\d+)(\d)([a-z]?)$", re.ASCII)
CAPABILITY_RE = re.compile(r"^(\d+)\.(\d)$", re.ASCII)


def parse_arch(arch: str) -> tuple[str, int, int, str]:
    """sm_86 -> ("sm", 8, 6, ""); compute_120 -> ("compute", 12, 0, ""); sm_90a -> ("sm", 9, 0, "a")."""
    m = ARCH_RE.match(arch.strip())
    if not m:
        raise ValueError(f"not a CUDA arch: {arch!r}")
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)


def is_arch(text: str) -> bool:
    return ARCH_RE.match(text.strip()) is not None


def arch_of_capability(capability: str) -> str:
    """A compute capability as nvidia-smi prints it (9.0, 12.0, 8.9) -> the arch name (sm_90, sm_120, sm_89)."""
    m = CAPABILITY_RE.match(capability.strip())
    if not m:
        raise ValueError(f"not a compute capability: {capability!r} (expected MAJOR.MINOR such as 9.0)")
    return f"sm_{int(m.group(1))}{m.group(2)}"


def covering(target: str, compiled: list[str] | tuple[str, ...]) -> str | None:
    """The compiled arch that runs code on a `target` GPU, or None (no kernels for it).

    An exact or lower-minor SASS of the same major wins over PTX; among PTX, the highest one at or below the GPU.
    """
    _, major, minor, _ = parse_arch(target)
    sass, ptx = [], []
    for arch in compiled:
        try:
            kind, cmaj, cmin, suffix = parse_arch(arch)
        except ValueError:
            continue
        if kind == "sm" and cmaj == major and (cmin == minor if suffix else cmin <= minor):
            sass.append((cmin, arch))
        elif kind == "compute" and (cmaj, cmin) <= (major, minor):
            ptx.append(((cmaj, cmin), arch))
    if sass:
        return max(sass)[1]
    return max(ptx)[1] if ptx else None


def how_covered(target: str, compiled: list[str] | tuple[str, ...]) -> str:
    """One phrase saying how (or that not) code for `compiled` runs on a `target` GPU."""
    arch = covering(target, compiled)
    if arch is None:
        return f"no kernels for {target} (compiled: {' '.join(compiled) or 'none'})"
    if arch == target:
        return f"{target} compiled in"
    if arch.startswith("compute_"):
        return f"PTX {arch} JIT-compiled for {target}"
    return f"{arch} code runs on {target}"


def torch_cuda_arch_list(targets: list[str] | tuple[str, ...]) -> str:
    """TORCH_CUDA_ARCH_LIST for building an extension for `targets`: sm_80 sm_90 -> "8.0;9.0+PTX". PTX of the newest
    target rides along so GPUs newer than every target still get kernels (JIT-compiled); an arch-specific target
    (sm_90a) carries no PTX, as its code runs on that GPU only."""
    parsed = sorted(parse_arch(t) for t in targets)
    newest = max((p for p in parsed if not p[3]), default=None)
    return ";".join(f"{major}.{minor}{suffix}" + ("+PTX" if p == newest else "")
                    for p in parsed for _, major, minor, suffix in (p,))
