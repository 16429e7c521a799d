"""The image suite: pytest-testinfra checks of one image (docker backend) or one environment (local backend).

Run it through `python build.py test` / `make test-image`, which write the expectations file and start and
remove the container. By hand:

    pytest gpumatrix/imagechecks --hosts=docker://<container> --expect out/tests/<cell>.expect.json
    pytest gpumatrix/imagechecks --hosts=local:// --expect <file>      # this host's Python (expect["python_exe"])

The expectations file (JSON, written by gpumatrix.imagetest) says what the image's name promises: the cell's
Python, torch pin, companions, wheel CUDA, target archs, the lock (torch-stage lines and pinned requirements),
labels, NVIDIA_REQUIRE_CUDA, env, the engine's inspect attrs, and whether GPU checks are required.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # checklib, probe

PROBE = (HERE / "probe.py").read_text()


def pytest_addoption(parser):
    parser.addoption("--expect", metavar="PATH", default=None,
                     help="JSON file of what the image promises (written by `python build.py test`)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a visible GPU (skipped without one unless --gpu was asked)")
    config.addinivalue_line("markers", "image_only: checks the image itself (labels, env, files); skipped for --local")
    try:
        expect = config.getoption("--expect")
    except ValueError:  # collected as part of a larger run: our option was never registered
        expect = None
    if not expect:
        raise pytest.UsageError(
            "the image checks (gpumatrix/imagechecks) check one built image and need --expect PATH (the cell's expectations); "
            "run it with `python build.py test [--cuda ..]` or `make test-image CUDA=..`, "
            "not as part of `pytest tests` (make test runs tests/unit and tests/integration only)"
        )


@pytest.fixture(scope="session")
def expect(pytestconfig) -> dict:
    path = pathlib.Path(pytestconfig.getoption("--expect"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--expect {path}: cannot read the expectations: {exc}") from None


@pytest.fixture(scope="session")
def py(expect) -> str:
    """The interpreter of the environment under test, quoted for the shell."""
    return shlex.quote(expect.get("python_exe") or "python")


@pytest.fixture(scope="module")
def facts(host, py) -> dict:
    """One run of probe.py in the environment under test: versions, distributions, torch's build."""
    result = host.run(f"{py} -c {shlex.quote(PROBE)}")
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("GPUMATRIX-PROBE ")), None)
    if result.rc != 0 or line is None:
        pytest.fail(f"expected the probe to run with {py}, found exit code {result.rc}: {result.stderr[-2000:]}")
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture(scope="module")
def torch_facts(facts) -> dict:
    t = facts["torch"]
    if "error" in t:
        pytest.fail(f"expected `import torch` to work, found {t['error']}")
    return t


@pytest.fixture(scope="module")
def installed(facts) -> dict[str, list[str]]:
    """{canonical name: [version, ...]} of every distribution importlib.metadata finds (pip excluded)."""
    from checklib import canonical

    dists = facts["distributions"]
    if isinstance(dists, dict):
        pytest.fail(f"expected the distribution list, found {dists['error']}")
    out: dict[str, list[str]] = {}
    for d in dists:
        out.setdefault(canonical(d["name"]), []).append(d["version"])
    out.pop("pip", None)
    return out


@pytest.fixture(scope="session")
def image_mode(expect):
    if expect.get("mode") == "local":
        pytest.skip("checks the image itself (labels, env, files): not for --local")
    return True


@pytest.fixture(scope="module")
def gpu(expect, facts) -> dict:
    """The first visible GPU; skipped with the reason when none is, failed when --gpu asked for one."""
    t = facts["torch"]
    available = isinstance(t, dict) and t.get("cuda_available") is True
    wanted = expect.get("gpu")
    if available:
        return t["devices"][0]
    why = t.get("error") if isinstance(t, dict) and "error" in t else f"torch.cuda.is_available() is {t.get('cuda_available')}"
    if wanted is True:
        pytest.fail(f"expected a visible GPU (--gpu), found none: {why}")
    if wanted is False:
        pytest.skip("GPU checks off: --no-gpu, or the engine has no nvidia runtime (--gpu forces them)")
    pytest.skip(f"no GPU visible ({why}); --gpu makes this a failure")

