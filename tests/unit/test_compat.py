"""Compatibility answers, stated as facts (design brief tables), not read back from compat.yaml."""

from __future__ import annotations

import pytest

from gpumatrix import compat
from gpumatrix.compat import Incompatible


@pytest.mark.parametrize(
    ("cuda", "torch", "variant"),
    [
        ("12.8", "2.6.0", "cu126"),  # newest variant <= the base's CUDA
        ("12.8", "2.7.1", "cu128"),
        ("12.4", "2.5.1", "cu124"),
        ("12.4", "2.6.0", "cu124"),
        ("13.0", "2.9.1", "cu130"),
        ("13.0", "2.14.1", "cu130"),
        ("12.8", "2.14.1", "cu126"),  # 2.12+ has no cu128 build
        ("12.8", "2.11.0", "cu128"),
        ("12.8", "2.8.0", "cu128"),  # cu129 is above the 12.8 base
        ("cpu", "2.13.0", "cpu"),
        ("cpu", "2.5.1", "cpu"),
    ],
)
def test_variant_choice(cuda, torch, variant):
    assert compat.variant_for(torch, cuda) == variant


def test_variant_never_crosses_cuda_major():
    # cu118 is <= 12.4 numerically but a CUDA 11 wheel on a CUDA 12 base is not what the cell asked for.
    with pytest.raises(Incompatible):
        compat.variant_for("2.7.1", "12.4")


def test_torch_2_5_1_on_cuda_13_is_refused_with_neighbours():
    with pytest.raises(Incompatible) as info:
        compat.variant_for("2.5.1", "13.0")
    message = str(info.value)
    assert "for CUDA 13.0 use torch >= 2.9.0" in message
    assert "runs on CUDA 12.4" in message


def test_unknown_torch_and_cuda_are_refused():
    with pytest.raises(Incompatible, match="2.99.0"):
        compat.variant_for("2.99.0", "12.8")
    with pytest.raises(Incompatible, match="12.9"):
        compat.variant_for("2.7.1", "12.9")


@pytest.mark.parametrize(
    ("torch", "python"),
    [("2.5.1", "3.12"), ("2.5.1", "3.9"), ("2.6.0", "3.13"), ("2.9.1", "3.10"), ("2.9.1", "3.14"), ("2.4.1", "3.8")],
)
def test_python_inside_range_is_accepted(torch, python):
    compat.check_python(torch, python)  # raises when refused


@pytest.mark.parametrize(
    ("torch", "python"),
    [("2.5.1", "3.13"), ("2.9.1", "3.9"), ("2.6.0", "3.8"), ("2.11.0", "3.15"), ("2.5.1", "3.8")],
)
def test_python_outside_range_is_refused(torch, python):
    with pytest.raises(Incompatible) as info:
        compat.check_python(torch, python)
    assert torch in str(info.value) and python in str(info.value)


def test_python_range_is_compared_as_versions_not_strings():
    # "3.10" < "3.9" as strings; as versions 3.10 is newer. torch 2.5.1 supports 3.9-3.12.
    compat.check_python("2.5.1", "3.10")
    assert compat.python_range("2.9.1") == ("3.10", "3.14")


def test_sm70_not_in_torch_2_7_1_cu128():
    with pytest.raises(Incompatible) as info:
        compat.check_archs("2.7.1", "cu128", ("sm_70",))
    assert "sm_70" in str(info.value)


def test_sm120_not_in_torch_2_6_0_cu124():
    with pytest.raises(Incompatible, match="sm_120"):
        compat.check_archs("2.6.0", "cu124", ("sm_120",))


def test_sm120_in_torch_2_7_1_cu128():
    compat.check_archs("2.7.1", "cu128", ("sm_80", "sm_86", "sm_90", "sm_120"))


def test_cu130_dropped_archs_before_sm75():
    with pytest.raises(Incompatible, match="sm_70"):
        compat.check_archs("2.14.1", "cu130", ("sm_70",))
    compat.check_archs("2.14.1", "cu130", ("sm_75", "sm_120"))


def test_measured_2_14_1_cu130_archs():
    assert set(compat.wheel_archs("2.14.1", "cu130")) == {"sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"}


def test_cu128_sm70_depends_on_torch_release():
    # 2.8-2.10 cu128 wheels still carry sm_70; 2.7.x and 2.11 do not.
    assert "sm_70" in compat.wheel_archs("2.9.1", "cu128")
    assert "sm_70" not in compat.wheel_archs("2.7.1", "cu128")
    assert "sm_70" not in compat.wheel_archs("2.11.0", "cu128")


def test_cpu_wheels_have_no_gpu_archs():
    assert compat.wheel_archs("2.13.0", "cpu") == ()
    with pytest.raises(Incompatible):
        compat.check_archs("2.13.0", "cpu", ("sm_80",))


def test_companions_of_2_7_1_cu128():
    got = dict(compat.companions("2.7.1", "cu128", ("torchvision", "torchaudio")))
    assert got == {"torchvision": "0.22.1+cu128", "torchaudio": "2.7.1+cu128"}


@pytest.mark.parametrize(
    ("torch", "variant", "torchvision"),
    [("2.5.1", "cu124", "0.20.1+cu124"), ("2.6.0", "cu126", "0.21.0+cu126"), ("2.9.1", "cu130", "0.24.1+cu130")],
)
def test_torchvision_versions(torch, variant, torchvision):
    assert dict(compat.companions(torch, variant, ("torchvision",))) == {"torchvision": torchvision}


def test_torchaudio_stops_after_2_11():
    assert dict(compat.companions("2.11.0", "cu130", ("torchaudio",))) == {"torchaudio": "2.11.0+cu130"}
    assert compat.companions("2.14.1", "cu130", ("torchaudio",)) == ()


def test_cuda_bases_pin_newest_patch_and_supported_ubuntu():
    b124 = compat.cuda_base("12.4")
    assert (b124.patch, b124.ubuntu) == ("12.4.1", "22.04")  # no 12.4.x images on Ubuntu 24.04
    b128 = compat.cuda_base("12.8")
    assert b128.patch == "12.8.1"  # 12.8.0 is marked unsupported by NVIDIA
    # Floors per patch (CUDA release notes, table 3): 12.8 Update 1 needs 570.124.06 (12.8 GA: 570.26), 13.0 Update 3
    # needs 580.126.20 (the driver of cuda_13.0.3_580.126.20_linux.run; 13.0 GA: 580.65.06, Update 1: 580.82.07),
    # 12.4 Update 1 needs 550.54.15.
    assert b128.driver_floor == "570.124.06"
    b130 = compat.cuda_base("13.0")
    assert (b130.patch, b130.ubuntu) == ("13.0.3", "24.04")  # 13.0.3 is the newest 13.0 patch on Docker Hub
    assert b130.driver_floor == "580.126.20"
    assert b130.cudnn == "9.14.0.64"  # NV_CUDNN_VERSION=9.14.0.64-1 in NVIDIA's dist/13.0.3 cudnn Dockerfiles
    assert b124.driver_floor == "550.54.15"


def test_python_source():
    assert compat.python_source("12.8", "3.12") == "apt"  # Ubuntu 24.04 ships 3.12
    assert compat.python_source("12.8", "3.11") == "deadsnakes"
    assert compat.python_source("12.4", "3.10") == "apt"  # Ubuntu 22.04 ships 3.10
    assert compat.python_source("cpu", "3.11") == "base"


# ---- rows fixed by hand in issue 17, each from the source compat.yaml names for it ----------------------------------


def test_torch_2_15_0_is_known_for_python_3_11_to_3_15():
    compat.check_python("2.15.0", "3.11")
    compat.check_python("2.15.0", "3.15")
    with pytest.raises(Incompatible, match="Python 3.11 to 3.15, not 3.10"):
        compat.check_python("2.15.0", "3.10")  # the first release without Python 3.10 wheels
    assert compat.variant_for("2.15.0", "13.0") == "cu130"
    assert compat.companions("2.15.0", "cu130", ("torchvision", "torchaudio")) == (("torchvision", "0.30.0+cu130"),)


def test_nightlies_no_longer_build_python_3_10():
    compat.check_python("2.16.0.dev20261201", "3.11")
    with pytest.raises(Incompatible):
        compat.check_python("2.16.0.dev20261201", "3.10")


@pytest.mark.parametrize("torch", ["2.12.0", "2.12.1", "2.13.0", "2.14.0", "2.14.1"])
def test_cu132_builds_exist_but_a_13_0_base_keeps_cu130(torch):
    assert "cu132" in compat.facts()["torch"][torch]["variants"]
    assert compat.variant_for(torch, "13.0") == "cu130"  # 13.2 wheels need a 13.2 driver stack: never on 13.0
    assert compat.wheel_archs(torch, "cu132") == ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")


@pytest.mark.parametrize(("torch", "on_12_8"), [("2.9.1", "cu128"), ("2.10.0", "cu128"), ("2.12.1", "cu126")])
def test_cu129_builds_are_known_and_stay_off_the_12_8_base(torch, on_12_8):
    assert "cu129" in compat.facts()["torch"][torch]["variants"]
    assert compat.variant_for(torch, "12.8") == on_12_8  # 12.9 is above the 12.8 base
    assert compat.wheel_archs(torch, "cu129") == ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
