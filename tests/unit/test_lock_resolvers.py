"""The two resolvers of `make lock`: uv (the default) and pip-tools. The lock header names the one that wrote it and
its version; uv is run with pip-compile's guarantees; uv's failures read as pip-compile's do. The uv outputs below
were printed by uv 0.13.9 (`uv pip compile --quiet ...`, stderr) on this machine, copied here by hand."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from gpumatrix.errors import UsageError, WorkFailed
from gpumatrix.lock import starting_point
from gpumatrix.lockfile import format_lock, inputs_digest, problems, remake_reason, where_required
from gpumatrix.pipeline import load
from gpumatrix.resolvers import Request, command, failure

REPO = Path(__file__).resolve().parents[2]
CELL = "cpu-py3.11-torch2.13.0"
STAGE = ["filelock==3.20.0", "fsspec==2026.9.0", "torch==2.13.0+cpu", "typing_extensions==4.15.0"]
BODY = "tqdm==4.70.1 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via -r requirements/cpu.in\n"
INDEX = "http://127.0.0.1:8000/whl/cpu/simple"


@pytest.fixture
def project(tmp_path: Path):
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "matrix.yaml", tmp_path / "matrix.yaml")
    project, expansion = load(tmp_path / "matrix.yaml")
    return project, next(c for c in expansion.cells if c.name == CELL)


def request(cell) -> Request:
    return Request(cell=cell, tools="/tools", python="/venv/bin/python", index_url=INDEX, constraints="/w/stage.txt",
                   never_written=["filelock", "fsspec", "torch", "typing_extensions"], output="/w/lock.txt",
                   layers=["requirements/cpu.in"])


def failed(project, output: str, resolver: str = "uv"):
    proj, cell = project
    cell = replace(cell, resolver=resolver)
    return failure(cell, INDEX, output, lambda name: where_required(proj, cell, name))


# ---- the header names the resolver ----

def test_uv_is_the_default_resolver_at_the_cells_uv_version(project):
    _, cell = project
    assert (cell.resolver, cell.uv) == ("uv", "0.13.9")


def test_the_header_records_the_resolver_that_wrote_the_lock_and_its_version(project):
    proj, cell = project
    uv = format_lock(cell, inputs_digest(proj, cell), BODY, STAGE, "uv")
    tools = format_lock(cell, inputs_digest(proj, cell), BODY, STAGE, "pip-tools")
    assert "\n# uv: 0.13.9\n" in uv and "# pip-tools:" not in uv
    assert "\n# pip-tools: 7.6.2\n" in tools and "# uv:" not in tools
    assert problems(proj, cell, uv) == [] and problems(proj, cell, tools) == []


def test_a_lock_of_the_other_resolver_is_current_but_one_of_another_version_is_stale(project):
    proj, cell = project
    tools = format_lock(cell, inputs_digest(proj, cell), BODY, STAGE, "pip-tools")
    assert remake_reason(proj, cell, tools) is None  # a pip-tools lock stays good when uv is the default
    older = format_lock(replace(cell, uv="0.13.8"), inputs_digest(proj, cell), BODY, STAGE, "uv")
    assert remake_reason(proj, cell, older) == "the lock was compiled with uv 0.13.8, not 0.13.9"
    nameless = older.replace("# uv: 0.13.8\n", "")
    assert "names no resolver (no `# uv:` or `# pip-tools:` header line)" in " ".join(problems(proj, cell, nameless))


# ---- uv with pip-compile's guarantees ----

def test_uv_gets_the_torch_stage_as_constraints_never_written_and_the_torch_index_as_an_extra_index(project):
    _, cell = project
    argv = command(request(cell))
    assert argv[:3] == ["/tools/bin/uv", "pip", "compile"]
    assert {"--generate-hashes", "--no-header", "--system-certs", "--quiet"} <= set(argv)
    assert argv[argv.index("--python") + 1] == "/venv/bin/python"
    assert argv[argv.index("--extra-index-url") + 1] == INDEX
    assert "--index-url" not in argv  # PyPI stays the index; the torch index is only added to it
    assert argv[argv.index("--index-strategy") + 1] == "unsafe-best-match"
    assert argv[argv.index("--constraint") + 1] == "/w/stage.txt"
    assert [a for a in argv if a.startswith("--no-emit-package=")] == [
        "--no-emit-package=filelock", "--no-emit-package=fsspec", "--no-emit-package=torch",
        "--no-emit-package=typing_extensions"]
    assert argv[argv.index("--output-file") + 1] == "/w/lock.txt"
    assert argv[-1] == "requirements/cpu.in" and "--prerelease" not in argv
    nightly = command(request(replace(cell, pre=True)))
    assert nightly[nightly.index("--prerelease") + 1] == "allow"


def test_pip_tools_gets_the_same_request_in_pip_compiles_words(project):
    _, cell = project
    argv = command(request(replace(cell, resolver="pip-tools")))
    assert argv[0] == "/tools/bin/pip-compile"
    assert {"--generate-hashes", "--no-header", "--no-allow-unsafe", "--strip-extras", "--no-emit-index-url"} <= set(argv)
    assert argv[argv.index("--extra-index-url") + 1] == INDEX and "--index-url" not in argv
    assert argv[argv.index("--constraint") + 1] == "/w/stage.txt"
    assert [a for a in argv if a.startswith("--unsafe-package=")] == [
        "--unsafe-package=filelock", "--unsafe-package=fsspec", "--unsafe-package=torch",
        "--unsafe-package=typing_extensions"]
    assert argv[argv.index("--output-file") + 1] == "/w/lock.txt" and argv[-1] == "requirements/cpu.in"


def test_the_current_lock_is_the_resolvers_starting_point_when_it_is_intact(project):
    proj, cell = project
    lock = proj.lock(cell.name)
    committed = lock.read_text()
    assert starting_point(proj, cell) == committed.split("\n\n", 1)[1]
    lock.write_text(committed.replace("--hash=sha256:", "--hash=sha256:0", 1))  # damaged: no starting point
    assert starting_point(proj, cell) == ""
    lock.unlink()
    assert starting_point(proj, cell) == ""


# ---- uv's failures ----

NOT_ON_ANY_INDEX = """uv pip compile failed (exit 1):
error: No solution found when resolving dependencies
  cause: Because nosuchpkg-gpumatrix-zz was not found in the package registry and you require nosuchpkg-gpumatrix-zz, \
we can conclude that your requirements are unsatisfiable."""
NO_SUCH_VERSION = """uv pip compile failed (exit 1):
error: No solution found when resolving dependencies
  cause: Because there is no version of requests==99.0 and you require requests==99.0, we can conclude that your \
requirements are unsatisfiable."""
CONFLICT = """uv pip compile failed (exit 1):
error: No solution found when resolving dependencies
  cause: Because datasets==4.0.0 depends on fsspec[http]>=2023.1.0,<=2025.3.0 and fsspec==2024.1.0, we can conclude \
that datasets==4.0.0 cannot be used.
         And because you require datasets==4.0.0, we can conclude that your requirements are unsatisfiable."""
UNREACHED = """uv pip compile failed (exit 2):
error: Request failed after 3 retries in 10.6s
  cause: Failed to fetch: http://127.0.0.1:9/simple/six/
  cause: error sending request for url (http://127.0.0.1:9/simple/six/)
  cause: client error (Connect)
  cause: tcp connect error
  cause: Connection refused (os error 111)"""


def test_a_package_on_no_index_is_bad_input_naming_the_in_line(project):
    proj, cell = project
    layer = proj.requirements / "cpu.in"
    number = len(layer.read_text().splitlines()) + 1
    layer.write_text(layer.read_text() + "nosuchpkg-gpumatrix-zz\n")
    found = failed(project, NOT_ON_ANY_INDEX)
    assert isinstance(found, UsageError)
    assert str(found) == (f"requirements/cpu.in:{number}: nosuchpkg-gpumatrix-zz: no such package or version on PyPI "
                          f"or {INDEX} (cell {CELL})")


def test_a_version_on_no_index_is_bad_input_too(project):
    proj, cell = project
    found = failed(project, NO_SUCH_VERSION)
    assert isinstance(found, UsageError) and str(found).startswith("a dependency of the cell's layers: requests: ")


def test_a_conflict_is_uvs_causes_without_the_rest_and_says_the_torch_stage_is_fixed(project):
    found = failed(project, CONFLICT)
    assert isinstance(found, UsageError)
    lines = str(found).splitlines()
    assert lines[0] == f"{CELL}: the app layers cannot be resolved together with the torch stage:"
    assert lines[1].startswith("  Because datasets==4.0.0 depends on fsspec[http]>=2023.1.0,<=2025.3.0")
    assert lines[2] == "  And because you require datasets==4.0.0, we can conclude that your requirements are unsatisfiable."
    assert "torch 2.13.0+cpu comes with them from the torch index" in lines[3] and "torch_stage_pins" in lines[3]
    assert "uv pip compile failed" not in str(found)


def test_an_index_that_stopped_answering_is_a_failure_naming_it_not_bad_input(project):
    found = failed(project, UNREACHED)
    assert isinstance(found, WorkFailed)
    assert str(found) == ("an index stopped answering during uv pip compile (http://127.0.0.1:9/simple/six/); no lock "
                          "written: a lock resolved without that index's answer cannot be trusted")


def test_any_other_failure_is_left_to_the_resolvers_own_lines(project):
    other = "uv pip compile failed (exit 2):\nerror: Failed to parse `requirements/cpu.in`"
    assert failed(project, other) is None


# pip-compile 7.6.2 (pip 25.3) printed this, with --quiet, for datasets==4.0.0 against the constraint
# fsspec==2026.9.0 (the middle of the traceback is cut here, and stood in for by more frames than the shown tail)
PIP_CONFLICT = ("""pip-compile failed (exit 1):
  ERROR: Cannot install -r requirements/cpu.in (line 5) because these package versions have conflicting dependencies.
Traceback (most recent call last):
  File "/tmp/gpumatrix-tools/lib/python3.11/site-packages/pip/_internal/resolution/resolvelib/resolver.py", line 99, \
in resolve
    result = self._result = resolver.resolve(
pip._vendor.resolvelib.resolvers.exceptions.ResolutionImpossible: [RequirementInformation(requirement=\
SpecifierWithoutExtrasRequirement('fsspec<=2025.3.0,>=2023.1.0'), parent=LinkCandidate('https://files.pythonhosted.org/\
packages/eb/62/eb8157afb21bd229c864521c1ab4fa8e9b4f1b06bafdd8c4668a7a31b5dd/datasets-4.0.0-py3-none-any.whl (from \
https://pypi.org/simple/datasets/) (requires-python:>=3.9.0)'))]

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
""" + "".join(f'  File "/tmp/gpumatrix-tools/lib/python3.11/site-packages/x{n}.py", line {n}, in f\n    f()\n'
              for n in range(40))
    + "pip._internal.exceptions.DistributionNotFound: ResolutionImpossible: for help visit https://pip.pypa.io/\n")


def test_a_pip_tools_conflict_is_its_error_line_and_causes_found_before_a_long_traceback(project):
    found = failed(project, PIP_CONFLICT, "pip-tools")
    assert isinstance(found, UsageError)
    lines = str(found).splitlines()
    assert lines[:3] == [
        f"{CELL}: the app layers cannot be resolved together with the torch stage:",
        "  Cannot install -r requirements/cpu.in (line 5) because these package versions have conflicting dependencies",
        "  datasets 4.0.0 depends on fsspec<=2025.3.0,>=2023.1.0"]
    assert "torch 2.13.0+cpu comes with them from the torch index" in lines[3] and len(lines) == 4
    assert "Traceback" not in str(found)
