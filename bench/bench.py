"""`make bench`: time and size figures of the build pipeline, each printed as a ratio with its raw numbers.

Everything is measured side by side in one run, on the CPU cell of the shipped matrix built against the stand-in
base and the loopback torch index (the same stand-ins `make demo` and the tests use), through the commands users
run (`make image`, `build.py lock`, `build.py build`). See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpumatrix import engine  # noqa: E402
from gpumatrix.standins import LoopbackIndex, ensure_standin_base  # noqa: E402

CACHE = ROOT / ".cache"
CELL = "cpu-py3.11-torch2.13.0"
ROWS: list[tuple[str, str, str, str]] = []


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def timed(cmd: list[str], cwd: Path = ROOT) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:4])} ... failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def row(what: str, ratio: float, raw: str, target: str) -> None:
    ROWS.append((what, f"{ratio:.3f}", raw, target))
    log(f"{what}: {ratio:.3f} ({raw}; target {target})")


def project_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="gpumatrix-bench-"))
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(ROOT / name, root / name)
    shutil.copy(ROOT / "matrix.yaml", root / "matrix.yaml")
    return root


def cli(project: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "build.py"), "--matrix", str(project / "matrix.yaml"), *args]


def bench_list_render() -> None:
    for name, args in (("list", ["list", "--format", "json"]), ("render --check", ["render", "--check"])):
        seconds = statistics.median(timed([sys.executable, "build.py", *args]) for _ in range(3))
        row(f"`{name}` of the shipped matrix / 1 s", seconds, f"{seconds:.2f} s, median of 3", "< 1")


def fresh_base(client, base: str) -> str:
    """A copy of the stand-in base with an image id of its own, so the first build of this run is truly cold
    (`--no-cache` would start a second chain of layers beside the cached one, and later builds may follow either)."""
    container = client.containers.create(base, ["true"])
    try:
        container.commit(repository="gpumatrix-bench", tag="base",
                                 changes=[f"LABEL io.gpumatrix.bench={time.time_ns()}"])
    finally:
        container.remove(force=True)
    return "gpumatrix-bench:base"


def bench_builds(project: Path, overrides: list[str], make_vars: list[str]) -> tuple[float, str]:
    cold = timed(cli(project, "build", "--cuda", "cpu", *overrides))
    noop = timed(["make", "-s", "image", f"MATRIX={project / 'matrix.yaml'}", "CUDA=cpu", *make_vars])
    row("no-op `make image` (content tag present) / cold build", noop / cold,
        f"{noop:.2f} s / {cold:.1f} s", "<= 0.05 and < 2 s")
    layer = project / "requirements" / "cpu.in"
    layer.write_text(layer.read_text() + "packaging>=24\n")
    timed(cli(project, "lock", "--cuda", "cpu", *overrides))
    warm = timed(cli(project, "build", "--cuda", "cpu", *overrides))
    row("rebuild after only the app lock changed / cold build", warm / cold, f"{warm:.1f} s / {cold:.1f} s", "<= 0.15")
    report = json.loads((project / "out" / "build-report.json").read_text())["cells"][0]
    return cold, report["tags"][0]


def bench_size(client, image_ref: str, runtime_base: str) -> int:
    image = client.images.get(image_ref)
    env_bytes = int(client.containers.run(image_ref, ["bash", "-c", "du -sb /opt/venv /opt/gpumatrix | "
                                                      "awk '{s+=$1} END {print s}'"], remove=True).decode())
    base_bytes = client.images.get(runtime_base).attrs["Size"]
    size = image.attrs["Size"]
    row("final image / (environment + runtime base)", size / (env_bytes + base_bytes),
        f"{size / 1e6:.0f} MB / ({env_bytes / 1e6:.0f} MB + {base_bytes / 1e6:.0f} MB)", "<= 1.10")
    return size


NAIVE = """\
# The seed's audited pattern: one stage on the devel base; torch first, then a requirements file naming torch again.
FROM {base}
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install numpy
RUN pip install --index-url {index} torch==2.13.0+cpu
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
"""


def bench_naive(client, project: Path, base: str, index: str, size: int) -> None:
    lock = (project / "locks" / f"{CELL}.txt").read_text()
    names = [line.split(" ")[0] for line in lock.splitlines() if "==" in line and not line.startswith("#")]
    requirements = "\n".join(["torch==2.13.0", *names]) + "\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", NAIVE.format(base=base, index=index)), ("requirements.txt", requirements)):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    context.seek(0)
    started = time.perf_counter()
    for chunk in client.api.build(fileobj=context, custom_context=True, tag="gpumatrix-bench:naive",
                                  network_mode="host", rm=True, decode=True, nocache=True):
        if "error" in chunk:
            sys.exit(f"bench: naive build failed: {chunk['error']}")
    elapsed = time.perf_counter() - started
    naive = client.images.get("gpumatrix-bench:naive").attrs["Size"]
    row("final image / naive single-stage build of the same packages", size / naive,
        f"{size / 1e6:.0f} MB / {naive / 1e6:.0f} MB (naive built in {elapsed:.0f} s)", "<= 0.6 for a CUDA cell")


def bare_pip_compile(client, tools_image: str, inputs: str) -> float:
    script = ("mkdir -p /tmp/b && cd /tmp/b && cat > cpu.in <<'EOF'\n" + inputs + "EOF\n"
              "/tmp/gpumatrix-tools/bin/pip-compile --quiet --generate-hashes -o lock.txt cpu.in")
    container = client.containers.run(tools_image, ["sleep", "infinity"], detach=True, network_mode="host",
                                      entrypoint=[])
    try:
        started = time.perf_counter()
        code, output = container.exec_run(["bash", "-c", script])
        elapsed = time.perf_counter() - started
    finally:
        container.remove(force=True)
    if code != 0:
        sys.exit(f"bench: bare pip-compile failed: {output.decode()[-2000:]}")
    return elapsed


def bench_lock(client, project: Path, overrides: list[str]) -> None:
    """Both in turn, three times each (PyPI's response times vary); the torch stage and pip-tools are cached."""
    timed(cli(project, "lock", "--cuda", "cpu", *overrides))
    tools = sorted(client.images.list(name="gpumatrix-locktools"), key=lambda i: i.attrs["Created"])[-1]
    inputs = (project / "requirements" / "cpu.in").read_text()
    ours, bare = [], []
    for _ in range(3):
        ours.append(timed(cli(project, "lock", "--cuda", "cpu", *overrides)))
        bare.append(bare_pip_compile(client, tools.id, inputs))
    o, b = statistics.median(ours), statistics.median(bare)
    row("`build.py lock` of one cell / bare pip-compile in the same container", o / b,
        f"{o:.1f} s / {b:.1f} s, medians of 3", "<= 1.5")


def installer_script(tool: str, index: str) -> str:
    """Install the torch stage and then the app lock into a fresh venv; print three timestamps."""
    pip = "uv pip" if tool == "uv" else "pip"
    return (("pip install -q uv && " if tool == "uv" else "")
            + "python -m venv /tmp/e && source /tmp/e/bin/activate && date +%s.%N && "
            f"{pip} install -q --index-url {index} torch==2.13.0+cpu && date +%s.%N && "
            "pip freeze --exclude pip > /tmp/c.txt && "
            f"{pip} install -q --require-hashes -c /tmp/c.txt -r /opt/gpumatrix/app.lock && date +%s.%N && "
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
    row("uv / pip, app stage install (hashes + constraints)", ua / pa, f"{ua:.1f} s / {pa:.1f} s", "informative")


def print_table() -> None:
    print("| figure | ratio | raw | target |")
    print("|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-installers", action="store_true", help="leave out the pip/uv comparison")
    args = parser.parse_args()
    client = engine.connect()
    base = fresh_base(client, ensure_standin_base(client, CACHE, log=log))
    index = LoopbackIndex(CACHE / "index-cpu")
    index.fill(["torch==2.13.0"], log=log)
    project = project_copy()
    with index:
        overrides = ["--base-image", base, "--runtime-image", base, "--index-url", index.url, "--network", "host"]
        make_vars = [f"BASE_IMAGE={base}", f"RUNTIME_IMAGE={base}", f"INDEX_URL={index.url}", "NETWORK=host"]
        bench_list_render()
        _, image_ref = bench_builds(project, overrides, make_vars)
        size = bench_size(client, image_ref, base)
        bench_naive(client, project, base, index.url, size)
        bench_lock(client, project, overrides)
        if not args.skip_installers:
            bench_installers(client, image_ref, index.url)
    shutil.rmtree(project, ignore_errors=True)
    for tag in ("gpumatrix-bench:naive", "gpumatrix-bench:base"):
        client.images.remove(tag, force=True)
    print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
