"""Two flavours of the CPU cell (other app layers, one torch stage) locked and built together with -j 2 on a cold
torch stage: the shared stages are built once, before the cells, and each cell finds them in the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import cli as run_cli
from support.projects import add_serve_flavour, use_registry
from support.reports import build_report
from support.standins import STANDIN_CELL, cpu_index, standin_flags

PLAIN, SERVE = STANDIN_CELL, f"{STANDIN_CELL}-serve"
REPOSITORY = "gpumatrix.test/flavours/gpu-images"


@pytest.fixture(scope="module")
def cold_index(cache_dir):
    """An index of its own: its URL (a build argument of the torch stage) is new, so that stage is built cold."""
    with cpu_index(cache_dir) as index:
        yield index


@pytest.fixture
def project(tmp_project: Path) -> Path:
    use_registry(tmp_project, "gpumatrix.test/flavours")
    add_serve_flavour(tmp_project)
    return tmp_project


def cli(project: Path, *args: str):
    result = run_cli(project, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_flavours_share_one_torch_stage(project, standin_base, cold_index, docker_client, containers):
    stand_ins = standin_flags(standin_base, cold_index.url)
    cli(project, "lock", "--cuda", "cpu", "-j", "2", *stand_ins)
    serve_lock = (project / "locks" / f"{SERVE}.txt").read_text()
    assert "rich==" in serve_lock and "numpy==" not in serve_lock  # its own layers, not the plain cell's
    assert (project / "locks" / f"{PLAIN}.txt").is_file()

    wheel_downloads = sum(1 for r in cold_index.requests if r.endswith(".whl") and "torch-2.13.0" in r)
    assert wheel_downloads == 1, "the torch stage was installed more than once for the locks"

    cli(project, "build", "--cuda", "cpu", "--all", "-j", "2", "--force", *stand_ins)
    cells = build_report(project)
    assert {c: r["status"] for c, r in cells.items()} == {PLAIN: "built", SERVE: "built"}
    for name, record in cells.items():
        torch_steps = [s for s in record["steps"] if s["stage"] in ("base", "torch") and s["instruction"].startswith("RUN")]
        assert torch_steps and all(s["cached"] for s in torch_steps), f"{name} rebuilt a shared step: {torch_steps}"
    plain = docker_client.images.get(f"{REPOSITORY}:{PLAIN}")
    serve = docker_client.images.get(f"{REPOSITORY}:{SERVE}")
    assert plain.id != serve.id
    assert plain.labels["io.gpumatrix.torch"] == serve.labels["io.gpumatrix.torch"] == "2.13.0+cpu"
    freeze = containers.run_in(serve.id, ["pip", "freeze"])
    assert "rich==" in freeze and "torch==2.13.0+cpu" in freeze
    for image in (plain, serve):
        for tag in image.tags:
            docker_client.images.remove(tag)
