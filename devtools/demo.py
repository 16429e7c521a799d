"""`make demo`: the whole pipeline on a machine that reaches neither Docker Hub nor the PyTorch index.

It makes the stand-in base and a loopback torch index filled from the CPU cell's lock (the same code the integration
tests use), then runs what a user runs, through make: `make image CUDA=cpu` against the stand-ins, `make test-image
CUDA=cpu` (the image checks), and `make push CUDA=cpu` to a registry on a loopback port (docker-registry), which
writes the SBOM and the catalog. At the end it prints where each result is. A step that fails stops the demo with
exit 1 and names the step; no Docker engine is exit 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import docker

from devtools.registry import Registry
from devtools.standins import LoopbackIndex, StandinError, ensure_standin_base, index_requirements
from gpumatrix import catalog, engine
from gpumatrix.cells import Cell
from gpumatrix.errors import UsageError
from gpumatrix.pipeline import load
from gpumatrix.project import Project
from gpumatrix.select import Filters, choose_one

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
REGISTRY_DIR = CACHE / "demo-registry"  # docker-registry's config, log and storage (the last run's stay)
REGISTRY_NAMESPACE = "demo"


class StepFailed(Exception):
    """One step of the demo failed; the message names it."""


def log(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def make(step: str, *args: str) -> None:
    """Run `make ARGS` in the project, as a user would; StepFailed when it exits non-zero."""
    command = ["make", *args]
    log(f"step {step}: {' '.join(command)}")
    code = subprocess.run(command, cwd=ROOT).returncode
    if code != 0:
        raise StepFailed(f"step {step} failed: `{' '.join(command)}` exited {code} (its output is above)")


def main() -> int:
    try:
        client = engine.connect()
    except UsageError as exc:
        log(str(exc))
        return 2
    try:
        run(client)
    except StepFailed as exc:
        log(str(exc))
        return 1
    log("next: `make image CUDA=12.8` on a machine that reaches nvidia/cuda and download.pytorch.org")
    return 0


def run(client: docker.DockerClient) -> None:
    try:
        project, expansion = load(ROOT / "matrix.yaml")
        cell, why = choose_one(expansion, Filters(cuda="cpu"))
    except UsageError as exc:
        raise StepFailed(f"step matrix failed: {exc}") from None
    log(f"the CPU cell: {cell.name} ({why})" if why else f"the CPU cell: {cell.name}")
    lock = project.locks / f"{cell.name}.txt"

    try:
        base = ensure_standin_base(client, CACHE, log=log)
    except StandinError as exc:
        raise StepFailed(f"step stand-in base failed: {exc}") from None

    index = LoopbackIndex(CACHE / "index-cpu")
    try:
        index.fill(index_requirements(lock), log=log)
    except StandinError as exc:
        raise StepFailed(f"step index failed: {exc}") from None
    with index:
        log(f"stand-in base {base}; torch index {index.url}")
        make("image", "image", "CUDA=cpu", f"BASE_IMAGE={base}", f"RUNTIME_IMAGE={base}",
             f"INDEX_URL={index.url}", "NETWORK=host")

    make("test-image", "test-image", "CUDA=cpu")

    shutil.rmtree(REGISTRY_DIR, ignore_errors=True)  # the last run's registry (another port) is of no use now
    REGISTRY_DIR.mkdir(parents=True)
    try:
        registry = Registry(REGISTRY_DIR, REGISTRY_DIR / "storage")
    except (OSError, RuntimeError) as exc:
        raise StepFailed(f"step registry failed: {exc}") from None
    try:
        log(f"loopback registry {registry.url} (docker-registry; log {project.relative(registry.log)})")
        make("push", "push", "CUDA=cpu", f"REGISTRY={registry.addr}/{REGISTRY_NAMESPACE}")
    finally:
        registry.stop()
        untag_registry(client, registry.addr)

    image = cell.tags[0]
    try:
        shown = client.containers.run(image, ["python", "-c", "import torch, numpy; print('torch', torch.__version__, "
                                              "'numpy', numpy.__version__, 'cuda', torch.version.cuda)"], remove=True)
    except docker.errors.DockerException as exc:
        raise StepFailed(f"step versions failed: {image}: {exc}") from None
    log(f"{image}: {shown.decode().strip()}")
    show_results(project, cell)


def untag_registry(client: docker.DockerClient, addr: str) -> None:
    """Drop the local tags `make push` gave the image for the loopback registry: it is gone after the demo."""
    try:
        tags = [t for image in client.images.list() for t in image.tags if t.startswith(f"{addr}/")]
        for tag in tags:
            client.images.remove(tag, noprune=True)  # the image keeps its own tags
    except docker.errors.DockerException as exc:
        log(f"could not drop the tags for {addr}: {exc}")


def show_results(project: Project, cell: Cell) -> None:
    """One line per result and where it is; StepFailed when a file the steps should have written is missing."""
    out = project.out
    tests, sboms, catalog_dir = out / "tests", out / "sbom", out / "catalog"
    try:
        entry = catalog.load_catalog(catalog_dir).get(cell.name)
    except UsageError as exc:
        raise StepFailed(f"step results failed: {exc}") from None
    if entry is None:
        raise StepFailed(f"step results failed: {project.relative(catalog_dir / 'images.json')} has no entry "
                         f"for {cell.name}")
    files = {
        "build report": [out / "build-report.json"],
        "test results": [tests / f"{cell.name}.json", tests / f"{cell.name}.md"],
        "SBOM": [sboms / f"{cell.name}.cdx.json"],
        "catalog": [catalog_dir / "images.json", catalog_dir / "images.md"],
    }
    log(f"{'image tags:':14} {', '.join(built_tags(out / 'build-report.json', cell))}")
    for what, paths in files.items():
        log(f"{what + ':':14} {', '.join(project.relative(p) for p in paths)}")
    log(f"{'pushed:':14} {entry['reference']} (the registry is stopped now)")
    missing = [project.relative(p) for paths in files.values() for p in paths if not p.is_file()]
    if missing:
        raise StepFailed(f"step results failed: not written: {', '.join(missing)}")


def built_tags(report: Path, cell: Cell) -> list[str]:
    """The tags the build report gives the cell's image (the cell's tag and its content tag)."""
    try:
        records = json.loads(report.read_text())["cells"]
        return next(r["tags"] for r in records if r["cell"] == cell.name)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise StepFailed(f"step results failed: {report} has no tags for {cell.name} ({exc!r})") from None


if __name__ == "__main__":
    sys.exit(main())
