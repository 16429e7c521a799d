"""`make bench`: time and size figures of the build pipeline, each printed as a ratio with its raw numbers.

Everything is measured side by side in one run, on one cell of the shipped matrix built against the stand-in base and
a loopback torch index (the same stand-ins `make demo` and the tests use), through the commands users run
(`make image`, `build.py lock`, `build.py build`). Default: the CPU cell. `--cuda`: the CUDA 13.0 cell
(cu13.0-py3.11-torch2.14.1, the real CUDA build of torch 2.14.1 relabelled +cu130, the fine-tuning app layer); it has
no committed lock, so the bench locks it first. BuildKit and the classic builder are measured on the same cell, and two
CI runners (two dockerds of the bench's own, sharing a loopback docker-registry) on the reuse of what one pushed.
Every image the bench builds is removed at the end.
See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from packaging.utils import canonicalize_name, parse_wheel_filename  # noqa: E402
from packaging.version import Version  # noqa: E402

from gpumatrix import engine, layout  # noqa: E402
from gpumatrix.cells import DEFAULT_SETTINGS  # noqa: E402
from gpumatrix.errors import UsageError  # noqa: E402
from gpumatrix.lockfile import pinned  # noqa: E402
from devtools import engines  # noqa: E402
from devtools.registry import Registry  # noqa: E402
from devtools.demo_extension import demo_flags, demo_project  # noqa: E402
from devtools.standins import (PYPI_SIMPLE, LoopbackIndex, StandinError, ensure_standin_base,  # noqa: E402
                               ensure_standin_devel_base, index_requirements)

CACHE = ROOT / ".cache"
CPU_LOCK = ROOT / "locks" / "cpu-py3.11-torch2.13.0.txt"  # the committed lock of the shipped CPU cell
REGISTRY = "gpumatrix-bench.local"  # the project copy's registry: every image the bench tags is its own
ROWS: list[tuple[str, str, str, str]] = []
NOTES: list[str] = []


@dataclass(frozen=True)
class Mode:
    """The cell a run measures and what its stand-ins need."""
    cell: str
    filters: dict[str, str]  # --cuda/--python/--torch of build.py; CUDA=/PYTHON=/TORCH= of make
    layer: str  # the requirements/<layer>.in the cell's app layer is made of
    index_dir: str
    wheels: list[str]  # what the loopback index holds
    local_version: dict[str, str] = field(default_factory=dict)
    torch_pins: list[str] = field(default_factory=list)  # what the naive build installs from the torch index
    sole_versions: list[str] = field(default_factory=list)  # pins whose other versions the index must not offer
    lock_repeats: int = 3
    committed_lock: bool = True


CPU = Mode(cell="cpu-py3.11-torch2.13.0", filters={"cuda": "cpu"}, layer="cpu", index_dir="index-cpu",
           wheels=index_requirements(CPU_LOCK), torch_pins=["torch==2.13.0+cpu"])
# The shipped cell names torchvision as a companion, so the index holds it too (the test fixture's index-cu130 holds
# torch only, for a matrix without companions). fsspec is pinned the way the real PyTorch index serves its own copy:
# with PyPI's newest (2026.9.0) in the torch stage, pip-compile of app.in backtracked for 10+ minutes without an end
# (datasets caps fsspec, 5.0.1 at <=2026.6.0).
CUDA = Mode(cell="cu13.0-py3.11-torch2.14.1", filters={"cuda": "13.0", "python": "3.11", "torch": "2.14.1"},
            layer="app", index_dir="index-cu130-bench",
            wheels=["torch==2.14.1", "torchvision==0.29.1", "fsspec==2026.6.0"],
            local_version={"torch": "cu130", "torchvision": "cu130"},
            torch_pins=["torch==2.14.1+cu130", "torchvision==0.29.1+cu130"], sole_versions=["fsspec==2026.6.0"],
            lock_repeats=1, committed_lock=False)


class BenchError(Exception):
    """A step of the bench failed: one line (and the command's output tail), no traceback."""


def drop_other_versions(index: LoopbackIndex, pins: list[str]) -> None:
    """Remove the index's wheels of these projects in any other version, so the torch stage gets the pinned one."""
    wanted = {canonicalize_name(name): Version(version) for name, version in (p.split("==") for p in pins)}
    for wheel in index.files_dir.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        pin = wanted.get(canonicalize_name(name))
        if pin is not None and Version(version.public) != pin:
            wheel.unlink()


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def timed(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:6])} ... failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def row(what: str, ratio: float, raw: str, target: str) -> None:
    ROWS.append((what, f"{ratio:.3f}", raw, target))
    log(f"{what}: {ratio:.3f} ({raw}; target {target})")


def note(text: str) -> None:
    NOTES.append(text)
    log(text)


def project_copy(registry: str = REGISTRY) -> Path:
    """The shipped matrix, templates, requirements and locks, with the registry set to the bench's own."""
    root = Path(tempfile.mkdtemp(prefix="gpumatrix-bench-"))
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(ROOT / name, root / name)
    matrix = (ROOT / "matrix.yaml").read_text().replace("registry: ghcr.io/acme", f"registry: {registry}", 1)
    (root / "matrix.yaml").write_text(matrix)
    return root


def cli(project: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "build.py"), "--matrix", str(project / "matrix.yaml"), *args]


def cell_args(mode: Mode) -> list[str]:
    return [arg for key, value in mode.filters.items() for arg in (f"--{key}", value)]


def make_filters(mode: Mode) -> list[str]:
    return [f"{key.upper()}={value}" for key, value in mode.filters.items()]


def bench_list_render() -> None:
    for name, args in (("list", ["list", "--format", "json"]), ("render --check", ["render", "--check"])):
        seconds = statistics.median(timed([sys.executable, "build.py", *args]) for _ in range(3))
        row(f"`{name}` of the shipped matrix / 1 s", seconds, f"{seconds:.2f} s, median of 3", "< 1")


def fresh_base(client, base: str, tag: str) -> str:
    """A copy of the stand-in base with an image id of its own, so the first build on it is truly cold
    (`--no-cache` would start a second chain of layers beside the cached one, and later builds may follow either)."""
    container = client.containers.create(base, ["true"])
    try:
        container.commit(repository="gpumatrix-bench", tag=tag, changes=[f"LABEL io.gpumatrix.bench={time.time_ns()}"])
    finally:
        container.remove(force=True)
    return f"gpumatrix-bench:{tag}"


def overrides_for(base: str, index: LoopbackIndex) -> list[str]:
    return ["--base-image", base, "--runtime-image", base, "--index-url", index.url, "--network", "host"]


def make_vars_for(base: str, index: LoopbackIndex) -> list[str]:
    return [f"BASE_IMAGE={base}", f"RUNTIME_IMAGE={base}", f"INDEX_URL={index.url}", "NETWORK=host"]


def lock_uncommitted_cell(client, mode: Mode, project: Path, standin: str, index: LoopbackIndex) -> None:
    """Lock a cell that has no committed lock, on a base copy of its own so the cold build that follows stays cold."""
    base = fresh_base(client, standin, "lock-base")
    seconds = timed(cli(project, "lock", *cell_args(mode), *overrides_for(base, index)))
    note(f"first lock of {mode.cell} (builds its base stage, installs the resolvers, resolves the torch stage from "
         f"the index's metadata, then the app layer): {seconds:.0f} s")
    remove_descendants(client, base)


def forget_earlier_builds(client) -> None:
    """Before a cold BuildKit build. A fresh copy of the base is not enough: BuildKit finds the copy's layers by
    content and reuses every step built on them before, and `buildx prune` cannot drop the cache of a step while an
    image holds it. So every image the bench built so far goes first (its registry's tags, which include the stage
    images of locks and shared stages; the lock tools; dangling stages), then BuildKit's whole cache, the download
    cache mounts included."""
    remove_bench_tags(client)
    for image in client.images.list(name="gpumatrix-locktools"):
        remove_image(client, image.id)
    client.images.prune(filters={"dangling": True})
    timed(["docker", "buildx", "prune", "-af"])


def bench_builds(client, mode: Mode, project: Path, overrides: list[str], make_vars: list[str]) -> str:
    forget_earlier_builds(client)
    cold = timed(cli(project, "build", *cell_args(mode), *overrides))
    noop = timed(["make", "-s", "image", f"MATRIX={project / 'matrix.yaml'}", *make_filters(mode), *make_vars])
    row("no-op `make image` (content tag present) / cold build", noop / cold,
        f"{noop:.2f} s / {cold:.1f} s", "<= 0.05 and < 2 s")
    layer = project / "requirements" / f"{mode.layer}.in"
    layer.write_text(layer.read_text() + "packaging>=24\n")
    relock = timed(cli(project, "lock", *cell_args(mode), *overrides))
    note(f"lock after the app layer changed (base stage cached): {relock:.1f} s")
    warm = timed(cli(project, "build", *cell_args(mode), *overrides))
    row("rebuild after only the app lock changed / cold build", warm / cold, f"{warm:.1f} s / {cold:.1f} s", "<= 0.15")
    report = cell_report(project)
    note_slowest_steps("rebuild after the lock change", report)
    return report["tags"][0]


def cell_report(project: Path) -> dict:
    """The one cell's entry of the build report that the last build in `project` wrote."""
    return json.loads((project / "out" / "build-report.json").read_text())["cells"][0]


def note_slowest_steps(what: str, report: dict, count: int = 4) -> None:
    steps = sorted(report["steps"], key=lambda step: step["seconds"], reverse=True)[:count]
    note(f"{what}, slowest steps: " + "; ".join(
        f"{step['stage']} {step['instruction'][:48]} {step['seconds']:.1f} s" for step in steps))


SERVE_LAYER = "tqdm\nrich>=13\n"  # the flavour's own small app layer


def add_flavour(mode: Mode, project: Path) -> None:
    """A `serve` flavour of the measured cell: same torch stage, its own small app layer."""
    cuda, python, torch = mode.cell.split("-")
    cuda = cuda if cuda == "cpu" else cuda.removeprefix("cu")
    include = (f'  - {{cuda: "{cuda}", python: "{python.removeprefix("py")}", '
               f'torch: "{torch.removeprefix("torch")}", flavour: serve, layers: [serve]}}\n')
    matrix = project / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace("include:\n", "include:\n" + include, 1))
    (project / "requirements" / "serve.in").write_text(SERVE_LAYER)


def bench_shared_stage(client, mode: Mode, project: Path, standin: str, index: LoopbackIndex) -> None:
    """Cold: the cell alone, then the cell and its flavour together with -j 2, each on a base copy of its own."""
    add_flavour(mode, project)
    lock_base = fresh_base(client, standin, "flavour-lock-base")
    timed(cli(project, "lock", *cell_args(mode), "--flavour", "serve", *overrides_for(lock_base, index)))
    remove_descendants(client, lock_base)
    seconds = {}
    for what, extra in (("one", ["--flavour", "none"]), ("two", ["--all", "-j", "2"])):
        base = fresh_base(client, standin, f"shared-{what}")
        forget_earlier_builds(client)
        # --force: the content tag does not name the base, so the cell built earlier in this run would be found
        seconds[what] = timed(cli(project, "build", *cell_args(mode), *extra, "--force",
                                  *overrides_for(base, index)))
        remove_descendants(client, base)
    row("two cells sharing a torch stage, built together (-j 2) / one cell", seconds["two"] / seconds["one"],
        f"{seconds['two']:.1f} s / {seconds['one']:.1f} s (both cold)", "<= 1.3")


def bench_builders(client, mode: Mode, project: Path, standin: str, index: LoopbackIndex) -> None:
    """BuildKit (buildx) against the classic builder on the same cell in one run: cold (each on a base copy of its
    own, BuildKit's download caches emptied first), then each after the same lock change. --force: the content tag
    is the same on both builders and does not name the base, so without it the second build would find the first."""
    seconds: dict[tuple[str, str], float] = {}
    bases = {builder: fresh_base(client, standin, f"builder-{builder}") for builder in ("buildkit", "classic")}
    try:
        forget_earlier_builds(client)
        for builder, base in bases.items():
            seconds[builder, "cold"] = timed(cli(project, "build", *cell_args(mode), "--builder", builder,
                                                 "--force", *overrides_for(base, index)))
        layer = project / "requirements" / f"{mode.layer}.in"
        layer.write_text(layer.read_text() + "six>=1.16\n")
        timed(cli(project, "lock", *cell_args(mode), *overrides_for(bases["buildkit"], index)))
        for builder, base in bases.items():
            seconds[builder, "lock"] = timed(cli(project, "build", *cell_args(mode), "--builder", builder,
                                                 "--force", *overrides_for(base, index)))
    finally:
        for base in bases.values():
            remove_descendants(client, base)
    for when, what in (("cold", "cold build"), ("lock", "rebuild after a lock change")):
        bk, classic = seconds["buildkit", when], seconds["classic", when]
        row(f"BuildKit / classic builder, {what}", bk / classic, f"{bk:.1f} s / {classic:.1f} s", "< 1")


def bench_two_runners(client, mode: Mode, project: Path, standin: str, index: LoopbackIndex) -> None:
    """Two CI runners: two fresh engines (dockerds of the bench's own, nothing on them but the stand-in base) that
    share a loopback registry. Runner A builds the cell cold, tests and pushes it; runner B then builds the unchanged
    cell (its content tag is in the registry), and the cell again after a lock change (the torch stage comes from the
    cache in A's pushed image). A third fresh engine pulls A's image, for the floor under runner B's figure: a runner
    that tests and pushes the image must hold all of it. The runners' project is a copy of the bench's, with its
    requirements and locks."""
    workdir = Path(tempfile.mkdtemp(prefix="gpumatrix-bench-runners-"))
    registry = Registry(workdir, workdir / "storage")
    bench_project, project = project, project_copy(registry=registry.addr)
    for name in ("requirements", "locks"):
        shutil.copytree(bench_project / name, project / name, dirs_exist_ok=True)
    overrides = overrides_for(standin, index)
    try:
        with engines.second_engine(standin, client, "gm-bench-a0", "172.31.250.1/24") as (runner_a, _):
            env_a = {"DOCKER_HOST": runner_a.host}
            cold = timed(cli(project, "build", *cell_args(mode), *overrides), env=env_a)
            timed(cli(project, "test", *cell_args(mode), "--no-gpu", *overrides[:4]), env=env_a)
            timed(cli(project, "push", *cell_args(mode)), env=env_a)
            pushed = cell_report(project)["tags"][0]
        with engines.second_engine(standin, client, "gm-bench-b0", "172.31.251.1/24") as (runner_b, _):
            env_b = {"DOCKER_HOST": runner_b.host}
            unchanged = timed(cli(project, "build", *cell_args(mode), *overrides), env=env_b)
            layer = project / "requirements" / f"{mode.layer}.in"
            layer.write_text(layer.read_text() + "wcwidth>=0.2\n")
            timed(cli(project, "lock", *cell_args(mode), *overrides))
            relocked = timed(cli(project, "build", *cell_args(mode), *overrides), env=env_b)
            report = cell_report(project)
        with engines.second_engine(standin, client, "gm-bench-c0", "172.31.252.1/24") as (_, runner_c):
            started = time.perf_counter()
            runner_c.images.pull(pushed)
            pulled = time.perf_counter() - started
    finally:
        registry.stop()
        remove_tags_of(client, registry.addr)  # the lock's base stage, built on this engine for the runners' project
        shutil.rmtree(project, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    row("runner B, unchanged cell (content tag in the registry) / runner A's cold build", unchanged / cold,
        f"{unchanged:.1f} s / {cold:.1f} s", "<= 0.05")
    row("runner B after a lock change (torch stage from the registry's cache) / runner A's cold build",
        relocked / cold, f"{relocked:.1f} s / {cold:.1f} s", "<= 0.3")
    row("a plain `docker pull` of A's image on a third fresh engine / runner A's cold build (the least a runner "
        "that tests the image pays to hold it)", pulled / cold, f"{pulled:.1f} s / {cold:.1f} s", "none (a floor)")
    note_slowest_steps("runner B after the lock change", report)


def bench_extension(client, standin: str, index: LoopbackIndex) -> None:
    """A cell with a compiled extension (the tests' demo kernel for sm_80 and sm_90, on the devel stand-in with
    nvcc from PyPI): built cold (BuildKit's caches, ccache's included, emptied first), then after a lock change, which
    must compile nothing."""
    devel = ensure_standin_devel_base(client, CACHE, standin, log=log)
    project = demo_project(Path(tempfile.mkdtemp(prefix="gpumatrix-bench-ext-")) / "project", ROOT / "templates",
                           registry=REGISTRY)
    flags = demo_flags(devel, standin, index.url)
    try:
        timed(cli(project, "lock", *flags))
        forget_earlier_builds(client)
        cold = timed(cli(project, "build", "--locked", *flags))
        compile_steps = extension_runs(project)
        (project / "requirements" / "ext.in").write_text("six\npackaging>=24\n")
        timed(cli(project, "lock", *flags))
        warm = timed(cli(project, "build", "--locked", *flags))
        warm_steps = extension_runs(project)
        # One more build variable: the extension stage runs again on the same sources, ccache's cache mount warm.
        # (`build --no-cache` would not show it: this BuildKit gives such a build empty cache mounts.)
        matrix = project / "matrix.yaml"
        matrix.write_text(matrix.read_text().replace("      max_jobs: 2\n", "      max_jobs: 2\n      env: {BENCH: '1'}\n"))
        timed(cli(project, "build", "--locked", *flags))
        recompile_steps = extension_runs(project)
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
    cached = sum(1 for step in warm_steps if step["cached"])
    row("rebuild after a lock change, cell with a compiled extension / cold build", warm / cold,
        f"{warm:.1f} s / {cold:.1f} s; extension RUN steps cached {cached} of {len(warm_steps)}", "<= 0.15, none recompiled")
    first, again = (sum(step["seconds"] for step in steps) for steps in (compile_steps, recompile_steps))
    row("extension stage again, ccache warm (one more env variable) / its cold run", again / first,
        f"{again:.1f} s / {first:.1f} s", "< 1")
    bench_extension_runners(client, standin, devel, index)


def bench_extension_runners(client, standin: str, devel: str, index: LoopbackIndex) -> None:
    """Two CI runners on the cell with a compiled extension: runner A builds it cold, tests and pushes it; runner B,
    a fresh engine with only the two stand-in bases, builds it after a lock change. It must compile nothing: the
    runtime stage's copy of the extension's files comes with the inline cache of A's pushed image."""
    workdir = Path(tempfile.mkdtemp(prefix="gpumatrix-bench-ext-runners-"))
    registry = Registry(workdir, workdir / "storage")
    project = demo_project(workdir / "project", ROOT / "templates", registry=registry.addr)
    flags = demo_flags(devel, standin, index.url)
    try:
        timed(cli(project, "lock", *flags))
        with engines.second_engine(standin, client, "gm-bench-a1", "172.31.252.1/24", more_images=(devel,)) as (
                runner_a, _):
            env_a = {"DOCKER_HOST": runner_a.host}
            cold = timed(cli(project, "build", "--locked", *flags), env=env_a)
            timed(cli(project, "test", "--no-gpu", *flags[:6]), env=env_a)
            timed(cli(project, "push", *flags[:2]), env=env_a)
        (project / "requirements" / "ext.in").write_text("six\nwcwidth>=0.2\n")
        timed(cli(project, "lock", *flags))
        with engines.second_engine(standin, client, "gm-bench-b1", "172.31.253.1/24", more_images=(devel,)) as (
                runner_b, _):
            relocked = timed(cli(project, "build", "--locked", *flags), env={"DOCKER_HOST": runner_b.host})
            ran = [s for s in extension_runs(project) if not s["cached"]]
    finally:
        registry.stop()
        remove_tags_of(client, registry.addr)
        shutil.rmtree(workdir, ignore_errors=True)
    row("runner B after a lock change, cell with a compiled extension / runner A's cold build", relocked / cold,
        f"{relocked:.1f} s / {cold:.1f} s; extension steps run on B: {len(ran)}", "nothing recompiled")


def extension_runs(project: Path) -> list[dict]:
    report = cell_report(project)
    return [s for s in report["steps"] if s["stage"].startswith("extension") and s["instruction"].startswith("RUN")]


def bench_size(client, image_ref: str, runtime_base: str) -> int:
    image = client.images.get(image_ref)
    # du's own total: mawk prints a sum over 2^31 as 6.5e+09
    du = f"du -sbc {layout.VENV} {layout.STATE_DIR} | tail -1 | cut -f1"
    env_bytes = int(client.containers.run(image_ref, ["bash", "-c", du], remove=True, network_mode="none").decode())
    base_bytes = client.images.get(runtime_base).attrs["Size"]
    size = image.attrs["Size"]
    row("final image / (environment + runtime base)", size / (env_bytes + base_bytes),
        f"{size / 1e6:.0f} MB / ({env_bytes / 1e6:.0f} MB + {base_bytes / 1e6:.0f} MB)", "<= 1.10")
    return size


NAIVE_CPU = """\
# The seed's audited pattern: one stage on the devel base; torch first, then a requirements file naming torch again.
FROM {base}
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip
ENV PATH=/opt/venv/bin:$PATH
RUN pip install numpy
RUN pip install --index-url {index} {torch_pins}
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
"""

NAIVE_CUDA = """\
# The seed's audited Dockerfile, on the devel base: numpy first, torch (+ companion) from the torch index, a
# constraints file of bare versions, then requirements.txt (which names torch again) from PyPI with no --index-url.
FROM {base}
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir "numpy>=2,<3"
RUN pip install --no-cache-dir --index-url {index} {torch_pins}
RUN printf '%s\\n' {bare_pins} > /tmp/constraints.txt
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt -r /tmp/requirements.txt
"""


def bare_pins(mode: Mode) -> list[str]:
    """torch==2.14.1+cu130 -> torch==2.14.1: what the seed's requirements.txt and constraints file say."""
    return [pin.split("+")[0] for pin in mode.torch_pins]


def naive_requirements(mode: Mode, project: Path) -> str:
    """torch again, then the app packages: the lock's names (CPU, as measured before) or the .in lines (CUDA)."""
    if mode is CPU:
        lock = (project / "locks" / f"{mode.cell}.txt").read_text()
        names = [f"{name}=={version}" for name, version in pinned(lock).items()]
    else:
        source = (ROOT / "requirements" / f"{mode.layer}.in").read_text()
        names = [line.strip() for line in source.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join([*bare_pins(mode), *names]) + "\n"


def naive_context(mode: Mode, project: Path, base: str, index: str) -> io.BytesIO:
    template = NAIVE_CPU if mode is CPU else NAIVE_CUDA
    dockerfile = template.format(base=base, index=index, torch_pins=" ".join(mode.torch_pins),
                                 bare_pins=" ".join(bare_pins(mode)))
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", dockerfile), ("requirements.txt", naive_requirements(mode, project))):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    context.seek(0)
    return context


def build_naive(client, context: io.BytesIO) -> tuple[float, list[str]]:
    """Build gpumatrix-bench:naive; return the seconds and the output lines of its last step."""
    started = time.perf_counter()
    last_step: list[str] = []
    for chunk in client.api.build(fileobj=context, custom_context=True, tag="gpumatrix-bench:naive",
                                  network_mode="host", rm=True, decode=True, nocache=True):
        if "error" in chunk:
            raise BenchError(f"naive build failed: {chunk['error']}")
        text = chunk.get("stream", "")
        last_step = [text] if text.startswith("Step ") else last_step + [text]
    return time.perf_counter() - started, "".join(last_step).splitlines()


def report_naive_torch(client, mode: Mode, last_step: list[str]) -> None:
    """What pip did with torch when requirements.txt named it again: kept it, or installed a second copy."""
    versions = client.containers.run("gpumatrix-bench:naive", ["python", "-c", "import importlib.metadata as m; print("
                                     + ", ".join(f"m.version({p.split('==')[0]!r})" for p in mode.torch_pins) + ")"],
                                     entrypoint=[], remove=True, network_mode="none").decode().split()
    installed = [line for line in last_step if line.startswith("Successfully installed")]
    again = [name for name in (p.split("==")[0] for p in mode.torch_pins)
             if any(f" {name}-" in line for line in installed)]
    history = client.api.history("gpumatrix-bench:naive")
    sizes = {("requirements" if "requirements.txt" in h["CreatedBy"] and "pip install" in h["CreatedBy"] else
              "torch" if "--index-url" in h["CreatedBy"] else "other"): h["Size"] for h in history if h["Size"]}
    wanted = [p.split("==")[1] for p in mode.torch_pins]
    verdict = ("kept the torch-index build (one copy of torch)" if not again and versions == wanted else
               f"reinstalled {', '.join(again) or 'torch'}: a second copy in the image's layers")
    note(f"naive build: pip {verdict}; installed {' '.join(versions)}; torch layer "
         f"{sizes.get('torch', 0) / 1e6:.0f} MB, requirements.txt layer {sizes.get('requirements', 0) / 1e6:.0f} MB")


def bench_naive(client, mode: Mode, project: Path, base: str, index: str, size: int) -> None:
    elapsed, last_step = build_naive(client, naive_context(mode, project, base, index))
    naive = client.images.get("gpumatrix-bench:naive").attrs["Size"]
    row("final image / naive single-stage build of the same packages", size / naive,
        f"{size / 1e6:.0f} MB / {naive / 1e6:.0f} MB (naive built in {elapsed:.0f} s)", "<= 0.6 for a CUDA cell")
    report_naive_torch(client, mode, last_step)
    note("on the stand-ins the naive build and the runtime stage share one base, so the devel-vs-runtime base "
         "difference of the real nvidia/cuda images (cudnn-devel against -base) cannot show in the size ratio")


BARE_RESOLVERS = {
    "pip-compile": "/tmp/gpumatrix-tools/bin/pip-compile --quiet --generate-hashes -o lock.txt layer.in",
    "uv": "/tmp/gpumatrix-tools/bin/uv pip compile --system-certs --quiet --generate-hashes -o lock.txt layer.in",
}


def bare_compile(client, tools_image: str, inputs: str, resolver: str = "pip-compile") -> float:
    """One resolver on the .in alone, no constraints, in a fresh container of the lock's tools image (which holds
    both resolvers; cold caches)."""
    setup = "mkdir -p /tmp/b && cd /tmp/b && cat > layer.in <<'EOF'\n" + inputs + "EOF\n"
    container = client.containers.run(tools_image, ["sleep", "infinity"], detach=True, network_mode="host",
                                      entrypoint=[])
    try:
        code, output = container.exec_run(["bash", "-c", setup])
        if code == 0:
            started = time.perf_counter()
            code, output = container.exec_run(["bash", "-c", f"cd /tmp/b && {BARE_RESOLVERS[resolver]}"])
            elapsed = time.perf_counter() - started
    finally:
        container.remove(force=True)
    if code != 0:
        raise BenchError(f"bare {resolver} failed: {output.decode()[-2000:]}")
    return elapsed


def newest_tools_image(client) -> str:
    """The pip-tools image `build.py lock` made (or reused) on this run's base stage: the newest one."""
    mine = client.images.list(name="gpumatrix-locktools")
    if not mine:
        raise BenchError("no gpumatrix-locktools image after `build.py lock`")
    return sorted(mine, key=lambda i: i.attrs["Created"])[-1].id


def bench_lock(client, mode: Mode, project: Path, overrides: list[str]) -> None:
    """Both in turn (PyPI's response times vary); the base stage and pip-tools are cached."""
    timed(cli(project, "lock", *cell_args(mode), *overrides))
    tools = newest_tools_image(client)
    inputs = (project / "requirements" / f"{mode.layer}.in").read_text()
    ours, bare, uv = [], [], []
    for _ in range(mode.lock_repeats):
        ours.append(timed(cli(project, "lock", *cell_args(mode), *overrides)))
        bare.append(bare_compile(client, tools, inputs))
        uv.append(bare_compile(client, tools, inputs, "uv"))
    o, b, u = statistics.median(ours), statistics.median(bare), statistics.median(uv)
    how = f"medians of {mode.lock_repeats}" if mode.lock_repeats > 1 else "one run each"
    row("`build.py lock` of one cell (uv) / bare pip-compile in the same container", o / b,
        f"{o:.1f} s / {b:.1f} s, {how}", "<= 1.5")
    row("bare `uv pip compile` / bare pip-compile, same .in, same container", u / b,
        f"{u:.1f} s / {b:.1f} s, {how}", "informative")


# The PyTorch index serves its own, older copy of fsspec; the metadata index does too (see CUDA above for why).
INDEX_OWN_COPIES = {"fsspec": "2026.6.0"}


def shipped_cells(python: str) -> list[dict]:
    listed = subprocess.run([sys.executable, "build.py", "list", "--python", python, "--format", "json"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise BenchError(f"build.py list failed: {listed.stderr[-2000:]}")
    return json.loads(listed.stdout)


def metadata_index(cells: list[dict]) -> LoopbackIndex:
    """The torch stage of every cell served by its real metadata alone (no wheel), as tests/integration/
    test_lock_cuda.py serves it; every other project is redirected to PyPI."""
    index = LoopbackIndex(CACHE / "index-metadata-bench", fallback=PYPI_SIMPLE)
    for cell in cells:
        for project, pin in {"torch": cell["torch"], **cell.get("companions", {})}.items():
            version, _, local = pin.partition("+")
            index.add_metadata_only(project, version, local or None, python=cell["python"])
    for project, version in INDEX_OWN_COPIES.items():
        index.add_metadata_only(project, version, None, python="3.11")
    return index


def engine_disk_used(client) -> int:
    return shutil.disk_usage(client.info()["DockerRootDir"]).used


def set_resolver(project: Path, resolver: str) -> None:
    matrix = project / "matrix.yaml"
    text = matrix.read_text()
    matrix.write_text(text.replace("\nsettings:\n", f"\nsettings:\n  resolver: {resolver}\n", 1))


def bench_matrix_locks(client, standin: str) -> None:
    """Every Python 3.11 cell of the shipped matrix locked from index metadata (the stand-in base has Python 3.11
    only), then the CUDA 13.0 cell again, warm, after an app.in change: with uv (the default), then with pip-tools from
    the same starting point (the lock as it was before that change). Then the same cell's torch stage is built on
    that base: the lock before issue 14 built it and ran pip-compile in it, so that lock is this one plus that build."""
    cells = shipped_cells("3.11")
    project = project_copy()
    for cell in cells:
        (project / "locks" / f"{cell['name']}.txt").unlink(missing_ok=True)
    index = metadata_index(cells)
    base = fresh_base(client, standin, "locks-base")
    try:
        with index:
            overrides = overrides_for(base, index)
            used = engine_disk_used(client)
            whole = timed(cli(project, "lock", "--python", "3.11", "-j", "2", *overrides))
            grown = engine_disk_used(client) - used
            row(f"whole shipped matrix locked ({len(cells)} Python 3.11 cells, -j 2) / 10 min", whole / 600,
                f"{whole:.0f} s, disk +{grown / 1e6:.0f} MB", "< 1, and < 1 GB of disk")
            layer = project / "requirements" / f"{CUDA.layer}.in"
            layer.write_text(layer.read_text() + "packaging>=24\n")
            lock = project / "locks" / f"{CUDA.cell}.txt"
            before = lock.read_bytes()
            warm = timed(cli(project, "lock", *cell_args(CUDA), *overrides))
            row(f"one CUDA cell ({CUDA.cell}) locked warm with uv, after an app.in change / 30 s", warm / 30,
                f"{warm:.1f} s", "< 1")
            uv_pins = pinned(lock.read_text())
            lock.write_bytes(before)
            set_resolver(project, "pip-tools")
            tools = timed(cli(project, "lock", *cell_args(CUDA), *overrides))
            row("that warm lock with uv / the same lock with pip-tools (same inputs, same starting point)",
                warm / tools, f"{warm:.1f} s / {tools:.1f} s", "< 1 (uv is the default)")
            same = pinned(lock.read_text()) == uv_pins
            note(f"uv and pip-tools pinned {'the same' if same else 'different'} versions in that lock "
                 f"({len(uv_pins)} pins)")
        stage = build_torch_stage(client, base)
        row("that warm lock / the torch-stage lock of the same cell (the lock plus building its torch stage)",
            warm / (warm + stage), f"{warm:.1f} s / ({warm:.1f} s + {stage:.1f} s)", "informative")
    finally:
        shutil.rmtree(project, ignore_errors=True)
        remove_image(client, "gpumatrix-bench:torch-stage")
        remove_descendants(client, base)


def build_torch_stage(client, base: str) -> float:
    """The CUDA 13.0 cell's torch stage, from its committed Dockerfile, on a base whose base stage is built: torch
    and torchvision (the real CUDA builds, relabelled +cu130) from a loopback index, downloads not cached."""
    index = LoopbackIndex(CACHE / CUDA.index_dir)
    index.fill(CUDA.wheels, local_version=CUDA.local_version, log=log)
    drop_other_versions(index, CUDA.sole_versions)
    timed(["docker", "buildx", "prune", "-f", "--filter", "type=exec.cachemount"])  # the base stage stays cached
    with index, tempfile.TemporaryDirectory() as context:
        return timed(["docker", "buildx", "build", "--progress=plain", "--load", "--target", "torch",
                      "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
                      "--build-arg", f"TORCH_INDEX_URL={index.url}", "-t", "gpumatrix-bench:torch-stage",
                      "-f", str(ROOT / "docker" / CUDA.cell / "Dockerfile"), context])


def installer_script(tool: str, index: str) -> str:
    """Install the torch stage and then the app lock into a fresh venv; print three timestamps.

    uv compiles bytecode, as pip does, and installs the lock with --no-deps, as the build asks it to."""
    pip = "uv pip" if tool == "uv" else "pip"
    compile_flag = " --compile-bytecode" if tool == "uv" else ""
    no_deps = " --no-deps" if tool == "uv" else ""
    # The venv gets the image's pip: the one ensurepip bundles with Debian's Python 3.11 rejects wheels whose
    # metadata is newer than it knows (typing_extensions 4.16.0: Metadata-Version 2.4) as "no matching distribution".
    return ((f"pip install -q uv=={DEFAULT_SETTINGS.uv} && " if tool == "uv" else "")
            + "python -m venv /tmp/e && source /tmp/e/bin/activate && "
            f"python -m pip install -q pip==$({layout.VENV_PYTHON} -m pip --version | cut -d' ' -f2) && "
            "date +%s.%N && "
            f"{pip} install -q{compile_flag} --index-url {index} torch==2.13.0+cpu && date +%s.%N && "
            "pip freeze --exclude pip > /tmp/c.txt && "
            f"{pip} install -q{compile_flag}{no_deps} --require-hashes -c /tmp/c.txt -r {layout.LOCK_IN_IMAGE} && date +%s.%N && "
            "pip check >/dev/null")


def bench_installers(client, image_ref: str, index: str) -> None:
    """pip against `uv pip install` for the torch and the app stage, each in a fresh venv inside the built image."""
    results = {}
    for tool in ("pip", "uv"):
        out = client.containers.run(image_ref, ["bash", "-c", installer_script(tool, index)], remove=True,
                                    network_mode="host", environment={"PIP_CONSTRAINT": "",
                                                                      "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"})
        start, mid, end = (float(x) for x in out.decode().split()[-3:])
        results[tool] = (mid - start, end - mid)
    (pt, pa), (ut, ua) = results["pip"], results["uv"]
    row("uv / pip, torch stage install", ut / pt, f"{ut:.1f} s / {pt:.1f} s", "informative")
    row("uv / pip, app layer install (hashes + constraints)", ua / pa, f"{ua:.1f} s / {pa:.1f} s", "informative")


def descends_from(client, image_id: str, ancestor: str, parents: dict[str, str]) -> bool:
    while image_id:
        if image_id == ancestor:
            return True
        if image_id not in parents:
            try:
                parents[image_id] = client.api.inspect_image(image_id).get("Parent", "")
            except docker.errors.NotFound:  # removed meanwhile (another run's cleanup)
                return False
        image_id = parents[image_id]
    return False


def remove_descendants(client, base_tag: str) -> None:
    """Remove every image built on a base copy of this run (tagged, locktools, dangling stages), then the copy."""
    try:
        ancestor = client.images.get(base_tag).id
    except docker.errors.ImageNotFound:
        return
    parents: dict[str, str] = {}
    images = sorted(client.images.list(), key=lambda i: i.attrs["Created"], reverse=True)  # children first
    for image in images:
        if image.id != ancestor and descends_from(client, image.id, ancestor, parents):
            remove_image(client, image.id)
    remove_image(client, base_tag)


def remove_image(client, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        log(f"could not remove {ref}: {exc.explanation}")


def print_table(mode: Mode) -> None:
    print(f"cell {mode.cell}, stand-in base, loopback torch index")
    print("| figure | ratio | raw | target |")
    print("|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    for text in NOTES:
        print(f"- {text}")


def run(client, mode: Mode, args: argparse.Namespace) -> None:
    standin = ensure_standin_base(client, CACHE, log=log)
    if args.only_locks:
        bench_matrix_locks(client, standin)
        return
    index = LoopbackIndex(CACHE / mode.index_dir)
    index.fill(mode.wheels, local_version=mode.local_version, log=log)
    drop_other_versions(index, mode.sole_versions)
    if args.only_extensions:
        try:
            with index:
                bench_extension(client, standin, index)
        finally:
            remove_bench_tags(client)
        return
    project = project_copy()
    try:
        with index:
            if not mode.committed_lock:
                lock_uncommitted_cell(client, mode, project, standin, index)
            if args.only_runners:
                bench_two_runners(client, mode, project, standin, index)
                return
            base = fresh_base(client, standin, "base")
            overrides, make_vars = overrides_for(base, index), make_vars_for(base, index)
            bench_list_render()
            image_ref = bench_builds(client, mode, project, overrides, make_vars)
            size = bench_size(client, image_ref, base)
            if mode is CPU and not args.skip_installers:
                bench_installers(client, image_ref, index.url)
            if not args.skip_naive:
                bench_naive(client, mode, project, base, index.url, size)
            bench_lock(client, mode, project, overrides)
            if mode is CPU and not args.skip_locks:
                bench_matrix_locks(client, standin)
            bench_shared_stage(client, mode, project, standin, index)
            bench_builders(client, mode, project, standin, index)
            if not args.skip_runners:
                bench_two_runners(client, mode, project, standin, index)
            if mode is CUDA:
                bench_extension(client, standin, index)
    finally:
        shutil.rmtree(project, ignore_errors=True)
        remove_image(client, "gpumatrix-bench:naive")
        for tag in ("gpumatrix-bench:base", "gpumatrix-bench:lock-base", "gpumatrix-bench:flavour-lock-base",
                    "gpumatrix-bench:shared-one", "gpumatrix-bench:shared-two"):
            remove_descendants(client, tag)
        remove_bench_tags(client)


def remove_bench_tags(client) -> None:
    """Images BuildKit built have no parent chain to follow from the base: every tag of the bench's registry goes."""
    remove_tags_of(client, REGISTRY)


def remove_tags_of(client, registry: str) -> None:
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"{registry}/"):
                remove_image(client, tag)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help=f"measure the CUDA 13.0 cell {CUDA.cell} instead")
    parser.add_argument("--skip-installers", action="store_true", help="leave out the pip/uv comparison (CPU)")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive single-stage build")
    parser.add_argument("--skip-runners", action="store_true", help="leave out the two CI runners")
    parser.add_argument("--only-locks", action="store_true",
                        help="measure only the locks of the shipped matrix (the --skip-locks part; CPU)")
    parser.add_argument("--skip-locks", action="store_true",
                        help="leave out locking the shipped matrix's Python 3.11 cells (CPU; the real resolvers against "
                             "PyPI, and the CUDA 13.0 torch stage built once)")
    parser.add_argument("--only-runners", action="store_true",
                        help="measure only the two CI runners (with --cuda: on the CUDA 13.0 cell)")
    parser.add_argument("--only-extensions", action="store_true",
                        help="measure only the cell with a compiled extension (the CUDA 13.0 cell with the tests' "
                             "demo kernel; implies --cuda)")
    args = parser.parse_args()
    mode = CUDA if args.cuda or args.only_extensions else CPU
    try:
        run(engine.connect(), mode, args)
    except (BenchError, StandinError, UsageError, engines.EngineError) as exc:
        return failed(mode, str(exc))
    except docker.errors.DockerException as exc:
        return failed(mode, f"Docker engine: {exc}")
    print_table(mode)
    return 0


def failed(mode: Mode, reason: str) -> int:
    """Say why in one message, after the figures measured before the failure."""
    if ROWS:
        print_table(mode)
    print(f"bench: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
