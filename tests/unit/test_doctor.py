"""`build.py doctor`: which image starts on a host's driver and has kernels for its GPUs.

Every expected answer below is worked out by hand from the shipped matrix.yaml and from NVIDIA's facts, not read back
from compat.yaml or gpus.yaml:

- the matrix's CUDA cells: 12.4 x (torch 2.5.1, 2.6.0), 12.8 x (2.7.1, 2.11.0), 13.0 x (2.9.1, 2.14.1), each on Python
  3.10, 3.11 and 3.12 (default 3.11); plus cpu-py3.11-torch2.13.0;
- driver floors per patch (CUDA release notes, table 3): 12.4.1 >= 550.54.15, 12.8.1 >= 570.124.06 (12.8 GA: 570.26),
  13.0.3 >= 580.126.20, the driver NVIDIA bundles with that toolkit (13.0 GA: 580.65.06, Update 1: 580.82.07, Update 2:
  580.95.05);
- forward-compatibility branches in the bases' NVIDIA_REQUIRE_CUDA: 12.4.1: 470 525 535; 12.8.1: 470 535 550 560 565;
  13.0: 535 550 565 570 575; NVIDIA's forward compatibility works only on datacenter GPUs;
- archs in the wheels: cu124 (2.5, 2.6): sm_50..sm_90; cu128 2.7.1 and 2.11.0: sm_75..sm_120; cu130: sm_75..sm_120;
  sm_89 runs sm_86 code; compute capabilities: H100/H200 9.0, A100 8.0, RTX 4090 8.9, RTX 5090 12.0, RTX 3090 8.6.

The nvidia-smi outputs under tests/unit/data/nvidia-smi/ are written by hand in nvidia-smi's format (see its README).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from gpumatrix import archs, compat, doctor

DATA = Path(__file__).parent / "data" / "nvidia-smi"
PYTHONS = ("3.10", "3.11", "3.12")


def cells(cuda: str, *torches: str) -> set[str]:
    return {f"cu{cuda}-py{py}-torch{t}" for py in PYTHONS for t in torches}


CU124 = cells("12.4", "2.5.1", "2.6.0")
CU128 = cells("12.8", "2.7.1", "2.11.0")
CU130 = cells("13.0", "2.9.1", "2.14.1")
CPU = "cpu-py3.11-torch2.13.0"
EVERY_CUDA_CELL = CU124 | CU128 | CU130


@pytest.fixture
def doctor_json(cli, project):
    """Run `build.py doctor ... --format json` on a copy of the project; (exit code, the JSON, stderr)."""

    def run(*args: str) -> tuple[int, dict, str]:
        rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", *args, "--format", "json")
        return rc, (json.loads(out) if out.strip() else {}), err

    return run


def by_cell(result: dict) -> dict[str, dict]:
    return {image["cell"]: image for image in result["images"]}


def fitting(result: dict) -> set[str]:
    return {image["cell"] for image in result["images"] if image["fits"]}


def recording(name: str) -> list[str]:
    return ["--nvidia-smi-output", str(DATA / name)]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- the recorded hosts -----------------------------------------------------------------------------------------


def test_h100_host_with_a_580_driver_runs_every_cuda_cell_and_takes_the_newest_torch(doctor_json):
    rc, result, _ = doctor_json(*recording("h100x8-580.126.20.csv"))
    assert rc == 0
    assert result["host"]["driver"] == "580.126.20"
    assert [g["arch"] for g in result["host"]["gpus"]] == ["sm_90"] * 8
    assert all(g["datacenter"] is True for g in result["host"]["gpus"])
    # 580.126.20 is at or above every floor (550.54.15, 570.124.06, and exactly 580.126.20); sm_90 is in every wheel.
    assert fitting(result) == EVERY_CUDA_CELL
    images = by_cell(result)
    assert images["cu13.0-py3.11-torch2.14.1"]["starts_why"] == \
        "driver 580.126.20 >= 580.126.20, the floor of CUDA 13.0.3"
    assert images["cu12.4-py3.10-torch2.5.1"]["kernels"][0] == \
        {"gpu": "NVIDIA H100 80GB HBM3", "arch": "sm_90", "ok": True, "why": "sm_90 compiled in"}
    # the newest torch (2.14.1, only on 13.0) on the matrix's default Python
    assert result["recommended"]["cell"] == "cu13.0-py3.11-torch2.14.1"
    assert result["recommended"]["image"] == "ghcr.io/acme/gpu-images:cu13.0-py3.11-torch2.14.1"


def test_h200_host_with_a_580_driver_below_the_13_0_3_floor_gets_the_12_x_cells(doctor_json):
    """580.95.05 (CUDA 13.0 Update 2's driver) is below 580.126.20, the floor of 13.0.3, which the 13.0 cells are
    built on; the 13.0 base's forward-compatibility branches are 535 550 565 570 575, not 580. So the newest torch
    that starts is 2.11.0 on 12.8 (>= 570.124.06)."""
    rc, result, _ = doctor_json(*recording("h200-580.95.05.csv"))
    assert rc == 0
    assert result["host"]["gpus"] == [{"name": "NVIDIA H200", "arch": "sm_90", "datacenter": True}]
    assert fitting(result) == CU124 | CU128
    image = by_cell(result)["cu13.0-py3.12-torch2.9.1"]
    assert image["starts"] is False
    assert image["starts_why"].startswith("driver 580.95.05 < 580.126.20, the floor of CUDA 13.0.3"), \
        image["starts_why"]
    assert result["recommended"]["cell"] == "cu12.8-py3.11-torch2.11.0"


def test_a100_host_with_535_starts_every_cuda_cell_only_through_forward_compatibility(doctor_json):
    """535.104.05 is below every floor (550.54.15 for 12.4.1, 570.124.06 for 12.8.1, 580.126.20 for 13.0.3), so no cell
    starts by its floor. But every base's NVIDIA_REQUIRE_CUDA lists the 535 branch (12.4.1: 470 525 535; 12.8.1:
    470 535 550 560 565; 13.0: 535 550 565 570 575) and the A100 is a datacenter GPU, so all of them start through
    forward compatibility. (The issue expected "only the 12.4 cells"; the bases' own lists say otherwise; on a
    GeForce the same driver starts none: next test.)"""
    rc, result, _ = doctor_json(*recording("a100x2-535.104.05.csv"))
    assert rc == 0
    assert fitting(result) == EVERY_CUDA_CELL
    images = by_cell(result)
    for cell, floor, patch in (("cu12.4-py3.11-torch2.6.0", "550.54.15", "12.4.1"),
                               ("cu12.8-py3.11-torch2.7.1", "570.124.06", "12.8.1"),
                               ("cu13.0-py3.11-torch2.9.1", "580.126.20", "13.0.3")):
        why = images[cell]["starts_why"]
        assert why.startswith(f"forward compatibility: driver 535.104.05 < {floor}, the floor of CUDA {patch}"), why
        assert "branch 535 is listed in the base's NVIDIA_REQUIRE_CUDA" in why and "datacenter GPU" in why
    assert images[CPU]["fits"] is False
    assert result["recommended"]["cell"] == "cu13.0-py3.11-torch2.14.1"


def test_a_535_driver_on_a_geforce_starts_nothing(doctor_json):
    """The same 535 driver on an RTX 4090: below every floor, and forward compatibility is for datacenter GPUs."""
    rc, result, _ = doctor_json("--driver", "535.104.05", "--gpu", "RTX 4090")
    assert rc == 1
    assert fitting(result) == set()
    assert result["recommended"] is None
    for cell in ("cu12.4-py3.11-torch2.6.0", "cu13.0-py3.11-torch2.14.1"):
        image = by_cell(result)[cell]
        assert image["starts"] is False
        assert "works only on datacenter GPUs; RTX 4090 (sm_89) is not" in image["starts_why"]
    assert result["why"].startswith("no image starts on this driver")


def test_rtx4090_with_a_550_driver_gets_the_12_4_cells(doctor_json):
    """550.127.05 >= 550.54.15 (12.4.1) but < 570.124.06 and < 580.126.20; branch 550 is listed by the 12.8.1 and 13.0
    bases, but the RTX 4090 is no datacenter GPU. sm_89 runs the sm_86 code of the cu124 wheels."""
    rc, result, _ = doctor_json(*recording("rtx4090-550.127.05.csv"))
    assert rc == 0
    assert result["host"]["gpus"] == [{"name": "NVIDIA GeForce RTX 4090", "arch": "sm_89", "datacenter": False}]
    assert fitting(result) == CU124
    images = by_cell(result)
    assert images["cu12.4-py3.11-torch2.5.1"]["kernels"][0]["why"] == "sm_86 code runs on sm_89"
    assert images["cu12.8-py3.11-torch2.7.1"]["starts"] is False
    assert images["cu12.8-py3.11-torch2.7.1"]["starts_why"] == (
        "driver 550.127.05 < 570.124.06, the floor of CUDA 12.8.1; branch 550 is listed in the base's "
        "NVIDIA_REQUIRE_CUDA for forward compatibility, which works only on datacenter GPUs; "
        "NVIDIA GeForce RTX 4090 (sm_89) is not")
    assert result["recommended"]["cell"] == "cu12.4-py3.11-torch2.6.0"


def test_rtx5090_with_a_570_driver_gets_no_12_4_cell_and_takes_12_8(doctor_json):
    """570.133.07 starts 12.4 (>= 550.54.15) and 12.8 (>= 570.124.06) but not 13.0 (< 580.126.20; branch 570 is listed
    by the 13.0 base, but an RTX 5090 is no datacenter GPU). sm_120 is in no cu124 wheel (they stop at sm_90)."""
    rc, result, _ = doctor_json(*recording("rtx5090-570.133.07.csv"))
    assert rc == 0
    assert fitting(result) == CU128
    images = by_cell(result)
    for cell in CU124:
        assert images[cell]["starts"] is True
        assert images[cell]["kernels"][0]["ok"] is False
        assert images[cell]["kernels"][0]["why"].startswith("no kernels for sm_120")
    for cell in CU130:
        assert images[cell]["starts"] is False
        assert images[cell]["kernels"][0]["ok"] is True  # the kernels are there; the driver is not
    assert result["recommended"]["cell"] == "cu12.8-py3.11-torch2.11.0"


def test_a_host_with_two_different_gpus_needs_kernels_for_both(doctor_json):
    """RTX 5090 (sm_120) + RTX 3090 (sm_86), driver 575.57.08: 12.4 starts but has no sm_120 kernels; 13.0 needs
    580.126.20 (branch 575 is forward-compatible only on datacenter GPUs); 12.8 has both archs."""
    rc, result, _ = doctor_json(*recording("rtx5090-rtx3090-575.57.08.csv"))
    assert rc == 0
    assert [g["arch"] for g in result["host"]["gpus"]] == ["sm_120", "sm_86"]
    assert fitting(result) == CU128
    kernels = by_cell(result)["cu12.4-py3.12-torch2.6.0"]["kernels"]
    assert [(k["arch"], k["ok"]) for k in kernels] == [("sm_120", False), ("sm_86", True)]
    assert by_cell(result)["cu13.0-py3.11-torch2.14.1"]["starts_why"].endswith(
        "NVIDIA GeForce RTX 5090 (sm_120), NVIDIA GeForce RTX 3090 (sm_86) are not")
    assert result["recommended"]["cell"] == "cu12.8-py3.11-torch2.11.0"


def test_the_table_names_the_recommended_image(cli, project):
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", *recording("rtx5090-570.133.07.csv"))
    assert rc == 0, err
    assert "6 of 19 images fit" in out
    assert "recommended: cu12.8-py3.11-torch2.11.0: ghcr.io/acme/gpu-images:cu12.8-py3.11-torch2.11.0" in out
    assert "starts, CUDA 13.0.3: driver 570.133.07 < 580.126.20, the floor of CUDA 13.0.3" in out
    assert "CPU images run on any host" in out


# ---- the command line instead of nvidia-smi ---------------------------------------------------------------------


def test_floors_are_per_patch(doctor_json):
    """570.86.10 is above 12.8 GA's 570.26 but below 12.8 Update 1's 570.124.06, the patch the 12.8 cells use; 570 is
    no forward-compatibility branch of the 12.8.1 base. So no 12.8 cell starts, and nothing has sm_120 and starts."""
    rc, result, _ = doctor_json("--driver", "570.86.10", "--gpu", "sm_120")
    assert rc == 1
    why = by_cell(result)["cu12.8-py3.11-torch2.11.0"]["starts_why"]
    assert why == ("driver 570.86.10 < 570.124.06, the floor of CUDA 12.8.1; branch 570 is not a "
                   "forward-compatibility branch of its base (470, 535, 550, 560, 565)")
    assert result["why"] == "no image that starts has kernels for every GPU (see `kernels`)"


def test_forward_compatibility_needs_a_gpu_known_to_be_a_datacenter_one(doctor_json):
    rc, result, _ = doctor_json("--driver", "570.133.20", "--gpu", "H100", "--cuda", "13.0")
    assert rc == 0
    assert fitting(result) == CU130
    rc, result, _ = doctor_json("--driver", "570.133.20", "--gpu", "sm_90", "--cuda", "13.0")
    assert rc == 1  # sm_90 alone does not say whether it is an H100 or not
    assert "not known for sm_90: name the GPU (--gpu H100)" in by_cell(result)["cu13.0-py3.11-torch2.9.1"]["starts_why"]


def test_several_gpus_by_name_in_one_argument(doctor_json):
    rc, result, _ = doctor_json("--driver", "575.57.08", "--gpu", "RTX 5090,sm_86")
    assert rc == 0
    assert [g["arch"] for g in result["host"]["gpus"]] == ["sm_120", "sm_86"]
    assert fitting(result) == CU128


def test_only_gpus_given_checks_kernels_and_not_the_driver(doctor_json):
    rc, result, _ = doctor_json("--gpu", "sm_120", "--python", "3.11")
    assert rc == 0
    images = by_cell(result)
    assert images["cu12.4-py3.11-torch2.6.0"]["fits"] is False  # no sm_120 kernels
    assert images["cu13.0-py3.11-torch2.14.1"]["starts"] is None
    assert result["recommended"]["cell"] == "cu13.0-py3.11-torch2.14.1"


def test_cpu_cells_are_no_gpu_answer(doctor_json):
    rc, result, _ = doctor_json(*recording("h100x8-580.126.20.csv"), "--cuda", "cpu")
    assert rc == 1
    assert [(i["cell"], i["starts"], i["fits"]) for i in result["images"]] == [(CPU, True, False)]
    assert result["why"].startswith("only CPU images were asked about")


# ---- bad input: one line, exit 2 --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("", "nvidia-smi lists no GPU (it printed nothing)"),
    ("NVIDIA H100 80GB HBM3, 580.82.07\n", "line 1 is not nvidia-smi's name,driver_version,compute_cap CSV"),
    ("NVIDIA H100 80GB HBM3, 9.0, 580.82.07\n", "line 1 is not nvidia-smi's"),
    ("NVIDIA H100 80GB HBM3, 580.82.07, 9.0\n\nbroken line\n", "line 3 is not nvidia-smi's"),
    ('Field "compute_cap" is not a valid field to query.\n', "line 1 is not nvidia-smi's"),
    ("NVIDIA H100 80GB HBM3, 580.82.07, 9.0\nNVIDIA H100 80GB HBM3, 570.124.06, 9.0\n", "different drivers"),
    ("Mystery GPU, 580.82.07, [N/A]\n", "compute capability '[N/A]' of 'Mystery GPU' is not MAJOR.MINOR"),
])
def test_garbage_nvidia_smi_output_is_one_line(cli, project, tmp_path, text, expected):
    path = tmp_path / "smi.txt"
    path.write_text(text)
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", "--nvidia-smi-output", str(path))
    assert rc == 2 and out == ""
    line = one_line(err)
    assert str(path) in line and expected in line


@pytest.mark.parametrize("name, expected", [
    ("plain-nvidia-smi.txt", "line 1 is not nvidia-smi's name,driver_version,compute_cap CSV"),
    ("no-devices.txt", "nvidia-smi lists no GPU (it printed `No devices were found`)"),
])
def test_committed_garbage_and_empty_hosts(cli, project, name, expected):
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", *recording(name))
    assert rc == 2
    assert expected in one_line(err)


def test_a_known_gpu_without_a_compute_capability_takes_the_table_s(doctor_json, tmp_path):
    path = tmp_path / "smi.txt"
    path.write_text("NVIDIA H100 80GB HBM3, 580.82.07, [N/A]\n")
    rc, result, _ = doctor_json("--nvidia-smi-output", str(path))
    assert rc == 0
    assert result["host"]["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "arch": "sm_90", "datacenter": True}]


@pytest.mark.parametrize("args, expected", [
    (["--gpu", "RTX 9999"], "--gpu 'RTX 9999': not an arch such as sm_90 and not a GPU"),
    (["--gpu", "H100,"], "--gpu '': not an arch"),
    (["--driver", "55x.1"], "argument --driver: '55x.1' is not an NVIDIA driver version such as 550.54.15"),
    (["--driver", "550"], "argument --driver: '550' is not an NVIDIA driver version"),
    (["--driver", "550.54.15", "--nvidia-smi-output", "x.csv"], "--nvidia-smi-output reads the driver and the GPUs"),
    (["--nvidia-smi-output", "/nonexistent/smi.csv"], "/nonexistent/smi.csv: cannot read the nvidia-smi output"),
    (["--gpu", "H100", "--cuda", "12.9"], "no cell matches --cuda 12.9"),
])
def test_bad_arguments_are_one_line(cli, project, args, expected):
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", *args)
    assert rc == 2 and out == ""
    assert expected in one_line(err)


def test_an_unknown_gpu_lists_the_known_ones(cli, project):
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", "--gpu", "Voodoo5")
    assert rc == 2
    line = one_line(err)
    for name in ("H100", "H200", "A100", "RTX 4090", "RTX 5090", "L40S"):
        assert name in line


# ---- this host's nvidia-smi (a stand-in on PATH) ----------------------------------------------------------------


def fake_nvidia_smi(directory: Path, script: str) -> None:
    path = directory / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_without_nvidia_smi_it_says_what_to_give(cli, project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    rc, out, err = cli("--matrix", str(project / "matrix.yaml"), "doctor")
    assert rc == 2 and out == ""
    line = one_line(err)
    assert line.startswith("error: nvidia-smi not found")
    assert "--driver VERSION --gpu NAME|sm_XY" in line and "--nvidia-smi-output FILE" in line


def test_it_asks_nvidia_smi_for_name_driver_and_compute_capability(doctor_json, tmp_path, monkeypatch):
    record = tmp_path / "args"
    fake_nvidia_smi(tmp_path, f'echo "$@" > {record}\ncat {DATA / "rtx5090-570.133.07.csv"}\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    rc, result, _ = doctor_json()
    assert rc == 0
    assert record.read_text().split() == ["--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"]
    assert result["host"]["source"] == "nvidia-smi"
    assert result["recommended"]["cell"] == "cu12.8-py3.11-torch2.11.0"


def test_a_failing_nvidia_smi_is_one_line(cli, project, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n"
                              "exit 9\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor")
    assert rc == 2
    assert one_line(err).startswith("error: nvidia-smi failed (exit code 9): NVIDIA-SMI has failed because")


def test_a_hanging_nvidia_smi_is_one_line(cli, project, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, "exec sleep 30\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(doctor, "NVIDIA_SMI_TIMEOUT", 0.5)
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor")
    assert rc == 2
    assert "nvidia-smi did not answer within 0.5 s" in one_line(err)


# ---- a catalog of pushed images ---------------------------------------------------------------------------------

DIGEST_128, DIGEST_130 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
REPO = "ghcr.io/acme/gpu-images"
ENTRY_128 = {"cell": "cu12.8-py3.11-torch2.11.0", "repository": REPO, "tags": [f"{REPO}:cu12.8-py3.11-torch2.11.0"],
             "reference": f"{REPO}@{DIGEST_128}", "digest": DIGEST_128, "cuda": "12.8", "driver_floor": "570.124.06",
             "python": "3.11", "torch": "2.11.0+cu128", "variant": "cu128",
             "archs": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]}
ENTRY_130 = {"cell": "cu13.0-py3.11-torch2.14.1", "repository": REPO, "tags": [f"{REPO}:cu13.0-py3.11-torch2.14.1"],
             "reference": f"{REPO}@{DIGEST_130}", "digest": DIGEST_130, "cuda": "13.0", "driver_floor": "580.82.07",
             "python": "3.11", "torch": "2.14.1+cu130", "variant": "cu130",
             "archs": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]}


def write_catalog(directory: Path, *entries: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "images.json").write_text(json.dumps({"images": list(entries)}))
    return directory


def test_from_a_catalog_the_answer_is_the_digest_reference(doctor_json, tmp_path):
    catalog = write_catalog(tmp_path / "catalog", ENTRY_128, ENTRY_130)
    rc, result, _ = doctor_json(*recording("rtx5090-570.133.07.csv"), "--catalog", str(catalog))
    assert rc == 0
    # the pushed 13.0 image (built on 13.0.1) needs 580.82.07 and the RTX 5090 gets no forward compatibility: the 12.8
    # image, by digest; a catalog entry's own floor is the one asked, so 580.95.05 starts that 13.0 image
    assert result["recommended"]["image"] == f"{REPO}@{DIGEST_128}"
    rc, result, _ = doctor_json(*recording("h200-580.95.05.csv"), "--catalog", str(catalog / "images.json"))
    assert rc == 0
    assert result["recommended"]["image"] == f"{REPO}@{DIGEST_130}"


@pytest.mark.parametrize("change, expected", [
    ({"archs": None}, "entry 'cu12.8-py3.11-torch2.11.0': no archs"),
    ({"driver_floor": None, "python": None}, "entry 'cu12.8-py3.11-torch2.11.0': no python; no driver_floor"),
    ({"driver_floor": "soon"}, "driver_floor 'soon' is not a driver_floor as push writes it"),
    ({"torch": "2.11"}, "torch '2.11' is not a torch as push writes it"),
])
def test_a_catalog_entry_without_what_doctor_needs_is_one_line(cli, project, tmp_path, change, expected):
    entry = {k: v for k, v in {**ENTRY_128, **change}.items() if v is not None}
    catalog = write_catalog(tmp_path / "catalog", entry)
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", "--gpu", "H100", "--catalog", str(catalog))
    assert rc == 2
    line = one_line(err)
    assert str(catalog / "images.json") in line and expected in line


def test_a_catalog_that_is_no_catalog_is_refused(cli, project, tmp_path):
    (tmp_path / "images.json").write_text("{not json")
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "doctor", "--gpu", "H100",
                     "--catalog", str(tmp_path / "images.json"))
    assert rc == 2
    assert "not valid JSON" in one_line(err)


def test_catalog_filters(doctor_json, tmp_path):
    catalog = write_catalog(tmp_path / "catalog", ENTRY_128, ENTRY_130)
    rc, result, _ = doctor_json(*recording("h200-580.95.05.csv"), "--catalog", str(catalog), "--cuda", "12.8")
    assert rc == 0
    assert [i["cell"] for i in result["images"]] == ["cu12.8-py3.11-torch2.11.0"]


# ---- the pieces: the arch rule and the new facts ----------------------------------------------------------------


@pytest.mark.parametrize("target, compiled, expected", [
    ("sm_89", ["sm_80", "sm_86", "sm_90"], "sm_86"),  # Ada runs Ampere's sm_86 code
    ("sm_80", ["sm_86", "sm_90"], None),  # a lower minor cannot run a higher minor's SASS
    ("sm_120", ["sm_80", "sm_90"], None),  # no SASS of another major
    ("sm_120", ["sm_90", "compute_90"], "compute_90"),  # PTX is JIT-compiled for newer GPUs
    ("sm_103", ["sm_90", "sm_100"], "sm_100"),
    ("sm_90", ["sm_90a"], "sm_90a"),  # arch-specific code runs on exactly its compute capability (an H100, 9.0) ...
    ("sm_103", ["sm_100a"], None),  # ... and on no other, not even a higher minor (10.3)
    ("sm_103", ["sm_100a", "sm_100"], "sm_100"),
    ("sm_86", ["compute_90"], None),  # PTX does not go backwards
])
def test_the_coverage_rule(target, compiled, expected):
    assert archs.covering(target, compiled) == expected


@pytest.mark.parametrize("capability, arch",
                         [("9.0", "sm_90"), ("12.0", "sm_120"), ("8.9", "sm_89"), ("10.3", "sm_103")])
def test_compute_capability_to_arch(capability, arch):
    assert archs.arch_of_capability(capability) == arch


def test_a_compute_capability_must_be_major_minor():
    with pytest.raises(ValueError):
        archs.arch_of_capability("[N/A]")


@pytest.mark.parametrize("printed, name, arch, datacenter", [
    ("NVIDIA H100 80GB HBM3", "H100", "sm_90", True),
    ("NVIDIA H200", "H200", "sm_90", True),
    ("NVIDIA A100-SXM4-80GB", "A100", "sm_80", True),
    ("NVIDIA A10", "A10", "sm_86", True),  # not A100
    ("NVIDIA GeForce RTX 4090", "RTX 4090", "sm_89", False),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", "sm_120", False),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", "sm_89", False),  # not Quadro RTX 6000 (sm_75)
    ("Tesla T4", "T4", "sm_75", True),
    ("NVIDIA L40S", "L40S", "sm_89", True),
])
def test_gpu_names_as_nvidia_smi_prints_them(printed, name, arch, datacenter):
    model = compat.find_gpu(printed)
    assert (model.name, model.arch, model.datacenter) == (name, arch, datacenter)


def test_unknown_gpu_names():
    assert compat.find_gpu("Voodoo5 6000") is None
    assert compat.find_gpu("A1000") is None  # A100 must be followed by a space or a dash


def test_forward_compatibility_branches_of_the_bases():
    assert compat.forward_compat_branches("12.4") == (470, 525, 535)
    assert compat.forward_compat_branches("12.8") == (470, 535, 550, 560, 565)
    assert compat.forward_compat_branches("13.0") == (535, 550, 565, 570, 575)
    assert compat.forward_compat_branches("cpu") == ()


def test_make_doctor_passes_the_variables(repo):
    result = subprocess.run(["make", "-n", "doctor", "DRIVER=535.104.05", "GPU=H100,RTX 4090", "CATALOG=out/catalog",
                             "FORMAT=json", "NVIDIA_SMI=smi.csv", "CUDA=12.8"],
                            cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert ("build.py --matrix matrix.yaml doctor --cuda 12.8 --driver 535.104.05 --gpu 'H100,RTX 4090' "
            "--nvidia-smi-output smi.csv --catalog out/catalog --format json") in command
