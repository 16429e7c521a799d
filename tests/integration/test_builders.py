"""Which builder a build gets: BuildKit where docker buildx answers, the classic builder where it does not (said in
one line), and exit 2 when BuildKit was asked for and cannot build."""

from __future__ import annotations

from support.cli import cli
from support.standins import STANDIN_CELL as CELL

# A builder buildx does not know: `docker buildx inspect` fails, as it does where the current builder was removed.
NO_BUILDER = {"BUILDX_BUILDER": "gpumatrix-no-such-builder"}


def test_buildkit_is_the_default_where_buildx_answers(tmp_project, buildx, stand_ins):
    result = cli(tmp_project, "build", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "builder: buildkit (docker buildx answers)" in result.stderr


def test_a_buildx_without_a_working_builder_falls_back_to_classic_with_the_reason(tmp_project, buildx, stand_ins):
    result = cli(tmp_project, "build", "--cuda", "cpu", *stand_ins, env=NO_BUILDER)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("builder: "))
    assert line.startswith("builder: classic (falling back: docker buildx has no working builder")
    assert "gpumatrix-no-such-builder" in line


def test_buildkit_asked_for_without_a_working_builder_is_exit_2_before_anything_builds(tmp_project, buildx,
                                                                                       stand_ins):
    result = cli(tmp_project, "build", "--cuda", "cpu", "--builder", "buildkit", "--force", *stand_ins,
                 env=NO_BUILDER)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "builder buildkit was asked for, but docker buildx has no working builder" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_project / "out" / "build-report.json").exists()
    assert CELL in result.stderr  # "building <cell>: ..." came first; nothing after it was built


def test_a_builder_that_is_no_builder_is_refused_in_one_line(tmp_project):
    result = cli(tmp_project, "build", "--cuda", "cpu", "--builder", "kaniko")
    assert result.returncode == 2
    assert "'kaniko' is no builder: buildkit or classic" in result.stderr and "Traceback" not in result.stderr
    result = cli(tmp_project, "build", "--cuda", "cpu", env={"GPUMATRIX_BUILDER": "kaniko"})
    assert result.returncode == 2 and "$GPUMATRIX_BUILDER" in result.stderr
