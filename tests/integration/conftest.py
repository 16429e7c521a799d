"""Fixtures for integration tests: a Docker engine, the local stand-ins, loopback registries and the containers a
test starts. The helpers behind them are in tests/support."""

from __future__ import annotations

import pathlib
import shutil
import signal
import subprocess
import zlib

import docker
import pytest

from devtools.registry import Registry
from devtools.standins import REPOSITORY as STANDIN_REPOSITORY
from devtools.standins import LoopbackIndex, ensure_standin_base
from support.ci import need, unavailable
from support.containers import TrackedContainers
from support.projects import REPO, WITH_LOCKS, copy_project
from support.standins import cpu_index, standin_flags

HERE = pathlib.Path(__file__).resolve().parent


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


# BuildKit's cache holds the layers of every image a BuildKit build made, after the image is removed, and the pip
# download caches it mounts. A full run left tens of GB of it and a CI machine ran out of disk. What is kept is the
# most recently used part, which is the next module's torch stage more often than not.
BUILD_CACHE_KEPT = 3 * 1024**3


@pytest.fixture(scope="module", autouse=True)
def engine_left_as_found():
    """Each module removes the containers and images it made, and trims BuildKit's cache to BUILD_CACHE_KEPT. Without
    this a full run leaves about 50 GB of images on the engine's disk (the CUDA cell alone holds two copies of a CUDA
    torch), and CI machines run out of space. The stand-in bases are kept: every module needs them, and debootstrap is
    slow."""
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
    _ignore_engine_errors(client.api.prune_builds, keep_storage=BUILD_CACHE_KEPT)
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
    return REPO / ".cache"


@pytest.fixture(scope="session")
def standin_base(docker_client, cache_dir) -> str:
    need("debootstrap", "debootstrap")
    return ensure_standin_base(docker_client, cache_dir)


@pytest.fixture(scope="session")
def torch_index(cache_dir):
    with cpu_index(cache_dir) as index:
        yield index


@pytest.fixture(scope="session")
def buildx() -> str:
    """`docker buildx version` as it answers; a missing buildx fails under CI and skips elsewhere."""
    try:
        answer = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        answer = None
    if answer is None or answer.returncode != 0:
        unavailable("docker buildx not found: install Debian's docker-buildx (trixie; .ci/run shows how)")
    return answer.stdout.strip()


@pytest.fixture(scope="session")
def stand_ins(standin_base, torch_index) -> list[str]:
    """The overrides that lock or build a cell against the stand-in base and the session's loopback index."""
    return standin_flags(standin_base, torch_index.url)


@pytest.fixture
def tmp_project(tmp_path) -> pathlib.Path:
    """A copy of the project (matrix.yaml, templates/, requirements/, locks/) that a test may change freely."""
    return copy_project(tmp_path, WITH_LOCKS)


@pytest.fixture
def containers(docker_client, request):
    """Starts the test's own containers (TrackedContainers): labelled with the test, removed when it ends."""
    tracked = TrackedContainers(docker_client, request.node.nodeid)
    yield tracked
    tracked.remove_all()


@pytest.fixture(scope="module")
def registries(tmp_path_factory, docker_client):
    """Starts docker-registry on a loopback port (devtools.registry.Registry): `registries(users=None, storage=None)`.
    Each is stopped when the module ends and the engine's tags under its address are removed."""
    need("docker-registry", "docker-registry")
    need("skopeo", "skopeo")  # every module with a registry reads it back with skopeo, an independent client
    workdir = tmp_path_factory.mktemp("registries")
    started: list[Registry] = []

    def start(users: dict[str, str] | None = None, storage: pathlib.Path | None = None) -> Registry:
        if users:
            need("htpasswd", "apache2-utils")
        registry = Registry(workdir, storage or workdir / f"storage-{len(started)}", users)
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()
        for image in docker_client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{registry.addr}/"):
                    _ignore_engine_errors(docker_client.images.remove, tag)
    shutil.rmtree(workdir, ignore_errors=True)  # the pushed images' blobs


def _stable_port(root: pathlib.Path) -> int:
    """The same loopback port for the same index, so the torch stage's build cache survives reruns."""
    return 20000 + zlib.crc32(str(root.resolve()).encode()) % 20000


@pytest.fixture(scope="module")
def cu130_index(cache_dir):
    """PyPI's torch 2.14.1 (the CUDA 13.0 build, published without a local label) relabelled 2.14.1+cu130 here
    (test_imagetest_cuda.py's docstring says what that means for the checks). Per module: its images are removed
    between modules, the wheels under .cache and the port (so the torch stage's build cache) are kept."""
    index = LoopbackIndex(cache_dir / "index-cu130", port=_stable_port(cache_dir / "index-cu130"))
    index.fill(["torch==2.14.1"], local_version={"torch": "cu130"})
    try:
        index.start()
    except OSError:  # the port is taken: any port works, only the build cache is lost
        index.port = 0
        index.start()
    yield index
    index.stop()
