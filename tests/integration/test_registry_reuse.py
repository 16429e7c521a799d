"""A cell whose content tag is in the registry it would be pushed to is done: `build` builds nothing, `test` tests
nothing, `push` pushes nothing, and the catalog keeps its entry. A registry that cannot be reached for the lookup is
one line and the build goes on; one that refuses the credentials is exit 2, asked once.

The registry is Debian's docker-registry on a loopback port, named as the matrix's own `registry` of this module's
project copy. Tests in this module run in order and share one project.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import pytest

from devtools.registry import free_port
from devtools import engines
from support.cli import cli
from support.projects import WITH_LOCKS, copy_project
from support.reports import build_report
from support.standins import STANDIN_CELL as CELL
from support.standins import base_flags

USER, PASSWORD = "reuse-bot", "S3cret-reuse-Pa55"


@pytest.fixture(scope="module")
def registry(registries):
    return registries()


@pytest.fixture(scope="module")
def project(tmp_path_factory, registry) -> Path:
    return copy_project(tmp_path_factory.mktemp("reuse-project"), WITH_LOCKS, registry=registry.addr)


def catalog(project: Path) -> dict[str, dict]:
    path = project / "out" / "catalog" / "images.json"
    return {e["cell"]: e for e in json.loads(path.read_text())["images"]}


def remove_local_images(docker_client, prefix: str) -> None:
    for image in docker_client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                docker_client.images.remove(tag, force=True)


def test_a_pushed_cell_is_done_without_building_testing_or_pushing(project, registry, stand_ins, standin_base,
                                                                    docker_client):
    repository = f"{registry.addr}/gpu-images"
    first = cli(project, "build", "--cuda", "cpu", *stand_ins)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "in the registry" not in first.stderr and "cannot be reached" not in first.stderr
    assert build_report(project)[CELL]["status"] == "built"
    assert cli(project, "test", "--cuda", "cpu", "--no-gpu", *base_flags(standin_base)).returncode == 0
    pushed = cli(project, "push", "--cuda", "cpu")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    entry = catalog(project)[CELL]
    record = (project / "out" / "tests" / f"{CELL}.json").read_bytes()
    remove_local_images(docker_client, f"{repository}:")  # a fresh runner: nothing of the cell on its engine

    started = time.monotonic()
    again = cli(project, "build", "--cuda", "cpu", *stand_ins)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert f"content tag in the registry: {repository}:{CELL}-" in again.stderr
    report = build_report(project)[CELL]
    assert report["status"] == "in registry" and report["digest"] == entry["digest"], report
    assert report["steps"] == [] and report["image_id"] is None
    with pytest.raises(docker.errors.ImageNotFound):  # nothing was built or pulled
        docker_client.images.get(f"{repository}:{CELL}")

    tested = cli(project, "test", "--cuda", "cpu", "--no-gpu", *base_flags(standin_base))
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert f"{CELL}: in the registry as {repository}:{CELL}-" in tested.stderr and "nothing to test" in tested.stderr
    assert (project / "out" / "tests" / f"{CELL}.json").read_bytes() == record

    again_pushed = cli(project, "push", "--cuda", "cpu")
    assert again_pushed.returncode == 0, again_pushed.stderr[-3000:]
    assert "nothing to push" in again_pushed.stderr and "pushing" not in again_pushed.stderr
    assert catalog(project)[CELL] == entry


def test_an_unreachable_registry_is_one_line_and_the_build_goes_on(project, stand_ins, docker_client):
    nobody = f"127.0.0.1:{free_port()}"
    result = cli(project, "build", "--cuda", "cpu", "--registry", f"{nobody}/team", *stand_ins)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "cannot be reached" in line]
    assert lines == [f"registry {nobody} cannot be reached for the lookup "
                     f"(dial tcp {nobody}: connect: connection refused); building locally"], result.stderr[-3000:]
    assert build_report(project)[CELL]["status"] == "built"


def test_refused_credentials_are_exit_2_asked_once(project, registries, registry, stand_ins, docker_client):
    guarded = registries(users={USER: PASSWORD})
    remove_local_images(docker_client, f"{registry.addr}/gpu-images:")
    log_before = len(guarded.log.read_text()) if guarded.log.exists() else 0
    wrong = PASSWORD + "-wrong"
    result = cli(project, "build", "--cuda", "cpu", "--registry", guarded.addr, *stand_ins,
                 env={"REGISTRY_USER": USER, "REGISTRY_PASSWORD": wrong})
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert f"registry {guarded.addr} refused the credentials of REGISTRY_USER={USER}" in errors[0]
    assert wrong not in result.stderr + result.stdout and "Traceback" not in result.stderr
    asked = [line for line in guarded.log.read_text()[log_before:].splitlines()
             if line.startswith("127.0.0.1 - - ") and "/v2/gpu-images/manifests/" in line]
    assert 1 <= len(asked) <= 2, asked  # one lookup (the engine's HEAD, then GET), never retried


def test_a_fresh_engine_after_a_lock_change_builds_only_the_app_layer(project, registry, buildx, standin_base,
                                                                      torch_index, stand_ins, docker_client):
    """Another CI runner: a dockerd of its own with nothing but the stand-in base. The lock changed since the push of
    the first test, so the content tag is new; BuildKit takes base, torch stage and the copy of the torch
    environment from the inline cache of the cell's pushed image and installs only the app layer."""
    layer = project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "six>=1.16\n")
    assert cli(project, "lock", "--cuda", "cpu", *stand_ins).returncode == 0
    with engines.second_engine(standin_base, docker_client, "gm-reuse0", "172.31.252.1/24") as (engine, client):
        asked_before = len(torch_index.requests)
        result = cli(project, "build", "--cuda", "cpu", *stand_ins, env={"DOCKER_HOST": engine.host})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "builder: buildkit" in result.stderr
        steps = build_report(project)[CELL]["steps"]
        early = [s for s in steps if s["stage"] in ("base", "torch") and not s["instruction"].startswith("FROM")]
        assert early and all(s["cached"] for s in early), [s["instruction"][:50] for s in early if not s["cached"]]
        copy = next(s for s in steps if s["instruction"].startswith("COPY --from=torch /opt/venv"))
        assert copy["cached"], copy
        install = [s for s in steps if s["stage"] == "runtime" and s["instruction"].startswith("RUN")][-1]
        assert not install["cached"]
        asked = torch_index.requests[asked_before:]
        assert asked.count("/simple/torch/") == 1, asked  # the build's own probe of the index; pip never asked
        assert not [path for path in asked if path.startswith("/files/")], asked  # the torch stage never ran
        freeze = client.containers.run(f"{registry.addr}/gpu-images:{CELL}", ["pip", "freeze"], remove=True).decode()
        assert "six==" in freeze and "torch==2.13.0+cpu" in freeze
