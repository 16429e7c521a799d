"""Ctrl-C and SIGTERM on real runs: exit 130/143, no container left running, no file half-written."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from support.cli import follow, start, wait_for
from support.containers import product_containers
from support.projects import SHIPPED_REPOSITORY
from support.standins import STANDIN_CELL as CELL


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_lock_removes_the_container_and_keeps_the_lock(
    tmp_project, stand_ins, docker_client, sig, code
):
    project = tmp_project
    lock = project / "locks" / f"{CELL}.txt"
    before = lock.read_bytes()
    (project / "requirements" / "cpu.in").write_text((project / "requirements" / "cpu.in").read_text() + "rich>=13\n")
    proc = start(project, "lock", "--cuda", "cpu", *stand_ins)
    wait_for(lambda: product_containers(docker_client, "lock", pid=proc.pid) or proc.poll() is not None,
             "the lock container")
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err
    assert "Traceback" not in err
    assert product_containers(docker_client, "lock", pid=proc.pid) == []
    assert lock.read_bytes() == before
    assert not list(lock.parent.glob(".*.tmp"))


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_sigint_during_build_stops_promptly_and_leaves_no_report_and_no_image(tmp_project, stand_ins, docker_client,
                                                                             builder, request):
    if builder == "buildkit":
        request.getfixturevalue("buildx")
    project = tmp_project
    started = datetime.now(timezone.utc)
    (project / "out").mkdir()
    proc = start(project, "build", "--cuda", "cpu", "--no-cache", "--builder", builder, *stand_ins)
    lines = follow(proc.stderr)
    wait_for(lambda: any("building " in line for line in lines) or proc.poll() is not None, "the build to start")
    time.sleep(8)  # inside the cold build (it takes about a minute)
    assert proc.poll() is None, "".join(lines)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    proc.wait(timeout=120)
    assert time.monotonic() - signalled < 30
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (project / "out" / "build-report.json").exists()
    tagged = docker_client.images.list(filters={"reference": f"{SHIPPED_REPOSITORY}:{CELL}*"})
    new = [i.tags for i in tagged if datetime.fromisoformat(i.attrs["Created"][:26].rstrip("Z") + "+00:00") > started]
    assert new == [], f"images tagged after the interrupt: {new}"
    left = subprocess.run(["pgrep", "-f", "buildx build --progress=plain"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a buildx build outlived the interrupt"
