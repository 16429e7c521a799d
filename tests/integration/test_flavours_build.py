"""Two flavours of the CPU cell (other app layers, one torch stage) locked and built together with -j 2 on a cold
torch stage: the shared stages are built once, before the cells, and each cell finds them in the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpumatrix.standins import LoopbackIndex, cpu_index_requirements

REPO = Path(__file__).resolve().parents[2]
PLAIN, SERVE = "cpu-py3.11-torch2.13.0", "cpu-py3.11-torch2.13.0-serve"
REPOSITORY = "gpumatrix.test/flavours/gpu-images"


@pytest.fixture(scope="module")
def cold_index(cache_dir):
    """An index of its own: its URL (a build argument of the torch stage) is new, so that stage is built cold."""
    index = LoopbackIndex(cache_dir / "index-cpu")
    index.fill(cpu_index_requirements())
    with index:
        yield index


@pytest.fixture
def project(tmp_project: Path) -> Path:
    text = (tmp_project / "matrix.yaml").read_text()
    text = text.replace("registry: ghcr.io/acme\n", "registry: gpumatrix.test/flavours\n")
    text = text.replace('  - {cuda: cpu, python: "3.11", torch: "2.13.0"}\n',
                        '  - {cuda: cpu, python: "3.11", torch: "2.13.0"}\n'
                        '  - {cuda: cpu, python: "3.11", torch: "2.13.0", flavour: serve, layers: [serve]}\n')
    assert "flavour: serve" in text
    (tmp_project / "matrix.yaml").write_text(text)
    (tmp_project / "requirements" / "serve.in").write_text("tqdm\nrich>=13\n")
    return tmp_project


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "build.py"), "--matrix", str(project / "matrix.yaml"), *args],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_flavours_share_one_torch_stage(project, standin_base, cold_index, docker_client):
    stand_ins = ["--base-image", standin_base, "--runtime-image", standin_base, "--index-url", cold_index.url,
                 "--network", "host"]
    cli(project, "lock", "--cuda", "cpu", "-j", "2", *stand_ins)
    serve_lock = (project / "locks" / f"{SERVE}.txt").read_text()
    assert "rich==" in serve_lock and "numpy==" not in serve_lock  # its own layers, not the plain cell's
    assert (project / "locks" / f"{PLAIN}.txt").is_file()

    wheel_downloads = sum(1 for r in cold_index.requests if r.endswith(".whl") and "torch-2.13.0" in r)
    assert wheel_downloads == 1, "the torch stage was installed more than once for the locks"

    cli(project, "build", "--cuda", "cpu", "--all", "-j", "2", "--force", *stand_ins)
    cells = {c["cell"]: c for c in json.loads((project / "out" / "build-report.json").read_text())["cells"]}
    assert {c: r["status"] for c, r in cells.items()} == {PLAIN: "built", SERVE: "built"}
    for name, record in cells.items():
        torch_steps = [s for s in record["steps"] if s["stage"] in ("base", "torch") and s["instruction"].startswith("RUN")]
        assert torch_steps and all(s["cached"] for s in torch_steps), f"{name} rebuilt a shared step: {torch_steps}"
    plain = docker_client.images.get(f"{REPOSITORY}:{PLAIN}")
    serve = docker_client.images.get(f"{REPOSITORY}:{SERVE}")
    assert plain.id != serve.id
    assert plain.labels["io.gpumatrix.torch"] == serve.labels["io.gpumatrix.torch"] == "2.13.0+cpu"
    freeze = docker_client.containers.run(serve.id, ["pip", "freeze"], remove=True, network_mode="none").decode()
    assert "rich==" in freeze and "torch==2.13.0+cpu" in freeze
    for image in (plain, serve):
        for tag in image.tags:
            docker_client.images.remove(tag)
