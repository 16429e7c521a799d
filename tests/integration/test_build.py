"""End to end on a real engine: lock and build the CPU cell of the shipped matrix against the stand-ins.

Everything is checked through the docker SDK or the image itself, never through gpumatrix's own code.
Tests in this module run in order and share one copy of the project.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from support.cli import cli
from support.projects import SHIPPED_REPOSITORY as REPOSITORY
from support.projects import copy_project
from support.reports import build_report
from support.standins import STANDIN_CELL as CELL


@pytest.fixture(scope="module", params=["buildkit", "classic"])
def builder(request) -> str:
    """Every test of this module runs on both builders, each on a project of its own."""
    if request.param == "buildkit":
        request.getfixturevalue("buildx")
    return request.param


@pytest.fixture(scope="module")
def project(tmp_path_factory, builder) -> Path:
    root = copy_project(tmp_path_factory.mktemp(f"project-{builder}"))
    (root / "locks").mkdir()
    return root


@pytest.fixture(scope="module")
def flags(stand_ins, builder) -> list[str]:
    return [*stand_ins, "--builder", builder]


def lock_text(project: Path) -> str:
    return (project / "locks" / f"{CELL}.txt").read_text()


def requirement_names(text: str) -> set[str]:
    return {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9._-]+)==", text, re.MULTILINE)}


def test_lock_resolves_the_torch_stage_from_metadata_without_building_it(project, flags, torch_index,
                                                                         docker_client):
    images_before = {image.id for image in docker_client.images.list(all=True)}
    requests_before = len(torch_index.requests)
    result = cli(project, "lock", "--cuda", "cpu", *flags)
    assert result.returncode == 0, result.stderr
    asked = torch_index.requests[requests_before:]
    assert "/files/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl.metadata" in asked, asked
    assert not [path for path in asked if path.endswith(".whl")], f"wheels downloaded by the lock: {asked}"
    made = [image for image in docker_client.images.list(all=True) if image.id not in images_before]
    steps = [step.get("CreatedBy", "") for image in made for step in image.history()]
    assert not [step for step in steps if "torch==2.13.0+cpu" in step], "the lock built a torch stage"
    text = lock_text(project)
    names = requirement_names(text)
    assert {"numpy", "safetensors", "tqdm"} <= names
    stage = {line.split(": ", 1)[1].split("==")[0].lower() for line in text.splitlines() if line.startswith("# torch-stage: ")}
    assert "torch" in stage and "sympy" in stage
    assert not names & stage, f"torch-stage packages in the lock: {names & stage}"
    assert all("--hash=sha256:" in block for block in text.split("\n\n")[1].split("==")[1:])
    assert cli(project, "lock", "--check").returncode == 1  # only the CUDA cells are missing now
    assert cli(project, "lock", "--check", "--cuda", "cpu").returncode == 0


def test_lock_is_byte_identical_when_run_again(project, flags):
    first = lock_text(project)
    result = cli(project, "lock", "--cuda", "cpu", *flags)
    assert result.returncode == 0, result.stderr
    assert lock_text(project) == first


def test_build_makes_a_tagged_labelled_image_with_torch_from_the_loopback_index(
    project, flags, builder, docker_client, torch_index, containers
):
    index_requests = len(torch_index.requests)
    result = cli(project, "build", "--cuda", "cpu", "--force", *flags)
    assert result.returncode == 0, result.stderr
    assert f"building {CELL}" in result.stderr
    assert f"builder: {builder} (asked for)" in result.stderr
    image = docker_client.images.get(f"{REPOSITORY}:{CELL}")
    content_tags = [t for t in image.tags if re.fullmatch(rf"{re.escape(REPOSITORY)}:{CELL}-[0-9a-f]{{12}}", t)]
    assert content_tags, image.tags
    labels = image.labels
    assert labels["io.gpumatrix.torch"] == "2.13.0+cpu"
    assert labels["io.gpumatrix.python"] == "3.11"
    assert labels["org.opencontainers.image.version"] == CELL
    assert labels["io.gpumatrix.lock-sha256"] == hashlib.sha256((project / "locks" / f"{CELL}.txt").read_bytes()).hexdigest()
    rec = build_report(project)[CELL]
    torch_install = next(s for s in rec["steps"] if s["stage"] == "torch" and "torch==2.13.0+cpu" in s["instruction"])
    if builder == "classic":
        # The torch stage the image was assembled from (an intermediate image of this build): its torch layer was
        # installed with the loopback index only.
        history = [h["CreatedBy"] for img in docker_client.images.list(all=True) for h in img.history()
                   if "torch==2.13.0+cpu" in h["CreatedBy"]]
        assert any(f"TORCH_INDEX_URL={torch_index.url}" in h for h in history), history
        assert not any("--extra-index-url" in h for h in history)
    else:
        # BuildKit keeps no intermediate images: the torch step ran in this build (this session's index has a port
        # of its own, so no cache holds it) and asked the loopback index for torch.
        assert not torch_install["cached"] and "--extra-index-url" not in torch_install["instruction"]
        assert "/simple/torch/" in torch_index.requests[index_requests:], torch_index.requests[index_requests:]
    # BuildKit's download caches are mounts: the image holds their empty mount points, nothing in them
    cache = containers.run_in(f"{REPOSITORY}:{CELL}", ["bash", "-c", "find /root/.cache -mindepth 1 -type f | wc -l"])
    assert cache.strip() == "0", cache
    script = "import torch, numpy, safetensors; print(torch.__version__, torch.version.cuda)"
    versions = containers.run_in(f"{REPOSITORY}:{CELL}", ["python", "-c", script])
    assert versions.split() == ["2.13.0+cpu", "None"]
    env = dict(e.split("=", 1) for e in image.attrs["Config"]["Env"])
    assert env["PIP_CONSTRAINT"] == "/opt/gpumatrix/constraints.txt"
    assert rec["status"] == "built" and rec["image_id"] == image.id and rec["size"] == image.attrs["Size"]


def test_bake_content_tag_is_a_tag_the_build_gave_the_image(project, flags, docker_client):
    """bake computes a cell's content tag without building (fanout.bake_file hashes the Dockerfile, the lock and the
    build arguments itself). With the build's overrides that tag must be a tag of the image the build above made, as
    the engine has it: a build argument, lock byte or Dockerfile line that one side hashes and the other does not makes
    them differ. bake's labels must be the image's labels too."""
    result = cli(project, "bake", "--cuda", "cpu", *flags)
    assert result.returncode == 0, result.stderr
    target = json.loads((project / "docker-bake.json").read_text())["target"]["cpu-py3_11-torch2_13_0"]
    content_tags = [t for t in target["tags"] if re.fullmatch(rf"{re.escape(REPOSITORY)}:{CELL}-[0-9a-f]{{12}}", t)]
    assert len(content_tags) == 1, target["tags"]
    image = docker_client.images.get(f"{REPOSITORY}:{CELL}")
    assert image.id == build_report(project)[CELL]["image_id"]  # the image the build above made
    assert content_tags[0] in image.tags, f"bake's {content_tags[0]} is not a tag of the built image: {image.tags}"
    assert {key: image.labels.get(key) for key in target["labels"]} == target["labels"]


def test_image_holds_exactly_the_torch_stage_plus_the_lock(project, containers):
    text = lock_text(project)
    wanted = {line.split(": ", 1)[1].lower().replace("_", "-") for line in text.splitlines() if line.startswith("# torch-stage: ")}
    wanted |= {m.group(0).lower().replace("_", "-") for m in re.finditer(r"^[A-Za-z0-9._-]+==\S+", text, re.MULTILINE)}
    frozen = containers.run_in(f"{REPOSITORY}:{CELL}", "pip freeze --all --exclude pip")
    got = {line.lower().replace("_", "-") for line in frozen.split()}
    assert got == wanted, f"extra {got - wanted}, missing {wanted - got}"


def test_second_build_is_skipped_by_content_tag(project, flags):
    result = cli(project, "build", "--cuda", "cpu", *flags)
    assert result.returncode == 0, result.stderr
    assert "content tag present: skipped" in result.stderr
    assert build_report(project)[CELL]["status"] == "skipped"


def test_lock_change_rebuilds_only_the_app_install(project, flags):
    layer = project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "packaging>=24\n")
    result = cli(project, "build", "--locked", "--cuda", "cpu", *flags)
    assert result.returncode == 2 and "stale" in result.stderr and "make lock" in result.stderr
    assert cli(project, "lock", "--check", "--cuda", "cpu").returncode == 1
    assert cli(project, "lock", "--cuda", "cpu", *flags).returncode == 0
    # --force: the other builder's run of this module made the same lock, and its image has this content tag
    result = cli(project, "build", "--cuda", "cpu", "--force", *flags)
    assert result.returncode == 0, result.stderr
    steps = build_report(project)[CELL]["steps"]
    early = [s for s in steps if s["stage"] in ("base", "torch") and s["instruction"].split()[0] not in ("FROM", "ARG")]
    assert early and all(s["cached"] for s in early), [s["instruction"][:40] for s in early if not s["cached"]]
    # The app layer is installed in the runtime stage: everything before the lock's COPY there, the copy of the torch
    # environment (the bulk of the image) included, comes from the cache; from the lock's COPY on, all is rebuilt.
    assert not any(s["stage"] == "app" for s in steps)
    runtime = [s for s in steps if s["stage"] == "runtime" and s["instruction"].startswith(("RUN", "COPY"))]
    from_lock = next(i for i, s in enumerate(runtime) if s["instruction"].startswith("COPY app.lock"))
    assert runtime[0]["instruction"].startswith("COPY --from=torch /opt/venv")
    assert all(s["cached"] for s in runtime[:from_lock]), [s["instruction"][:40] for s in runtime[:from_lock]]
    assert runtime[from_lock:] and not any(s["cached"] for s in runtime[from_lock:])


def test_hand_edited_torch_in_the_lock_is_refused_before_building(project, flags):
    path = project / "locks" / f"{CELL}.txt"
    original = path.read_text()
    try:
        path.write_text(original + "torch==2.4.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
        result = cli(project, "build", "--cuda", "cpu", *flags)
        assert result.returncode == 2
        assert "torch-stage package(s) torch" in result.stderr
    finally:
        path.write_text(original)


def test_one_failing_cell_does_not_stop_the_others(project, flags, docker_client):
    """Python 3.10 is not in the stand-in base: that cell's first RUN fails. Its cell sorts before the 3.11 cell, so
    the 3.11 cell is built after the failure; --force makes it a build (from the cache), not a skip by content tag."""
    two_cells = project / "two-cells.yaml"
    two_cells.write_text(
        (project / "matrix.yaml").read_text()
        .replace('- {cuda: cpu, python: "3.11", torch: "2.13.0"}',
                 '- {cuda: cpu, python: "3.11", torch: "2.13.0"}\n  - {cuda: cpu, python: "3.10", torch: "2.13.0"}')
        + '  - match: {cuda: cpu, python: "3.10"}\n    layers: []\n'
    )
    result = cli(project, "build", "--all", "--cuda", "cpu", "--force", "-v", *flags, matrix=two_cells.name)
    assert result.returncode == 1, result.stderr
    records = build_report(project)
    assert list(records) == ["cpu-py3.10-torch2.13.0", CELL]  # the failing cell went first
    assert {name: rec["status"] for name, rec in records.items()} == {"cpu-py3.10-torch2.13.0": "failed", CELL: "built"}
    assert docker_client.images.get(f"{REPOSITORY}:{CELL}").id == records[CELL]["image_id"]
    # -v prints each step's output as `<cell> | <line>`: the 3.11 cell's steps come after the 3.10 cell's failure
    assert result.stderr.rindex("cpu-py3.10-torch2.13.0 | ") < result.stderr.index(f"{CELL} | "), result.stderr[-3000:]
    assert "(base) failed" in result.stderr
    assert "1 of 2 cells failed" in result.stderr


def test_unreachable_engine_is_one_line_naming_docker_host(project):
    result = cli(project, "build", "--cuda", "cpu", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert "tcp://127.0.0.1:9" in result.stderr and "DOCKER_HOST" in result.stderr
    assert "Traceback" not in result.stderr


def test_base_image_that_cannot_be_pulled_names_image_registry_and_override(project, torch_index):
    result = cli(project, "build", "--cuda", "cpu", "--base-image", "registry.invalid/nvidia/cuda:0.0-nope",
                 "--index-url", torch_index.url, "--network", "host")
    assert result.returncode == 2
    assert "registry.invalid/nvidia/cuda:0.0-nope" in result.stderr
    assert "from registry.invalid" in result.stderr and "--base-image" in result.stderr
    assert "Traceback" not in result.stderr
