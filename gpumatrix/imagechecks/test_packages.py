"""The installed set: one torch, the torch stage untouched, exactly torch stage + lock, pip check, the guard."""

import pytest

from checklib import canonical, diff_sets, freeze_lines, other_major_spec, other_torch_version, same_version, tail

CONSTRAINTS_IN_IMAGE = "/opt/gpumatrix/torch-constraints.txt"


@pytest.fixture(scope="module")
def torch_stage(expect, host) -> tuple[dict, str]:
    """{name: version} the torch stage installed, and where that came from (the lock header, else the image)."""
    if expect.get("torch_stage"):
        return {canonical(k): v for k, v in expect["torch_stage"].items()}, "the lock's torch-stage lines"
    if expect.get("mode") != "local" and host.file(CONSTRAINTS_IN_IMAGE).exists:
        return freeze_lines(host.file(CONSTRAINTS_IN_IMAGE).content_string), CONSTRAINTS_IN_IMAGE
    pytest.skip("no lock for this cell and no torch-stage record: nothing to compare with")


def test_exactly_one_torch_distribution(installed):
    assert len(installed.get("torch", [])) == 1, (
        f"expected exactly one installed distribution of torch, found {len(installed.get('torch', []))}: "
        f"{', '.join(installed.get('torch', [])) or 'none'}")
    doubled = {n: v for n, v in installed.items() if len(v) > 1}
    assert not doubled, f"expected one distribution per project, found several of {doubled}"


def test_torch_stage_packages_at_their_stage_versions(torch_stage, installed):
    stage, source = torch_stage
    moved = [f"{n}: expected {v}, found {', '.join(installed[n])}" for n, v in sorted(stage.items())
             if n in installed and not all(same_version(x, v) for x in installed[n])]
    gone = [f"{n}: expected {v}, found not installed" for n, v in sorted(stage.items()) if n not in installed]
    assert not (moved or gone), f"torch-stage packages differ from {source}: " + "; ".join(moved + gone)


def test_installed_set_is_torch_stage_plus_lock(expect, torch_stage, installed):
    stage, source = torch_stage
    wanted = dict(stage)
    if expect.get("locked") is not None:
        wanted.update({canonical(k): v for k, v in expect["locked"].items()})
        source += " plus the lock"
    if expect.get("extension_versions"):
        wanted.update({canonical(k): v for k, v in expect["extension_versions"].items()})
        source += " plus the extensions"
    found = {n: v[0] for n, v in installed.items()}
    extra, missing, different = diff_sets(wanted, found)
    parts = [f"extra: {', '.join(extra)}" if extra else "", f"missing: {', '.join(missing)}" if missing else "",
             f"different: {'; '.join(different)}" if different else ""]
    assert not (extra or missing or different), (
        f"expected the installed set to equal {source}, found " + " | ".join(p for p in parts if p))


def test_pip_check(host, py):
    result = host.run(f"{py} -m pip check")
    # testinfra's host.pip.check() accepts exit code 1; a broken requirement is exactly exit code 1.
    assert result.rc == 0, f"expected `pip check` to exit 0, found exit code {result.rc}:\n{tail(result)}"


def _dry_run(host, py, requirement: str):
    # --no-index: the refusal must come from the constraint, not from what an index happens to offer.
    return host.run(f"{py} -m pip install --dry-run --no-index '{requirement}'")


def test_guard_refuses_another_torch(image_mode, expect, host, py):
    requirement = f"torch=={other_torch_version(expect['torch_pin'])}"
    result = _dry_run(host, py, requirement)
    constraint = f"(constraint) torch=={expect['torch_pin']}"
    assert result.rc != 0 and constraint in result.stdout + result.stderr, (
        f"expected `pip install --dry-run {requirement}` to be refused by PIP_CONSTRAINT ({constraint}), "
        f"found exit code {result.rc}:\n{tail(result)}")


def test_guard_refuses_numpy_across_its_major(image_mode, host, py, installed):
    if "numpy" not in installed:
        pytest.skip("numpy is not installed")
    version = installed["numpy"][0]
    requirement = f"numpy{other_major_spec(version)}"
    result = _dry_run(host, py, requirement)
    constraint = f"(constraint) numpy=={version}"
    assert result.rc != 0 and constraint in result.stdout + result.stderr, (
        f"expected `pip install --dry-run '{requirement}'` to be refused by PIP_CONSTRAINT ({constraint}), "
        f"found exit code {result.rc}:\n{tail(result)}")
