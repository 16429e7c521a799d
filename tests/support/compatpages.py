"""Loopback pages shaped like the PyTorch index's, its nightly index's, PyPI's and Docker Hub's tag list, for the
compatibility refresh (`compat refresh`, `compat --check --online`): wheels listed by name with their PEP 658 metadata,
no wheel body. What each page holds is written here by hand; the tests state what must be read from it."""

from __future__ import annotations

import hashlib
import json

from devtools.standins import LoopbackIndex

ML = "manylinux_2_28_x86_64"


def plant(index: LoopbackIndex, filename: str, requires: str | None = None) -> None:
    """A wheel the page lists by name with its metadata (served as PEP 658 `.metadata`); no wheel body."""
    index.files_dir.mkdir(parents=True, exist_ok=True)
    name, version = filename.split("-")[:2]
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires:
        metadata += f"Requires-Dist: {requires}\n"
    (index.files_dir / f"{filename}.metadata").write_text(metadata)
    (index.files_dir / f"{filename}.sha256").write_text(hashlib.sha256(filename.encode()).hexdigest() + "\n")


def cp(python: str) -> str:
    tag = "cp" + python.replace(".", "")
    return f"{tag}-{tag}"


def plant_pages(release: LoopbackIndex, nightly: LoopbackIndex, pypi: LoopbackIndex) -> None:
    """torch 2.14.1 (cu126, cu130; Python 3.10-3.14) and 2.15.0 (cu130, cu132; 3.11-3.15) with their torchvision and a
    stable-ABI torchaudio, two nightlies of 2.16.0, and PyPI's 2.15.0 and 2.16.0; wheels that must not count beside
    them (before `since`, aarch64, free-threaded, ROCm)."""
    plant(release, f"torch-2.3.1+cu121-{cp('3.11')}-{ML}.whl")  # before `since`: left out
    for python in ("3.10", "3.11", "3.12", "3.13", "3.14"):
        plant(release, f"torch-2.14.1+cu126-{cp(python)}-{ML}.whl")
        plant(release, f"torch-2.14.1+cu130-{cp(python)}-{ML}.whl")
    plant(release, f"torch-2.14.1+cpu-{cp('3.10')}-linux_x86_64.whl")
    plant(release, f"torch-2.14.1+cu130-cp314-cp314t-{ML}.whl")  # free-threaded: not a Python of the range
    plant(release, "torch-2.14.1+cu130-cp315-cp315-manylinux_2_28_aarch64.whl")  # not x86_64: not counted
    plant(release, "torch-2.14.1+rocm6.4-cp311-cp311-linux_x86_64.whl")  # not a CUDA variant
    for python in ("3.11", "3.12", "3.13", "3.14", "3.15"):
        plant(release, f"torch-2.15.0+cu130-{cp(python)}-{ML}.whl")
        plant(release, f"torch-2.15.0+cu132-{cp(python)}-{ML}.whl")
    plant(release, f"torchvision-0.29.1+cu130-{cp('3.11')}-{ML}.whl", "torch==2.14.1")
    plant(release, f"torchvision-0.30.0+cu132-{cp('3.12')}-{ML}.whl", "torch==2.15.0")
    plant(release, f"torchaudio-2.11.0+cu130-{cp('3.11')}-{ML}.whl", "torch==2.11.0")
    plant(release, f"torchaudio-2.11.1+cu130-py3-none-{ML}.whl", "torch>=2.11")  # stable ABI: serves later torch
    for day, variants, pythons in (("20261130", ["cu130"], ["3.10", "3.14"]),
                                   ("20261201", ["cu130", "cu132"], ["3.11", "3.12", "3.13", "3.14"])):
        for variant in variants:
            for python in pythons:
                plant(nightly, f"torch-2.16.0.dev{day}+{variant}-{cp(python)}-{ML}.whl")
        plant(nightly, f"torchvision-0.31.0.dev{day}+cu130-{cp('3.11')}-{ML}.whl", f"torch==2.16.0.dev{day}")
    for python in ("3.11", "3.15"):
        plant(pypi, f"torch-2.15.0-{cp(python)}-{ML}.whl")
        plant(pypi, f"torch-2.16.0-{cp(python)}-{ML}.whl")


# The generated rows as a refresh some weeks before the pages above left them.
EARLIER_ROWS = (
    "torch:\n"
    '  "2.14.1": {variants: [cu126, cu129, cu130], python: ["3.10", "3.14"], torchvision: "0.29.1", '
    'torchaudio: null, source: index, checked: "2026-11-01"}\n'
    "nightly:\n"
    '  "2.16.0": {variants: [cu130], python: ["3.10", "3.14"], torchvision: "0.31.0", torchaudio: null, '
    'source: index, checked: "2026-11-01"}\n')

# The nvidia/cuda tags of compat.yaml's CUDA rows, as Docker Hub's tag list answers (GET /v2/<path>/tags/list).
CUDA_TAGS = ["12.4.1-cudnn-devel-ubuntu22.04", "12.4.1-base-ubuntu22.04", "12.8.1-cudnn-devel-ubuntu24.04",
             "12.8.1-base-ubuntu24.04", "13.0.3-cudnn-devel-ubuntu24.04", "13.0.3-base-ubuntu24.04",
             "12.4.1-devel-ubuntu22.04", "12.8.0-cudnn-devel-ubuntu24.04"]


def hub_tags(index: LoopbackIndex, tags: list[str]) -> None:
    """The tag list of nvidia/cuda, served by the index's plain file server at /v2/nvidia/cuda/tags/list."""
    listing = index.root / "v2" / "nvidia" / "cuda" / "tags" / "list"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(json.dumps({"name": "nvidia/cuda", "tags": tags}))
