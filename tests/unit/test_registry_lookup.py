"""What the engine's answers to a lookup mean, and what a build report says was found in the registry."""

from __future__ import annotations

import json

from gpumatrix import registry
from gpumatrix.build import read_in_registry


def test_the_reason_is_the_engines_own_words_without_the_request():
    message = ('500 Server Error for http+docker://localhost/v1.41/distribution/ghcr.io/acme/gpu-images:x/json: '
               'Internal Server Error ("Get "https://ghcr.io/v2/": dial tcp: lookup ghcr.io on 10.0.0.53:53: '
               'no such host")')
    assert registry._reason(message) == "dial tcp: lookup ghcr.io on 10.0.0.53:53: no such host"


def test_not_there_unreachable_and_refused_are_told_apart():
    assert registry.NOT_THERE_RE.search("manifest unknown: manifest unknown")
    assert not registry.NOT_THERE_RE.search('dial tcp 127.0.0.1:9: connect: connection refused')
    assert isinstance(registry.classify("unauthorized: authentication required"), registry.AuthError)
    assert isinstance(registry.classify("dial tcp 127.0.0.1:9: connect: connection refused"),
                      registry.TransientPushError)


def test_the_report_names_the_cells_found_in_the_registry_and_nothing_else(tmp_path):
    report = tmp_path / "build-report.json"
    assert read_in_registry(report) == {}  # no report yet
    report.write_text(json.dumps({"cells": [
        {"cell": "a", "status": "in registry", "tags": ["r.io/x/img:a-0123456789ab"], "digest": "sha256:" + "1" * 64},
        {"cell": "b", "status": "built", "tags": ["r.io/x/img:b"], "digest": None},
        {"cell": "c", "status": "in registry", "tags": [], "digest": "sha256:" + "2" * 64},
        "not a record",
    ]}))
    assert read_in_registry(report) == {"a": "r.io/x/img:a-0123456789ab@sha256:" + "1" * 64}
    report.write_text("{not json")
    assert read_in_registry(report) == {}
