"""Where things are inside an image, and how gpumatrix names its labels and containers: the one owner of these names.

The template receives `for_template()`, so the Dockerfile, the lock step, the image checks, the SBOM and the tests
all read the same values.
"""

from __future__ import annotations

import os
import posixpath
from types import MappingProxyType

VENV = "/opt/venv"
VENV_PYTHON = f"{VENV}/bin/python"
STATE_DIR = "/opt/gpumatrix"  # what gpumatrix records in the image: the freezes and the lock
TORCH_CONSTRAINTS = f"{STATE_DIR}/torch-constraints.txt"  # the torch stage's freeze
CONSTRAINTS = f"{STATE_DIR}/constraints.txt"  # the whole environment's freeze; PIP_CONSTRAINT points here
LOCK_IN_CONTEXT = "app.lock"  # the lock's name in the build context
LOCK_IN_IMAGE = f"{STATE_DIR}/{LOCK_IN_CONTEXT}"
APP_LAYER = "/opt/app-layer"  # the devel app stage's files on their way to the runtime stage
EXTENSIONS_IN_CONTEXT = "extensions"  # the extensions' sdists and wheels in the build context
EXTENSION_SOURCE = "/tmp/gpumatrix-extension"  # an extension stage's sdist or wheel, as copied in
EXTENSION_BUILD = "/tmp/gpumatrix-build"  # an sdist unpacked: the same paths on every build, so ccache can hit
EXTENSION_WHEELS = "/tmp/gpumatrix-wheels"  # the wheel an extension stage built (or was given), before it installs
EXTENSION_LAYER = "/opt/extension-layer"  # an extension stage's installed files on their way to the app layer
EXTENSION_RECORDS = f"{STATE_DIR}/extensions"  # <name>.sha256: `sha256sum` of the wheel each extension came from
# BuildKit cache mounts (never part of the image): pip's and uv's download caches, and ccache's compile cache. Each is shared by every build on
# the builder under the id gpumatrix-<name>.
CACHE_MOUNTS = MappingProxyType({"pip": "/root/.cache/pip", "uv": "/root/.cache/uv", "ccache": "/root/.cache/ccache"})

# The runtime stage's ENV (PATH starts with the venv's bin; it is checked on its own).
RUNTIME_ENV = MappingProxyType({
    "VIRTUAL_ENV": VENV,
    "PIP_CONSTRAINT": CONSTRAINTS,
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
})
CUDA_ENV = MappingProxyType({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})

LABEL_PREFIX = "io.gpumatrix"
# Every container gpumatrix starts carries ROLE_LABEL (lock, imagetest, sbom) and OWNER_LABEL (the pid that started
# it), so none can be left behind unseen: `docker ps --filter label=io.gpumatrix.role` lists them all.
ROLE_LABEL = f"{LABEL_PREFIX}.role"
OWNER_LABEL = f"{LABEL_PREFIX}.pid"
CELL_LABEL = f"{LABEL_PREFIX}.cell"


def label(key: str) -> str:
    """The image label gpumatrix sets for `key` (cell, torch, lock-sha256, ...)."""
    return f"{LABEL_PREFIX}.{key}"


def container_labels(role: str, cell: str | None = None) -> dict[str, str]:
    labels = {ROLE_LABEL: role, OWNER_LABEL: str(os.getpid())}
    if cell is not None:
        labels[CELL_LABEL] = cell
    return labels


def for_template() -> dict:
    return {
        "venv": VENV,
        "venv_python": VENV_PYTHON,
        "state_dir": STATE_DIR,
        "state_parent": posixpath.dirname(STATE_DIR),
        "torch_constraints": TORCH_CONSTRAINTS,
        "constraints": CONSTRAINTS,
        "lock_in_context": LOCK_IN_CONTEXT,
        "lock_in_image": LOCK_IN_IMAGE,
        "app_layer": APP_LAYER,
        "extensions_in_context": EXTENSIONS_IN_CONTEXT,
        "extension_source": EXTENSION_SOURCE,
        "extension_build": EXTENSION_BUILD,
        "extension_wheels": EXTENSION_WHEELS,
        "extension_layer": EXTENSION_LAYER,
        "extension_records": EXTENSION_RECORDS,
        "cache_mounts": dict(CACHE_MOUNTS),
    }
