"""numpy ABI: every compiled extension package imports with warnings as errors; torch <-> numpy interop."""

import shlex

import pytest

from checklib import canonical, run_python, tail

INTEROP = (
    "import numpy as np, torch\n"
    "a = torch.from_numpy(np.arange(3)).numpy()\n"
    "b = torch.tensor([1.5, 2.5]).numpy()\n"
    "assert a.tolist() == [0, 1, 2] and b.dtype == np.float32, (a, b.dtype)\n"
)


def test_compiled_extensions_import_with_warnings_as_errors(host, py, expect, facts, installed):
    modules = facts["compiled_modules"]
    if isinstance(modules, dict) and "error" in modules:
        pytest.fail(f"expected the list of compiled extension packages, found {modules['error']}")
    assert modules, "expected at least one compiled extension package (torch), found none"
    flags = ["-W", "error"]
    if "numpy" not in installed:
        # torch without numpy (a cell with no app layer) warns that numpy is absent; that is no ABI problem.
        flags += ["-W", shlex.quote("ignore:Failed to initialize NumPy:UserWarning")]
    # A torch extension's top-level module (flash-attn's flash_attn_2_cuda) links libc10 and loads only after torch.
    after_torch = {canonical(name) for name in expect.get("extensions") or ()}
    failed = []
    for module, dist in modules.items():
        code = f"import torch\nimport {module}" if canonical(dist) in after_torch else f"import {module}"
        result = run_python(host, py, code, *flags)
        if result.rc != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            failed.append(f"{module} (from {dist}): {last}")
    assert not failed, (
        f"expected every compiled extension package to import under python -W error, found {len(failed)} failing: "
        + "; ".join(failed))


def test_torch_numpy_interop(host, py, installed):
    if "numpy" not in installed:
        pytest.skip("numpy is not installed")
    result = run_python(host, py, INTEROP, "-W", "error")
    assert result.rc == 0, f"expected torch.from_numpy(...).numpy() to round-trip, found:\n{tail(result)}"
