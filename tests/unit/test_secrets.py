"""Index URLs with credentials: recognised, and masked wherever gpumatrix shows text to people."""

from __future__ import annotations

import pytest

from gpumatrix.secrets import has_credentials, redact


@pytest.mark.parametrize("url, expected", [
    ("https://bot:tok@pytorch.internal/whl/cu128", True),
    ("https://tok@pytorch.internal/whl/cu128", True),
    ("https://:tok@pytorch.internal/whl/cu128", True),
    ("https://download.pytorch.org/whl/cu128", False),
    ("http://127.0.0.1:8080/simple", False),
    ("https://download.pytorch.org/whl/a@b", False),  # an @ in the path is no userinfo
])
def test_credentials_are_told_apart(url, expected):
    assert has_credentials(url) is expected


def test_every_userinfo_in_a_text_is_masked_and_nothing_else():
    text = ("pip install --index-url https://bot:s3cr3t@h.example/whl/cu130 torch; "
            "see http://other:pw@127.0.0.1:9/simple/torch/ and https://download.pytorch.org/whl/cu130 (mail a@b)")
    shown = redact(text)
    assert "s3cr3t" not in shown and "pw@" not in shown and "bot" not in shown
    assert "https://***@h.example/whl/cu130" in shown and "http://***@127.0.0.1:9/simple/torch/" in shown
    assert "https://download.pytorch.org/whl/cu130 (mail a@b)" in shown
