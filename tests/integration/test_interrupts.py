"""Ctrl-C and SIGTERM on real runs: exit 130/143, no container left running, no file half-written."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CELL = "cpu-py3.11-torch2.13.0"


@pytest.fixture
def project(tmp_project: Path) -> Path:
    return tmp_project


def start(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "build.py"), "--matrix", str(project / "matrix.yaml"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def lock_containers(client, pid: int) -> list:
    """Lock containers of this one gpumatrix process (other runs may share the engine)."""
    return client.containers.list(all=True, sparse=True,
                                  filters={"label": ["io.gpumatrix.role=lock", f"io.gpumatrix.pid={pid}"]})


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_pip_compile_removes_the_container_and_keeps_the_lock(
    project, standin_base, torch_index, docker_client, sig, code
):
    lock = project / "locks" / f"{CELL}.txt"
    before = lock.read_bytes()
    (project / "requirements" / "cpu.in").write_text((project / "requirements" / "cpu.in").read_text() + "rich>=13\n")
    proc = start(project, "lock", "--cuda", "cpu", "--base-image", standin_base,
                 "--index-url", torch_index.url, "--network", "host")
    wait_for(lambda: lock_containers(docker_client, proc.pid) or proc.poll() is not None, "the pip-compile container")
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err
    assert "Traceback" not in err
    assert lock_containers(docker_client, proc.pid) == []
    assert lock.read_bytes() == before
    assert not list(lock.parent.glob(".*.tmp"))


def test_sigint_during_build_stops_promptly_and_leaves_no_report_and_no_image(
    project, standin_base, torch_index, docker_client
):
    args = ["--base-image", standin_base, "--runtime-image", standin_base, "--index-url", torch_index.url,
            "--network", "host"]
    started = datetime.now(timezone.utc)
    (project / "out").mkdir()
    proc = start(project, "build", "--cuda", "cpu", "--no-cache", *args)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
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
    tagged = docker_client.images.list(filters={"reference": f"ghcr.io/acme/gpu-images:{CELL}*"})
    new = [i.tags for i in tagged if datetime.fromisoformat(i.attrs["Created"][:26].rstrip("Z") + "+00:00") > started]
    assert new == [], f"images tagged after the interrupt: {new}"
