"""Bad input through the real command line: exit 2, `error: FILE[:LINE]: key: ...` lines, no traceback, no writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from support.projects import ONE_CELL_MATRIX

HEAD = ONE_CELL_MATRIX  # 8 lines; whatever is appended starts on line 9


def axes(cuda='["12.8"]', python='["3.11"]', torch='["2.7.1"]') -> str:
    return HEAD.replace('cuda: ["12.8"]', f"cuda: {cuda}").replace(
        'python: ["3.11"]', f"python: {python}").replace('torch: ["2.7.1"]', f"torch: {torch}")


@dataclass
class Case:
    id: str
    text: str | None  # None: the shipped matrix; "<absent>": no file at all
    expect: list[str]  # substrings of stderr; {path} is the matrix path
    args: tuple[str, ...] = ("render",)
    exact_lines: int | None = None  # how many `error:` lines, when one problem is one line


CASES = [
    Case("malformed-yaml", "image: [gpu\nregistry: y\n", ["{path}:2:", "malformed YAML"], exact_lines=1),
    Case("duplicate-key", HEAD + "image: other\n", ["{path}:9: image:", "duplicate key"], exact_lines=1),
    Case(
        "python-object-tag",
        HEAD + "settings:\n  pip: !!python/object/apply:os.system ['true']\n",
        ["{path}:10: settings.pip:", "python/object", "not allowed"],
        exact_lines=1,
    ),
    Case("unknown-top-level-key", HEAD + "colour: red\n", ["{path}:9: colour:", "unknown key"], exact_lines=1),
    Case(
        "unknown-nested-key",
        HEAD + "settings:\n  archs: [sm_80]\n  colour: red\n",
        ["{path}:11: settings.colour:", "unknown key"],
        exact_lines=1,
    ),
    Case("axis-is-a-string", axes(cuda='"12.8"'), ["{path}:4: axes.cuda:", "list"], exact_lines=1),
    Case(
        "include-is-a-mapping",
        HEAD + "include:\n  cuda: cpu\n  python: '3.11'\n  torch: '2.13.0'\n",
        ["{path}:9: include:", "list"],
        exact_lines=1,
    ),
    Case("empty-axis", axes(python="[]"), ["{path}:5: axes.python:", "at least 1"], exact_lines=1),
    Case(
        "bad-arch-name",
        HEAD + "settings:\n  archs: [sm_80, compute_90]\n",
        ["{path}:10: settings.archs[1]:", "compute_90", "sm_"],
        exact_lines=1,
    ),
    Case("bool-for-string", HEAD.replace("image: gpu-images", "image: yes"), ["{path}:1: image:"], exact_lines=1),
    Case("string-for-bool", HEAD + "settings:\n  pre: 'yes'\n", ["{path}:10: settings.pre:"], exact_lines=1),
    Case("unknown-torch-in-axes", axes(torch='["2.7.1", "2.99.0"]'), ["{path}", "2.99.0"]),
    Case("unknown-cuda-in-axes", axes(cuda='["12.9"]'), ["{path}", "12.9"]),
    Case(
        "unknown-torch-in-include",
        HEAD + "include:\n  - {cuda: '12.8', python: '3.11', torch: '2.99.0'}\n",
        ["{path}", "include[0]", "2.99.0"],
        exact_lines=1,
    ),
    Case(
        "incompatible-include",
        HEAD + "include:\n  - {cuda: '13.0', python: '3.11', torch: '2.5.1'}\n",
        ["{path}", "include[0]", "for CUDA 13.0 use torch >= 2.9.0", "runs on CUDA 12.4"],
        exact_lines=1,
    ),
    Case(
        "arch-without-kernels",
        HEAD + "settings:\n  archs: [sm_70]\n",
        ["{path}", "cu12.8-py3.11-torch2.7.1", "sm_70"],
        exact_lines=1,
    ),
    Case(
        "missing-layer-file",
        HEAD + "settings:\n  layers: [nosuchlayer]\n",
        ["{path}", "nosuchlayer", "requirements/nosuchlayer.in"],
        exact_lines=1,
    ),
    Case("missing-matrix-file", "<absent>", ["{path}", "cannot read"], exact_lines=1),
    Case("empty-file", "", ["{path}", "empty"], exact_lines=1),
    Case("recursive-alias", "image: &x [*x]\n", ["{path}"]),
    Case("comments-only-file", "# nothing here\n", ["{path}", "empty"], exact_lines=1),
    Case("bad-cli-cuda-value", None, ["--cuda", "12.x"], args=("list", "--cuda", "12.x"), exact_lines=1),
    Case("bad-cli-python-value", None, ["--python", "three"], args=("list", "--python", "three"), exact_lines=1),
    Case(
        "filter-matches-nothing",
        None,
        ["--cuda 13.0 --torch 2.5.1", "for CUDA 13.0 use torch >= 2.9.0", "runs on CUDA 12.4"],
        args=("list", "--cuda", "13.0", "--torch", "2.5.1"),
        exact_lines=1,
    ),
    Case(
        "filter-valid-but-not-in-matrix",
        None,
        ["--cuda 12.8 --torch 2.6.0", "not in the matrix"],
        args=("list", "--cuda", "12.8", "--torch", "2.6.0"),
        exact_lines=1,
    ),
    Case("unknown-subcommand", None, ["build.py", "frobnicate"], args=("frobnicate",), exact_lines=1),
    Case("bad-registry-reference", None, ["--registry", "'ghcr.io/Acme Corp'", "is not a registry"],
         args=("push", "--registry", "ghcr.io/Acme Corp"), exact_lines=1),
    Case(
        "index-credentials-in-matrix",
        HEAD + "settings:\n  index_url: \"https://bot:s3cr3t-tok@pytorch.internal/whl/{variant}\"\n",
        ["{path}:10: settings.index_url:", "holds credentials", "GPUMATRIX_INDEX_URL"],
        exact_lines=1,
    ),
    Case(
        "index-credentials-in-bake-file",
        None,
        ["--index-url", "holds credentials", "docker-bake.json"],
        args=("bake", "--index-url", "https://bot:s3cr3t-tok@pytorch.internal/whl/{variant}"),
        exact_lines=1,
    ),
]


def prepare(case: Case, project: Path) -> Path:
    matrix = project / "matrix.yaml"
    if case.text == "<absent>":
        return project / "no-such-matrix.yaml"
    if case.text is not None:
        matrix.write_text(case.text)
    return matrix


def check_result(case: Case, matrix, rc: int, out: str, err: str) -> None:
    assert rc == 2, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error_lines, err
    assert all(line.startswith("error: ") for line in err.splitlines() if line.strip()), err
    for needle in case.expect:
        assert needle.format(path=matrix) in err, f"{needle!r} not in:\n{err}"
    if case.exact_lines is not None:
        assert len(error_lines) == case.exact_lines, err
    assert out == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_located_message_and_writes_nothing(case, rendered_project, cli, snapshot):
    """In-process (fast): gpumatrix.cli.main with stderr captured; an escaping exception fails the test too."""
    matrix = prepare(case, rendered_project)
    before = snapshot(rendered_project)
    rc, out, err = cli("--matrix", str(matrix), *case.args)
    check_result(case, matrix, rc, out, err)
    assert snapshot(rendered_project) == before, "bad input changed files in the project"


SUBPROCESS_CASES = [c for c in CASES if c.id in (
    "malformed-yaml", "python-object-tag", "incompatible-include", "missing-matrix-file", "bad-cli-cuda-value",
    "filter-matches-nothing", "unknown-subcommand", "recursive-alias",
)]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_through_build_py(case, rendered_project, run_build, snapshot):
    """The real entry point, as a user runs it: no traceback reaches the terminal."""
    matrix = prepare(case, rendered_project)
    before = snapshot(rendered_project)
    result = run_build("--matrix", str(matrix), *case.args)
    check_result(case, matrix, result.returncode, result.stdout, result.stderr)
    assert snapshot(rendered_project) == before


def test_render_check_on_bad_matrix_is_exit_2_not_1(rendered_project, run_build, snapshot):
    matrix = rendered_project / "matrix.yaml"
    matrix.write_text(HEAD + "colour: red\n")
    before = snapshot(rendered_project)
    result = run_build("--matrix", str(matrix), "render", "--check")
    assert result.returncode == 2
    assert f"{matrix}:9: colour: unknown key" in result.stderr
    assert snapshot(rendered_project) == before


def test_key_with_newline_stays_one_line(project, cli):
    """A problem is one line even when the offending key contains a newline."""
    matrix = project / "matrix.yaml"
    matrix.write_text(HEAD + '"col\\nour": red\n')
    rc, _, err = cli("--matrix", str(matrix), "render")
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {matrix}:9: ")


def test_in_process_main_returns_2_for_bad_yaml(project, cli):
    matrix = project / "matrix.yaml"
    matrix.write_text("image: [unclosed\n")
    rc, out, err = cli("--matrix", str(matrix), "render")
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {matrix}:")
    assert not (project / "docker").exists()
