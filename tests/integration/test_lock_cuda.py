"""The CUDA cells of the shipped matrix locked with the real resolvers (uv, the default, and pip-tools for one cell),
from index metadata alone. The loopback index serves the real metadata of each torch release's wheels (PyPI's files,
relabelled with the variant as the PyTorch index publishes them) and no wheel at all; every other project is
redirected to PyPI.

The stand-in base is Debian bookworm with Python 3.11 only, so Python 3.11 cells are the ones locked here: the newest
torch release of each CUDA version of the shipped matrix (one cell per variant of the index), and the CPU cell. The
older releases lock the same way; each CUDA cell is a real resolve of the fine-tuning layer against PyPI (seconds with
uv, one to two minutes with pip-tools), so they are left out of the project copy to keep the suite's time."""

from __future__ import annotations

import re

import pytest

from devtools.standins import PYPI_SIMPLE, LoopbackIndex
from support.cli import cli
from support.standins import standin_flags

# What the torch stage of each cell locked here pins (compat.yaml's facts, stated here again by hand).
CELLS = {
    "cu12.4-py3.11-torch2.6.0": {"torch": "2.6.0+cu124", "torchvision": "0.21.0+cu124", "torchaudio": "2.6.0+cu124"},
    "cu12.8-py3.11-torch2.11.0": {"torch": "2.11.0+cu128", "torchvision": "0.26.0+cu128",
                                  "torchaudio": "2.11.0+cu128"},
    "cu13.0-py3.11-torch2.14.1": {"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130"},
    "cpu-py3.11-torch2.13.0": {"torch": "2.13.0+cpu"},
}
# Excluded in the project copy for Python 3.11 only: a release that yields no cell at all is refused by the matrix.
OLDER_RELEASES = '  - {python: "3.11", torch: ["2.5.1", "2.7.1", "2.9.1"]}\n'
# uv locks every cell but this one, which pip-tools locks in the same run (an override of the resolver per cell).
PIP_TOOLS_CELL = "cu12.8-py3.11-torch2.11.0"
PIP_TOOLS_OVERRIDE = '  - match: {cuda: "12.8", python: "3.11", torch: "2.11.0"}\n    resolver: pip-tools\n'


# The PyTorch index serves its own copy of fsspec, older than PyPI's newest. With PyPI's newest (2026.9.0) in the torch
# stage, pip-compile of app.in backtracks through every release of `datasets` (5.0.1 caps fsspec at <=2026.6.0) for
# far longer than a test may take; the stand-in serves 2026.6.0 as the real index would serve a copy of its own.
INDEX_OWN_COPIES = {"fsspec": "2026.6.0"}


@pytest.fixture(scope="module")
def metadata_index(cache_dir):
    index = LoopbackIndex(cache_dir / "index-metadata", fallback=PYPI_SIMPLE)
    for pins in CELLS.values():
        for project, pin in pins.items():
            version, local = pin.split("+")
            index.add_metadata_only(project, version, local, python="3.11")
    for project, version in INDEX_OWN_COPIES.items():
        index.add_metadata_only(project, version, None, python="3.11")
    with index:
        yield index


def stage_pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# torch-stage: ([A-Za-z0-9._-]+)==(\S+)$", text, re.MULTILINE))


def body_names(text: str) -> set[str]:
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9._-]+)==", text.split("\n\n", 1)[1], re.MULTILINE)}


def test_a_python_3_11_cell_of_every_variant_locks_from_index_metadata_without_a_torch_stage(tmp_project, standin_base,
                                                                                metadata_index, docker_client):
    matrix = tmp_project / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace("exclude:\n", "exclude:\n" + OLDER_RELEASES, 1)
                      .replace("overrides:\n", "overrides:\n" + PIP_TOOLS_OVERRIDE, 1))
    for name in CELLS:
        (tmp_project / "locks" / f"{name}.txt").unlink(missing_ok=True)
    images_before = {image.id for image in docker_client.images.list(all=True)}
    result = cli(tmp_project, "lock", "--python", "3.11", "-j", "2",
                 *standin_flags(standin_base, metadata_index.url), timeout=2400)
    assert result.returncode == 0, result.stderr
    for name in CELLS:
        assert f"{name}: wrote locks/{name}.txt" in result.stderr
    assert result.stderr.count(": wrote locks/") == len(CELLS), result.stderr[-3000:]

    asked = metadata_index.requests
    assert [p for p in asked if p.startswith("/files/torch-2.6.0+cu124-cp311-") and p.endswith(".whl.metadata")]
    assert not [path for path in asked if path.endswith(".whl")], f"wheels asked for: {asked}"
    made = [image for image in docker_client.images.list(all=True) if image.id not in images_before]
    steps = [step.get("CreatedBy", "") for image in made for step in image.history()]
    assert not [step for step in steps if "torch==" in step], "a lock built a torch stage"

    for name, pins in CELLS.items():
        text = (tmp_project / "locks" / f"{name}.txt").read_text()
        stage = stage_pins(text)
        assert {project: stage.get(project) for project in pins} == pins, name
        assert not body_names(text) & {n.lower() for n in stage}, name
        if name.startswith("cu"):
            assert any(n.startswith("nvidia-") for n in stage), (name, stage)  # torch's CUDA libraries
            assert {"transformers", "peft", "accelerate", "bitsandbytes", "datasets"} <= body_names(text), name
        resolver = "# pip-tools: 7.6.2\n" if name == PIP_TOOLS_CELL else "# uv: 0.13.9\n"
        assert resolver in text.split("\n\n", 1)[0], name
    assert cli(tmp_project, "lock", "--check", "--python", "3.11").returncode == 0
