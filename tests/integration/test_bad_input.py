"""Bad input that only the real components can reveal: exit 2, one clear line, nothing written."""

from __future__ import annotations

from support.cli import cli
from support.standins import STANDIN_CELL as CELL
from support.standins import standin_flags


def test_a_package_that_does_not_exist_names_the_in_line(tmp_project, stand_ins):
    project = tmp_project
    layer = project / "requirements" / "cpu.in"
    lines = layer.read_text().splitlines()
    layer.write_text("\n".join(lines + ["gpumatrix-no-such-package-4711>=1"]) + "\n")
    before = (project / "locks" / f"{CELL}.txt").read_bytes()
    result = cli(project, "lock", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 2, result.stderr
    assert f"requirements/cpu.in:{len(lines) + 1}: gpumatrix-no-such-package-4711: no such package" in result.stderr
    assert "Traceback" not in result.stderr
    assert (project / "locks" / f"{CELL}.txt").read_bytes() == before


def test_an_index_that_does_not_answer_is_refused_before_building(tmp_project, standin_base, docker_client):
    project = tmp_project
    result = cli(project, "build", "--cuda", "cpu",
                 *standin_flags(standin_base, "http://user:s3cret@127.0.0.1:9/simple"))
    assert result.returncode == 2, result.stderr
    assert "the torch index does not answer at http://***@127.0.0.1:9/simple/torch/" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert not (project / "out" / "build-report.json").exists()
