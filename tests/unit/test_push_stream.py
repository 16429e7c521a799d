"""The push step without an engine: the stream is read to the end, errors are classified, transient ones retried
(bounded), authentication ones not, digests compared, secrets scrubbed, the catalog kept honest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from docker.errors import APIError

from gpumatrix import catalog, grammar, push
from gpumatrix.push import AuthError, PushError, PushRequest, RetrySettings, Scrubber, TransientPushError

DIGEST = "sha256:" + "ab" * 32
FAST = RetrySettings(attempts=3, wait_min=0, wait_max=0)


def ok_stream(tag="t", digest=DIGEST):
    return [
        {"status": "The push refers to repository [r/x]"},
        {"status": "Preparing", "progressDetail": {}, "id": "l1"},
        {"status": "Preparing", "progressDetail": {}, "id": "l2"},
        {"status": "Pushing", "progressDetail": {"current": 1, "total": 2}, "id": "l1"},
        {"status": "Pushed", "progressDetail": {}, "id": "l1"},
        {"status": "Layer already exists", "progressDetail": {}, "id": "l2"},
        {"status": f"{tag}: digest: {digest} size: 529"},
        {"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": 529}},
    ]


def error_stream(message):
    return [{"status": "Preparing", "progressDetail": {}, "id": "l1"},
            {"errorDetail": {"message": message}, "error": message}]


class FakeAPI:
    def __init__(self, streams):
        self.streams = list(streams)
        self.pushes = []

    def push(self, repository, tag=None, stream=False, decode=False):
        assert stream and decode
        self.pushes.append(f"{repository}:{tag}")
        return iter(self.streams.pop(0))


class FakeClient:
    def __init__(self, streams, registry_digest=DIGEST):
        self.api = FakeAPI(streams)
        self.tagged = []
        self.registry = registry_digest
        image = SimpleNamespace(id="sha256:img", tag=lambda repo, tag: self.tagged.append(f"{repo}:{tag}"))
        self.images = SimpleNamespace(get=lambda ref: image,
                                      get_registry_data=lambda ref: SimpleNamespace(id=self.registry))


def request(tags=("cpu-py3.11-torch2.13.0", "cpu-py3.11-torch2.13.0-0123456789ab")) -> PushRequest:
    cell = SimpleNamespace(name="cpu-py3.11-torch2.13.0", cuda="cpu", python="3.11", torch="2.13.0",
                           torch_pin="2.13.0+cpu", variant="cpu", driver_floor=None, require_cuda=None,
                           wheel_archs=(), archs=())
    return PushRequest(cell, "sha256:img", 1_100_000_000, {}, tuple(tags), "127.0.0.1:5000/gpu-images")


def run(client, settings=FAST, scrub=None):
    lines = []
    outcome = push.push_cell(client, request(), settings, lambda cell, line: lines.append(line), scrub or Scrubber())
    return outcome, lines


def test_reads_every_chunk_and_returns_the_aux_digest():
    seen = []
    stream = iter(ok_stream())
    assert push.read_push_stream(stream, seen.append) == DIGEST
    assert next(stream, None) is None
    assert seen == ["1/2 layers (pushed: l1)", "2/2 layers (layer already exists: l2)"]


@pytest.mark.parametrize("message, kind", [
    ("dial tcp 127.0.0.1:5000: connect: connection refused", TransientPushError),
    ("read tcp 127.0.0.1:40000->127.0.0.1:5000: read: connection reset by peer", TransientPushError),
    ("received unexpected HTTP status: 503 Service Unavailable", TransientPushError),
    ("Patch http://127.0.0.1:5000/v2/x/blobs/uploads/1: EOF", TransientPushError),
    ("unauthorized: authentication required", AuthError),
    ("no basic auth credentials", AuthError),
    ("denied: requested access to the resource is denied", AuthError),
    ("manifest invalid: manifest invalid", PushError),
])
def test_classify(message, kind):
    assert type(push.classify(message)) is kind


def test_the_engines_own_retry_countdown_is_reported_once_per_round():
    chunks = [{"status": "Preparing", "id": "l1"}]
    for start in (5, 10):
        chunks += [{"status": f"Retrying in {n} second{'s' if n > 1 else ''}", "id": "l1"} for n in range(start, 0, -1)]
    seen = []
    push.read_push_stream(iter(chunks + ok_stream()[-1:]), seen.append)
    assert seen == ["layer l1: the engine is retrying in 5 seconds", "layer l1: the engine is retrying in 10 seconds"]


def test_an_error_chunk_is_a_failure_even_after_progress():
    with pytest.raises(AuthError, match="no basic auth credentials"):
        push.read_push_stream(iter(error_stream("no basic auth credentials")))


def test_a_stream_without_a_digest_is_a_failure():
    with pytest.raises(TransientPushError, match="without a manifest digest"):
        push.read_push_stream(iter(ok_stream()[:-1]))


def test_every_tag_is_tagged_pushed_and_read_back():
    client = FakeClient([ok_stream(), ok_stream()])
    outcome, lines = run(client)
    assert outcome.status == "pushed", outcome.error
    refs = ["127.0.0.1:5000/gpu-images:cpu-py3.11-torch2.13.0", "127.0.0.1:5000/gpu-images:cpu-py3.11-torch2.13.0-0123456789ab"]
    assert client.tagged == refs and client.api.pushes == refs
    assert outcome.reference == f"127.0.0.1:5000/gpu-images@{DIGEST}"
    assert outcome.attempts == 2
    assert any("read back from the registry" in line for line in lines)


def test_transient_failures_are_retried_then_succeed():
    client = FakeClient([error_stream("connect: connection refused"), ok_stream(), ok_stream()])
    outcome, lines = run(client)
    assert outcome.status == "pushed", outcome.error
    assert outcome.attempts == 3
    assert any("retrying in" in line and "(attempt 2/3)" in line for line in lines)


def test_retries_are_bounded():
    client = FakeClient([error_stream("received unexpected HTTP status: 502 Bad Gateway")] * 5)
    outcome, lines = run(client)
    assert outcome.status == "failed" and outcome.attempts == 3
    assert "502 Bad Gateway" in outcome.error
    assert len(client.api.pushes) == 3


def test_authentication_errors_are_not_retried():
    client = FakeClient([error_stream("unauthorized: authentication required")] * 3)
    outcome, lines = run(client)
    assert outcome.status == "failed" and outcome.attempts == 1
    assert outcome.error.startswith("authentication failed (not retried)")
    assert not any("retrying" in line for line in lines)


def test_a_digest_that_differs_from_the_registry_is_a_failure():
    client = FakeClient([ok_stream()], registry_digest="sha256:" + "cd" * 32)
    outcome, _ = run(client)
    assert outcome.status == "failed" and "the registry holds manifest sha256:cdcd" in outcome.error
    assert outcome.digest is None and outcome.reference is None


def test_an_engine_error_is_classified_and_scrubbed():
    client = FakeClient([])

    def explode(*a, **k):
        raise APIError("500 Server Error", explanation="Get http://u:hunter2@r/v2/: connection refused")
    client.api.push = explode
    outcome, lines = run(client, RetrySettings(attempts=2, wait_min=0, wait_max=0), Scrubber(["hunter2"]))
    assert outcome.status == "failed" and outcome.attempts == 2
    assert "the engine refused the push" in outcome.error and "Get http://***@r/v2/" in outcome.error
    assert "hunter2" not in outcome.error + "".join(lines)


def test_scrubber_removes_plain_quoted_and_base64_forms():
    scrub = Scrubber()
    scrub.add("p@ss word/1", "alice")
    import base64
    b64 = base64.b64encode(b"alice:p@ss word/1").decode()
    text = f"a p@ss word/1 b p%40ss%20word%2F1 c p%40ss+word%2F1 d {b64}"
    assert scrub(text) == "a *** b *** c *** d ***"


def test_credentials_from_env():
    assert push.Credentials.from_env({}) is None
    creds = push.Credentials.from_env({"REGISTRY_USER": "u", "REGISTRY_PASSWORD": "hunter2"})
    assert creds.username == "u" and "hunter2" not in repr(creds)
    with pytest.raises(push.UsageError, match="REGISTRY_PASSWORD is not set"):
        push.Credentials.from_env({"REGISTRY_USER": "u"})


@pytest.mark.parametrize("registry, host", [
    ("ghcr.io/acme", "ghcr.io"), ("127.0.0.1:5000", "127.0.0.1:5000"), ("localhost/x", "localhost"), ("acme", "docker.io"),
])
def test_registry_host(registry, host):
    assert grammar.registry_host(registry) == host


def test_catalog_adds_pushed_and_drops_failed_cells(tmp_path: Path):
    req = request()
    good = push.PushOutcome(req.cell.name, "pushed", req.repository, list(req.tags), DIGEST, "sha256:img", 1_100_000_000)
    catalog.update_catalog(tmp_path, [req], [good])
    data = json.loads((tmp_path / "images.json").read_text())["images"]
    assert [e["cell"] for e in data] == ["cpu-py3.11-torch2.13.0"]
    entry = data[0]
    assert entry["reference"] == f"127.0.0.1:5000/gpu-images@{DIGEST}" and entry["tags"] == list(req.tags)
    assert entry["size"] == 1_100_000_000 and entry["cuda"] == "cpu" and entry["archs"] == []
    md = (tmp_path / "images.md").read_text()
    assert f"`127.0.0.1:5000/gpu-images@{DIGEST}`" in md and "1.1 GB" in md and "| CPU |" in md
    bad = push.PushOutcome(req.cell.name, "failed", req.repository, list(req.tags), error="push failed")
    catalog.update_catalog(tmp_path, [req], [bad])
    assert json.loads((tmp_path / "images.json").read_text())["images"] == []
    assert "cpu-py3.11" not in (tmp_path / "images.md").read_text()


def test_merge_catalogs(tmp_path: Path):
    req = request()
    for i, name in enumerate(("a", "b")):
        outcome = push.PushOutcome(req.cell.name, "pushed", req.repository, list(req.tags), DIGEST)
        entry = catalog.catalog_entry(req, outcome)
        entry["cell"] = f"cell-{name}"
        catalog.write_catalog(tmp_path / name, {entry["cell"]: entry})
    merged = catalog.merge_catalogs(tmp_path / "all", [tmp_path / "a", tmp_path / "b" / "images.json"])
    assert sorted(merged) == ["cell-a", "cell-b"]
    assert "cell-b" in (tmp_path / "all" / "images.md").read_text()
