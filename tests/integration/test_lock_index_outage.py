"""pip resolves on, exit status 0, when an index stops answering: the lock step must see it in pip's output.

The output comes from a real pip-compile run on this host: PyPI plus an extra index on a port where nothing listens.
It needs PyPI, so it is an integration test (tests/unit touch no network).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.registry import free_port
from gpumatrix.lock import RETRIES_USED_UP

PIP_COMPILE = Path(sys.executable).with_name("pip-compile")


def pip_compile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "x.in").write_text("tqdm\n")
    return subprocess.run([str(PIP_COMPILE), "--quiet", "--no-header", "--strip-extras", *extra,
                           "--output-file", "x.txt", "x.in"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def outage_output(tmp_path_factory) -> subprocess.CompletedProcess:
    closed = free_port()  # nothing listens there: connections are refused
    return pip_compile(tmp_path_factory.mktemp("outage"), "--extra-index-url", f"http://127.0.0.1:{closed}/simple")


def test_pip_compile_succeeds_although_an_index_never_answered(outage_output):
    # the premise of the check: without it this lock would be written as if nothing happened
    assert outage_output.returncode == 0, outage_output.stderr


def test_the_used_up_retries_are_found_with_the_page_that_was_skipped(outage_output):
    output = outage_output.stdout + outage_output.stderr
    assert RETRIES_USED_UP.findall(output) == ["/simple/tqdm/"], output


def test_a_run_whose_indexes_all_answered_has_nothing_to_report(tmp_path):
    result = pip_compile(tmp_path)
    assert result.returncode == 0, result.stderr
    assert RETRIES_USED_UP.findall(result.stdout + result.stderr) == []
