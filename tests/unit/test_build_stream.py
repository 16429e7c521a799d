"""How a classic-builder stream becomes steps: numbering, stages, cache hits, per-step time, the failure text."""

from __future__ import annotations

import time

from gpumatrix import engine

PAUSE = 0.3


def stream(*chunks):
    """Chunks as the SDK decodes them; a float is a pause (the engine working on the current step)."""
    for chunk in chunks:
        if isinstance(chunk, float):
            time.sleep(chunk)
        else:
            yield chunk


def follow(*chunks):
    outcome = engine.BuildOutcome("cell", "failed", ["t"])
    image_id = engine._follow(stream(*chunks), outcome, lambda *_: None)
    return outcome, image_id


def test_each_step_is_timed_from_its_header_to_the_next():
    outcome, image_id = follow(
        {"stream": "Step 1/3 : FROM img AS base\n"},
        {"stream": " ---> 1234\n"},
        {"stream": "Step 2/3 : RUN pip install torch\n"},
        PAUSE,
        {"stream": " ---> Running in abc\n"},
        PAUSE,
        {"stream": "Step 3/3 : LABEL a=b\n"},
        {"stream": " ---> Using cache\n"},
        {"aux": {"ID": "sha256:feed"}},
    )
    assert image_id == "sha256:feed"
    first, slow, last = outcome.steps
    assert slow.seconds >= 2 * PAUSE - 0.05, slow
    assert first.seconds < PAUSE and last.seconds < PAUSE
    assert [s.stage for s in outcome.steps] == ["base", "base", "base"]
    assert [s.cached for s in outcome.steps] == [False, False, True]


def test_a_failed_step_keeps_its_time_and_names_itself():
    outcome, image_id = follow(
        {"stream": "Step 1/2 : FROM img AS torch\n"},
        {"stream": "Step 2/2 : RUN false\n"},
        PAUSE,
        {"stream": "boom\n"},
        {"error": "returned a non-zero code: 1", "errorDetail": {"message": "returned a non-zero code: 1"}},
    )
    assert image_id is None
    assert outcome.steps[-1].seconds >= PAUSE - 0.05
    assert outcome.error.startswith("step 2/2 (torch) failed: RUN false\nboom")
