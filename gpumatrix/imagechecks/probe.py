"""Runs inside the image's (or the local environment's) Python; prints one JSON object of facts.

Standard library only: it must run before anything is known about the environment. Every fact is gathered
on its own, so a broken torch still leaves the distribution list readable; a failure is recorded as
{"error": "..."} in place of the value.
"""

import importlib
import importlib.metadata as md
import json
import os
import sys
import sysconfig


def attempt(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - a probe reports, it never stops
        return {"error": f"{type(exc).__name__}: {exc}".strip()[:2000]}


def distributions():
    out = []
    for dist in md.distributions():
        name = dist.metadata["Name"]
        path = getattr(dist, "_path", None)
        out.append({"name": name, "version": dist.version, "path": str(path) if path else None})
    return out


def compiled_modules():
    """Top-level import names of installed distributions that ship a compiled extension (.so)."""
    found = {}
    for dist in md.distributions():
        for f in dist.files or ():
            parts = f.parts
            if not parts or parts[0] == ".." or not (f.name.endswith(".so") or ".so." in f.name):
                continue
            top = parts[0]
            if top.endswith((".dist-info", ".data", ".libs", ".egg-info")):
                continue
            if len(parts) == 1:  # a top-level extension module: _cffi_backend.cpython-311-x86_64-linux-gnu.so
                top = top.split(".")[0]
            if top.isidentifier():
                found.setdefault(top, dist.metadata["Name"])
    return dict(sorted(found.items()))


def torch_facts():
    import torch

    facts = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "arch_list": attempt(torch.cuda.get_arch_list),
        "arch_flags": attempt(lambda: torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else None),
        "cuda_available": attempt(torch.cuda.is_available),
    }
    if facts["cuda_available"] is True:
        facts["devices"] = [
            {"name": torch.cuda.get_device_name(i), "capability": list(torch.cuda.get_device_capability(i))}
            for i in range(torch.cuda.device_count())
        ]
    return facts


def module_version(name):
    return getattr(importlib.import_module(name), "__version__", None)


def bitsandbytes_libs():
    dist = md.distribution("bitsandbytes")
    return sorted(f.name for f in dist.files or () if f.name.startswith("libbitsandbytes") and f.name.endswith(".so"))


def main():
    installed = {d["name"].lower().replace("_", "-") for d in distributions()}
    facts = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "executable": sys.executable,
        "prefix": sys.prefix,
        "site_packages": sysconfig.get_paths()["purelib"],
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "NVIDIA_", "VIRTUAL_ENV", "PATH"))},
        "distributions": attempt(distributions),
        "compiled_modules": attempt(compiled_modules),
        "torch": attempt(torch_facts),
        "companions": {n: attempt(lambda n=n: module_version(n)) for n in ("torchvision", "torchaudio") if n in installed},
        "bitsandbytes_libs": attempt(bitsandbytes_libs) if "bitsandbytes" in installed else None,
        "flash_attn": "flash-attn" in installed,
    }
    print("GPUMATRIX-PROBE " + json.dumps(facts))


main()
