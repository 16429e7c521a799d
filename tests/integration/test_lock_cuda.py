"""A CUDA cell of the shipped matrix locked with the real pip-compile, from index metadata alone: the loopback index
serves the real metadata of torch 2.11.0, torchvision 0.26.0 and torchaudio 2.11.0 (PyPI's files, relabelled +cu128
as the PyTorch index publishes them) and no wheel at all; every other project is redirected to PyPI."""

from __future__ import annotations

import re

import pytest

from devtools.standins import PYPI_SIMPLE, LoopbackIndex
from support.cli import cli
from support.standins import standin_flags

CELL = "cu12.8-py3.11-torch2.11.0"
FILTERS = ("--cuda", "12.8", "--python", "3.11", "--torch", "2.11.0", "--flavour", "none")
RELEASE = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}


@pytest.fixture(scope="module")
def cu128_index(cache_dir):
    index = LoopbackIndex(cache_dir / "index-cu128-metadata", fallback=PYPI_SIMPLE)
    for project, version in RELEASE.items():
        index.add_metadata_only(project, version, "cu128", python="3.11")
    with index:
        yield index


def test_a_cuda_cell_locks_from_index_metadata_without_a_torch_stage(tmp_project, standin_base, cu128_index,
                                                                     docker_client):
    images_before = {image.id for image in docker_client.images.list(all=True)}
    result = cli(tmp_project, "lock", *FILTERS, *standin_flags(standin_base, cu128_index.url), timeout=1200)
    assert result.returncode == 0, result.stderr
    assert f"{CELL}: wrote locks/{CELL}.txt" in result.stderr

    asked = cu128_index.requests
    assert "/files/torch-2.11.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl.metadata" in asked, asked
    assert not [path for path in asked if path.endswith(".whl")], f"wheels asked for: {asked}"
    made = [image for image in docker_client.images.list(all=True) if image.id not in images_before]
    steps = [step.get("CreatedBy", "") for image in made for step in image.history()]
    assert not [step for step in steps if "torch==2.11.0+cu128" in step], "the lock built a torch stage"

    text = (tmp_project / "locks" / f"{CELL}.txt").read_text()
    stage = dict(re.findall(r"^# torch-stage: ([A-Za-z0-9._-]+)==(\S+)$", text, re.MULTILINE))
    assert {name: stage.get(name) for name in RELEASE} == {name: f"{v}+cu128" for name, v in RELEASE.items()}
    assert any(name.startswith("nvidia-") for name in stage), stage  # torch's CUDA libraries, from its metadata
    body = text.split("\n\n", 1)[1]
    pinned = {m.lower() for m in re.findall(r"^([A-Za-z0-9._-]+)==", body, re.MULTILINE)}
    assert {"transformers", "peft", "accelerate", "bitsandbytes", "datasets"} <= pinned
    assert "numpy" in stage and "numpy" not in pinned  # torchvision brings it into the torch stage
    assert not pinned & {name.lower() for name in stage}, pinned & set(stage)
    assert cli(tmp_project, "lock", "--check", *FILTERS).returncode == 0
