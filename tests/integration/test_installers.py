"""uv (the default) and pip install the app layer with the same guarantees, in the runtime stage (the default) or in
an `app` stage on the devel base (`app_stage: devel`): the same packages, hashes enforced, the torch stage left alone,
bytecode compiled, an incomplete lock refused, no installer left behind. Built on a real engine from the CPU cell's
layer plus a package that depends on a torch-stage package (typing-inspection needs typing_extensions) and one that
depends on a package of the lock (python-dateutil needs tzdata), locked for real.

Tests in this module run in order and share one copy of the project.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from support.cli import cli
from support.projects import WITH_LOCKS, copy_project
from support.reports import build_report
from support.standins import STANDIN_CELL as CELL

SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"
INSTALLERS = ("uv", "pip")
# name -> (installer, app_stage); "default" leaves the key out of the matrix
VARIANTS = {"uv": ("default", "default"), "pip": ("pip", "default"), "uv-devel": ("default", "devel")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("installers"), WITH_LOCKS)


def use_settings(project: Path, installer: str = "default", app_stage: str = "default") -> None:
    """`installer:` and `app_stage:` under the matrix's settings; "default" leaves the key out."""
    matrix = project / "matrix.yaml"
    text = re.sub(r"^  (installer|app_stage): \w+\n", "", matrix.read_text(), flags=re.MULTILINE)
    for key, value in (("installer", installer), ("app_stage", app_stage)):
        if value != "default":
            text = text.replace("\nsettings:\n", f"\nsettings:\n  {key}: {value}\n", 1)
    matrix.write_text(text)


def image_of(project: Path) -> str:
    return build_report(project, "report.json")[CELL]["image_id"]


def build(project: Path, stand_ins: list[str]) -> subprocess.CompletedProcess:
    return cli(project, "build", "--cuda", "cpu", *stand_ins, "--report", str(project / "report.json"))


@pytest.fixture(scope="module")
def locked(project, stand_ins) -> str:
    """The cell's lock with typing-inspection and python-dateutil added; typing_extensions stays a torch-stage line."""
    layer = project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "typing-inspection\npython-dateutil\n")
    result = cli(project, "lock", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 0, result.stderr[-3000:]
    lock = (project / "locks" / f"{CELL}.txt").read_text()
    assert re.search(r"^typing-inspection==", lock, re.MULTILINE) and re.search(r"^tzdata==", lock, re.MULTILINE)
    assert re.search(r"^# torch-stage: typing_extensions==", lock, re.MULTILINE)
    return lock


@pytest.fixture(scope="module")
def images(project, stand_ins, locked, docker_client) -> dict[str, str]:
    """The cell built once per variant (later builds reuse the base and torch stages)."""
    built = {}
    for name, (installer, app_stage) in VARIANTS.items():
        use_settings(project, installer, app_stage)
        result = build(project, stand_ins)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        built[name] = image_of(project)
    use_settings(project)
    return built


def test_the_default_installer_is_uv_in_the_runtime_stage(project):
    use_settings(project)
    dockerfile = cli(project, "render")
    assert dockerfile.returncode == 0, dockerfile.stderr
    text = (project / "docker" / CELL / "Dockerfile").read_text()
    assert "uv pip install" in text and "pip install --no-cache-dir --require-hashes" not in text
    assert "AS app" not in text and text.index("AS runtime") < text.index("uv pip install")


def test_both_installers_give_the_same_packages(images, locked, containers):
    freezes = {name: containers.run_in(image, "pip freeze --all") for name, image in images.items()}
    assert freezes["uv"] == freezes["pip"] == freezes["uv-devel"]
    for pin in re.findall(r"^([A-Za-z0-9_.-]+==\S+) \\$", locked, re.MULTILINE):
        assert pin.lower() in freezes["uv"].lower(), pin
    assert "torch==2.13.0+cpu" in freezes["uv"]


def test_each_image_was_installed_by_its_installer(images, containers):
    for name, image in images.items():
        installer = containers.run_in(image, f"cat {SITE_PACKAGES}/tqdm-*.dist-info/INSTALLER")
        assert installer.strip() == name.removesuffix("-devel")
        torch_installer = containers.run_in(image, f"cat {SITE_PACKAGES}/torch-*.dist-info/INSTALLER")
        assert torch_installer.strip() == "pip", "the torch stage is pip's, whatever installs the app layer"


@pytest.mark.parametrize("variant", ["uv", "uv-devel"])
def test_uv_compiles_the_app_layer_bytecode_and_leaves_no_trace(variant, images, docker_client, containers):
    image = images[variant]
    pyc = containers.run_in(image, f"ls {SITE_PACKAGES}/tqdm/__pycache__ | wc -l")
    assert int(pyc) > 5
    leftovers = containers.run_in(image, "ls -d /opt/uv /tmp/uv /tmp/* /opt/app-layer /opt/venv/.lock "
                                         "/opt/venv/bin/uv 2>/dev/null; find /root/.cache -mindepth 1 -not -type d "
                                         "2>/dev/null; true")
    assert leftovers.strip() == ""  # BuildKit's cache mounts leave their empty mount points, nothing in them
    # uv is in no layer of the image, not even one that a later layer hides
    history = docker_client.images.get(image).history()
    assert not [step["CreatedBy"] for step in history if "uv==" in step["CreatedBy"] and step["Size"] > 1_000_000
                and "rm -r /tmp/uv" not in step["CreatedBy"]]


def block_of(lock: str, name: str) -> str:
    return re.search(rf"^{name}==.*?(?=^\S|\Z)", lock, re.MULTILINE | re.DOTALL).group(0)


def resigned(lock: str) -> str:
    """The lock with its `# body-sha256:` recomputed (sha256 of the bytes after the header's empty line), as someone
    who edits a lock and its header together would leave it: gpumatrix's own check passes, so what these tests see
    is the install's check in the image, the second line of defence."""
    header, _, body = lock.partition("\n\n")
    digest = hashlib.sha256(body.encode()).hexdigest()
    header, count = re.subn(r"^# body-sha256: [0-9a-f]{64}$", f"# body-sha256: {digest}", header, flags=re.MULTILINE)
    assert count == 1, "the lock has no body-sha256 line to recompute"
    return f"{header}\n\n{body}"


def build_with_lock(project: Path, stand_ins: list[str], variant: str, lock: str) -> subprocess.CompletedProcess:
    path = project / "locks" / f"{CELL}.txt"
    original = path.read_text()
    use_settings(project, *VARIANTS[variant])
    try:
        path.write_text(resigned(lock))
        return build(project, stand_ins)
    finally:
        path.write_text(original)
        use_settings(project)


def failed_stage(variant: str) -> str:
    return "(app) failed" if variant.endswith("-devel") else "(runtime) failed"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tampered_hash_fails_the_build(variant, project, stand_ins, locked, images):
    tqdm = block_of(locked, "tqdm")
    result = build_with_lock(project, stand_ins, variant,
                             locked.replace(tqdm, re.sub(r"[0-9a-f]{64}", "f" * 64, tqdm)))
    assert result.returncode == 1
    assert failed_stage(variant) in result.stderr, result.stderr[-2000:]
    message = {"pip": "DO NOT MATCH THE HASHES", "uv": "Hash mismatch", "uv-devel": "Hash mismatch"}[variant]
    assert message in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_a_lock_missing_a_dependency_fails_the_build(installer, project, stand_ins, locked, images):
    result = build_with_lock(project, stand_ins, installer, locked.replace(block_of(locked, "tzdata"), ""))
    assert result.returncode == 1
    assert failed_stage(installer) in result.stderr, result.stderr[-2000:]
    # pip refuses the unpinned, unhashed dependency; uv installs exactly the lock (--no-deps) and `pip check` names
    # the gap
    message = {"pip": r"--require-hashes mode", "uv": r"python-dateutil \S+ requires tzdata"}[installer]
    assert re.search(message, result.stderr) and "tzdata" in result.stderr, result.stderr[-4000:]


# An sdist with a C extension and no wheel at all (pycrypto 2.6.1, 2013), as PyPI serves it, with its hash.
C_SDIST = "pycrypto==2.6.1 \\\n    --hash=sha256:f2ce1e989b272cfcb677616763e0a2e7ec659effa67a88aa92b3a65528f60a3c\n"


@pytest.mark.parametrize("installer", INSTALLERS)
def test_a_package_that_must_be_compiled_fails_on_the_runtime_base_with_a_hint(installer, project, stand_ins, locked,
                                                                              images):
    result = build_with_lock(project, stand_ins, installer, locked + C_SDIST)
    assert result.returncode == 1
    assert "(runtime) failed" in result.stderr
    # pycrypto's build runs ./configure first, which finds no C compiler on the runtime base; the failed step's tail
    # ends with the build's "autoconf error" (uv names the package further up), then the hint
    assert "RuntimeError: autoconf error" in result.stderr, result.stderr[-4000:]
    assert "if a package failed to build from source, set app_stage: devel for this cell" in result.stderr
