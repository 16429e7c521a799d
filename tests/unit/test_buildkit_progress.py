"""How buildx's plain progress becomes steps (the same report as a classic build), and which builder a run gets.

The progress text is buildx 0.13's plain output as this machine's engine (BuildKit 0.8, docker driver) printed it,
with two stages interleaved as BuildKit runs them in parallel.
"""

from __future__ import annotations

import pytest

from gpumatrix import buildkit, engine
from gpumatrix.errors import UsageError

PROGRESS = """\
#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 235B done
#1 DONE 0.0s

#4 [base 1/2] FROM docker.io/library/gpumatrix-standin:bookworm
#4 CACHED

#5 [base 2/2] RUN python3.11 -m venv /opt/venv
#5 DONE 8.6s

#6 [torch 1/2] RUN --mount=type=cache,id=gpumatrix-pip,target=/root/.cache/pip pip install torch==2.13.0+cpu
#6 0.412 Looking in indexes: http://user:hunter2@127.0.0.1:9/cpu
#7 [runtime 2/5] COPY app.lock /opt/gpumatrix/app.lock
#7 DONE 0.1s

#6 [torch 1/2] RUN --mount=type=cache,id=gpumatrix-pip,target=/root/.cache/pip pip install torch==2.13.0+cpu
#6 12.70 Successfully installed torch-2.13.0+cpu
#6 DONE 31.0s

#9 exporting to image
#9 writing image sha256:4b62 done
#9 DONE 0.0s
"""

FAILED = """\
#4 [base 1/1] FROM docker.io/library/img
#4 DONE 0.0s

#6 [two 1/1] RUN echo two && sleep 1 && false
#6 0.411 two
#6 ERROR: executor failed running [/bin/sh -c echo two && sleep 1 && false]: exit code: 1
------
 > [two 1/1] RUN echo two && sleep 1 && false:
0.411 two
------
ERROR: failed to solve: executor failed running [/bin/sh -c echo two && sleep 1 && false]: exit code: 1
"""


def follow(text: str):
    outcome = engine.BuildOutcome("cell", "failed", ["t"])
    heard = []
    progress = buildkit._follow(iter(text.splitlines(keepends=True)), outcome, lambda *a: heard.append(a))
    return outcome, progress, heard


def test_each_stage_step_is_a_step_with_its_own_time_and_cache_hit():
    outcome, _, _ = follow(PROGRESS)
    assert [(s.stage, s.number, s.total) for s in outcome.steps] == [
        ("base", 1, 2), ("base", 2, 2), ("torch", 1, 2), ("runtime", 2, 5)]
    assert [s.cached for s in outcome.steps] == [True, False, False, False]
    assert [s.seconds for s in outcome.steps] == [0.0, 8.6, 31.0, 0.1]
    assert outcome.cache_hits == 1 and outcome.layer_steps == 3  # FROM makes no layer


def test_interleaved_output_goes_to_its_own_step_without_the_timestamp_or_a_password():
    outcome, _, heard = follow(PROGRESS)
    torch = outcome.steps[2]
    assert torch.output == ["Looking in indexes: http://***@127.0.0.1:9/cpu",
                            "Successfully installed torch-2.13.0+cpu"]
    assert outcome.steps[3].output == [] and outcome.steps[0].output == ["CACHED"]
    assert "hunter2" not in repr(heard)
    assert [a[1].instruction.split()[0] for a in heard if a[2] is None] == ["FROM", "RUN", "RUN", "COPY"]


def test_a_failed_step_is_named_with_its_output_and_buildkits_message(monkeypatch):
    monkeypatch.setattr(buildkit, "_engine_gone", lambda: False)
    outcome, progress, _ = follow(FAILED)
    text = buildkit._failure_text(outcome, progress, 1)
    assert text.startswith("step 1/1 (two) failed: RUN echo two && sleep 1 && false\ntwo\n")
    assert text.endswith("ERROR: failed to solve: executor failed running [/bin/sh -c echo two && sleep 1 && false]: "
                         "exit code: 1")


def test_an_engine_that_went_away_is_said_so(monkeypatch):
    monkeypatch.setattr(buildkit, "_engine_gone", lambda: True)
    outcome, progress, _ = follow(FAILED)
    assert buildkit._failure_text(outcome, progress, 1).startswith("the Docker engine stopped answering during the build")


@pytest.mark.parametrize("text,version", [
    ("github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3\n", (0, 13, 1)),
    ("github.com/docker/buildx v0.17.1 257815a\n", (0, 17, 1)),
    ("github.com/docker/buildx v0.9.1-docker ed00243\n", (0, 9, 1)),
    ("nonsense\n", None),
])
def test_buildx_version_is_read_from_what_buildx_prints(text, version):
    assert buildkit.buildx_version(text) == version


def test_classic_when_asked_and_when_the_network_needs_it():
    assert buildkit.choose("classic").builder == "classic"
    choice = buildkit.choose(None, network="my-bridge")
    assert choice.builder == "classic" and "my-bridge" in choice.why
    with pytest.raises(UsageError, match="--builder buildkit: BuildKit builds in the network modes"):
        buildkit.choose("buildkit", network="my-bridge")


def test_buildkit_asked_for_without_buildx_is_the_users_to_fix(monkeypatch):
    monkeypatch.setattr(buildkit, "buildx_problem", lambda: "docker buildx is not installed")
    with pytest.raises(UsageError, match="builder buildkit was asked for, but docker buildx is not installed"):
        buildkit.choose("buildkit")
    fallback = buildkit.choose(None)
    assert fallback.builder == "classic" and fallback.why == "falling back: docker buildx is not installed"


def test_both_builders_give_a_cell_one_content_tag_and_buildx_gets_no_build_argument_value(project, expand_file):
    from dataclasses import replace
    from pathlib import Path

    from gpumatrix.render import environment
    from gpumatrix.request import BuildOverrides, request_for

    cell = next(c for c in expand_file(project / "matrix.yaml").cells if c.layers)
    env = environment(project / "templates")
    secret_url = "https://bot:t0ken-xyz@pytorch.internal/whl/{variant}"
    requests = {b: request_for(env, cell, "gpu-images", b"lock\n", BuildOverrides(index_url=secret_url), builder=b)
                for b in ("buildkit", "classic")}
    assert requests["buildkit"].content_tag == requests["classic"].content_tag
    assert "--mount=type=cache" in requests["buildkit"].dockerfile and "--mount" not in requests["classic"].dockerfile
    req = replace(requests["buildkit"], cache_from=("127.0.0.1:5000/gpu-images:" + cell.name,))
    command = buildkit._command(req, "/ctx", Path("/ctx/iid"))
    assert "t0ken-xyz" not in " ".join(command)
    assert command.count("--build-arg") == len(req.build_args) and "TORCH_INDEX_URL" in command  # names only
    assert command[command.index("--cache-to") + 1] == "type=inline"
    assert f"type=registry,ref=127.0.0.1:5000/gpu-images:{cell.name}" in command
    assert buildkit._environment(req)["TORCH_INDEX_URL"].startswith("https://bot:t0ken-xyz@pytorch.internal/whl/")
