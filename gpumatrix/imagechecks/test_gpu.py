"""With a GPU: the device is covered by the compiled archs, a matmul matches the CPU, bnb 4-bit and flash-attn run.

Each test needs the `gpu` fixture: skipped with the reason when no GPU is visible, failed when --gpu asked for one.
"""

import pytest

from checklib import compiled_archs, covering, run_python, tail

pytestmark = pytest.mark.gpu

MATMUL = (
    "import torch\n"
    "torch.backends.cuda.matmul.allow_tf32 = False\n"
    "g = torch.Generator().manual_seed(0)\n"
    "a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)\n"
    "ref, got = a @ b, (a.cuda() @ b.cuda()).cpu()\n"
    "err = (got - ref).abs().max().item()\n"
    "print('max abs error', err)\n"
    "torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)\n"
)
BNB = (
    "import torch, bitsandbytes as bnb\n"
    "layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float16, quant_type='nf4').cuda()\n"
    "y = layer(torch.randn(4, 64, dtype=torch.float16, device='cuda'))\n"
    "assert y.shape == (4, 64) and torch.isfinite(y).all(), y\n"
)
FLASH = (
    "import torch\n"
    "from flash_attn import flash_attn_func\n"
    "q, k, v = (torch.randn(1, 128, 4, 64, device='cuda', dtype=torch.float16) for _ in range(3))\n"
    "out = flash_attn_func(q, k, v, causal=True)\n"
    "assert out.shape == q.shape and torch.isfinite(out).all()\n"
)


def test_device_capability_is_covered(gpu, torch_facts):
    major, minor = gpu["capability"]
    arch = f"sm_{major}{minor}"
    compiled = compiled_archs(torch_facts["arch_list"] if isinstance(torch_facts["arch_list"], list) else [],
                              torch_facts["arch_flags"] if isinstance(torch_facts["arch_flags"], str) else None)
    assert covering(arch, compiled), (
        f"expected torch to have kernels for the GPU {gpu['name']} ({arch}), found only {' '.join(compiled)}")


def test_gpu_matmul_matches_cpu(gpu, host, py):
    result = run_python(host, py, MATMUL)
    assert result.rc == 0, f"expected a GPU matmul on {gpu['name']} to match the CPU within tolerance, found:\n{tail(result)}"


def test_bitsandbytes_4bit_linear_forward(gpu, host, py, installed):
    if "bitsandbytes" not in installed:
        pytest.skip("bitsandbytes is not installed")
    result = run_python(host, py, BNB)
    assert result.rc == 0, f"expected a bitsandbytes 4-bit Linear forward on {gpu['name']}, found:\n{tail(result)}"


def test_flash_attn_forward(gpu, host, py, installed):
    if "flash-attn" not in installed:
        pytest.skip("flash-attn is not installed")
    result = run_python(host, py, FLASH)
    assert result.rc == 0, f"expected flash-attn's forward on {gpu['name']}, found:\n{tail(result)}"
