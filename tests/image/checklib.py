"""Pure helpers of the image suite: arch coverage, name canonicalisation, set differences. No testinfra here."""

from __future__ import annotations

import re
import shlex

ARCH_RE = re.compile(r"^(sm|compute)_(\d+)(\d)([a-z]?)$")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_arch(arch: str) -> tuple[str, int, int, str]:
    """sm_86 -> ("sm", 8, 6, ""); compute_120 -> ("compute", 12, 0, ""); sm_90a -> ("sm", 9, 0, "a")."""
    m = ARCH_RE.match(arch.strip())
    if not m:
        raise ValueError(f"not a CUDA arch: {arch!r}")
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)


def covering(target: str, compiled: list[str]) -> str | None:
    """The compiled arch that runs code on a `target` GPU, or None.

    SASS (sm_XY) runs on GPUs of the same major with minor >= Y (sm_86 code runs on sm_89, Ada);
    PTX (compute_XY) is JIT-compiled for any GPU >= XY. Arch-specific variants (sm_90a) run only on
    exactly that GPU, so they never cover another one.
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
