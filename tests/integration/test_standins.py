"""The stand-in base image and the loopback wheel index, against real services."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from devtools.standins import KEY_LABEL, ensure_standin_base

ANCHOR = re.compile(r'<a href="([^"#]+)#sha256=([0-9a-f]{64})"[^>]*>([^<]+)</a>')
CORE_METADATA = re.compile(r'<a href="[^"]+" data-core-metadata="sha256=([0-9a-f]{64})"[^>]*>([^<]+)</a>')


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_standin_base_runs_python_and_reaches_pypi(docker_client, standin_base, containers):
    image = docker_client.images.get(standin_base)
    assert image.labels[KEY_LABEL] == standin_base.rsplit("-", 1)[1]
    assert "Python 3.11" in containers.run_in(standin_base, ["python3.11", "--version"])
    containers.run_in(standin_base, ["python3.11", "-m", "pip", "download", "--no-deps", "-d", "/tmp", "six"],
                      network="bridge")


def test_standin_base_second_call_is_a_cache_hit(docker_client, standin_base, cache_dir):
    messages: list[str] = []
    started = time.monotonic()
    tag = ensure_standin_base(docker_client, cache_dir, log=messages.append)
    assert tag == standin_base
    assert time.monotonic() - started < 5
    assert any("cache hit" in message for message in messages)
    assert not any("debootstrap" in message for message in messages)


def test_index_serves_cpu_torch_with_true_sha256(torch_index):
    page = fetch(f"{torch_index.url}/torch/")
    links = {name: digest for _, digest, name in ANCHOR.findall(page)}
    cpu_wheels = [name for name in links if name.startswith("torch-2.13.0+cpu-")]
    assert cpu_wheels, page
    wheel = cpu_wheels[0]
    assert links[wheel] == file_sha256(torch_index.files_dir / wheel)


def test_index_serves_each_wheels_metadata_with_its_sha256(torch_index):
    """PEP 658/714: the link announces the METADATA file beside the wheel, as PyPI and the PyTorch index do."""
    page = fetch(f"{torch_index.url}/torch/")
    announced = {name: digest for digest, name in CORE_METADATA.findall(page)}
    wheel = next(name for name in announced if name.startswith("torch-2.13.0+cpu-"))
    with urllib.request.urlopen(f"{torch_index.url.removesuffix('/simple')}/files/{wheel}.metadata", timeout=10) as response:
        metadata = response.read()
    assert hashlib.sha256(metadata).hexdigest() == announced[wheel]
    assert b"\nVersion: 2.13.0+cpu\n" in metadata


def test_pip_downloads_torch_through_the_index(torch_index, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PIP_FIND_LINKS"}
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
         "--index-url", torch_index.url, "--dest", str(tmp_path), "torch==2.13.0"],
        env=env, check=True, capture_output=True, text=True,
    )
    downloaded = [path.name for path in tmp_path.glob("torch-*.whl")]
    assert len(downloaded) == 1 and "+cpu" in downloaded[0]
    assert f"/files/{downloaded[0]}" in torch_index.requests
    access_log = (torch_index.root / "access.log").read_text()
    assert f"GET /files/{downloaded[0]}" in access_log


def test_index_answers_404_for_unknown_project(torch_index):
    with pytest.raises(urllib.error.HTTPError) as error:
        fetch(f"{torch_index.url}/no-such-project/")
    assert error.value.code == 404
