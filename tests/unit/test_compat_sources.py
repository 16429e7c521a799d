"""`compat refresh` and `compat --check --online` against loopback PEP 503 pages shaped like the PyTorch index's:
local versions, cp tags, manylinux and linux_x86_64 platforms, aarch64 and free-threaded wheels that must not count,
PEP 658 metadata that says which torch a companion requires, nightly dev versions, and PyPI's torch page. The
expected rows are written out here by hand from the pages the test plants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devtools.standins import LoopbackIndex
from gpumatrix import compat, compatsources
from gpumatrix.cli import main
from support.compatpages import CUDA_TAGS, EARLIER_ROWS, hub_tags, plant_pages


@pytest.fixture
def stand_ins(tmp_path):
    release, nightly, pypi = (LoopbackIndex(tmp_path / name) for name in ("release", "nightly", "pypi"))
    plant_pages(release, nightly, pypi)
    hub_tags(pypi, CUDA_TAGS)  # the pypi stand-in's root is a plain folder over HTTP: `--registry` points there
    with release, nightly, pypi:
        yield compatsources.Sources(release.url, nightly.url, pypi.url, "2.4.0"), release, pypi


EXPECTED_TORCH = {
    "2.14.1": {"variants": ["cu126", "cu130"], "python": ["3.10", "3.14"], "torchvision": "0.29.1",
               "torchaudio": "2.11.1", "source": "index", "checked": "2026-12-02"},
    "2.15.0": {"variants": ["cu130", "cu132"], "python": ["3.11", "3.15"], "torchvision": "0.30.0",
               "torchaudio": "2.11.1", "source": "index", "checked": "2026-12-02"},
}
EXPECTED_NIGHTLY = {
    "2.16.0": {"variants": ["cu130", "cu132"], "python": ["3.11", "3.14"], "torchvision": "0.31.0",
               "torchaudio": None, "source": "index", "checked": "2026-12-02"},
}


def test_rows_are_read_from_the_pages(stand_ins):
    sources, _, pypi = stand_ins
    reading = compatsources.read_sources(sources, today="2026-12-02")
    assert reading.rows == {"torch": EXPECTED_TORCH, "nightly": EXPECTED_NIGHTLY}
    assert reading.pypi == {"2.15.0": ["3.11", "3.15"], "2.16.0": ["3.11", "3.15"]}


def committed(tmp_path: Path) -> Path:
    """The generated file as a refresh some weeks ago left it."""
    path = tmp_path / "compat-generated.yaml"
    path.write_text(EARLIER_ROWS)
    return path


PLANTED_DRIFTS = [
    "torch 2.14.1: variant cu129 gone from the index",
    "torch 2.14.1: torchaudio none is now 2.11.1",
    "torch 2.15.0: new on the index (variants cu130 cu132, Python 3.11-3.15)",
    "torch 2.16.0 nightly: new variant cu132",
    "torch 2.16.0 nightly: Python 3.10-3.14 is now 3.11-3.14",
]
ON_PYPI_ONLY = "torch 2.16.0: on PyPI (Python 3.11-3.15), not on the PyTorch index yet"


def source_flags(sources, registry: bool = False) -> list[str]:
    flags = ["--index-url", sources.index, "--nightly-url", sources.nightly, "--pypi-url", sources.pypi]
    return flags + (["--registry", sources.pypi.removesuffix("/simple")] if registry else [])


def test_check_online_names_each_planted_drift_and_exits_1(stand_ins, tmp_path, capsys):
    sources, _, pypi = stand_ins
    path = committed(tmp_path)
    before = path.read_bytes()
    hub = sources.pypi.removeprefix("http://").removesuffix("/simple")
    hub_tags(pypi, [t for t in CUDA_TAGS if t != "12.4.1-base-ubuntu22.04"]
             + ["13.0.4-cudnn-devel-ubuntu24.04", "13.0.2-base-ubuntu24.04", "12.4.1-cudnn-devel-ubuntu24.04",
                "12.4.1-cudnn-devel-ubuntu20.04"])
    assert main(["compat", "--check", "--online", "--generated", str(path), *source_flags(sources, True)]) == 1
    err = capsys.readouterr().err
    problems = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    assert problems == PLANTED_DRIFTS + [
        f"CUDA 12.4: 12.4.1-cudnn-devel-ubuntu24.04 exists on {hub} (compat.yaml uses Ubuntu 22.04)",
        f"CUDA 12.4: nvidia/cuda:12.4.1-base-ubuntu22.04 is gone from {hub}",
        f"CUDA 13.0: newer patch 13.0.4-cudnn-devel-ubuntu24.04 on {hub} (compat.yaml pins 13.0.3; move it by hand "
        "with the driver floor and cuDNN of that patch)",
    ]
    assert ON_PYPI_ONLY in err.splitlines()  # told, not failed: no row can be made before the index has it
    assert "make compat" in err
    assert path.read_bytes() == before


def test_refresh_rewrites_the_file_then_the_check_passes(stand_ins, tmp_path, capsys):
    sources, _, pypi = stand_ins
    path = committed(tmp_path)
    drifts = tmp_path / "drifts.txt"
    assert main(["compat", "refresh", "--generated", str(path), "--drifts", str(drifts), *source_flags(sources)]) == 0
    assert drifts.read_text().splitlines() == [*PLANTED_DRIFTS, ON_PYPI_ONLY]
    written = yaml.safe_load(path.read_text())
    today = written["torch"]["2.14.1"]["checked"]
    assert {kind: {release: {**row, "checked": "2026-12-02"} for release, row in rows.items()}
            for kind, rows in written.items()} == {"torch": EXPECTED_TORCH, "nightly": EXPECTED_NIGHTLY}
    assert len(today) == 10 and today.startswith("20")
    assert path.read_text().startswith("# Generated by `python build.py compat refresh`")
    capsys.readouterr()
    assert main(["compat", "--check", "--online", "--generated", str(path), *source_flags(sources, True)]) == 0
    assert "error:" not in capsys.readouterr().err


def test_an_unreachable_index_is_one_line_exit_2_and_the_file_is_untouched(tmp_path, capsys):
    path = committed(tmp_path)
    before = path.read_bytes()
    closed = LoopbackIndex(tmp_path / "closed")
    url = closed.start()
    closed.stop()  # the port is free again: nothing answers there
    code = main(["compat", "refresh", "--generated", str(path), "--index-url", url, "--nightly-url", url,
                 "--pypi-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: cannot reach 127.0.0.1:{url.split(':')[2].split('/')[0]} for {url}/torch/ (ConnectionError)"]
    assert "Traceback" not in err
    assert path.read_bytes() == before


def test_a_page_that_is_not_the_projects_simple_page_is_refused(stand_ins, tmp_path, capsys):
    sources, release, _ = stand_ins
    (release.root / "simple" / "torch" / "index.html").write_text(
        '<html><body><a href="/login">Sign in</a> <a href="/help">Help</a></body></html>')
    path = committed(tmp_path)
    before = path.read_bytes()
    assert main(["compat", "refresh", "--generated", str(path), *source_flags(sources)]) == 2
    err = capsys.readouterr().err
    assert (f"error: {sources.index}/torch/ answered with a page that is not the simple page of torch "
            "(none of its 2 links is a torch wheel)") in err.splitlines()
    assert path.read_bytes() == before


def test_hand_kept_fields_win_over_generated_rows():
    generated = {"2.12.0": {"variants": ["cu126", "cu130"], "python": ["3.10", "3.14"], "torchvision": "0.27.0",
                            "torchaudio": None, "source": "index", "checked": "2026-12-02"}}
    kept = {"2.12.0": {"torchaudio": "2.11.1", "source": "audio-4212"}}
    merged = compat._apply_kept(generated, kept, "torch")
    assert merged["2.12.0"]["torchaudio"] == "2.11.1" and merged["2.12.0"]["source"] == "audio-4212"
    assert merged["2.12.0"]["variants"] == ["cu126", "cu130"]
    assert generated["2.12.0"]["torchaudio"] is None  # the generated rows themselves are not changed


def test_a_kept_row_for_a_release_the_index_lacks_must_be_whole():
    with pytest.raises(ValueError, match="torch row 9.9.9 has no variants, python, torchvision"):
        compat._apply_kept({}, {"9.9.9": {"torchaudio": "1.0", "source": "pypi"}}, "torch")


def test_shipped_data_passes_the_offline_check(capsys):
    assert main(["compat", "--check"]) == 0
    assert "no problems" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["compat"], "give `refresh` or `--check`"),
    (["compat", "refresh", "--check"], "give `refresh` or `--check`"),
    (["compat", "refresh", "--online"], "--online goes with --check"),
    (["compat", "--check", "--drifts", "x"], "--drifts goes with refresh"),
    (["compat", "refresh", "--index-url", "https://user:pw@example.com/whl"], "not an http(s) URL without"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
