"""The test step: run the image checks (gpumatrix/imagechecks, pytest-testinfra) against each cell's image.

Per cell: write what the image's name promises (an expectations JSON), start a container of the image through
the docker SDK (entrypoint overridden, `sleep infinity`, GPUs when asked), run the suite with testinfra's docker
backend, and remove the container whatever happens (failure, Ctrl-C, SIGTERM). `--local` runs the same suite
against a Python environment on this host (testinfra's local backend) instead.

Results, per cell, under out/tests/ (the push step reads the JSON):
  <cell>.json         {"cell", "image", "image_id", "passed", "gpu", "junit", "summary", ...} (written last, atomically)
  <cell>.xml          JUnit XML of the suite
  <cell>.md           a short Markdown summary (for CI step summaries)
  <cell>.expect.json  the expectations the suite ran with (rerun by hand: pytest gpumatrix/imagechecks --expect ...)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import docker
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from docker.errors import APIError, DockerException, ImageNotFound

from . import engine, layout
from .build import IN_REGISTRY, read_build_records, read_in_registry
from .cells import Cell
from .errors import UsageError
from .lockfile import pinned, torch_stage_pins
from .select import cell_filters
from .project import MAX_INPUT_BYTES, Project, write_atomic
from .request import BuildOverrides, build_args_for, resolved_labels

SUITE = Path(__file__).resolve().parent / "imagechecks"  # package data: installed with the tool
GPU_TEST_FILE = "test_gpu"
HOST_PARAM = re.compile(r"\[(local|(docker|local)://[^\]]*)\]$")  # testinfra's per-host parametrisation of test ids

Log = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    gpu: bool | None = None  # None: GPUs when the engine has an nvidia runtime (docker) / when visible (local)
    local: bool = False
    interpreter: str | None = None  # --local: the environment's Python
    image: str | None = None  # test this reference instead of the cell's tag
    base_image: str | None = None  # the overrides the image was built with (they are in its labels)
    runtime_image: str | None = None
    out: Path | None = None
    pytest_args: tuple[str, ...] = ()


@dataclass
class CellResult:
    cell: str
    mode: str
    image: str | None
    image_id: str | None
    passed: bool
    gpu: bool
    junit: str
    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    pytest_exit: int | None = None
    duration_s: float = 0.0

    def record(self) -> dict:
        return {
            "cell": self.cell, "image": self.image, "image_id": self.image_id, "passed": self.passed,
            "gpu": self.gpu, "junit": self.junit, "summary": self.summary, "mode": self.mode,
            "counts": self.counts, "failures": self.failures, "pytest_exit": self.pytest_exit,
            "duration_s": round(self.duration_s, 1),
        }


# --- what the name promises -------------------------------------------------


def lock_parts(lock_text: str | None) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(torch-stage {name: version} from the lock header, pinned requirements {name: version}); Nones without lock."""
    if lock_text is None:
        return None, None
    return torch_stage_pins(lock_text), pinned(lock_text)


def expected_labels(cell: Cell, image_name: str, lock: bytes | None, options: Options) -> dict[str, str]:
    """The labels the build request of this cell, with the bases the image was built with, resolves to."""
    overrides = BuildOverrides(base_image=options.base_image, runtime_image=options.runtime_image)
    return resolved_labels(cell, image_name, build_args_for(cell, lock, overrides))


def runtime_base_env(client, cell: Cell, options: Options) -> dict[str, str] | None:
    """The runtime base's own Config.Env, as the engine has it; None when no engine or the base is not on it."""
    if client is None:
        return None
    runtime = options.runtime_image or cell.runtime_image
    try:
        env = client.images.get(runtime).attrs["Config"].get("Env") or []
    except (ImageNotFound, APIError):
        return None
    return dict(e.split("=", 1) for e in env)


def cell_facts(cell: Cell, image_name: str, options: Options, base_env: dict[str, str] | None) -> dict:
    """The cell's facts, from which the image checks state on its own the labels and env an image must carry. The suite
    does not read the expectations' "labels" and "env": render.labels and layout.RUNTIME_ENV wrote those, and the same
    code wrote the image's, so a mistake there would pass."""
    return {
        "name": cell.name,
        "image_name": image_name,
        "cuda": cell.cuda,  # "cpu" or the base's CUDA minor
        "cuda_patch": cell.cuda_patch,
        "python": cell.python,
        "torch": cell.torch,
        "torch_pin": cell.torch_pin,
        "variant": cell.variant,
        "wheel_cuda": cell.variant_cuda,
        "archs": list(cell.archs),
        "wheel_archs": list(cell.wheel_archs),
        "driver_floor": cell.driver_floor,
        "base_image": options.base_image or cell.base_image,
        "runtime_image": options.runtime_image or cell.runtime_image,
        "runtime_base_env": base_env,
    }


def expected_require_cuda(client, cell: Cell, options: Options) -> tuple[bool, str | None, str]:
    """(known, NVIDIA_REQUIRE_CUDA the image must carry, why). The template keeps the runtime base's own value."""
    runtime = options.runtime_image or cell.runtime_image
    base_env = None
    if client is not None:
        try:
            base_env = dict(e.split("=", 1) for e in client.images.get(runtime).attrs["Config"].get("Env") or [])
        except (ImageNotFound, APIError):
            base_env = None
    if base_env is not None and base_env.get("NVIDIA_REQUIRE_CUDA"):
        return True, base_env["NVIDIA_REQUIRE_CUDA"], f"the runtime base {runtime} sets it"
    if not cell.is_cuda:
        return True, None, "CPU cell: not set"
    if base_env is None:
        return False, None, f"the runtime base {runtime} is not on the engine: its own value is unknown"
    return True, f"cuda>={cell.require_cuda}", "rendered default (the runtime base sets none)"


def extension_version(spec) -> str:
    """The version an extension's file names: its wheel's, or its sdist's (name-version.tar.gz)."""
    if spec.kind == "wheel":
        return str(parse_wheel_filename(spec.filename)[1])
    return str(parse_sdist_filename(spec.filename)[1])


def expectations(cell: Cell, image_name: str, lock: bytes | None, options: Options, *, mode: str,
                 inspect: dict | None, require_cuda: tuple[bool, str | None, str], gpu: bool | None,
                 python_exe: str, base_env: dict[str, str] | None = None) -> dict:
    lock_text = lock.decode() if lock is not None else None
    stage, locked = lock_parts(lock_text)
    known, value, why = require_cuda
    return {
        "cell": cell.name,
        "mode": mode,
        "image": options.image or cell.tags[0] if mode == "docker" else None,
        "python_exe": python_exe,
        "python": cell.python,
        "torch_pin": cell.torch_pin,
        "variant": cell.variant,
        "companions": dict(cell.companions),
        "cuda": cell.variant_cuda,
        "archs": list(cell.archs),
        "extensions": [e.name for e in cell.extensions],  # their .so files must have kernels for archs
        "extension_versions": {e.name: extension_version(e) for e in cell.extensions},  # installed beside the lock
        "torch_stage": stage,
        "locked": locked,
        "lock_text": lock_text,
        "labels": expected_labels(cell, image_name, lock, options),
        "nvidia_require_cuda": value,
        "nvidia_require_cuda_known": known,
        "nvidia_require_cuda_why": why,
        "env": {**layout.RUNTIME_ENV, **(layout.CUDA_ENV if cell.is_cuda else {})},
        "inspect": inspect,
        "gpu": gpu,
        "cell_facts": cell_facts(cell, image_name, options, base_env),
    }


# --- running the suite ----------------------------------------------------------


def engine_has_gpu(client) -> bool:
    """GPUs go to the container when the engine has the NVIDIA runtime (nvidia-container-toolkit)."""
    try:
        return "nvidia" in (client.info().get("Runtimes") or {})
    except (APIError, DockerException):
        return False


def pytest_command(hosts: str, expect_path: Path, junit_path: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(SUITE), f"--hosts={hosts}", "--expect", str(expect_path),
        f"--junitxml={junit_path}", "-o", "junit_suite_name=gpumatrix-image", "-p", "no:cacheprovider",
        "-q", "-rfEs", "--tb=short", "--color=no", *extra,
    ]


def run_suite(hosts: str, expect_path: Path, junit_path: Path, extra: tuple[str, ...] = ()) -> int:
    """pytest in a child process (its own testinfra and conftest state); output goes to our stdout."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(pytest_command(hosts, expect_path, junit_path, extra), env=env).returncode


def parse_junit(path: Path) -> list[dict]:
    """[{"name", "file", "outcome" (passed|failed|error|skipped), "message"}] from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = child.get("message") or (child.text or "").strip()
                break
        cases.append({"name": HOST_PARAM.sub("", case.get("name") or ""), "file": (case.get("classname") or "").rsplit(".", 1)[-1],
                      "outcome": outcome, "message": _clean(message)})
    return cases


def _clean(message: str) -> str:
    text = message.removeprefix("AssertionError: ").removeprefix("Failed: ").removeprefix("Skipped: ")
    text = re.sub(r"\n?\[\+\d+ more lines; full report in element text\]$", "", text.strip())
    first = text.split("\nassert ")[0].strip()
    return first[:1500]


def counts_of(cases: list[dict]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in cases:
        out[case["outcome"]] += 1
    return out


def summary_markdown(result: CellResult, cases: list[dict]) -> str:
    c = result.counts
    verdict = "passed" if result.passed else "FAILED"
    target = f"`{result.image}` (`{(result.image_id or '')[:19]}`)" if result.image else "the local environment"
    lines = [
        f"### Image checks: {result.cell} {verdict}",
        "",
        f"{target}; GPU checks {'ran' if result.gpu else 'did not run'}; "
        f"{c.get('passed', 0)} passed, {c.get('failed', 0) + c.get('error', 0)} failed, "
        f"{c.get('skipped', 0)} skipped in {result.duration_s:.0f}s.",
    ]
    if result.pytest_exit not in (0, 1):
        lines += ["", f"pytest exited with code {result.pytest_exit}: the suite did not run to the end."]
    shown = [case for case in cases if case["outcome"] != "passed"]
    if shown:
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for case in shown:
            detail = case["message"].replace("|", "\\|").replace("\n", " ")[:400]
            lines.append(f"| {case['file']}::{case['name']} | {case['outcome']} | {detail} |")
    return "\n".join(lines) + "\n"


def _fallback_junit(reason: str) -> str:
    suite = ET.Element("testsuite", name="gpumatrix-image", tests="1", errors="1", failures="0", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="gpumatrix.imagetest", name="suite")
    ET.SubElement(case, "error", message=reason).text = reason
    return ET.tostring(ET.Element("testsuites"), encoding="unicode").replace(
        "<testsuites />", "<testsuites>" + ET.tostring(suite, encoding="unicode") + "</testsuites>")


MISSING = "missing"


@dataclass(frozen=True)
class TestRecord:
    """What push needs of out/tests/<cell>.json: whether the checks passed, and on which image id."""

    passed: bool
    image_id: str
    cell: str | None = None
    image: str | None = None


def read_test_record(path: Path) -> tuple[TestRecord | None, str | None]:
    """The record `build.py test` wrote, or why it cannot be used (MISSING, or what is wrong with it)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        return None, MISSING
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if len(raw) > MAX_INPUT_BYTES:
        return None, f"is larger than {MAX_INPUT_BYTES:,} bytes, which no test run writes"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text (byte {exc.start})"
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return None, f"is a JSON {type(record).__name__}, not the object `build.py test` writes"
    for key, kind in (("passed", bool), ("image_id", str)):
        if not isinstance(record.get(key), kind):
            return None, f"has no {key!r} ({'true or false' if kind is bool else 'an image id'})"
    return TestRecord(**{k: record[k] for k in TestRecord.__dataclass_fields__ if k in record}), None



# --- the step -------------------------------------------------------------------


def run_cells(project: Project, image_name: str, cells: list[Cell], options: Options, log: Log) -> list[CellResult]:
    """Check every cell's image (or the local environment); refuses missing images before testing anything.

    A cell with no image on the engine that the last build found in the registry (its build report says "in
    registry") is done: that image was tested before it was pushed, so it is not tested again.
    """
    out = options.out or project.out / "tests"
    locks = {cell.name: _lock_bytes(project, cell) for cell in cells}
    if options.local:
        python_exe = _local_python(options.interpreter)
        client = _optional_client()
        return [_run_cell(project, image_name, cell, locks[cell.name], options, out, log, client=client,
                          image=None, python_exe=python_exe) for cell in cells]
    if shutil.which("docker") is None:
        raise UsageError("testinfra's docker backend runs `docker exec`: install the docker CLI (docker.io), "
                         "or check an environment on this host with --local")
    client = engine.connect()
    refs = {cell.name: options.image or cell.tags[0] for cell in cells}
    images, pushed = {}, {}
    missing = []
    in_registry = {} if options.image else read_in_registry(project.out / "build-report.json")
    for cell in cells:
        try:
            images[cell.name] = client.images.get(refs[cell.name])
            continue
        except ImageNotFound:
            pass
        if cell.name in in_registry:
            pushed[cell.name] = CellResult(cell=cell.name, mode=IN_REGISTRY, image=in_registry[cell.name],
                                           image_id=None, passed=True, gpu=False, junit="", summary="")
        else:
            missing.append(f"{cell.name}: no image {refs[cell.name]} on the engine; build it first "
                           f"(make image {cell_filters(cell)[1]})")
    if missing:
        raise UsageError("\n".join(missing))
    built = read_build_records(project)
    return [pushed[cell.name] if cell.name in pushed else
            _run_cell(project, image_name, cell, locks[cell.name],
                      _with_bases_built_on(options, built.get(images[cell.name].id), cell, log),
                      out, log, client=client, image=images[cell.name], python_exe="python") for cell in cells]




def _with_bases_built_on(options: Options, record: dict | None, cell: Cell, log: Log) -> Options:
    """The bases the image was built on (the build's records, by image id) unless --base-image/--runtime-image say."""
    if record is None or record["cell"] != cell.name:
        return options
    chosen = replace(options, base_image=options.base_image or record["base_image"],
                     runtime_image=options.runtime_image or record["runtime_image"])
    if (chosen.base_image, chosen.runtime_image) != (cell.base_image, cell.runtime_image):
        log(f"{cell.name}: built on {chosen.base_image} / {chosen.runtime_image} (the build's records, "
            "out/builds.json); the labels must name these")
    return chosen


def _run_cell(project, image_name, cell, lock, options, out: Path, log: Log, *, client, image, python_exe) -> CellResult:
    started = time.monotonic()
    mode = "local" if image is None else "docker"
    gpu = options.gpu if options.gpu is not None or mode == "local" else engine_has_gpu(client)
    expect = expectations(
        cell, image_name, lock, options, mode=mode, inspect=image.attrs if image is not None else None,
        require_cuda=expected_require_cuda(client, cell, options), gpu=gpu, python_exe=python_exe,
        base_env=runtime_base_env(client, cell, options),
    )
    paths = {k: out / f"{cell.name}{k}" for k in (".json", ".xml", ".md", ".expect.json")}
    write_atomic(paths[".expect.json"], json.dumps(expect, indent=2) + "\n")
    partial = out / f".{cell.name}.xml.partial"
    partial.unlink(missing_ok=True)
    # Ctrl-C, and SIGTERM (cli.main raises it as an interrupt), unwind through container_for's finally.
    if image is None:
        log(f"{cell.name}: checking the local environment ({python_exe})")
        code = run_suite("local://", paths[".expect.json"], partial, options.pytest_args)
    else:
        log(f"{cell.name}: checking {expect['image']} ({image.id[7:19]}), GPU checks "
            f"{'required' if gpu else 'off (--gpu forces them)' if gpu is False else 'when visible'}")
        with engine.container(client, image.id, cell, "imagetest", gpu=bool(gpu)) as container:
            code = run_suite(f"docker://{container.id}", paths[".expect.json"], partial, options.pytest_args)
    if partial.is_file():
        os.replace(partial, paths[".xml"])
    else:
        write_atomic(paths[".xml"], _fallback_junit(f"pytest exited with code {code} before writing results"))
    cases = parse_junit(paths[".xml"])
    counts = counts_of(cases)
    gpu_ran = any(c["file"] == GPU_TEST_FILE and c["outcome"] != "skipped" for c in cases)
    result = CellResult(
        cell=cell.name, mode=mode, image=expect["image"], image_id=image.id if image is not None else None,
        passed=code == 0 and counts["failed"] == 0 and counts["error"] == 0, gpu=gpu_ran,
        junit=project.relative(paths[".xml"]), summary=project.relative(paths[".md"]), counts=counts,
        failures=[{"check": f"{c['file']}::{c['name']}", "message": c["message"]} for c in cases
                  if c["outcome"] in ("failed", "error")],
        pytest_exit=code, duration_s=time.monotonic() - started,
    )
    write_atomic(paths[".md"], summary_markdown(result, cases))
    write_atomic(paths[".json"], json.dumps(result.record(), indent=2) + "\n")
    return result


def _lock_bytes(project: Project, cell: Cell) -> bytes | None:
    if not cell.layers:
        return None
    path = project.lock(cell.name)
    if not path.is_file():
        raise UsageError(f"{cell.name}: {path.relative_to(project.root)} is missing: the checks compare the image "
                         "with its lock; run `make lock`")
    return path.read_bytes()


def _local_python(interpreter: str | None) -> str:
    found = shutil.which(interpreter) if interpreter else (shutil.which("python") or shutil.which("python3"))
    if not found:
        raise UsageError(f"--local: no Python {interpreter or 'on PATH'}; name the environment's with --interpreter PATH")
    return found


def _optional_client():
    """--local needs no engine; with one, the runtime base's NVIDIA_REQUIRE_CUDA can still be looked up."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except DockerException:
        return None
