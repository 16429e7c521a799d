"""`build.py test` on a real engine: the image suite passes on a good image and each check fails on a broken one.

The CPU cell is locked (when the committed lock does not fit) and built in a copy of the project, exactly as
test_build.py does; the negative images are built FROM it through the docker SDK. The CUDA 13.0 cell is in
test_imagetest_cuda.py.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import pytest

from devtools.standins import WHEEL_PLATFORMS, LoopbackIndex, StandinError
from gpumatrix import engine, imagetest
from support.cli import cli, start
from support.containers import product_containers
from support.projects import REPO, WITH_LOCKS, copy_project
from support.projects import SHIPPED_REPOSITORY as REPOSITORY
from support.reports import build_report, check_results
from support.standins import STANDIN_CELL as CELL
from support.standins import base_flags
RESULT_KEYS = {"cell", "image", "image_id", "passed", "gpu", "junit", "summary"}
CHECKS = {
    "test_python_version", "test_torch_distribution_is_the_exact_pin", "test_torch_version_is_the_exact_pin",
    "test_torch_cuda_is_the_variants_cuda", "test_exactly_one_torch_distribution",
    "test_torch_stage_packages_at_their_stage_versions", "test_installed_set_is_torch_stage_plus_lock",
    "test_pip_check", "test_guard_refuses_another_torch", "test_guard_refuses_numpy_across_its_major",
    "test_compiled_extensions_import_with_warnings_as_errors", "test_torch_numpy_interop", "test_labels",
    "test_nvidia_require_cuda", "test_env", "test_compiled_archs_cover_the_target_archs", "test_no_compilers",
    "test_no_pip_cache", "test_no_apt_lists", "test_no_wheel_files", "test_cell_facts_agree_with_the_cell_name",
}


def results(out: Path) -> tuple[dict, dict[str, dict]]:
    return check_results(out, CELL)


def leftover_containers(client, image: str) -> list:
    """Test containers imagetest left behind (of `image` only: other runs may share the engine)."""
    return product_containers(client, "imagetest", image=image)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("imagetest"), WITH_LOCKS)


@pytest.fixture(scope="module")
def bases(standin_base) -> list[str]:
    return base_flags(standin_base)


@pytest.fixture(scope="module")
def cpu_image(project, stand_ins, docker_client) -> str:
    """The CPU cell built here; returns its immutable content tag (the cell tag may move under other tests)."""
    if cli(project, "lock", "--check", "--cuda", "cpu").returncode != 0:
        result = cli(project, "lock", "--cuda", "cpu", *stand_ins)
        assert result.returncode == 0, result.stderr
    result = cli(project, "build", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 0, result.stderr
    record = build_report(project)[CELL]
    (content_tag,) = [t for t in record["tags"] if re.fullmatch(rf"{re.escape(REPOSITORY)}:{CELL}-[0-9a-f]{{12}}", t)]
    assert docker_client.images.get(content_tag).id == record["image_id"]
    return content_tag


def test_the_suite_is_not_collected_without_expect():
    suite = REPO / "gpumatrix" / "imagechecks"
    result = subprocess.run([sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "need --expect PATH" in result.stderr and "build.py test" in result.stderr


def test_good_image_passes_and_writes_the_results(project, bases, cpu_image, docker_client):
    docker_client.images.get(cpu_image).tag(REPOSITORY, CELL)  # the cell tag, as `make image` leaves it
    started = time.monotonic()
    result = cli(project, "test", "--cuda", "cpu", *bases)
    duration = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = project / "out" / "tests"
    record, cases = results(out)
    assert RESULT_KEYS <= set(record)
    assert record["cell"] == CELL and record["image"] == f"{REPOSITORY}:{CELL}"
    assert record["image_id"] == docker_client.images.get(cpu_image).id
    assert record["passed"] is True and record["gpu"] is False
    assert record["junit"] == f"out/tests/{CELL}.xml" and record["summary"] == f"out/tests/{CELL}.md"
    assert CHECKS <= set(cases), CHECKS - set(cases)
    assert not [c for c in cases.values() if c["outcome"] in ("failed", "error")]
    assert all(cases[n]["outcome"] == "passed" for n in CHECKS - {"test_compiled_archs_cover_the_target_archs"})
    gpu = [c for c in cases.values() if c["file"] == "test_gpu"]
    assert gpu and all(c["outcome"] == "skipped" and "GPU checks off" in c["message"] for c in gpu)
    summary = (out / f"{CELL}.md").read_text()
    assert f"Image checks: {CELL} passed" in summary and "GPU checks did not run" in summary
    assert not leftover_containers(docker_client, cpu_image)
    print(f"suite on the CPU image: {duration:.0f}s")


def test_local_backend_runs_the_same_suite(project, bases, cpu_image, containers, tmp_path):
    """--local checks whatever environment --interpreter names; here a Python that runs inside a container."""
    container = containers.start(cpu_image)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec docker exec -i {container.id} python "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    result = cli(project, "test", "--cuda", "cpu", "--local", "--interpreter", str(python), "--out", str(out), *bases)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    record, cases = results(out)
    assert record["mode"] == "local" and record["image"] is None and record["image_id"] is None
    assert cases["test_torch_version_is_the_exact_pin"]["outcome"] == "passed"
    assert cases["test_installed_set_is_torch_stage_plus_lock"]["outcome"] == "passed"
    assert cases["test_labels"]["outcome"] == "skipped" and "not for --local" in cases["test_labels"]["message"]
    # --gpu: a GPU check is never skipped when asked for; without a GPU it fails and says so.
    result = cli(project, "test", "--cuda", "cpu", "--local", "--gpu", "--interpreter", str(python),
                 "--out", str(out), *bases)
    assert result.returncode == 1
    record, cases = results(out)
    matmul = cases["test_gpu_matmul_matches_cpu"]
    assert matmul["outcome"] == "error" and "expected a visible GPU (--gpu), found none" in matmul["message"]
    assert record["gpu"] is True and record["passed"] is False


def test_ctrl_c_removes_the_container(project, bases, cpu_image, docker_client, tmp_path):
    proc = start(project, "test", "--cuda", "cpu", "--image", cpu_image, "--out", str(tmp_path), *bases)
    try:
        deadline = time.monotonic() + 120
        while not leftover_containers(docker_client, cpu_image):
            assert proc.poll() is None and time.monotonic() < deadline, "no test container appeared"
            time.sleep(0.2)
        time.sleep(3)  # the suite is running now
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not leftover_containers(docker_client, cpu_image)


def test_missing_image_is_refused_before_anything_runs(project, bases):
    result = cli(project, "test", "--cuda", "cpu", "--image", "registry.invalid/nope:missing", *bases)
    assert result.returncode == 2
    assert "no image registry.invalid/nope:missing on the engine" in result.stderr
    assert "Traceback" not in result.stderr


# --- negative images: each broken one is caught by its own check -------------------------------


@pytest.fixture(scope="module")
def pypi_index(cache_dir):
    """What a user gets from PyPI: its torch 2.14.1 (the CUDA build, no local label), numpy 2.4.1, requests."""
    index = LoopbackIndex(cache_dir / "index-pypi-negatives")
    marker = index.root / ".filled-negatives-1"
    if not marker.exists():
        index.files_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest",
               str(index.files_dir), "--python-version", "3.11", "--implementation", "cp",
               *(f"--platform={p}" for p in WHEEL_PLATFORMS), "torch==2.14.1", "numpy==2.4.1", "requests==2.34.2"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise StandinError(result.stderr[-2000:])
        marker.touch()
    with index:
        yield index


NEGATIVES = {
    # name: (Dockerfile lines after FROM, the check that must fail, what its message must say)
    "pypi-torch": (
        "RUN PIP_CONSTRAINT= pip install --no-deps --index-url {index} torch==2.14.1",
        "test_torch_distribution_is_the_exact_pin",
        "expected torch 2.13.0+cpu (the cell's pin, local label included), found distribution torch 2.14.1",
    ),
    "numpy-moved": (
        "RUN PIP_CONSTRAINT= pip install --no-deps --index-url {index} numpy==2.4.1",
        "test_installed_set_is_torch_stage_plus_lock",
        "different: numpy: expected {numpy}, found 2.4.1",
    ),
    "broken-requirement": (
        "RUN pip install --no-deps --index-url {index} requests==2.34.2",
        "test_pip_check",
        "requests 2.34.2 requires",
    ),
    "wrong-label": (
        "LABEL io.gpumatrix.torch=2.4.1+cu124",
        "test_labels",
        "io.gpumatrix.torch: expected '2.13.0+cpu', found '2.4.1+cu124'",
    ),
}


def build_derived(client, base_id: str, lines: str, tag: str) -> None:
    dockerfile = f"FROM {base_id}\n{lines}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    for chunk in client.api.build(fileobj=buf, custom_context=True, tag=tag, network_mode="host", rm=True,
                                  forcerm=True, decode=True):
        assert "error" not in chunk, chunk


@pytest.mark.parametrize("name", list(NEGATIVES))
def test_broken_image_is_caught_by_its_own_check(name, project, bases, cpu_image, pypi_index, docker_client, tmp_path):
    lines, check, message = NEGATIVES[name]
    lock = (project / "locks" / f"{CELL}.txt").read_text()
    numpy = re.search(r"^numpy==(\S+)", lock, re.MULTILINE).group(1)
    assert numpy != "2.4.1", "the lock already has numpy 2.4.1: pick another version to move to"
    base = docker_client.images.get(cpu_image)
    tag = f"gpumatrix-negative:{name}-{base.id[7:19]}"
    try:
        build_derived(docker_client, base.id, lines.format(index=pypi_index.url), tag)
        result = cli(project, "test", "--cuda", "cpu", "--image", tag, "--out", str(tmp_path), *bases)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr
        record, cases = results(tmp_path)
        assert record["passed"] is False and record["image"] == tag
        failed = {n for n, c in cases.items() if c["outcome"] in ("failed", "error")}
        assert check in failed, (failed, result.stdout[-3000:])
        assert message.format(numpy=numpy) in cases[check]["message"], cases[check]["message"]
        xml = (tmp_path / f"{CELL}.xml").read_text()
        assert check in xml
        assert message.format(numpy=numpy).replace("'", "&apos;") in xml or message.format(numpy=numpy) in xml
        assert f"{check}: " in result.stderr  # the CLI names the failing check
        if name == "wrong-label":
            assert failed == {"test_labels"}, failed
        print(f"{name}: caught by {sorted(failed)}")
        assert not leftover_containers(docker_client, tag)
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


def test_wrong_label_and_env_fail_although_the_tools_own_expectations_agree(project, bases, cpu_image, docker_client,
                                                                           tmp_path):
    """The metadata checks state the labels and env from the cell's facts. render.labels and imagetest.RUNTIME_ENV,
    which wrote the image's labels and env, also write the expectations' "labels" and "env"; a mistake there is in
    both. Here the expectations are made to agree with a broken image, and its checks must still fail."""
    base = docker_client.images.get(cpu_image)
    tag = f"gpumatrix-negative:label-and-env-{base.id[7:19]}"
    try:
        build_derived(docker_client, base.id, "LABEL io.gpumatrix.torch=2.4.1+cu124\nENV PYTHONUNBUFFERED=0", tag)
        result = cli(project, "test", "--cuda", "cpu", "--image", tag, "--out", str(tmp_path), *bases)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr
        expect = json.loads((tmp_path / f"{CELL}.expect.json").read_text())
        image = docker_client.images.get(tag)
        # what a renderer with the image's mistakes would have written
        expect["labels"] = {k: image.labels[k] for k in expect["labels"]}
        expect["env"]["PYTHONUNBUFFERED"] = "0"
        assert expect["labels"]["io.gpumatrix.torch"] == "2.4.1+cu124"
        agreeing = tmp_path / "agreeing.expect.json"
        agreeing.write_text(json.dumps(expect))
        with engine.container(docker_client, image.id, type("Cell", (), {"name": CELL})(), "imagetest") as box:
            code = imagetest.run_suite(f"docker://{box.id}", agreeing, tmp_path / "agreeing.xml")
        assert code == 1
        cases = {c["name"]: c for c in imagetest.parse_junit(tmp_path / "agreeing.xml")}
        failed = {n for n, c in cases.items() if c["outcome"] in ("failed", "error")}
        assert failed == {"test_labels", "test_env"}, failed
        assert "io.gpumatrix.torch: expected '2.13.0+cpu', found '2.4.1+cu124'" in cases["test_labels"]["message"]
        assert "PYTHONUNBUFFERED: expected '1', found '0'" in cases["test_env"]["message"]
        assert not leftover_containers(docker_client, image.id)
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


# --- slow: the CUDA 13.0 cell with the real CUDA build of torch 2.14.1 ------------------------------
