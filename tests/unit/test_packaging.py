"""What a user who installs gpumatrix gets: the wheel holds the image checks and the data, not the test tooling, and
pyproject.toml declares every third-party package the installed code imports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
IMAGE_CHECKS = {"conftest.py", "checklib.py", "probe.py", "test_abi.py", "test_gpu.py", "test_hygiene.py",
                "test_kernels.py", "test_metadata.py", "test_packages.py", "test_versions.py"}
RUN_IN_THE_IMAGE = {Path("imagechecks/probe.py")}  # sent to the image's Python (torch is there, not in the tool's)


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """Built from a copy of the sources, so no build/ left in the checkout can add files to it."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    shutil.copy2(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "gpumatrix", source / "gpumatrix", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    (wheel,) = out.glob("gpumatrix-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_wheel_ships_the_image_checks_and_the_data(wheel_files):
    assert {f"gpumatrix/imagechecks/{name}" for name in IMAGE_CHECKS} <= wheel_files
    assert {"gpumatrix/data/compat.yaml", "gpumatrix/data/gpus.yaml", "gpumatrix/cli.py"} <= wheel_files


def test_the_wheel_holds_no_test_or_demo_tooling(wheel_files):
    assert not [f for f in wheel_files if f.startswith(("devtools/", "tests/", "bench/", "gpumatrix/standins",
                                                        "gpumatrix/demo"))]


def _third_party_imports(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*.py"):
        if path.relative_to(root) in RUN_IN_THE_IMAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    local = {p.stem for p in (root / "imagechecks").glob("*.py")} | {"gpumatrix", "__future__"}
    return {name for name in found - local if name not in sys.stdlib_module_names}


def test_every_import_of_the_installed_code_is_a_declared_dependency():
    declared = {canonicalize_name(Requirement(r).name)
                for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = packages_distributions()
    imports = _third_party_imports(REPO / "gpumatrix")
    assert {"docker", "cyclonedx", "packageurl", "pytest"} <= imports  # the scan sees the imports at all
    undeclared = {name: providers.get(name) for name in imports
                  if not {canonicalize_name(d) for d in providers.get(name, [])} & declared}
    assert undeclared == {}
