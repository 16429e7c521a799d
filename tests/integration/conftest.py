"""Fixtures for integration tests: a Docker engine and the local stand-ins."""

from __future__ import annotations

import pathlib
import shutil
import signal

import docker
import pytest

from gpumatrix.standins import REPOSITORY as STANDIN_REPOSITORY
from gpumatrix.standins import LoopbackIndex, cpu_index_requirements, ensure_standin_base
from support.ci import need, unavailable

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def pytest_configure(config):
    """A run started as a background job (`make test &`, nohup, some CI runners) inherits SIGINT ignored, and so would
    every build.py the tests start: the Ctrl-C tests would test nothing. Python's own handler is reset on exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/integration as an integration test."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine reachable: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="module", autouse=True)
def engine_left_as_found():
    """Each module removes the containers and images it made. Without this a full run leaves about 50 GB of images on
    the engine's disk (the CUDA cell alone holds two copies of a CUDA torch), and CI machines run out of space. The
    stand-in bases are kept: every module needs them, and debootstrap is slow."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        yield  # the tests that need an engine say so themselves
        return
    images_before = {image.id for image in client.images.list(all=True)}
    containers_before = {container.id for container in client.containers.list(all=True)}
    yield
    for container in client.containers.list(all=True):
        if container.id not in containers_before:
            _ignore_engine_errors(container.remove, force=True)
    keep = images_before | _standins_and_their_parents(client)
    made = [image for image in client.images.list(all=True) if image.id not in keep]
    for image in sorted(made, key=lambda image: image.attrs["Created"], reverse=True):  # children first
        _ignore_engine_errors(client.images.remove, image.id, force=True)
    client.close()


def _standins_and_their_parents(client) -> set[str]:
    kept: set[str] = set()
    for image in client.images.list(name=STANDIN_REPOSITORY):
        while image is not None and image.id not in kept:
            kept.add(image.id)
            parent = image.attrs.get("Parent")
            try:
                image = client.images.get(parent) if parent else None
            except docker.errors.NotFound:
                image = None
    return kept


def _ignore_engine_errors(remove, *args, **kwargs) -> None:
    try:
        remove(*args, **kwargs)
    except docker.errors.APIError:  # already gone with its child, or still used by a kept image
        pass


@pytest.fixture(scope="session")
def cache_dir() -> pathlib.Path:
    """Where stand-in rootfs temp dirs and wheel indexes live (git-ignored)."""
    return REPO_ROOT / ".cache"


@pytest.fixture(scope="session")
def standin_base(docker_client, cache_dir) -> str:
    need("debootstrap", "debootstrap")
    return ensure_standin_base(docker_client, cache_dir)


@pytest.fixture(scope="session")
def torch_index(cache_dir):
    index = LoopbackIndex(cache_dir / "index-cpu")
    index.fill(cpu_index_requirements())
    with index:
        yield index


@pytest.fixture
def tmp_project(tmp_path) -> pathlib.Path:
    """A copy of the project (matrix.yaml, templates/, requirements/, locks/) that a test may change freely."""
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name)
    shutil.copy(REPO_ROOT / "matrix.yaml", tmp_path / "matrix.yaml")
    return tmp_path
