"""What the name promises: Python, torch's exact pin (with +cuXYZ / +cpu), the wheel's CUDA, the companions."""

import pytest

from checklib import fact_problems, same_version


def test_cell_facts_agree_with_the_cell_name(expect):
    """The facts the labels are stated from must say what the cell's name says (cuX.Y-pyX.Y-torchA.B.C), and the pin
    must be the release with the variant's local label."""
    cell = expect.get("cell_facts")
    assert cell, "expected the cell's facts (cell_facts) in the expectations, found none"
    problems = fact_problems(cell)
    assert cell["name"] == expect["cell"], f"expected the facts of {expect['cell']}, found those of {cell['name']}"
    assert not problems, f"expected the facts of {cell['name']} to agree with its name, found: " + "; ".join(problems)


def test_python_version(expect, facts):
    found = facts["python"]
    assert found.rsplit(".", 1)[0] == expect["python"], f"expected Python {expect['python']}, found {found} ({facts['executable']})"


def test_torch_distribution_is_the_exact_pin(expect, installed):
    versions = installed.get("torch", [])
    assert versions, f"expected torch {expect['torch_pin']} installed, found no torch distribution"
    assert all(same_version(v, expect["torch_pin"]) for v in versions), (
        f"expected torch {expect['torch_pin']} (the cell's pin, local label included), "
        f"found distribution torch {', '.join(versions)}")


def test_torch_version_is_the_exact_pin(expect, torch_facts):
    assert torch_facts["version"] == expect["torch_pin"], (
        f"expected torch.__version__ == {expect['torch_pin']!r}, found {torch_facts['version']!r}")


def test_torch_cuda_is_the_variants_cuda(expect, torch_facts):
    assert torch_facts["cuda"] == expect["cuda"], (
        f"expected torch.version.cuda == {expect['cuda']!r} (wheel variant {expect.get('variant')}), "
        f"found {torch_facts['cuda']!r}")


def test_companions(expect, facts, installed):
    wanted = expect.get("companions") or {}
    if not wanted:
        pytest.skip("the cell has no companions (torchvision, torchaudio)")
    problems = []
    for name, pin in wanted.items():
        if name not in installed:
            problems.append(f"{name}: expected {pin}, found not installed")
            continue
        found = facts["companions"].get(name)
        if isinstance(found, dict):
            problems.append(f"{name}: expected {pin}, found `import {name}` failing: {found['error']}")
        elif found != pin:
            problems.append(f"{name}: expected __version__ {pin}, found {found}")
    extra = [n for n in facts["companions"] if n not in wanted]
    problems += [f"{n}: expected not installed (not a companion of this cell), found {installed[n][0]}" for n in extra]
    assert not problems, "; ".join(problems)
