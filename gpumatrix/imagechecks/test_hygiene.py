"""The final image carries no build leftovers: compilers, pip cache, apt lists, wheel files."""

import pytest

pytestmark = pytest.mark.image_only

COMPILERS = ("gcc", "cc", "g++", "c++", "clang", "nvcc")
# The OS Python's own bundled wheels (Debian/Ubuntu python3-venv, ensurepip) are how `python -m venv` works.
OS_WHEELS = ("/usr/share/python-wheels/", "/ensurepip/_bundled/")


def _lines(host, command: str) -> list[str]:
    return [line for line in host.run(command).stdout.splitlines() if line.strip()]


def test_no_compilers(image_mode, host):
    found = [f"{c} ({host.find_command(c)})" for c in COMPILERS if host.exists(c)]
    assert not found, f"expected no compilers in the final image, found {', '.join(found)}"


def test_no_pip_cache(image_mode, host):
    found = _lines(host, "find /root/.cache/pip /home/*/.cache/pip /tmp/pip-* -type f 2>/dev/null | head -5")
    assert not found, f"expected no pip cache content, found {', '.join(found)}"


def test_no_apt_lists(image_mode, host):
    found = _lines(host, "find /var/lib/apt/lists -type f ! -name lock 2>/dev/null | head -5")
    assert not found, f"expected no apt lists in /var/lib/apt/lists, found {', '.join(found)}"


def test_no_wheel_files(image_mode, host):
    found = [p for p in _lines(host, "find / -xdev -name '*.whl' 2>/dev/null") if not any(w in p for w in OS_WHEELS)]
    assert not found, f"expected no .whl files in the image, found {', '.join(found[:10])}"
