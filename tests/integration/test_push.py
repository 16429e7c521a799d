"""Push against a real registry: Debian's docker-registry (distribution v2) on a loopback port, once with htpasswd.

The CPU cell is locked and built through build.py against the stand-ins (as in test_build.py), under a repository
of its own so that other tests retagging the shipped repository cannot move it. What was pushed is read back with
skopeo (an independent client) and pulled by digest. Tests in this module run in order and share one project.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from packaging.utils import canonicalize_name

from devtools.registry import Registry
from support.cli import cli, start
from support.containers import product_containers
from support.projects import WITH_LOCKS, copy_project
from support.standins import STANDIN_CELL as CELL
from support.standins import base_flags, standin_flags

OWN_REGISTRY = "gpumatrix.test/push"  # the matrix's registry in this module's project copy
LOCAL_REPO = f"{OWN_REGISTRY}/gpu-images"
USER, PASSWORD = "ci-bot", "Tr0ub4dor&3-secret-XYZ"
INDEX_USER, INDEX_TOKEN = "index-bot", "idx-T0ken-4c9e1f"  # the loopback index ignores them; pip sends them


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("push-project"), WITH_LOCKS, registry=OWN_REGISTRY)


@pytest.fixture(scope="module")
def run_logs() -> list[str]:
    """The output of every build.py run of the module's image, for the secrets check."""
    return []


@pytest.fixture(scope="module")
def built(project, standin_base, torch_index, docker_client, run_logs) -> str:
    """The CPU cell locked and built through build.py, with an index URL that carries credentials (given as
    GPUMATRIX_INDEX_URL, as a private index's would be); returns the image id."""
    stand_ins = standin_flags(standin_base)  # the index comes from the environment
    index = {"GPUMATRIX_INDEX_URL": torch_index.url.replace("http://", f"http://{INDEX_USER}:{INDEX_TOKEN}@")}
    for verb in ("lock", "build"):
        users_before = len(torch_index.users)
        result = cli(project, verb, "--cuda", "cpu", *stand_ins, env=index)
        run_logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr
        # The control of the secrets test below: the step did send the index token (pip sends an index URL's
        # credentials with every request), so finding it nowhere proves something.
        assert INDEX_USER in torch_index.users[users_before:], f"{verb} never sent the index token"
    return docker_client.images.get(f"{LOCAL_REPO}:{CELL}").id


def record_path(project: Path) -> Path:
    return project / "out" / "tests" / f"{CELL}.json"


def write_record(project: Path, image_id: str, passed: bool = True) -> None:
    """A test record as `build.py test` writes it (only for the tests about the record logic, or without it)."""
    path = record_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell": CELL, "image": f"{LOCAL_REPO}:{CELL}", "image_id": image_id,
                                "passed": passed, "gpu": False, "junit": f"out/tests/{CELL}.xml",
                                "summary": f"out/tests/{CELL}.md"}))


def has_test_command(project: Path) -> bool:
    return cli(project, "test", "--help", timeout=60).returncode == 0


@pytest.fixture(scope="module")
def tested(project, built, standin_base, run_logs) -> str:
    """The image checks passed for the built image: through `build.py test` when it exists, else a hand-made record."""
    if has_test_command(project):
        result = cli(project, "test", "--cuda", "cpu", "--no-gpu", *base_flags(standin_base))
        run_logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout + result.stderr
        record = json.loads(record_path(project).read_text())
        assert record["passed"] is True and record["image_id"] == built
    else:
        write_record(project, built)
    return built


def catalog(project: Path) -> dict[str, dict]:
    path = project / "out" / "catalog" / "images.json"
    return {e["cell"]: e for e in json.loads(path.read_text())["images"]} if path.exists() else {}


def skopeo(*args: str) -> dict:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---- refusals: the record logic (records written by hand on purpose) --------------------------------------------


def test_untested_image_is_refused_naming_the_cell_and_what_to_run(project, built, registries):
    record_path(project).unlink(missing_ok=True)
    reg = registries()
    result = cli(project, "push", "--cuda", "cpu", "--registry", reg.addr)
    assert result.returncode == 2, result.stderr
    assert f"{CELL}: not tested" in result.stderr
    assert "make test-image CUDA=cpu PYTHON=3.11 TORCH=2.13.0" in result.stderr
    assert "python build.py test --cuda cpu" in result.stderr
    assert not reg.uploads_started() and "Traceback" not in result.stderr


def test_failed_or_stale_test_records_are_refused(project, built, registries):
    reg = registries()
    write_record(project, built, passed=False)
    result = cli(project, "push", "--cuda", "cpu", "--registry", reg.addr)
    assert result.returncode == 2 and "checks did not pass" in result.stderr and CELL in result.stderr
    write_record(project, "sha256:" + "0" * 64)  # passed, but for an image that is not the current one
    result = cli(project, "push", "--cuda", "cpu", "--registry", reg.addr)
    assert result.returncode == 2 and "rebuilt since the test" in result.stderr and "make test-image" in result.stderr
    record_path(project).unlink()
    assert requests.get(f"http://{reg.addr}/v2/_catalog", timeout=5).json()["repositories"] == []


# ---- the push, read back independently -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_registry(registries) -> Registry:
    return registries()


def test_push_every_tag_and_read_it_back_with_skopeo_and_by_digest(project, tested, plain_registry, docker_client):
    reg = plain_registry
    started = time.monotonic()
    result = cli(project, "push", "--cuda", "cpu", "--registry", reg.addr)
    print(f"push of the CPU cell: {time.monotonic() - started:.0f}s\n{result.stderr}")
    assert result.returncode == 0, result.stderr
    entry = catalog(project)[CELL]
    digest = entry["digest"]
    assert entry["reference"] == f"{reg.addr}/gpu-images@{digest}"
    image = docker_client.images.get(tested)
    local_tags = sorted(t.rsplit(":", 1)[1] for t in image.tags if t.startswith(f"{LOCAL_REPO}:"))
    assert sorted(entry["tags"]) == local_tags and len(local_tags) >= 2  # <cell> and its content tag
    # skopeo, an independent client: every tag, the same manifest digest, the image's labels.
    listed = skopeo("list-tags", "--tls-verify=false", f"docker://{reg.addr}/gpu-images")["Tags"]
    assert sorted(listed) == local_tags
    for tag in local_tags:
        info = skopeo("inspect", "--tls-verify=false", f"docker://{reg.addr}/gpu-images:{tag}")
        assert info["Digest"] == digest
        assert info["Labels"]["io.gpumatrix.cell"] == CELL
        assert info["Labels"]["io.gpumatrix.torch"] == "2.13.0+cpu"
    # The registry's own answer (manifest HEAD) agrees too.
    head = requests.head(f"http://{reg.addr}/v2/gpu-images/manifests/{CELL}", timeout=10,
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.headers["Docker-Content-Digest"] == digest
    # Pull by digest: the same image.
    pulled = docker_client.images.pull(f"{reg.addr}/gpu-images@{digest}")
    assert pulled.id == tested
    md = (project / "out" / "catalog" / "images.md").read_text()
    assert f"`{reg.addr}/gpu-images@{digest}`" in md and "| CPU |" in md
    assert entry["size"] == image.attrs["Size"] and entry["cuda"] == "cpu"
    assert f"{CELL}: pushed {len(local_tags)} tag(s)" in result.stderr


def sbom_of(path: Path) -> dict:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    return json.loads(text)


def pip_freeze(containers, image_id: str) -> dict[str, str]:
    """The image's own `pip freeze` (which leaves out pip, setuptools and wheel), canonical name -> version."""
    out = containers.run_in(image_id, ["/opt/venv/bin/python", "-m", "pip", "freeze"])
    pairs = (line.split("==", 1) for line in out.splitlines() if "==" in line)
    return {canonicalize_name(name): version for name, version in pairs}


def test_sbom_is_the_installed_environment_and_rides_in_the_catalog(project, tested, plain_registry, docker_client,
                                                                   containers):
    result = cli(project, "sbom", "--cuda", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    path = project / "out" / "sbom" / f"{CELL}.cdx.json"
    doc = sbom_of(path)
    assert doc["specVersion"] == "1.6"
    root = doc["metadata"]["component"]
    props = {p["name"]: p["value"] for p in root["properties"]}
    assert root["type"] == "container" and root["version"] == CELL and root["bom-ref"] == tested
    assert props["gpumatrix:image-id"] == tested and props["io.gpumatrix.torch"] == "2.13.0+cpu"
    purls = [c.get("purl", "") for c in doc["components"]]
    assert "pkg:pypi/torch@2.13.0%2Bcpu" in purls
    assert any(p.startswith("pkg:pypi/numpy@") for p in purls)
    assert "pkg:deb/debian/" in " ".join(purls) and "distro=debian-12" in " ".join(purls)
    pypi = {canonicalize_name(c["name"]): c["version"] for c in doc["components"] if c.get("purl", "").startswith("pkg:pypi/")}
    frozen = pip_freeze(containers, tested)
    assert len(frozen) > 5 and {n: pypi.get(n) for n in frozen} == frozen  # every frozen package, at its version
    assert set(pypi) - set(frozen) <= {"pip", "setuptools", "wheel"}
    leftovers = product_containers(docker_client, "imagetest", image=tested)
    assert leftovers == []

    # push reuses the SBOM of this very image and records it in the catalog
    made = path.read_bytes()
    result = cli(project, "push", "--cuda", "cpu", "--registry", plain_registry.addr)
    assert result.returncode == 0, result.stderr
    assert "reusing it" in result.stderr and path.read_bytes() == made
    entry = catalog(project)[CELL]["sbom"]
    assert entry == {"path": f"out/sbom/{CELL}.cdx.json", "sha256": hashlib.sha256(made).hexdigest(),
                     "format": "CycloneDX 1.6 JSON", "components": len(doc["components"])}
    assert f"`out/sbom/{CELL}.cdx.json`" in (project / "out" / "catalog" / "images.md").read_text()

    # an SBOM of another image id is never attached: push makes the SBOM of the pushed image again
    stale = made.replace(tested.encode(), b"sha256:" + b"0" * 64)
    path.write_bytes(stale)
    result = cli(project, "push", "--cuda", "cpu", "--registry", plain_registry.addr)
    assert result.returncode == 0, result.stderr
    assert "making the SBOM of" in result.stderr and "reusing it" not in result.stderr
    remade = path.read_bytes()
    assert sbom_of(path)["metadata"]["component"]["bom-ref"] == tested
    assert catalog(project)[CELL]["sbom"]["sha256"] == hashlib.sha256(remade).hexdigest() != hashlib.sha256(stale).hexdigest()


def test_registry_stopped_mid_push_is_a_clear_failure_and_leaves_no_catalog_entry(project, tested, registries):
    reg = registries()  # empty storage: every layer is really uploaded
    assert CELL in catalog(project)  # from the push before: a failed push must not keep it

    def kill_when_uploading():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not reg.uploads_started():
            time.sleep(0.05)
        time.sleep(0.5)
        reg.stop()

    killer = threading.Thread(target=kill_when_uploading, daemon=True)
    killer.start()
    started = time.monotonic()
    result = cli(project, "push", "--cuda", "cpu", "--registry", reg.addr, "--attempts", "2")
    elapsed = time.monotonic() - started
    killer.join(timeout=10)
    print(f"push against a registry stopped mid-push failed after {elapsed:.0f}s\n{result.stderr}")
    assert reg.proc.poll() is not None, "the registry was not stopped during the push"
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any(line.startswith(f"error: {CELL}: push failed:") and "connection refused" in line for line in errors), errors
    assert "retrying in" in result.stderr and "(attempt 2/2)" in result.stderr
    assert "1 of 1 pushes failed" in result.stderr and "Traceback" not in result.stderr
    assert CELL not in catalog(project)
    assert CELL not in (project / "out" / "catalog" / "images.md").read_text()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_push_exits_at_once_and_leaves_the_catalog_as_it_was(project, tested, registries, sig, code):
    reg = registries()  # empty storage: every layer is really uploaded
    catalog_dir = project / "out" / "catalog"
    before = {p.name: p.read_bytes() for p in catalog_dir.glob("*")}
    proc = start(project, "push", "--cuda", "cpu", "--registry", reg.addr)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not reg.uploads_started() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - signalled < 30
    assert proc.returncode == code, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in catalog_dir.glob("*")} == before  # no .tmp file, nothing rewritten
    manifest = requests.head(f"http://{reg.addr}/v2/gpu-images/manifests/{CELL}", timeout=5)
    assert manifest.status_code == 404, "the interrupted push still published the tag"


# ---- credentials ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(registries, plain_registry) -> Registry:
    """htpasswd on a copy of the plain registry's blobs without its tags: the push is real, the upload quick."""
    storage = plain_registry.storage.parent / "storage-auth"
    shutil.copytree(plain_registry.storage, storage)
    shutil.rmtree(storage / "docker" / "registry" / "v2" / "repositories" / "gpu-images" / "_manifests" / "tags")
    return registries(users={USER: PASSWORD}, storage=storage)


def assert_no_password(project: Path, docker_client, password: str, *texts: str) -> None:
    """Not in the output, not in out/ (reports, catalog, test records), not in the image's labels or history."""
    for text in texts:
        assert password not in text
    for path in (project / "out").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    image = docker_client.images.get(f"{LOCAL_REPO}:{CELL}")
    assert password not in json.dumps(image.labels) + json.dumps(image.history()) + json.dumps(image.attrs)


def test_push_with_htpasswd_credentials_from_the_environment(project, tested, auth_registry, docker_client):
    anonymous = requests.get(f"http://{auth_registry.addr}/v2/", timeout=5)
    assert anonymous.status_code == 401
    manifest = f"http://{auth_registry.addr}/v2/gpu-images/manifests/{CELL}"
    assert requests.head(manifest, auth=(USER, PASSWORD), timeout=5).status_code == 404  # blobs only, no tags yet
    result = cli(project, "push", "--cuda", "cpu", "--registry", auth_registry.addr,
                 env={"REGISTRY_USER": USER, "REGISTRY_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    assert f"as {USER}" in result.stderr
    digest = catalog(project)[CELL]["digest"]
    info = skopeo("inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                  f"docker://{auth_registry.addr}/gpu-images:{CELL}")
    assert info["Digest"] == digest and info["Labels"]["io.gpumatrix.cell"] == CELL
    assert_no_password(project, docker_client, PASSWORD, result.stdout, result.stderr)


def blobs_hold(directory: Path, secrets: list[bytes]) -> list[str]:
    """Which blobs of an image copied with skopeo (layers decompressed, config and manifest as they are) hold one."""
    found = []
    longest = max(len(s) for s in secrets)
    for blob in sorted(p for p in directory.iterdir() if p.is_file()):
        with (gzip.open if _gzip_magic(blob) else open)(blob, "rb") as stream:
            tail = b""
            while chunk := stream.read(1 << 22):
                window = tail + chunk
                found += [f"{blob.name}: {s.decode()}" for s in secrets if s in window]
                tail = window[-longest:]
    return found


def _gzip_magic(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def test_no_credential_reaches_the_pushed_image_its_history_the_logs_or_out(
    project, tested, auth_registry, docker_client, run_logs, tmp_path
):
    """Registry password and index token: not in any layer, the config (labels, env, history), the output of
    lock, build, test and push, or anything under out/. The torch stage saw the index URL as a build argument."""
    result = cli(project, "push", "--cuda", "cpu", "--registry", auth_registry.addr,
                 env={"REGISTRY_USER": USER, "REGISTRY_PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"{USER}:{PASSWORD}",
                    f"docker://{auth_registry.addr}/gpu-images:{CELL}", f"dir:{copy}"],
                   check=True, capture_output=True, timeout=600)
    secrets = [PASSWORD.encode(), INDEX_TOKEN.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode())]
    layers = [p for p in copy.iterdir() if p.name not in ("manifest.json", "version")]
    assert len(layers) > 3
    assert blobs_hold(copy, secrets) == []
    assert blobs_hold(copy, [b"torch-2.13.0+cpu.dist-info"]), "the search finds nothing at all: it is broken"
    for secret in (PASSWORD, INDEX_TOKEN):
        assert_no_password(project, docker_client, secret, result.stdout, result.stderr, *run_logs)
    # The control: the lock and the build sent the token to the index (checked where they ran, in `built`).


def test_push_with_credentials_from_the_docker_config(project, tested, auth_registry, tmp_path):
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.addr: {"auth": auth}}}))
    result = cli(project, "push", "--cuda", "cpu", "--registry", auth_registry.addr, env={"DOCKER_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and auth not in result.stdout + result.stderr
    # Without any credentials the same push is an authentication failure, reported once.
    result = cli(project, "push", "--cuda", "cpu", "--registry", auth_registry.addr,
                 env={"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "authentication failed (not retried)" in result.stderr and "retrying" not in result.stderr
    assert CELL not in catalog(project)


def test_wrong_password_fails_clearly_without_retries_or_the_password(project, tested, auth_registry, docker_client):
    wrong = PASSWORD[::-1] + "-wrong"
    log_before = len(auth_registry.log.read_text())
    started = time.monotonic()
    result = cli(project, "push", "--cuda", "cpu", "--registry", auth_registry.addr,
                 env={"REGISTRY_USER": USER, "REGISTRY_PASSWORD": wrong})
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert f"login to {auth_registry.addr} as {USER} failed" in result.stderr
    assert "401 Unauthorized" in result.stderr
    assert "retrying" not in result.stderr and elapsed < 60
    assert_no_password(project, docker_client, wrong, result.stdout, result.stderr)
    assert_no_password(project, docker_client, PASSWORD, result.stdout, result.stderr)
    log = auth_registry.log.read_text()[log_before:]
    assert 1 <= log.count('"GET /v2/ HTTP/1.1" 401') <= 3, log  # one login (challenge + attempt), no retry loop
    assert CELL not in catalog(project)
