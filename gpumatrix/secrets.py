"""Credentials inside index URLs (https://user:token@host/...): told apart, and never shown to people."""

from __future__ import annotations

import re
import urllib.parse

URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """Every user:password@ of a URL in `text` replaced by ***@."""
    return URL_USERINFO.sub("***@", text)


def has_credentials(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return bool(parts.username or parts.password)
