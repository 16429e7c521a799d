"""`build.py bases` against a real registry playing Docker Hub: Debian's docker-registry on a loopback port, given
the stand-in base under nvidia/cuda and library/python tags, one of them as a multi-arch OCI index. What the command
records is compared with skopeo and the engine (independent clients); then a tag moves, a tag vanishes while a newer
patch exists, and the registry is unreachable. Tests in this module run in order and share one registry and project.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from devtools.registry import free_port
from gpumatrix import engine
from support.cli import cli as run_cli
from support.projects import copy_project

pytestmark = pytest.mark.integration

DEVEL_124, NEWER_124 = "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04", "nvidia/cuda:12.4.3-cudnn-devel-ubuntu22.04"
RUNTIME_124 = "nvidia/cuda:12.4.1-base-ubuntu22.04"
DEVEL_128, RUNTIME_128 = "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04", "nvidia/cuda:12.8.1-base-ubuntu24.04"
CPU_DEVEL, CPU_RUNTIME = "python:3.11-bookworm", "python:3.11-slim-bookworm"
MATRIX = """\
image: gpu-images
registry: gpumatrix.test/bases
axes:
  cuda: ["12.4", "12.8"]
  python: ["3.11"]
  torch: ["2.6.0"]
include:
  - {cuda: cpu, python: "3.11", torch: "2.13.0"}
defaults:
  python: "3.11"
"""
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def registry(registries) -> str:
    """A docker-registry on a loopback port (manifest DELETE enabled) playing Docker Hub; its host:port."""
    return registries().addr


@pytest.fixture(scope="module")
def images(docker_client, standin_base, registry):
    """Three images with distinct digests made from the stand-in (a label each); removed with every local tag."""
    made = {}
    for name in ("a", "b", "c"):
        dockerfile = f"FROM {standin_base}\nLABEL io.gpumatrix.test.bases={name}\n".encode()
        image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"gpumatrix-test-bases:{name}", rm=True)
        made[name] = image.id
    yield made  # the `registries` fixture removes the tags under the registry's address
    for name in made:
        docker_client.images.remove(f"gpumatrix-test-bases:{name}", force=True)


def push(docker_client, source: str, registry: str, ref: str) -> None:
    """`source` pushed to the local registry as `ref` (its Docker Hub path: nvidia/cuda, library/python)."""
    path, tag = ref.split(":")
    repository = f"{registry}/{path if '/' in path else 'library/' + path}"
    docker_client.images.get(source).tag(repository, tag)
    for chunk in docker_client.api.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in chunk, chunk


def hub_path(ref: str) -> tuple[str, str]:
    path, tag = ref.split(":")
    return (path if "/" in path else f"library/{path}"), tag


def make_index(registry: str, ref: str) -> str:
    """Replace the tag's single manifest by an OCI index holding it (what multi-arch tags are); returns its digest."""
    path, tag = hub_path(ref)
    url = f"http://{registry}/v2/{path}/manifests/{tag}"
    manifest = requests.get(url, headers={"Accept": MANIFEST_V2}, timeout=20)
    manifest.raise_for_status()
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": MANIFEST_V2, "digest": manifest.headers["Docker-Content-Digest"],
        "size": len(manifest.content), "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    requests.put(url, data=index, headers={"Content-Type": OCI_INDEX}, timeout=20).raise_for_status()
    return "sha256:" + hashlib.sha256(index).hexdigest()


def skopeo_digest(registry: str, ref: str) -> str:
    path, tag = hub_path(ref)
    result = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/{path}:{tag}"],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return "sha256:" + hashlib.sha256(result.stdout).hexdigest()


@pytest.fixture(scope="module")
def hub(docker_client, registry, images):
    """The registry filled like Docker Hub: every base of the matrix, plus a newer 12.4 patch; 12.8's devel tag
    is a multi-arch index. Returns the index digest."""
    push(docker_client, images["a"], registry, DEVEL_124)
    push(docker_client, images["b"], registry, NEWER_124)
    for ref in (RUNTIME_124, DEVEL_128, RUNTIME_128, CPU_DEVEL, CPU_RUNTIME):
        push(docker_client, images["c"], registry, ref)
    return make_index(registry, DEVEL_128)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("bases-project"), matrix=MATRIX)


def cli(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(project, *args, env=env, timeout=300)


def pins(project: Path) -> dict[str, str]:
    data = yaml.safe_load((project / "locks" / "bases.yaml").read_text())
    return {ref: entry["digest"] for ref, entry in data["bases"].items()}


def test_bases_records_the_digest_the_registry_serves(project, registry, hub, docker_client):
    result = cli(project, "bases", "--registry", f"http://{registry}")
    assert result.returncode == 0, result.stderr
    recorded = pins(project)
    assert sorted(recorded) == sorted([DEVEL_124, RUNTIME_124, DEVEL_128, RUNTIME_128, CPU_DEVEL, CPU_RUNTIME])
    for ref, digest in recorded.items():
        assert digest == skopeo_digest(registry, ref), ref
        path, tag = hub_path(ref)
        assert digest == docker_client.images.get_registry_data(f"{registry}/{path}:{tag}").id, ref
    assert recorded[DEVEL_128] == hub, "the multi-arch index, not the amd64 manifest inside it"
    assert f"pinned {DEVEL_128}@{hub}" in result.stderr


def test_render_uses_the_digests_and_the_checks_pass(project, registry, hub):
    assert cli(project, "render").returncode == 0
    dockerfile = (project / "docker" / "cu12.8-py3.11-torch2.6.0" / "Dockerfile").read_text()
    recorded = pins(project)
    assert f"ARG BASE_IMAGE={DEVEL_128}@{hub}\n" in dockerfile
    assert f"ARG RUNTIME_IMAGE={RUNTIME_128}@{recorded[RUNTIME_128]}\n" in dockerfile
    for args in (["render", "--check"], ["bases", "--check"],
                 ["bases", "--check", "--online", "--registry", f"http://{registry}"]):
        result = cli(project, *args)
        assert result.returncode == 0, (args, result.stderr)


def test_the_engine_builds_from_name_tag_at_digest(project, registry, hub, docker_client):
    """The rendered form, tag and digest together, is one the engine pulls and the classic builder accepts."""
    ref = f"{registry}/{RUNTIME_128}@{pins(project)[RUNTIME_128]}"
    pulled = docker_client.images.pull(ref)  # what the build's base check does for a base not on the engine
    assert pulled.labels["io.gpumatrix.test.bases"] == "c" and engine.present(docker_client, ref).id == pulled.id
    dockerfile = f"ARG RUNTIME_IMAGE={ref}\nFROM ${{RUNTIME_IMAGE}}\nLABEL io.gpumatrix.test.built=1\n".encode()
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, pull=True)
    try:
        assert image.labels["io.gpumatrix.test.bases"] == "c", "built on the image the pin names"
    finally:
        docker_client.images.remove(image.id)


def test_moved_tag_fails_the_online_check_and_refresh_records_it(project, registry, hub, images, docker_client):
    before = (project / "locks" / "bases.yaml").read_bytes()
    old = pins(project)[RUNTIME_128]
    push(docker_client, images["b"], registry, RUNTIME_128)
    new = skopeo_digest(registry, RUNTIME_128)
    assert new != old
    assert cli(project, "bases", "--check").returncode == 0, "offline, the file still matches the matrix"
    result = cli(project, "bases", "--check", "--online", env={"GPUMATRIX_BASES_REGISTRY": f"http://{registry}"})
    assert result.returncode == 1, result.stderr
    assert f"error: {RUNTIME_128}: moved on the registry: pinned {old}, now {new}" in result.stderr
    assert result.stderr.count("error:") == 1
    assert (project / "locks" / "bases.yaml").read_bytes() == before
    result = cli(project, "bases", "--refresh", "--registry", f"http://{registry}")
    assert result.returncode == 0, result.stderr
    assert f"moved {RUNTIME_128}: {old} -> {new}" in result.stderr
    assert pins(project)[RUNTIME_128] == new
    assert cli(project, "render", "--check").returncode == 1, "the Dockerfiles still name the old digest"


def test_vanished_tag_names_it_and_suggests_the_newest_patch(project, registry, hub):
    path, tag = hub_path(DEVEL_124)
    digest = pins(project)[DEVEL_124]
    requests.delete(f"http://{registry}/v2/{path}/manifests/{digest}", timeout=20).raise_for_status()
    before = (project / "locks" / "bases.yaml").read_bytes()
    expected = (f"{DEVEL_124}: tag no longer exists on {registry}; "
                f"newest patch of 12.4: 12.4.3-cudnn-devel-ubuntu22.04")
    result = cli(project, "bases", "--check", "--online", "--registry", f"http://{registry}")
    assert result.returncode == 1, result.stderr
    assert f"error: {expected}\n" in result.stderr
    result = cli(project, "bases", "--refresh", "--registry", f"http://{registry}")
    assert result.returncode == 2, result.stderr
    assert f"error: {expected}\n" in result.stderr and "Traceback" not in result.stderr
    assert (project / "locks" / "bases.yaml").read_bytes() == before


def test_unreachable_registry_is_one_line_and_leaves_the_file(project, hub):
    before = (project / "locks" / "bases.yaml").read_bytes()
    port = free_port()
    result = cli(project, "bases", "--refresh", env={"GPUMATRIX_BASES_REGISTRY": f"http://127.0.0.1:{port}"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot reach registry 127.0.0.1:{port} ([Errno 111] Connection refused)"
    assert (project / "locks" / "bases.yaml").read_bytes() == before
