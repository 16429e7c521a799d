"""Faults with the real components: an engine that dies mid-build, a disk that fills, an index that goes away
during a lock, an output directory with no room. Each ends with one clear message, exit 1, a report (or the old
file) that says exactly what happened, and nothing tagged or written that claims to be fresh.

The engine faults run on a second dockerd of their own (own socket, data root, exec root and bridge), so killing it
or filling its disk cannot disturb the engine the rest of the suite uses. (Not `--bridge=none`: a dockerd started
with it deletes the `docker0` interface, which the first engine's containers need.)
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import docker
import pytest

from devtools.standins import LoopbackIndex
from devtools import engines
from support.cli import follow, start, wait_for
from support.containers import product_containers
from support.projects import SHIPPED_REPOSITORY as REPOSITORY
from support.reports import build_report
from support.standins import STANDIN_CELL as CELL
from support.standins import cpu_index, standin_flags


BRIDGE, BRIDGE_CIDR = "gm-faults0", "172.31.254.1/24"


def default_bridge_works(containers, image: str) -> bool:
    """The first engine can still start a container on its default network (docker0)."""
    try:
        containers.run_in(image, ["true"], network="bridge")
        return True
    except docker.errors.APIError:
        return False


def second_engine(standin_base: str, main_client, tmpfs_size: str | None = None):
    return engines.second_engine(standin_base, main_client, BRIDGE, BRIDGE_CIDR, tmpfs_size)


def start_merged(project: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """build.py in the background, its stdout and stderr read together as they come."""
    proc = start(project, *args, env=env, merge=True)
    return proc, follow(proc.stdout)


def finish(proc: subprocess.Popen, lines: list[str], timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    time.sleep(0.5)  # the reader thread drains the pipe
    return "".join(lines)


def torch_downloads(index: LoopbackIndex) -> int:
    return sum(1 for r in index.requests if "torch-2.13.0" in r and r.endswith(".whl"))


def test_engine_killed_mid_build_fails_the_cell_in_the_report_and_tags_nothing(
    tmp_project, standin_base, torch_index, stand_ins, docker_client, containers
):
    with second_engine(standin_base, docker_client) as (engine, client):
        downloads = torch_downloads(torch_index)
        proc, lines = start_merged(tmp_project, "build", "--cuda", "cpu", "--no-cache", *stand_ins,
                                   env={"DOCKER_HOST": engine.host})
        wait_for(lambda: torch_downloads(torch_index) > downloads or proc.poll() is not None, "the torch install")
        assert proc.poll() is None, "".join(lines)
        engine.kill()
        out = finish(proc, lines, timeout=120)
        assert proc.returncode == 1, out
        assert "Traceback" not in out
        assert "the Docker engine stopped answering during the build" in out
        record = build_report(tmp_project)[CELL]
        assert record["status"] == "failed" and record["image_id"] is None
        assert "stopped answering" in record["error"]

        client = engine.start()
        assert client.images.list(name=REPOSITORY) == [], "an image of the cell was tagged by the dead build"
    assert default_bridge_works(containers, standin_base), "the second engine broke the first one's network"


def test_engine_disk_full_fails_the_step_with_the_reason(tmp_project, standin_base, stand_ins, docker_client,
                                                         containers):
    with second_engine(standin_base, docker_client, tmpfs_size="700m") as (engine, client):
        proc, lines = start_merged(tmp_project, "build", "--cuda", "cpu", "--no-cache", *stand_ins,
                                   env={"DOCKER_HOST": engine.host})
        out = finish(proc, lines, timeout=600)
        assert proc.returncode == 1, out
        assert "Traceback" not in out
        assert "No space left on device" in out, out[-3000:]
        record = build_report(tmp_project)[CELL]
        assert record["status"] == "failed" and record["image_id"] is None
        assert "No space left on device" in record["error"]
        assert client.images.list(name=REPOSITORY) == []
    assert default_bridge_works(containers, standin_base), "the second engine broke the first one's network"


def test_index_gone_during_the_lock_writes_no_lock_and_leaves_no_container(tmp_project, standin_base, cache_dir,
                                                                            docker_client):
    lock = tmp_project / "locks" / f"{CELL}.txt"
    before = lock.read_bytes()
    # a change, so that a lock resolved without the index would differ from the committed one
    cpu_in = tmp_project / "requirements" / "cpu.in"
    cpu_in.write_text(cpu_in.read_text() + "rich>=13\n")
    index = cpu_index(cache_dir)  # its own, on its own port: stopping it harms no other test
    index.start()
    try:
        proc, lines = start_merged(tmp_project, "lock", "--cuda", "cpu", *standin_flags(standin_base, index.url))
        wait_for(lambda: product_containers(docker_client, "lock", pid=proc.pid) or proc.poll() is not None,
                 "the lock container")
        assert proc.poll() is None, "".join(lines)
    finally:
        index.stop()
    out = finish(proc, lines, timeout=600)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "stopped answering" in out and "no lock written" in out, out[-3000:]
    assert lock.read_bytes() == before
    assert not list(lock.parent.glob(".*.tmp"))
    assert product_containers(docker_client, "lock", pid=proc.pid) == []


@pytest.fixture
def full_out(tmp_project):
    """The project's out/ on a tiny tmpfs that is already full."""
    out = tmp_project / "out"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], check=True)
    try:
        (out / "build-report.json").write_text('{"cells": []}\n')
        with open(out / "filler", "wb") as fh:
            with contextlib.suppress(OSError):
                fh.write(b"\0" * (1 << 20))
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_full_output_disk_keeps_the_old_report_and_says_why(full_out, tmp_project, stand_ins):
    proc, lines = start_merged(tmp_project, "build", "--cuda", "cpu", *stand_ins)
    out = finish(proc, lines, timeout=900)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert f"cannot write {full_out / 'build-report.json'}: No space left on device" in out, out[-2000:]
    assert (full_out / "build-report.json").read_text() == '{"cells": []}\n'
    assert not list(full_out.glob(".*.tmp"))
