"""Whether this run is CI, and what a missing tool means there: a failure under CI, a skip elsewhere.

CI is any of CI=true, CI=1, CI=yes (case-insensitive): GitHub Actions and GitLab set `true`, others `1` or `yes`, and
a CI that says so in any of these ways must never turn a missing tool into a quiet skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import pytest

CI_VALUES = frozenset({"true", "1", "yes"})


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when $CI says this is a CI run (true, 1 or yes, any case, surrounding blanks ignored)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in CI_VALUES


def unavailable(reason: str) -> None:
    """Something the test needs is missing: fail under CI, skip elsewhere. Never returns."""
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ.get('CI')!r}: a missing tool is a failure, not a skip)")
    pytest.skip(reason)


def need(tool: str, package: str) -> str:
    """The path of `tool` on PATH; when it is missing, unavailable() naming the Debian package that brings it."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} not found: apt-get install {package}")
    return path
