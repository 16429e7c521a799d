"""GPU kernels without a GPU: the archs compiled into torch cover the cell's targets; bitsandbytes' native library."""

import pytest

from checklib import compiled_archs, covering


def test_compiled_archs_cover_the_target_archs(expect, torch_facts):
    targets = expect.get("archs") or []
    if not targets:
        pytest.skip("the cell has no target GPU archs (CPU cell)")
    arch_list = torch_facts["arch_list"] if isinstance(torch_facts["arch_list"], list) else []
    flags = torch_facts["arch_flags"] if isinstance(torch_facts["arch_flags"], str) else None
    compiled = compiled_archs(arch_list, flags)
    missing = [t for t in targets if covering(t, compiled) is None]
    assert not missing, (
        f"expected torch's compiled archs to cover the target archs {' '.join(targets)}, "
        f"found {' '.join(compiled) or 'none'}: no kernels for {' '.join(missing)}")


def test_bitsandbytes_has_the_native_library_for_the_images_cuda(expect, facts):
    libs = facts["bitsandbytes_libs"]
    if libs is None:
        pytest.skip("bitsandbytes is not installed")
    if not expect.get("cuda"):
        pytest.skip("CPU cell: bitsandbytes has no CUDA library to look for")
    if isinstance(libs, dict):
        pytest.fail(f"expected bitsandbytes' file list, found {libs['error']}")
    want = f"libbitsandbytes_cuda{expect['cuda'].replace('.', '')}.so"
    assert want in libs, f"expected {want} in bitsandbytes, found {', '.join(libs) or 'no native library'}"
