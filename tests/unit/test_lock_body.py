"""The lock's body is verified, not only its header: `lock --check` (exit 1) and build/bake (exit 2, before any engine
is asked) refuse a lock that was cut short, lost a hash, changed a pin or gained an unpinned line; and `lock --check`
names locks of cells the matrix no longer has. Each case drives the real CLI in-process against a damaged copy of
the committed lock and expects exactly one problem line naming the file (and the line, where there is one)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumatrix.errors import WorkFailed
from support.projects import copy_project

REPO = Path(__file__).resolve().parents[2]
CELL = "cpu-py3.11-torch2.13.0"
LOCK = f"locks/{CELL}.txt"
COMMITTED = (REPO / LOCK).read_bytes()
LINES = COMMITTED.decode().splitlines(keepends=True)


def line_of(pattern: str) -> int:
    """1-based number of the committed lock's first line matching `pattern` (found here, not by the code under test)."""
    return next(n for n, line in enumerate(LINES, start=1) if re.search(pattern, line))


def numpy_hash_lines() -> list[int]:
    start = line_of(r"^numpy==")
    numbers = []
    for n in range(start + 1, len(LINES) + 1):
        if not LINES[n - 1].startswith("    --hash=sha256:"):
            break
        numbers.append(n)
    return numbers


@pytest.fixture
def proj(tmp_path: Path, monkeypatch) -> Path:
    root = copy_project(tmp_path / "proj", ("templates", "requirements", "locks"))
    (root / LOCK).write_bytes(COMMITTED)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing answers: a refusal must come before the engine
    monkeypatch.delenv("GPUMATRIX_INDEX_URL", raising=False)
    return root


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def run(cli, snapshot, root: Path, *args: str) -> tuple[int, list[str], str]:
    before = snapshot(root)
    rc, out, err = cli("--matrix", str(root / "matrix.yaml"), *args)
    assert "Traceback" not in err + out
    assert snapshot(root) == before, "the command changed files in the project"
    return rc, errors(err), err


# ---- the committed lock ----

def test_committed_lock_records_the_sha256_of_the_bytes_after_its_header_block():
    head, sep, body = COMMITTED.partition(b"\n\n")
    assert sep and all(line.startswith(b"#") for line in head.splitlines())
    fields = re.findall(rb"^# body-sha256: ([0-9a-f]{64})$", head, re.MULTILINE)
    assert fields == [hashlib.sha256(body).hexdigest().encode()]
    # and the field sits where the writer puts it: after the torch-constraints digest, before the resolver's version
    names = [line.split(b":")[0] for line in head.splitlines()[1:6]]
    assert names[:4] == [b"# layers", b"# inputs-sha256", b"# torch-constraints-sha256", b"# body-sha256"]
    assert names[4] in (b"# uv", b"# pip-tools")


def test_intact_committed_lock_passes_the_check(proj, cli, snapshot):
    rc, lines, err = run(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert rc == 0, err
    assert lines == []
    assert "locks/ is up to date (1 locks)" in err


def test_the_shipped_lock_passes_the_check_in_the_repository(cli):
    rc, _, err = cli("--matrix", str(REPO / "matrix.yaml"), "lock", "--check", "--cuda", "cpu")
    assert rc == 0, err


# ---- damaged bodies ----

def cut_mid_hash() -> tuple[bytes, int, str]:
    n = numpy_hash_lines()[4]
    text = "".join(LINES[:n - 1]) + LINES[n - 1][:40]  # 22 of the 64 hex digits of the 5th numpy hash
    return text.encode(), n, "cut short"


def cut_after_backslash() -> tuple[bytes, int, str]:
    n = numpy_hash_lines()[9]
    assert LINES[n - 1].endswith(" \\\n")
    return "".join(LINES[:n]).encode(), n, "cut short"


def drop_middle_hash() -> tuple[bytes, None, str]:
    n = numpy_hash_lines()[3]
    return "".join(LINES[:n - 1] + LINES[n:]).encode(), None, "does not match its `# body-sha256:` header"


def drop_last_hash_of_a_block() -> tuple[bytes, int, str]:
    last = numpy_hash_lines()[-1]
    assert not LINES[last - 1].rstrip("\n").endswith("\\")
    # the line before now ends with `\` and continues into the `# via` line, which moves up into place `last`
    return "".join(LINES[:last - 1] + LINES[last:]).encode(), last, "expected `--hash=sha256:<64 hex>`"


def change_a_version() -> tuple[bytes, None, str]:
    text = COMMITTED.decode()
    assert text.count("\nnumpy==2.4.6 \\\n") == 1
    return text.replace("\nnumpy==2.4.6 \\\n", "\nnumpy==2.4.5 \\\n").encode(), None, "does not match"


def add_unpinned() -> tuple[bytes, int, str]:
    return COMMITTED + b"foo>=1\n", len(LINES) + 1, "'foo>=1' is not an exact `name==version` pin"


def add_pin_without_hash() -> tuple[bytes, int, str]:
    return COMMITTED + b"foo==1.0\n", len(LINES) + 1, "foo==1.0 has no --hash=sha256 line"


def add_torch() -> tuple[bytes, None, str]:
    return COMMITTED + b"torch==2.4.1 \\\n    --hash=sha256:" + b"0" * 64 + b"\n", None, "torch-stage package(s) torch"


def drop_body_digest() -> tuple[bytes, None, str]:
    text = re.sub(rb"^# body-sha256: .*\n", b"", COMMITTED, flags=re.MULTILINE)
    assert text != COMMITTED
    return text, None, "has no `# body-sha256:` header line"


def header_without_end() -> tuple[bytes, None, str]:
    return "".join(LINES[:5]).encode(), None, "the header block never ends"


def not_a_lock() -> tuple[bytes, int, str]:
    return b"numpy==2.4.6\n", 1, "not a gpumatrix lock"


DAMAGE = {f.__name__: f for f in (cut_mid_hash, cut_after_backslash, drop_middle_hash, drop_last_hash_of_a_block,
                                   change_a_version, add_unpinned, add_pin_without_hash, add_torch, drop_body_digest,
                                   header_without_end, not_a_lock)}


def damage(proj: Path, name: str) -> tuple[str, str]:
    data, line, why = DAMAGE[name]()
    assert data != COMMITTED
    (proj / LOCK).write_bytes(data)
    return (f"{LOCK}:{line}:" if line else f"{LOCK}"), why


@pytest.mark.parametrize("name", list(DAMAGE))
def test_lock_check_refuses_a_damaged_lock_in_one_line(name, proj, cli, snapshot):
    where, why = damage(proj, name)
    rc, lines, err = run(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert rc == 1, err
    assert len(lines) == 1, err
    assert where in lines[0] and why in lines[0], lines[0]
    assert "make lock" in lines[0]


@pytest.mark.parametrize("name", ["cut_mid_hash", "drop_middle_hash", "change_a_version", "add_unpinned",
                                  "drop_last_hash_of_a_block"])
def test_build_refuses_a_damaged_lock_before_building(name, proj, cli, snapshot):
    where, why = damage(proj, name)
    rc, lines, err = run(cli, snapshot, proj, "build", "--cuda", "cpu")
    assert rc == 2, err
    assert len(lines) == 1, err
    assert where in lines[0] and why in lines[0], lines[0]
    assert not (proj / "out").exists()


@pytest.mark.parametrize("name", ["cut_mid_hash", "drop_middle_hash"])
def test_bake_refuses_a_damaged_lock_and_writes_nothing(name, proj, cli, snapshot):
    where, why = damage(proj, name)
    rc, lines, err = run(cli, snapshot, proj, "bake", "--cuda", "cpu")
    assert rc == 2, err
    problems = [line for line in lines if LOCK in line]
    assert len(problems) == 1 and why in problems[0], err
    assert not (proj / "docker-bake.json").exists() and not (proj / "out").exists()


@pytest.mark.parametrize("how, expected", [
    ("not-utf8", "is not UTF-8 text"),
    ("directory", "is a directory"),
    ("too-large", "larger than 1,000,000 bytes"),
])
@pytest.mark.parametrize("command", [("lock", "--check"), ("build",)])
def test_an_unreadable_lock_is_bad_input_in_one_line(how, expected, command, proj, cli, snapshot):
    path = proj / LOCK
    if how == "not-utf8":
        path.write_bytes(COMMITTED + b"# caf\xe9\n")
    elif how == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(COMMITTED + b"#" * 1_000_001 + b"\n")
    rc, lines, err = run(cli, snapshot, proj, *command, "--cuda", "cpu")
    assert rc == 2, err
    assert len(lines) == 1, err
    assert str(path) in lines[0] and expected in lines[0], lines[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(COMMITTED) - 1))
def test_every_prefix_of_the_lock_is_refused_in_one_line(cut, proj, cli, snapshot):
    (proj / LOCK).write_bytes(COMMITTED[:cut])
    rc, lines, err = run(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert rc == 1, f"cut at {cut}: {err}"
    assert len(lines) == 1 and LOCK in lines[0], f"cut at {cut}: {err}"


def test_every_prefix_of_the_lock_is_refused_by_the_checker():
    """Exhaustive over the byte offsets, on the part of the checker that reads the lock's text (the whole command
    path is sampled above; a prefix keeps the header's inputs digest and pip-tools version, or loses the header)."""
    from gpumatrix.pipeline import load
    from gpumatrix.lockfile import content_problems

    cell = next(c for c in load(REPO / "matrix.yaml")[1].cells if c.name == CELL)
    text = COMMITTED.decode()
    assert content_problems(LOCK, cell, text) == ([], False)
    for cut in range(len(text)):
        found, _ = content_problems(LOCK, cell, text[:cut])
        assert len(found) == 1 and LOCK in found[0], (cut, found)


# ---- the writer ----

def test_the_writer_records_the_digest_of_the_body_it_writes(proj):
    from gpumatrix.pipeline import load
    from gpumatrix.lockfile import format_lock, inputs_digest
    from gpumatrix.lockfile import problems

    project, expansion = load(proj / "matrix.yaml")
    cell = next(c for c in expansion.cells if c.name == CELL)
    body = "tqdm==4.70.1 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via -r requirements/cpu.in\n"
    text = format_lock(cell, inputs_digest(project, cell), body, ["torch==2.13.0+cpu"], "uv")
    assert text.endswith("\n\n" + body)
    assert f"# body-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n" in text
    assert problems(project, cell, text) == []


def test_the_writer_refuses_a_pin_without_hashes(proj):
    from gpumatrix.pipeline import load
    from gpumatrix.lock import write_lock
    from gpumatrix.lockfile import format_lock, inputs_digest

    project, expansion = load(proj / "matrix.yaml")
    cell = next(c for c in expansion.cells if c.name == CELL)
    text = format_lock(cell, inputs_digest(project, cell), "tqdm==4.70.1\n", ["torch==2.13.0+cpu"], "uv")
    with pytest.raises(WorkFailed, match="tqdm==4.70.1 has no --hash=sha256 line"):
        write_lock(project, cell, text)
    assert (proj / LOCK).read_bytes() == COMMITTED


# ---- locks of cells that no longer exist ----

def test_lock_check_names_a_lock_of_no_cell_and_keeps_it(proj, cli, snapshot):
    orphan = proj / "locks" / "cu12.9-py3.11-torch2.8.0.txt"
    orphan.write_bytes(COMMITTED)
    rc, lines, err = run(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert rc == 1, err
    assert lines == ["error: locks/cu12.9-py3.11-torch2.8.0.txt: the lock of no cell of the matrix (no cell is named "
                     "'cu12.9-py3.11-torch2.8.0'); delete it (git rm locks/cu12.9-py3.11-torch2.8.0.txt)"]
    assert orphan.read_bytes() == COMMITTED


def test_a_lock_of_a_cell_outside_the_filters_is_no_orphan(proj, cli, snapshot):
    (proj / "locks" / "cu12.8-py3.11-torch2.7.1.txt").write_bytes(COMMITTED)  # a cell of the matrix, filtered out
    rc, lines, err = run(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert rc == 0, err
    assert lines == []
