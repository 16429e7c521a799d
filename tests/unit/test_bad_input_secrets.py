"""Bad input around credentials, DOCKER_HOST, catalogs and test records, through the real command line in-process:
exit 2, exactly one `error:` line naming the argument, variable or file, no traceback, no file changed, and no
secret in any of its forms (plain, URL-quoted, base64 of user:password) anywhere in the output.

Every expected form of a secret is computed here, with urllib and base64, not with gpumatrix.secrets.
"""

from __future__ import annotations

import base64
import errno
import json
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpumatrix import cli as cli_module
from gpumatrix import report, secrets
from gpumatrix.errors import WorkFailed
from support.projects import ONE_CELL_MATRIX

MATRIX = ONE_CELL_MATRIX
CELL = "cu12.8-py3.11-torch2.7.1"  # the one cell of MATRIX
IMAGE_ID = "sha256:" + "c0" * 32
DIGEST = "sha256:" + "d1" * 32


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms_of(user: str, password: str) -> set[str]:
    """Every way the password can be written: plain, URL-quoted (two ways), base64 of user:password (standard and
    URL-safe, with and without padding)."""
    pair = f"{user}:{password}".encode()
    std, safe = base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()
    return {password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password),
            std, std.rstrip("="), safe, safe.rstrip("=")}


def assert_one_problem(rc: int, out: str, err: str, code: int, *names: str) -> str:
    """The run exited with `code`, printed exactly one `error:` line (naming each of `names`), no traceback."""
    text = out + err
    problems = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == code, text
    assert len(problems) == 1, text
    assert "Traceback" not in text and 'File "' not in text, text
    for name in names:
        assert name in problems[0], text
    return problems[0]


def assert_hidden(text: str, user: str, password: str) -> None:
    for form in forms_of(user, password):
        assert form not in text, f"{form!r} (a form of the password) was shown:\n{text}"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in ("GPUMATRIX_INDEX_URL", "REGISTRY_USER", "REGISTRY_PASSWORD", "DOCKER_HOST", "GPUMATRIX_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    yield
    secrets.forget()  # the secrets of this test's runs are no business of the next test


@pytest.fixture
def proj(tmp_path: Path, make_project) -> Path:
    root = make_project(tmp_path / "proj")
    (root / "matrix.yaml").write_text(MATRIX)
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- the torch index URL on the command line and in GPUMATRIX_INDEX_URL ------------------------------------------

USER, PASSWORD = "bot", "p@ss/w0rd"  # URL-quoted inside a URL: p%40ss%2Fw0rd
QUOTED = "p%40ss%2Fw0rd"


@pytest.mark.parametrize("command, url, why", [
    ("build", f"{USER}:{QUOTED}@pytorch.internal/whl/{{variant}}", "is not an http:// or https:// URL"),
    ("lock", f"{USER}:{QUOTED}@pytorch.internal/whl/{{variant}}", "is not an http:// or https:// URL"),
    ("bake", f"{USER}:{QUOTED}@pytorch.internal/whl/{{variant}}", "is not an http:// or https:// URL"),
    ("bake", f"ftp://{USER}:{QUOTED}@pytorch.internal/whl", "is not an http:// or https:// URL"),
    ("bake", "pytorch.internal/whl/cu128", "is not an http:// or https:// URL"),
    ("build", f"https://{USER}:{QUOTED}@[pytorch.internal/whl", "is not a URL"),
    ("lock", f"https://{USER}:{QUOTED}@pytorch.internal:notaport/whl", "port"),
    ("build", f"https://{USER}:{QUOTED}@pytorch.internal/whl/cu128\nRUN curl evil", "space or a control character"),
    ("build", f"https://{USER}:{QUOTED}@pytorch.internal/whl /cu128", "space or a control character"),
    ("build", "https:///whl/cu128", "names no host"),
    ("build", "", "is empty"),
])
def test_a_bad_index_url_is_one_line_naming_the_option_with_the_password_hidden(cli, proj, command, url, why):
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), command, "--index-url", url)
    line = assert_one_problem(rc, out, err, 2, "--index-url", why)
    assert line.startswith("error: --index-url: "), line
    assert_hidden(out + err, USER, "p@ss/w0rd")
    assert files_of(proj) == before


def test_a_bad_index_url_in_the_environment_names_the_variable(cli, proj, monkeypatch):
    monkeypatch.setenv("GPUMATRIX_INDEX_URL", "tok3n-s3cret@pytorch.internal/whl/{variant}")
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "bake")
    assert_one_problem(rc, out, err, 2, "GPUMATRIX_INDEX_URL", "is not an http:// or https:// URL")
    assert "--index-url" not in err
    token = "tok3n-s3cret"  # a token alone: basic auth sends `token:`
    for form in (token, b64(f"{token}:"), b64(f"{token}:").rstrip("=")):
        assert form not in out + err
    assert files_of(proj) == before


def test_bake_refuses_a_valid_index_url_with_credentials_without_showing_them(cli, proj):
    before = files_of(proj)
    url = f"https://{USER}:{QUOTED}@pytorch.internal/whl/{{variant}}"
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "bake", "--index-url", url)
    assert_one_problem(rc, out, err, 2, "--index-url", "holds credentials")
    assert_hidden(out + err, USER, "p@ss/w0rd")
    assert not (proj / "docker-bake.json").exists() and files_of(proj) == before


def test_an_index_url_that_argparse_echoes_is_masked(cli, proj):
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "list", "--index-url", f"{USER}:{QUOTED}@h/simple")
    assert_one_problem(rc, out, err, 2, "unrecognized arguments")
    assert_hidden(out + err, USER, "p@ss/w0rd")


# ---- known secrets: every line printed, in every form -------------------------------------------------------------


@pytest.mark.parametrize("env, user, password", [
    ({"REGISTRY_USER": "alice", "REGISTRY_PASSWORD": "hunter2!/+x"}, "alice", "hunter2!/+x"),
    ({"GPUMATRIX_INDEX_URL": "https://bot:s%40cr%2Ft@pytorch.internal/whl/{variant}"}, "bot", "s@cr/t"),
    ({"DOCKER_HOST": "ssh://deploy:d0ck%3Aer@10.0.0.5"}, "deploy", "d0ck:er"),
])
def test_known_secrets_are_masked_in_every_form_on_every_line(cli, proj, monkeypatch, env, user, password):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    shown = sorted(forms_of(user, password))

    def leaky_load(matrix_path, pinned=True):
        report.info("info: " + " | ".join(shown))
        report.problem("problem: " + " | ".join(shown))
        raise WorkFailed(f"failed: Authorization: Basic {b64(f'{user}:{password}')} auth {shown[0]}")

    monkeypatch.setattr(cli_module, "load", leaky_load)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "list")
    assert rc == 1
    assert err.count("***") >= 2 * len(shown) + 1, err  # each form was there, and each was masked
    assert_hidden(out + err, user, password)


# ---- DOCKER_HOST ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, why", [
    ("tcp://[::1", "Invalid IPv6 URL"),
    ("foo://x", "not an engine address"),
    ("tcp://host:notaport", "port"),
    ("tcp://host", "port"),
    ("http://host:99999", "port"),
    ("tcp://eng:s3cr%40t@127.0.0.1:2376", "takes no user:password@"),
    ("tcp://eng:s3cr@t/x@127.0.0.1:2376", "takes no user:password@"),
    ("ssh://eng:s3cr%40t@127.0.0.1", "not an engine address"),
    ("tcp://127.0.0.1:2376\x01", "control character"),
    ("tcp://127.0.0.1: 2376", "space"),
])
def test_a_malformed_docker_host_is_one_line_naming_it(cli, proj, monkeypatch, host, why):
    monkeypatch.setenv("DOCKER_HOST", host)
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "push")
    assert_one_problem(rc, out, err, 2, "DOCKER_HOST", why)
    assert_hidden(out + err, "eng", "s3cr@t")
    assert_hidden(out + err, "eng", "s3cr@t/x")
    assert files_of(proj) == before


# ---- the catalog merge ------------------------------------------------------------------------------------------


def entry(cell: str = CELL, drop: str | None = None, **changes) -> dict:
    """A catalog entry as `build.py push` writes one (written out here), with `changes` and without `drop`."""
    repo = "ghcr.io/acme/gpu-images"
    e = {"cell": cell, "repository": repo, "tags": [cell, f"{cell}-0123456789ab"], "reference": f"{repo}@{DIGEST}",
         "digest": DIGEST, "image_id": IMAGE_ID, "size": 123, "cuda": "12.8", "driver_floor": "570.26",
         "archs": ["sm_90"], "sbom": None}
    e.update(changes)
    e.pop(drop, None)
    return e


BAD_CATALOGS = [
    ("not-utf8", b'{"images": [{"cell": "caf\xe9"}]}', "not UTF-8"),
    ("not-json", b'{"images": [', "not valid JSON"),
    ("a-list", b"[]", "not a catalog"),
    ("images-a-mapping", b'{"images": {}}', "not a catalog"),
    ("entry-not-an-object", json.dumps({"images": ["cu12.8"]}).encode(), "images[0]: is a JSON str"),
    ("no-cell", json.dumps({"images": [entry(drop="cell")]}).encode(), "images[0]: missing required key 'cell'"),
    ("no-digest", json.dumps({"images": [entry(drop="digest")]}).encode(), "images[0]: missing required key 'digest'"),
    ("no-reference", json.dumps({"images": [entry(), entry("other", drop="reference")]}).encode(),
     "images[1]: missing required key 'reference'"),
    ("no-tags", json.dumps({"images": [entry(drop="tags")]}).encode(), "images[0]: missing required key 'tags'"),
    ("no-repository", json.dumps({"images": [entry(drop="repository")]}).encode(),
     "images[0]: missing required key 'repository'"),
    ("tags-a-string", json.dumps({"images": [entry(tags="latest")]}).encode(), "images[0]: tags:"),
    ("size-a-string", json.dumps({"images": [entry(size="1 GB")]}).encode(), "images[0]: size:"),
    ("reference-elsewhere", json.dumps({"images": [entry(reference=f"evil.io/x@{DIGEST}")]}).encode(),
     "images[0]: reference:"),
    ("same-cell-twice", json.dumps({"images": [entry(), entry()]}).encode(), "images[1]: cell 'cu12.8-py3.11"),
]


@pytest.mark.parametrize("raw, why", [c[1:] for c in BAD_CATALOGS], ids=[c[0] for c in BAD_CATALOGS])
def test_a_bad_catalog_part_is_one_line_and_the_catalog_is_unchanged(cli, proj, raw, why):
    good, bad = proj / "ci" / "good", proj / "ci" / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "images.json").write_text(json.dumps({"images": [entry("cpu-py3.11-torch2.7.1", cuda="cpu")]}))
    (bad / "images.json").write_bytes(raw)
    assert cli("--matrix", str(proj / "matrix.yaml"), "catalog", str(good))[0] == 0  # out/catalog now exists
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "catalog", str(good), str(bad))
    assert_one_problem(rc, out, err, 2, str(bad / "images.json"), why)
    assert files_of(proj) == before


def test_a_bad_catalog_of_our_own_is_refused_by_merge_and_by_push(cli, proj, monkeypatch):
    catalog = proj / "out" / "catalog"
    catalog.mkdir(parents=True)
    (catalog / "images.json").write_text(json.dumps({"images": [entry(drop="cuda")]}))
    good = proj / "ci"
    good.mkdir()
    (good / "images.json").write_text(json.dumps({"images": [entry("cpu-py3.11-torch2.7.1", cuda="cpu")]}))
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "catalog", str(good))
    assert_one_problem(rc, out, err, 2, str(catalog / "images.json"), "images[0]: missing required key 'cuda'")
    monkeypatch.setattr("gpumatrix.engine.connect", lambda: pytest.fail("push reached the engine"))
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "push")
    assert_one_problem(rc, out, err, 2, str(catalog / "images.json"), "missing required key 'cuda'")
    assert files_of(proj) == before


def test_a_merge_of_good_catalogs_writes_both_cells(cli, proj):
    a, b = proj / "a", proj / "b"
    a.mkdir()
    b.mkdir()
    (a / "images.json").write_text(json.dumps({"images": [entry()]}))
    (b / "images.json").write_text(json.dumps({"images": [entry("cpu-py3.11-torch2.7.1", cuda="cpu")]}))
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "catalog", str(a), str(b / "images.json"))
    assert rc == 0, err
    merged = json.loads((proj / "out" / "catalog" / "images.json").read_text())["images"]
    assert [e["cell"] for e in merged] == ["cpu-py3.11-torch2.7.1", CELL]
    assert f"`ghcr.io/acme/gpu-images@{DIGEST}`" in (proj / "out" / "catalog" / "images.md").read_text()


def test_a_catalog_part_that_does_not_exist_is_named(cli, proj):
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "catalog", str(proj / "nowhere.json"))
    assert_one_problem(rc, out, err, 2, str(proj / "nowhere.json"), "no such catalog file")
    assert not (proj / "out").exists()


# ---- the test record push reads ---------------------------------------------------------------------------------


BAD_RECORDS = [
    ("not-utf8", b'{"passed": true, "image_id": "\xff"}', "is not UTF-8 text (byte 30)"),
    ("not-json", b'{"passed": tr', "is not valid JSON"),
    ("a-list", b"[true]", "is a JSON list, not the object"),
    ("passed-a-string", json.dumps({"passed": "yes", "image_id": IMAGE_ID}).encode(), "has no 'passed'"),
    ("no-image-id", json.dumps({"passed": True}).encode(), "has no 'image_id'"),
]


@pytest.mark.parametrize("raw, why", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_an_unusable_test_record_refuses_the_push_naming_it(cli, proj, monkeypatch, raw, why):
    """The normal refusal: a heading line, then one line for the cell naming its record and saying what to run."""
    record = proj / "out" / "tests" / f"{CELL}.json"
    record.parent.mkdir(parents=True)
    record.write_bytes(raw)
    image = SimpleNamespace(id=IMAGE_ID, tags=[f"ghcr.io/acme/gpu-images:{CELL}"], attrs={}, labels={})
    fake = SimpleNamespace(images=SimpleNamespace(get=lambda ref: image))
    monkeypatch.setattr("gpumatrix.engine.connect", lambda: fake)
    before = files_of(proj)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "push")
    problems = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in out + err, err
    assert problems[0] == "error: push refused, nothing was pushed:", err
    assert len(problems) == 2, err
    assert problems[1].startswith(f"error: {CELL}: the test record out/tests/{CELL}.json {why}"), err
    assert "make test-image CUDA=12.8 PYTHON=3.11 TORCH=2.7.1" in problems[1], err
    assert files_of(proj) == before


# ---- the safety net: what no step put into words ----------------------------------------------------------------


@pytest.mark.parametrize("exc, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/proj/requirements/cpu.in"),
     "error: /srv/proj/requirements/cpu.in: Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "locks/x.txt"), "error: locks/x.txt: Is a directory"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
     "error: not utf-8 text (byte 2: invalid start byte)"),
    (ValueError("Invalid IPv6 URL for https://bot:hunter2@[h"), "error: Invalid IPv6 URL for https://***@[h"),
])
def test_an_escaping_oserror_or_valueerror_is_one_line_exit_2(cli, proj, monkeypatch, exc, expected):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli_module, "load", broken)
    rc, out, err = cli("--matrix", str(proj / "matrix.yaml"), "list")
    line = assert_one_problem(rc, out, err, 2)
    assert line == expected
    assert "hunter2" not in out + err


def test_interrupts_keep_their_exit_codes(cli, proj, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def terminated(*args, **kwargs):
        raise cli_module.Terminated

    monkeypatch.setattr(cli_module, "load", interrupted)
    assert cli("--matrix", str(proj / "matrix.yaml"), "list")[0] == 130
    monkeypatch.setattr(cli_module, "load", terminated)
    rc, _, err = cli("--matrix", str(proj / "matrix.yaml"), "list")
    assert rc == 143 and "error: terminated" in err


# ---- redact: patterns (credentials nobody announced) and known secrets, for any user and password --------------

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C")), min_size=1, max_size=24)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=NAMES, password=NAMES)
@example(user="u", password="*")
@example(user="a", password="**b")
@example(user="x", password="p@ss/w:rd%")
def test_a_known_password_survives_redact_in_no_form(user, password):
    """Whatever the password, once remembered, no form of it is left in a message that embeds it in every form."""
    q_user, q_pw = urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe="")
    pair = f"{user}:{password}".encode()
    message = " ".join([
        f"plain https://{user}:{password}@pytorch.internal/whl/cu128",
        f"quoted https://{q_user}:{q_pw}@pytorch.internal/whl/cu128",
        f"bare {q_user}:{q_pw}@pytorch.internal/whl/cu128",
        f"docker tcp://{q_user}:{q_pw}@10.0.0.5:2376",
        f"header Authorization: Basic {base64.b64encode(pair).decode()}",
        f'config {{"auth": "{base64.urlsafe_b64encode(pair).decode()}"}}',
        f"plus {urllib.parse.quote_plus(password)} raw {password}.",
    ])
    secrets.forget()
    try:
        secrets.remember(password, user)
        shown = secrets.redact(message)
    finally:
        secrets.forget()
    for form in forms_of(user, password):
        assert form not in shown, (form, shown)


URL_SAFE_NAMES = NAMES.map(lambda s: urllib.parse.quote(s, safe=""))


@settings(max_examples=300, deadline=None)
@given(user=URL_SAFE_NAMES, password=URL_SAFE_NAMES)
def test_credentials_nobody_announced_are_masked_by_their_shape(user, password):
    """Not remembered: URL userinfo (with a scheme or without), a basic-auth header and a docker config `auth`."""
    token = b64(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}")
    message = (f"at https://{user}:{password}@pytorch.internal/whl/cu128 and {user}:{password}@pytorch.internal/x "
               f"and tcp://{user}:{password}@10.0.0.5:2376 with Authorization: Basic {token} "
               f'or {{"auth": "{token}"}}')
    expected = ("at https://***@pytorch.internal/whl/cu128 and ***@pytorch.internal/x "
                "and tcp://***@10.0.0.5:2376 with Authorization: Basic *** "
                'or {"auth": "***"}')
    secrets.forget()
    assert secrets.redact(message) == expected


@pytest.mark.parametrize("text", [
    "base python:3.11-slim@sha256:" + "ab" * 32,
    "pushed ghcr.io/acme/gpu-images@sha256:" + "cd" * 32,
    "from 127.0.0.1:5000/team/gpu-images:cpu-py3.11@sha256:" + "ef" * 32,
    "the index https://download.pytorch.org/whl/cu128 (write to ops@example.com)",
    "no basic auth credentials",
    "error: x: key: value@host",
])
def test_what_is_no_credential_is_left_alone(text):
    secrets.forget()
    assert secrets.redact(text) == text


def test_a_password_with_an_unquoted_at_sign_is_masked_whole():
    secrets.forget()
    assert secrets.redact("at https://bot:p@ss@h.example/x") == "at https://***@h.example/x"
