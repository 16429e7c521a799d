"""The lock on a developer's machine and in CI: a relock keeps the committed pins, a conflict with the torch stage is
explained, `make image` makes a missing lock first (never under CI), and a torch stage that moved since the lock was
made is refused before the app layer is installed."""

from __future__ import annotations

import re

import pytest

from devtools.standins import LoopbackIndex, index_requirements
from support.cli import cli
from support.standins import STANDIN_CELL as CELL
from support.standins import STANDIN_LOCK, standin_flags

LOCK = f"locks/{CELL}.txt"
NOT_CI = {"CI": ""}


def pins(text: str) -> dict[str, str]:
    """name -> version of the `name==version` lines (body) and `# torch-stage:` lines (header), read here by hand."""
    body = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)}
    stage = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^# torch-stage: ([A-Za-z0-9._-]+)==(\S+)$", text,
                                                                   re.MULTILINE)}
    return {**{f"stage:{k}": v for k, v in stage.items()}, **body}


def test_relock_from_the_committed_lock_pins_the_same_versions(tmp_project, stand_ins):
    committed = (tmp_project / LOCK).read_text()
    result = cli(tmp_project, "lock", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 0, result.stderr
    relocked = (tmp_project / LOCK).read_text()
    assert pins(relocked) == pins(committed)
    assert pins(committed)["stage:torch"] == "2.13.0+cpu" and "numpy" in pins(committed)


def use_resolver(project, resolver: str) -> None:
    matrix = project / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace("\nsettings:\n", f"\nsettings:\n  resolver: {resolver}\n", 1))


def hashes(text: str) -> dict[str, set[str]]:
    """name -> the sha256 digests of its `--hash` lines, read here by hand."""
    found: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[1]):
        name = block.split("==", 1)[0].lower()
        found[name] = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return found


def test_uv_and_pip_tools_with_no_lock_to_start_from_write_the_same_pins_and_hashes(tmp_project, stand_ins):
    """Both resolvers against the same PyPI at the same moment: the default (uv) and pip-tools agree."""
    lock, matrix = tmp_project / LOCK, tmp_project / "matrix.yaml"
    shipped = matrix.read_text()
    written = {}
    for resolver in ("pip-tools", "uv"):
        matrix.write_text(shipped)
        use_resolver(tmp_project, resolver)
        lock.unlink()
        result = cli(tmp_project, "lock", "--cuda", "cpu", *stand_ins)
        assert result.returncode == 0, result.stderr
        written[resolver] = lock.read_text()
    assert "\n# pip-tools: 7.6.2\n" in written["pip-tools"] and "\n# uv: 0.13.9\n" in written["uv"]
    assert pins(written["uv"]) == pins(written["pip-tools"])
    assert hashes(written["uv"]) == hashes(written["pip-tools"])
    assert pins(written["uv"])["stage:torch"] == "2.13.0+cpu" and "numpy" in pins(written["uv"])
    assert all(hashes(written["uv"]).values())


@pytest.mark.parametrize("resolver", ["uv", "pip-tools"])
def test_a_conflict_the_resolver_finds_is_its_causes_as_bad_input(resolver, tmp_project, stand_ins):
    """datasets 4.0.0 caps fsspec at <=2025.3.0; the torch stage has fsspec 2026.9.0 from the torch index."""
    if resolver == "pip-tools":
        use_resolver(tmp_project, "pip-tools")
    layer = tmp_project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "datasets==4.0.0\n")
    before = (tmp_project / LOCK).read_bytes()
    result = cli(tmp_project, "lock", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {CELL}: the app layers cannot be resolved together with the torch stage:" in result.stderr
    causes = result.stderr.split("the torch stage:", 1)[1]
    assert "datasets" in causes and "fsspec" in causes and "torch_stage_pins" in causes
    assert (tmp_project / LOCK).read_bytes() == before


def test_a_pin_against_the_torch_stage_is_explained_as_bad_input(tmp_project, stand_ins):
    """The seed's NeMo case: an .in line pins fsspec to a version the torch stage does not install."""
    layer = tmp_project / "requirements" / "cpu.in"
    number = len(layer.read_text().splitlines()) + 1
    layer.write_text(layer.read_text() + "fsspec==2024.12.0\n")
    before = (tmp_project / LOCK).read_bytes()
    result = cli(tmp_project, "lock", "--cuda", "cpu", *stand_ins)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith(f"error: requirements/cpu.in:{number}:"))
    assert "fsspec==2024.12.0" in line and "fsspec 2026.9.0 from the torch index" in line
    assert (tmp_project / LOCK).read_bytes() == before


def test_image_makes_a_missing_lock_first_but_never_under_ci(tmp_project, stand_ins):
    (tmp_project / LOCK).unlink()
    refused = cli(tmp_project, "build", "--cuda", "cpu", *stand_ins, env={"CI": "true"})
    assert refused.returncode == 2, refused.stderr
    assert (f"{LOCK} is missing; run `make lock CUDA=cpu PYTHON=3.11 TORCH=2.13.0 FLAVOUR=none`"
            in refused.stderr)
    assert not (tmp_project / LOCK).exists()

    built = cli(tmp_project, "build", "--cuda", "cpu", *stand_ins, env=NOT_CI)
    assert built.returncode == 0, built.stderr
    assert f"locking {CELL}: no lock yet; commit {LOCK}" in built.stderr
    assert pins((tmp_project / LOCK).read_text())["stage:torch"] == "2.13.0+cpu"


def test_a_torch_stage_that_moved_since_the_lock_is_refused(tmp_project, stand_ins):
    """The index moved: the lock says the torch stage had fsspec 2024.6.1, the index now serves 2026.9.0."""
    lock = tmp_project / LOCK
    text = lock.read_text()
    assert "# torch-stage: fsspec==2026.9.0\n" in text
    lock.write_text(text.replace("# torch-stage: fsspec==2026.9.0\n", "# torch-stage: fsspec==2024.6.1\n"))
    result = cli(tmp_project, "build", "--cuda", "cpu", *stand_ins, env=NOT_CI)
    assert result.returncode == 1, result.stderr
    assert "fsspec: lock resolved against 2024.6.1, torch stage has 2026.9.0" in result.stderr
    assert "relock with make lock CUDA=cpu PYTHON=3.11 TORCH=2.13.0 FLAVOUR=none" in result.stderr


@pytest.fixture
def index_with_an_older_fsspec(cache_dir):
    """The stand-in torch index, plus fsspec 2024.12.0 (the real PyTorch index serves several fsspec versions)."""
    index = LoopbackIndex(cache_dir / "index-cpu-fsspec")
    index.fill(index_requirements(STANDIN_LOCK))
    index.fill(["fsspec==2024.12.0"])
    with index:
        yield index


def test_a_torch_stage_pin_is_the_way_out_of_that_conflict(tmp_project, standin_base, index_with_an_older_fsspec):
    """The NeMo case built: fsspec 2024.12.0 installed with torch from the torch index, the .in line met."""
    stand_ins = standin_flags(standin_base, index_with_an_older_fsspec.url)
    matrix = tmp_project / "matrix.yaml"
    matrix.write_text(matrix.read_text() + '    torch_stage_pins: ["fsspec==2024.12.0"]\n')  # the cpu override
    layer = tmp_project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "fsspec==2024.12.0\n")
    assert cli(tmp_project, "render").returncode == 0
    locked = cli(tmp_project, "lock", "--cuda", "cpu", *stand_ins)
    assert locked.returncode == 0, locked.stderr
    lock = pins((tmp_project / LOCK).read_text())
    assert lock["stage:fsspec"] == "2024.12.0" and "fsspec" not in lock
    built = cli(tmp_project, "build", "--locked", "--cuda", "cpu", *stand_ins)
    assert built.returncode == 0, built.stderr
