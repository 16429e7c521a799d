"""The image's metadata through the engine's inspect: labels, NVIDIA_REQUIRE_CUDA, env."""

import pytest


@pytest.fixture(scope="module")
def config(image_mode, expect) -> dict:
    if not expect.get("inspect"):
        pytest.skip("no inspect attrs in the expectations (not a docker run)")
    return expect["inspect"]["Config"]


@pytest.fixture(scope="module")
def env(config) -> dict:
    return dict(e.split("=", 1) for e in config.get("Env") or [])


def test_labels(expect, config):
    found = config.get("Labels") or {}
    wrong = [f"{k}: expected {v!r}, found {found.get(k, '<missing>')!r}" for k, v in expect["labels"].items()
             if found.get(k) != v]
    assert not wrong, f"expected the cell's labels, found {len(wrong)} different: " + "; ".join(wrong)


def test_nvidia_require_cuda(expect, env):
    why = expect.get("nvidia_require_cuda_why", "")
    if not expect.get("nvidia_require_cuda_known", True):
        pytest.skip(f"cannot tell the expected NVIDIA_REQUIRE_CUDA: {why}")
    want = expect.get("nvidia_require_cuda")
    found = env.get("NVIDIA_REQUIRE_CUDA")
    assert found == want, f"expected NVIDIA_REQUIRE_CUDA={want!r} ({why}), found {found!r}"


def test_env(expect, env):
    wrong = [f"{k}: expected {v!r}, found {env.get(k, '<unset>')!r}" for k, v in expect["env"].items() if env.get(k) != v]
    path = env.get("PATH", "")
    if not path.startswith("/opt/venv/bin:"):
        wrong.append(f"PATH: expected /opt/venv/bin first, found {path!r}")
    assert not wrong, "expected the rendered environment, found: " + "; ".join(wrong)
