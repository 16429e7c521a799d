"""The stand-ins the integration tests lock and build against: the CPU cell and its committed lock, a loopback index
filled for that lock, and the override flags that point build.py at a stand-in base and index."""

from __future__ import annotations

from pathlib import Path

from devtools.standins import LoopbackIndex, index_requirements
from support.projects import REPO

STANDIN_CELL = "cpu-py3.11-torch2.13.0"
STANDIN_LOCK = REPO / "locks" / f"{STANDIN_CELL}.txt"  # its `# torch-stage:` lines pin what the index holds


def cpu_index(cache_dir: Path) -> LoopbackIndex:
    """A loopback index (not started yet) holding torch and the other torch-stage packages at STANDIN_LOCK's
    versions. Each index gets a port of its own, so its URL (a build argument of the torch stage) is new."""
    index = LoopbackIndex(cache_dir / "index-cpu")
    index.fill(index_requirements(STANDIN_LOCK))
    return index


def base_flags(base: str) -> list[str]:
    """The stand-in as the devel and the runtime base (what `build.py test` is told the image was built with)."""
    return ["--base-image", base, "--runtime-image", base]


def standin_flags(base: str, index_url: str | None = None) -> list[str]:
    """The overrides of a lock or build against the stand-ins: both bases, the index (None: the one in
    $GPUMATRIX_INDEX_URL) and the host network, which reaches a loopback index."""
    return [*base_flags(base), *(["--index-url", index_url] if index_url else []), "--network", "host"]
