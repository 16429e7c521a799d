"""build.py as a user runs it, in a child process: to the end (`cli`, `build_py`) or in the background (`start`).

A developer's own gpumatrix settings (GPUMATRIX_INDEX_URL with a token, REGISTRY_USER/REGISTRY_PASSWORD,
GPUMATRIX_BASES_REGISTRY, GPUMATRIX_TRACEBACK) are not passed on: a test that wants one gives it in `env`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.projects import REPO

BUILD_PY = REPO / "build.py"
CREDENTIALS = ("REGISTRY_USER", "REGISTRY_PASSWORD")


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GPUMATRIX_") and k not in CREDENTIALS}
    return {**inherited, **(env or {})}


def build_py(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 1800,
             script: Path = BUILD_PY) -> subprocess.CompletedProcess:
    """`python build.py ARGS` in `cwd`, output captured as text."""
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment(env))


def cli(project: Path, *args: str, matrix: str = "matrix.yaml", env: dict | None = None,
        timeout: float = 1800) -> subprocess.CompletedProcess:
    """`build.py --matrix PROJECT/MATRIX ARGS`, run in the project."""
    return build_py("--matrix", str(project / matrix), *args, cwd=project, env=env, timeout=timeout)


def start(project: Path, *args: str, env: dict | None = None, merge: bool = False) -> subprocess.Popen:
    """`build.py --matrix PROJECT/matrix.yaml ARGS` started in the background; stdout and stderr are pipes (one pipe,
    stdout, with `merge`). It gets SIGINT at its default: tests/integration/conftest.py sees to that."""
    return subprocess.Popen([sys.executable, str(BUILD_PY), "--matrix", str(project / "matrix.yaml"), *args],
                            cwd=project, env=environment(env), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge else subprocess.PIPE)


def follow(stream) -> list[str]:
    """The lines of `stream` so far, growing as they come: a daemon thread reads it, so the child never blocks on a
    full pipe and a test can watch for a line while the run goes on."""
    lines: list[str] = []
    threading.Thread(target=lines.extend, args=(stream,), daemon=True).start()
    return lines


def wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")
