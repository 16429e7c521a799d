"""load_matrix: strict YAML, strict schema, one located line per problem, and nothing but UsageError on bad input."""

from __future__ import annotations

import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumatrix.errors import UsageError
from gpumatrix.matrix import Matrix, load_matrix

REPO = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> Matrix:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return load_matrix(path)


def error_lines(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(UsageError) as info:
        load_text(tmp_path, text)
    return str(info.value).splitlines()


def test_shipped_matrix_loads():
    m = load_matrix(REPO / "matrix.yaml")
    assert m.image == "gpu-images"
    assert m.registry == "ghcr.io/acme"
    assert m.axes.python == ["3.10", "3.11", "3.12"]
    assert m.defaults.python == "3.11"


def test_unquoted_versions_keep_their_text(tmp_path, matrix_text):
    # YAML reads 3.10 as the float 3.1; the loader must keep "3.10".
    text = matrix_text().replace('python: ["3.11"]', "python: [3.10, 3.11]").replace('cuda: ["12.8"]', "cuda: [12.8]")
    text = text.replace('python: "3.11"', "python: 3.10")
    m = load_text(tmp_path, text)
    assert m.axes.python == ["3.10", "3.11"]
    assert m.axes.cuda == ["12.8"]
    assert m.defaults.python == "3.10"


def test_anchors_and_aliases_within_budget_are_fine(tmp_path, matrix_text):
    text = matrix_text().replace('cuda: ["12.8"]', 'cuda: &c ["12.8"]') + "exclude:\n  - {cuda: *c, torch: '2.5.1'}\n"
    assert load_text(tmp_path, text).exclude[0].cuda == ["12.8"]


def test_every_problem_is_its_own_located_line(tmp_path, matrix_text):
    text = matrix_text() + "settings:\n  archs: [sm_80, gfx90a]\n  colour: red\n"
    lines = error_lines(tmp_path, text)
    path = str(tmp_path / "matrix.yaml")
    assert len(lines) == 2
    assert any(line.startswith(f"{path}:10: settings.archs[1]:") and "gfx90a" in line for line in lines)
    assert any(line.startswith(f"{path}:11: settings.colour:") and "unknown key" in line for line in lines)


def test_missing_required_keys_are_named(tmp_path):
    lines = error_lines(tmp_path, "image: x\n")
    joined = "\n".join(lines)
    for key in ("registry", "axes", "defaults"):
        assert f": {key}: " in joined
    assert len(lines) == 3


def test_duplicate_key_in_nested_mapping_names_path_and_line(tmp_path, matrix_text):
    text = matrix_text() + "settings:\n  archs: [sm_80]\n  archs: [sm_90]\n"
    [line] = error_lines(tmp_path, text)
    assert line.startswith(f"{tmp_path / 'matrix.yaml'}:11: settings.archs:")
    assert "duplicate" in line


def test_merge_keys_are_refused(tmp_path, matrix_text):
    [line] = error_lines(tmp_path, matrix_text() + "settings:\n  <<: {archs: [sm_80]}\n")
    assert ":10:" in line and "merge" in line


def test_timestamps_and_binary_are_refused(tmp_path, matrix_text):
    [line] = error_lines(tmp_path, matrix_text() + "settings:\n  pip: 2020-01-01\n")
    assert "settings.pip" in line and "timestamp" in line
    [line] = error_lines(tmp_path, matrix_text() + "settings:\n  pip: !!binary aGVsbG8=\n")
    assert "settings.pip" in line and "binary" in line


def test_python_object_tag_is_refused_without_constructing(tmp_path, matrix_text):
    marker = tmp_path / "pwned"
    text = matrix_text() + f"settings:\n  pip: !!python/object/apply:os.system ['touch {marker}']\n"
    [line] = error_lines(tmp_path, text)
    assert ":10: settings.pip:" in line and "python/object" in line
    assert not marker.exists()


@pytest.mark.parametrize("top", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_document_is_refused(tmp_path, top):
    [line] = error_lines(tmp_path, top)
    assert "(top level)" in line


def test_exclude_bad_cuda_reports_one_line_with_cuda_hint(tmp_path, matrix_text):
    """One bad value is one problem: one line, with the hint for a CUDA field (not the Python/torch one)."""
    lines = error_lines(tmp_path, matrix_text() + "exclude:\n  - {cuda: 12.x}\n")
    assert len(lines) == 1, lines
    assert "exclude[0].cuda" in lines[0]
    assert "CUDA" in lines[0]



def test_unknown_resolver_is_one_line_naming_the_key(tmp_path, matrix_text):
    lines = error_lines(tmp_path, matrix_text() + "settings:\n  resolver: poetry\n")
    assert len(lines) == 1, lines
    assert "settings.resolver" in lines[0] and "'uv'" in lines[0] and "'pip-tools'" in lines[0]


def test_unknown_installer_is_one_line_naming_the_key(tmp_path, matrix_text):
    lines = error_lines(tmp_path, matrix_text() + "settings:\n  installer: conda\n")
    assert len(lines) == 1, lines
    assert "settings.installer" in lines[0] and "'uv'" in lines[0] and "'pip'" in lines[0]


def test_unknown_app_stage_is_one_line_naming_the_key(tmp_path, matrix_text):
    text = matrix_text() + "overrides:\n  - match: {cuda: cpu}\n    app_stage: builder\n"
    lines = error_lines(tmp_path, text)
    assert len(lines) == 1, lines
    assert "overrides[0].app_stage" in lines[0] and "'runtime'" in lines[0] and "'devel'" in lines[0]

# ---- hostile documents: only UsageError, quickly ---------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


LOAD_ONE = """
import sys
from pathlib import Path
from gpumatrix.errors import UsageError
from gpumatrix.matrix import load_matrix
try:
    load_matrix(Path(sys.argv[1]))
except UsageError as exc:
    print(exc)
    sys.exit(2)
sys.exit(0)
"""


def load_in_subprocess(path: Path, timeout: float = 20) -> tuple[int, str, float]:
    """Load in a child process, so that a loader that expands the bomb is killed instead of hanging the suite."""
    start = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-c", LOAD_ONE, str(path)], capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path.name} did not finish within {timeout}s (alias bomb expanded?)")
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


def test_alias_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text(BILLION_LAUGHS)
    rc, output, elapsed = load_in_subprocess(path)
    assert rc == 2, output
    assert str(path) in output
    assert "Traceback" not in output
    assert elapsed < 10


def test_alias_bomb_inside_a_valid_matrix_is_refused(tmp_path, matrix_text):
    bomb = "".join(f"  - &x{i} [{', '.join([f'*x{i - 1}'] * 9) if i else 'sm_80'}]\n" for i in range(8))
    path = tmp_path / "matrix.yaml"
    path.write_text(matrix_text() + "exclude: []\nx:\n" + bomb)
    rc, output, elapsed = load_in_subprocess(path)
    assert rc == 2, output
    assert elapsed < 10


def test_recursive_alias_is_a_usage_error(tmp_path):
    """`&x [*x]` is a self-referencing sequence; it must be refused, not crash with RecursionError."""
    with pytest.raises(UsageError):
        load_text(tmp_path, "image: &x [*x]\n")


def test_deeply_nested_document_is_a_usage_error(tmp_path):
    """Thousands of nested brackets are bad input, not a RecursionError."""
    with pytest.raises(UsageError):
        load_text(tmp_path, "image: " + "[" * 3000 + "]" * 3000 + "\n")


@pytest.mark.parametrize(
    "raw",
    [b"image: \xff\xfe gpu\n", "image: gpu-images\n".encode("utf-16")],
    ids=["invalid-utf8", "utf16"],
)
def test_undecodable_file_is_a_usage_error(tmp_path, raw):
    """A matrix that is not UTF-8 text is bad input (exit 2 with the file named), not a UnicodeDecodeError."""
    path = tmp_path / "matrix.yaml"
    path.write_bytes(raw)
    with pytest.raises(UsageError) as info:
        load_matrix(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        load_matrix(tmp_path)
    assert str(tmp_path) in str(info.value)


# ---- property: anything in, Matrix or UsageError out -----------------------------------------------------------

KEYS = st.sampled_from(
    ["image", "registry", "axes", "cuda", "python", "torch", "defaults", "include", "exclude", "settings",
     "overrides", "match", "archs", "layers", "companions", "pre", "pip", "index_url", "base_image"]
) | st.text(string.ascii_letters + "_.-<", min_size=1, max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["12.8", "3.11", "2.7.1", "cpu", "sm_80", "ghcr.io/acme", "gpu-images", "2.99.0", "sm_x"])
    | st.text(max_size=8)
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS | st.integers(0, 9), children, max_size=5),
    max_leaves=25,
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
SHIPPED = (REPO / "matrix.yaml").read_text()


def _assert_matrix_or_usage_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "matrix.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            result = load_matrix(path)
        except UsageError as exc:
            assert str(exc).strip(), "a UsageError must say something"
            for line in str(exc).splitlines():
                assert line.startswith(str(path)), line
        else:
            assert isinstance(result, Matrix)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_random_structured_documents(doc):
    _assert_matrix_or_usage_error(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_random_text(text):
    _assert_matrix_or_usage_error(text)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(SHIPPED)), st.integers(0, 20), TEXT.filter(lambda t: len(t) < 20))
def test_mutated_shipped_matrix(at, cut, insert):
    _assert_matrix_or_usage_error(SHIPPED[:at] + insert + SHIPPED[at + cut:])
