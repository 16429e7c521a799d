"""The script part of .github/workflows/refresh.yml, end to end against the stand-ins, on a new repository (no lock,
no base digest): `changes --save`, `compat refresh` (loopback pages shaped like the PyTorch index's, its nightly
index's and PyPI's), `bases --refresh` (a docker-registry playing Docker Hub), `lock` (stand-in base and index, real
pip-compile against PyPI), `render`, then `changes --since`, whose table is the pull request's body. The expected
rows are stated here from what the test planted, and the digests from skopeo, an independent client."""

from __future__ import annotations

import io
import json
import re
import subprocess

import pytest

from devtools.standins import LoopbackIndex
from support.cli import cli
from support.compatpages import EARLIER_ROWS, plant_pages
from support.projects import WITH_LOCKS, copy_project, matrix_text
from support.standins import standin_flags

pytestmark = pytest.mark.integration

CELL = "cpu-py3.11-torch2.13.0"
CPU_ONLY = matrix_text(cuda=("cpu",), torch=("2.13.0",), extra=(
    "overrides:\n"
    "  - match: {cuda: cpu}\n"
    "    layers: [cpu]\n"
    "    companions: []\n"))
BASES = ("python:3.11-bookworm", "python:3.11-slim-bookworm")


@pytest.fixture
def pages(tmp_path):
    indexes = [LoopbackIndex(tmp_path / name) for name in ("release", "nightly", "pypi")]
    plant_pages(*indexes)
    with indexes[0], indexes[1], indexes[2]:
        yield [flag for name, index in zip(("--index-url", "--nightly-url", "--pypi-url"), indexes)
               for flag in (name, index.url)]


@pytest.fixture
def hub(registries, docker_client, standin_base) -> str:
    """A docker-registry holding the CPU cell's two bases under Docker Hub's paths, each a distinct image."""
    registry = registries()
    for ref in BASES:
        name, tag = ref.split(":")
        dockerfile = f"FROM {standin_base}\nLABEL io.gpumatrix.test.refresh={tag}\n".encode()
        image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), rm=True)
        repository = f"{registry.addr}/library/{name}"
        image.tag(repository, tag)
        for chunk in docker_client.api.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in chunk, chunk
    return registry.addr


def skopeo_digest(registry: str, ref: str) -> str:
    name, tag = ref.split(":")
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{registry}/library/{name}:{tag}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Digest"]


def test_the_refresh_steps_on_a_new_repository_produce_the_pull_request_body(tmp_path, pages, hub, standin_base,
                                                                            torch_index):
    project = copy_project(tmp_path / "project", WITH_LOCKS, matrix=CPU_ONLY)
    (project / "locks" / f"{CELL}.txt").unlink()
    generated = tmp_path / "compat-generated.yaml"
    generated.write_text(EARLIER_ROWS)
    before, body = tmp_path / "before", tmp_path / "body.md"

    steps = [
        ["changes", "--save", str(before), "--generated", str(generated)],
        ["compat", "refresh", "--generated", str(generated), *pages],
        ["bases", "--refresh", "--registry", f"http://{hub}"],
        ["lock", *standin_flags(standin_base, torch_index.url)],
        ["render"],
        ["changes", "--since", str(before), "--generated", str(generated), "--output", str(body)],
    ]
    for args in steps:
        result = cli(project, *args, timeout=900)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"

    lock = (project / "locks" / f"{CELL}.txt").read_text()
    packages = len(re.findall(r"^[A-Za-z0-9._-]+==\S+ \\$", lock, re.MULTILINE))
    digests = {ref: skopeo_digest(hub, ref) for ref in BASES}
    assert body.read_text().splitlines() == [
        "| what | before | after |",
        "|---|---|---|",
        "| compat: torch 2.14.1 |  | variant cu129 gone from the index |",
        "| compat: torch 2.14.1 |  | torchaudio none is now 2.11.1 |",
        "| compat: torch 2.15.0 |  | new on the index (variants cu130 cu132, Python 3.11-3.15) |",
        "| compat: torch 2.16.0 nightly |  | new variant cu132 |",
        "| compat: torch 2.16.0 nightly |  | Python 3.10-3.14 is now 3.11-3.14 |",
        *(f"| base `{ref}` | none | {digests[ref][:19]} |" for ref in BASES),
        f"| lock `{CELL}` | none | {packages} packages |",
    ]
    assert packages > 0
    dockerfile = (project / "docker" / CELL / "Dockerfile").read_text()
    assert f"python:3.11-bookworm@{digests['python:3.11-bookworm']}" in dockerfile
