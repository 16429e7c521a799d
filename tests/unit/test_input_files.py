"""Users' files that are no valid input, through the real CLI in-process: the layers' .in files (and what they
include) and locks/bases.yaml. Each is exit 2, exactly one problem line naming the file (and line where there is
one), no traceback, and no file changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.projects import copy_project

REPO = Path(__file__).resolve().parents[2]
CPU_IN = REPO / "requirements" / "cpu.in"
CPU_IN_LINES = len(CPU_IN.read_text().splitlines())  # an appended line is line CPU_IN_LINES + 1
BASES = REPO / "locks" / "bases.yaml"


@pytest.fixture
def proj(tmp_path: Path, monkeypatch) -> Path:
    root = copy_project(tmp_path / "proj", ("templates", "requirements", "locks"))
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing answers: every refusal comes before the engine
    monkeypatch.delenv("GPUMATRIX_INDEX_URL", raising=False)
    return root


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def refused(cli, snapshot, root: Path, *args: str) -> str:
    """Run the command; it must exit 2 with exactly one `error:` line, no traceback, no change. Returns the line."""
    before = snapshot(root)
    rc, out, err = cli("--matrix", str(root / "matrix.yaml"), *args)
    assert "Traceback" not in out + err
    assert rc == 2, f"exit {rc}\n{err}"
    lines = errors(err)
    assert len(lines) == 1, err
    assert snapshot(root) == before, "bad input changed files in the project"
    return lines[0]


def append(path: Path, line: str) -> int:
    """Append a line to an .in file; returns its line number."""
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


# The three ways a layer's files are read: the check, the lock step (validation before any container) and a build.
COMMANDS = [("lock", "--check", "--cuda", "cpu"), ("lock", "--cuda", "cpu"), ("build", "--cuda", "cpu")]
IDS = ["lock-check", "lock", "build"]


# ---- the .in files ----

@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_layer_that_is_not_utf8(command, proj, cli, snapshot):
    layer = proj / "requirements" / "cpu.in"
    layer.write_bytes(layer.read_bytes() + b"tqdm # caf\xe9\n")
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: {layer}: ") and "not UTF-8" in line


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_included_file_that_is_not_utf8(command, proj, cli, snapshot):
    number = append(proj / "requirements" / "cpu.in", "-c pins.txt")
    assert number == CPU_IN_LINES + 1
    (proj / "requirements" / "pins.txt").write_bytes(b"numpy==2.4.6 # \xff\n")
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: requirements/cpu.in:{CPU_IN_LINES + 1}: -c pins.txt: ")
    assert f"{proj / 'requirements' / 'pins.txt'}: " in line and "not UTF-8" in line


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_directory_where_an_included_in_file_belongs(command, proj, cli, snapshot):
    append(proj / "requirements" / "cpu.in", "-r extra.in")
    (proj / "requirements" / "extra.in").mkdir()
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: requirements/cpu.in:{CPU_IN_LINES + 1}: -r extra.in: ")
    assert f"{proj / 'requirements' / 'extra.in'}: is a directory" in line


def test_a_directory_where_a_layer_file_belongs(proj, cli, snapshot):
    layer = proj / "requirements" / "cpu.in"
    layer.unlink()
    layer.mkdir()
    line = refused(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert "cpu.in" in line


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
@pytest.mark.parametrize("target", ["../../outside.in", "/etc/hostname", "../../proj-sibling/x.in"])
def test_an_include_outside_the_project(target, command, proj, cli, snapshot):
    (proj.parent / "outside.in").write_text("tqdm\n")
    (proj.parent / "proj-sibling").mkdir(exist_ok=True)
    (proj.parent / "proj-sibling" / "x.in").write_text("tqdm\n")
    number = append(proj / "requirements" / "cpu.in", f"-r {target}")
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: requirements/cpu.in:{number}: -r {target}: resolves to ")
    assert f"outside the project ({proj})" in line


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_include_loop_is_named_link_by_link(command, proj, cli, snapshot):
    number = append(proj / "requirements" / "cpu.in", "-r a.in")
    (proj / "requirements" / "a.in").write_text("tqdm\n-r b.in\n")
    (proj / "requirements" / "b.in").write_text("# back\n-c a.in\n")
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith("error: requirements/a.in:2: include loop: requirements/a.in:2 -r b.in -> "
                           "requirements/b.in:2 -c a.in -> back to requirements/a.in;"), line
    assert number == CPU_IN_LINES + 1  # the loop starts at a.in; cpu.in only leads to it


def test_a_layer_that_includes_itself(proj, cli, snapshot):
    number = append(proj / "requirements" / "cpu.in", "-r cpu.in")
    line = refused(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert line.startswith(f"error: requirements/cpu.in:{number}: include loop: requirements/cpu.in:{number} "
                           "-r cpu.in -> back to requirements/cpu.in;"), line


def test_a_file_included_twice_is_no_loop(proj, cli, snapshot):
    """Two routes to one file (a diamond) are fine: the check only says the lock is stale."""
    append(proj / "requirements" / "cpu.in", "-r a.in")
    append(proj / "requirements" / "cpu.in", "-r b.in")
    (proj / "requirements" / "a.in").write_text("-c common.txt\n")
    (proj / "requirements" / "b.in").write_text("-c common.txt\n")
    (proj / "requirements" / "common.txt").write_text("tqdm<5\n")
    rc, _, err = cli("--matrix", str(proj / "matrix.yaml"), "lock", "--check", "--cuda", "cpu")
    assert rc == 1, err
    assert errors(err) == ["error: cpu-py3.11-torch2.13.0: locks/cpu-py3.11-torch2.13.0.txt is stale "
                           "(requirements/*.in or the torch pins changed since it was compiled); run `make lock CUDA=cpu "
                           "PYTHON=3.11 TORCH=2.13.0 FLAVOUR=none` (python build.py lock --cuda cpu --python 3.11 "
                           "--torch 2.13.0 --flavour none) and commit locks/cpu-py3.11-torch2.13.0.txt"]


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_in_file_over_the_size_limit(command, proj, cli, snapshot):
    layer = proj / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + ("# padding\n" * 100_001))
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: {layer}: ") and "1,000,000 bytes" in line


@pytest.mark.parametrize("target", ["a\x00b", "loop1"], ids=["nul-byte", "symlink-loop"])
def test_an_include_that_is_no_usable_path(target, proj, cli, snapshot):
    (proj / "requirements" / "loop1").symlink_to("loop2")
    (proj / "requirements" / "loop2").symlink_to("loop1")
    number = append(proj / "requirements" / "cpu.in", f"-r {target}")
    shown = target if target.isprintable() else repr(target)
    line = refused(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert line.startswith(f"error: requirements/cpu.in:{number}: -r {shown}: not a usable file path"), line


def test_a_missing_include_names_the_including_line(proj, cli, snapshot):
    number = append(proj / "requirements" / "cpu.in", "-r nosuch.in")
    line = refused(cli, snapshot, proj, "lock", "--check", "--cuda", "cpu")
    assert line == (f"error: requirements/cpu.in:{number}: -r nosuch.in: no such requirements file "
                    "requirements/nosuch.in")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_any_layer_text_is_exit_1_or_2_in_one_line_and_changes_nothing(text, proj, cli, snapshot):
    assume(text != CPU_IN.read_text())
    (proj / "requirements" / "cpu.in").write_text(text, encoding="utf-8", newline="")
    before = snapshot(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "lock", "--check", "--cuda", "cpu")
    assert "Traceback" not in out + err
    assert rc in (1, 2), err  # the committed lock is stale for any other text (1), or the text includes bad files (2)
    assert len(errors(err)) == 1, err
    assert snapshot(proj) == before


# ---- locks/bases.yaml ----

BASES_COMMANDS = [("lock", "--check", "--cuda", "cpu"), ("bases", "--check"), ("list", "--cuda", "cpu")]


@pytest.mark.parametrize("command", BASES_COMMANDS, ids=["lock-check", "bases-check", "list"])
@pytest.mark.parametrize("content, expected", [
    (BASES.read_bytes().replace(b"Do not edit", b"Do n\xf6t edit"), "not UTF-8"),
    (b"# big\n" + b"#" * 1_000_001 + b"\nbases: {}\n", "1,000,000 bytes"),
    (b"bases: {a: [\n", ":2: not valid YAML"),
    (b"bases: [python:3.11]\n", "expected a mapping `bases:`"),
    (b"bases: {\"py\\nthon:3.11\": 1}\n", "bases: 'py\\nthon:3.11': expected `digest: sha256:<64 hex>`"),
], ids=["not-utf8", "too-large", "malformed", "wrong-shape", "newline-in-key"])
def test_a_bad_pins_file_is_one_line_naming_it(content, expected, command, proj, cli, snapshot):
    path = proj / "locks" / "bases.yaml"
    path.write_bytes(content)
    line = refused(cli, snapshot, proj, *command)
    assert line.startswith(f"error: {path}"), line
    assert expected in line, line


def test_a_directory_in_place_of_the_pins_file(proj, cli, snapshot):
    path = proj / "locks" / "bases.yaml"
    path.unlink()
    path.mkdir()
    line = refused(cli, snapshot, proj, "list", "--cuda", "cpu")
    assert line.startswith(f"error: {path}: is a directory")


def test_a_pins_file_nested_past_the_parser_is_one_line(proj, cli, snapshot):
    path = proj / "locks" / "bases.yaml"
    path.write_bytes(b"[" * 1200 + b"\n")  # PyYAML's composer recurses once per level: RecursionError, not YAMLError
    line = refused(cli, snapshot, proj, "list", "--cuda", "cpu")
    assert line.startswith(f"error: {path}: not valid YAML")


def test_a_torch_stage_package_in_an_in_file_is_refused_with_its_line(proj, cli, snapshot):
    """The seed's "duplicate torch": a layer that names torch would install a second torch from PyPI."""
    number = append(proj / "requirements" / "cpu.in", "torchvision>=0.20")
    line = refused(cli, snapshot, proj, "lock", "--cuda", "cpu")
    assert line.startswith(f"error: requirements/cpu.in:{number}: torchvision is a torch-stage package: the torch "
                           "stage installs it from the torch index (2.13.0+cpu for cell cpu-py3.11-torch2.13.0)")
