"""The image's metadata through the engine's inspect: labels, NVIDIA_REQUIRE_CUDA, env.

What they must be is stated in checklib from the cell's facts (expect["cell_facts"]: name, CUDA, Python, torch pin,
variant, archs, driver floor, bases, the runtime base's own env). The expectations' "labels" and "env" are not read
here: gpumatrix.render.labels and imagetest.RUNTIME_ENV wrote them, and the same code wrote the image's labels and
env, so a mistake there would be expected instead of caught.
"""

import pytest

from checklib import expected_env, expected_labels, expected_require_cuda


@pytest.fixture(scope="module")
def cell(expect) -> dict:
    facts = expect.get("cell_facts")
    if not facts:
        pytest.fail("expected the cell's facts (cell_facts) in the expectations, found none: write the expectations "
                    "again with `python build.py test`")
    return facts


@pytest.fixture(scope="module")
def config(image_mode, expect) -> dict:
    if not expect.get("inspect"):
        pytest.skip("no inspect attrs in the expectations (not a docker run)")
    return expect["inspect"]["Config"]


@pytest.fixture(scope="module")
def env(config) -> dict:
    return dict(e.split("=", 1) for e in config.get("Env") or [])


def test_labels(expect, cell, config):
    want = expected_labels(cell, expect.get("lock_text"))
    found = config.get("Labels") or {}
    wrong = [f"{k}: expected {v!r}, found {found.get(k, '<missing>')!r}" for k, v in want.items() if found.get(k) != v]
    assert not wrong, f"expected the cell's labels, found {len(wrong)} different: " + "; ".join(wrong)


def test_nvidia_require_cuda(cell, env):
    known, want, why = expected_require_cuda(cell)
    if not known:
        pytest.skip(f"cannot tell the expected NVIDIA_REQUIRE_CUDA: {why}")
    found = env.get("NVIDIA_REQUIRE_CUDA")
    assert found == want, f"expected NVIDIA_REQUIRE_CUDA={want!r} ({why}), found {found!r}"


def test_env(cell, env):
    wrong = [f"{k}: expected {'<unset>' if v is None else repr(v)}, found {env.get(k, '<unset>')!r}"
             for k, v in expected_env(cell).items() if env.get(k) != v]
    path = env.get("PATH", "")
    if not path.startswith("/opt/venv/bin:"):
        wrong.append(f"PATH: expected /opt/venv/bin first, found {path!r}")
    assert not wrong, "expected the rendered environment, found: " + "; ".join(wrong)
