"""tests/support/ci.py: which values of $CI make a missing tool a failure instead of a skip."""

from __future__ import annotations

import pytest

from support.ci import in_ci, need, unavailable


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "YES", " true\n"])
def test_ci_values(value):
    assert in_ci({"CI": value}) is True


@pytest.mark.parametrize("environ", [{}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}, {"CI": "no"}, {"CI": "truee"}])
def test_not_ci_values(environ):
    assert in_ci(environ) is False


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_a_missing_tool_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="gpumatrix-no-such-tool not found: apt-get install pkg"):
        need("gpumatrix-no-such-tool", "pkg")
    with pytest.raises(pytest.fail.Exception, match="engine gone"):
        unavailable("engine gone")


def test_a_missing_tool_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="gpumatrix-no-such-tool not found: apt-get install pkg"):
        need("gpumatrix-no-such-tool", "pkg")


def test_a_present_tool_is_found(monkeypatch):
    monkeypatch.setenv("CI", "1")
    assert need("sh", "dash").endswith("/sh")
