"""`docker buildx bake -f docker-bake.json`, with a real buildx, builds the CPU cell and a flavour of it into the
images `build.py build` makes: the same content tags, labels and `pip freeze`.

bake files take no network mode (buildx reads a target's `network` from compose files only; 0.13 drops it from JSON),
so the index is served on the engine's bridge gateway, which build steps in the default network reach, and neither
`build` nor bake is given --network. pip trusts plain http on loopback only: the bases are the stand-in with an
/etc/pip.conf that trusts the gateway, as a site's base image trusts its own mirror.
"""

from __future__ import annotations

import io
import ipaddress
import json
import tarfile
import subprocess
from pathlib import Path

import pytest

from support.cli import cli as run_cli
from support.projects import add_serve_flavour, use_registry
from support.reports import build_report
from devtools.standins import LoopbackIndex
from support.standins import STANDIN_CELL, base_flags

PLAIN, SERVE = STANDIN_CELL, f"{STANDIN_CELL}-serve"
REPOSITORY = "gpumatrix.test/bake/gpu-images"


@pytest.fixture
def project(tmp_project: Path) -> Path:
    use_registry(tmp_project, "gpumatrix.test/bake")
    add_serve_flavour(tmp_project)
    return tmp_project


def cli(project: Path, *args: str):
    result = run_cli(project, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture
def gateway(docker_client) -> str:
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])  # dockerd's default: the first


@pytest.fixture
def bridge_index(gateway, torch_index):
    """The session index's wheels served on the bridge gateway (torch_index filled the directory)."""
    with LoopbackIndex(torch_index.root, host=gateway) as index:
        yield index


@pytest.fixture
def trusting_base(standin_base, gateway, docker_client):
    """The stand-in with an /etc/pip.conf that trusts the gateway's plain http."""
    conf = f"[global]\ntrusted-host = {gateway}\n".encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("pip.conf")
        info.size, info.mode = len(conf), 0o644
        tar.addfile(info, io.BytesIO(conf))
    container = docker_client.containers.create(standin_base, ["true"])
    try:
        container.put_archive("/etc", archive.getvalue())
        image = container.commit(repository="gpumatrix-test-bake-base", tag=gateway.replace(".", "-"))
    finally:
        container.remove(force=True)
    yield image.tags[0]


def content_tag(tags: list[str], cell: str) -> str:
    found = [t for t in tags if t.startswith(f"{REPOSITORY}:{cell}-") and t != f"{REPOSITORY}:{cell}-serve"]
    assert len(found) == 1, tags
    return found[0]


def test_bake_builds_the_images_build_makes(project, buildx, trusting_base, bridge_index, docker_client, containers):
    flags = [*base_flags(trusting_base), "--index-url", bridge_index.url]
    cli(project, "lock", "--cuda", "cpu", "--flavour", "serve", *flags)
    cli(project, "build", "--cuda", "cpu", "--all", "--builder", "buildkit", *flags)
    built = {cell: record for cell, record in build_report(project).items()}
    assert set(built) == {PLAIN, SERVE}
    freezes = {cell: containers.run_in(record["image_id"], "pip freeze --all") for cell, record in built.items()}
    for record in built.values():  # bake must make these tags itself
        for tag in record["tags"]:
            docker_client.images.remove(tag)

    cli(project, "bake", "--cuda", "cpu", *flags)
    bake = json.loads((project / "docker-bake.json").read_text())
    assert sorted(bake["group"]["all"]["targets"]) == ["cpu-py3_11-torch2_13_0", "cpu-py3_11-torch2_13_0-serve"]
    result = subprocess.run(["docker", "buildx", "bake", "-f", "docker-bake.json", "--load", "all"], cwd=project,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]

    for cell, record in built.items():
        tag = content_tag(record["tags"], cell)
        image = docker_client.images.get(tag)  # bake gave it the content tag build gave it
        assert f"{REPOSITORY}:{cell}" in image.tags
        assert image.labels["io.gpumatrix.cell"] == cell
        assert image.labels["io.gpumatrix.lock-sha256"] == record["labels"]["io.gpumatrix.lock-sha256"]
        assert containers.run_in(image.id, "pip freeze --all") == freezes[cell]
    assert "rich==" in freezes[SERVE] and "rich==" not in freezes[PLAIN]
    for record in built.values():
        for tag in record["tags"]:
            docker_client.images.remove(tag, force=True)
