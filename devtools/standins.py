"""Local stand-ins for Docker Hub's nvidia/cuda bases and the PyTorch wheel index.

Neither Docker Hub nor download.pytorch.org can be reached here, so tests and
``make demo`` build on a debootstrapped Debian image and install torch from a
PEP 503 index served on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import hashlib
import html
import http.server
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import re
import urllib.parse
import zipfile
from typing import Callable, Iterator

import docker
import requests
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from gpumatrix import engine, lockfile
from gpumatrix.project import write_atomic

RECIPE_VERSION = "1"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3.11", "python3-pip", "python3-venv", "ca-certificates")
REPOSITORY = "gpumatrix-standin"
KEY_LABEL = "io.gpumatrix.standin.key"
CA_IN_IMAGE = "etc/ssl/certs/ca-certificates.crt"
DEFAULT_HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
IMAGE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
)
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
PYPI = "https://pypi.org"
PYPI_SIMPLE = f"{PYPI}/simple"
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)

Log = Callable[[str], None]


class StandinError(Exception):
    """A stand-in could not be built or filled."""


# --- stand-in base image ---------------------------------------------------


def host_ca_bundle() -> pathlib.Path:
    """The CA bundle this machine's TLS clients trust (PIP_CERT wins)."""
    return pathlib.Path(os.environ.get("PIP_CERT") or DEFAULT_HOST_CA)


def standin_key(ca_bytes: bytes) -> str:
    """First 16 hex of a sha256 over everything that shapes the image."""
    digest = hashlib.sha256()
    for part in (SUITE, MIRROR, ",".join(PACKAGES), RECIPE_VERSION):
        digest.update(part.encode() + b"\0")
    digest.update(ca_bytes)
    return digest.hexdigest()[:16]


def ensure_standin_base(
    client: docker.DockerClient, cache_dir: pathlib.Path, log: Log = print
) -> str:
    """Return the tag of the stand-in base image, building it on a cache miss."""
    ca_bytes = host_ca_bundle().read_bytes()
    key = standin_key(ca_bytes)
    tag = f"{REPOSITORY}:{SUITE}-{key}"
    if engine.present(client, tag) is not None:
        log(f"stand-in base {tag}: cache hit")
        return tag
    if shutil.which("debootstrap") is None:
        raise StandinError("debootstrap not found: apt-get install debootstrap")
    cache_dir.mkdir(parents=True, exist_ok=True)
    rootfs = pathlib.Path(tempfile.mkdtemp(prefix="standin-rootfs-", dir=cache_dir))
    try:
        _debootstrap(rootfs, log)
        _configure_rootfs(rootfs, ca_bytes)
        _import_rootfs(client, rootfs, tag, key, log)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    log(f"stand-in base {tag}: built")
    return tag


def _debootstrap(rootfs: pathlib.Path, log: Log) -> None:
    """Run debootstrap, logging the first line of each phase and keeping the tail."""
    cmd = [
        "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        SUITE, str(rootfs), MIRROR,
    ]
    log(f"debootstrap {SUITE} into {rootfs} (about a minute)")
    tail: collections.deque[str] = collections.deque(maxlen=20)
    phases_seen: set[str] = set()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            phase = line.split(" ", 2)[1] if line.startswith("I: ") else line
            if phase not in phases_seen:
                phases_seen.add(phase)
                log(f"  {line}")
    if proc.returncode != 0:
        raise StandinError(
            f"debootstrap failed (exit {proc.returncode}):\n" + "\n".join(tail)
        )


def _configure_rootfs(rootfs: pathlib.Path, ca_bytes: bytes) -> None:
    """Trust the host's CAs, point pip at them and drop apt caches."""
    ca_path = rootfs / CA_IN_IMAGE
    ca_path.unlink(missing_ok=True)  # never write through a symlink onto the host
    ca_path.write_bytes(ca_bytes)
    (rootfs / "etc/pip.conf").write_text(PIP_CONF)
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin",
                    "var/cache/apt/archives/*.deb"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def _import_rootfs(
    client: docker.DockerClient, rootfs: pathlib.Path, tag: str, key: str, log: Log
) -> None:
    """Stream a tar of the rootfs into the engine as a tagged image."""
    log(f"importing {rootfs} as {tag}")
    repository, image_tag = tag.split(":", 1)
    changes = [*IMAGE_CHANGES, f"LABEL {KEY_LABEL}={key}"]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        client.api.import_image_from_data(
            _chunks(tar.stdout), repository=repository, tag=image_tag, changes=changes
        )
    except docker.errors.APIError as exc:
        raise StandinError(f"docker import of {rootfs} failed: {exc}") from exc
    finally:
        tar.stdout.close()
        stderr = tar.stderr.read().decode(errors="replace")
        tar.wait()
    if tar.returncode != 0:
        client.images.remove(tag, force=True)
        raise StandinError(f"tar of {rootfs} failed: {stderr}")


def _chunks(stream, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


# --- stand-in CUDA devel base ------------------------------------------------
#
# nvidia/cuda:13.0.x-devel-ubuntu24.04 cannot be pulled here. What a torch CUDAExtension build needs of it is g++,
# the Python headers and a CUDA toolkit at /usr/local/cuda; NVIDIA publishes the toolkit's compiler pieces as wheels
# on PyPI (nvidia/cu13/{bin,include,lib,nvvm}), so the devel stand-in is the stand-in base plus those, laid out as
# the real image lays out its toolkit. ccache and ninja are left out on purpose: the product installs them itself.

DEVEL_RECIPE_VERSION = "1"
DEVEL_APT_PACKAGES = ("g++", "python3.11-dev")
CUDA_PYPI_PINS = (
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
)
CUDA_PYPI_TARGET = "/opt/nvidia-cuda"  # pip install --target; the toolkit lands in <target>/nvidia/cu13
CUDA_VERSION_DIR = "/usr/local/cuda-13.0"  # the real image's versioned directory; /usr/local/cuda points at it
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the classic builder colours a step's stderr


def standin_devel_key(base: str) -> str:
    """First 16 hex of a sha256 over the base reference and everything the devel recipe adds to it."""
    digest = hashlib.sha256()
    for part in (base, DEVEL_RECIPE_VERSION, ",".join(DEVEL_APT_PACKAGES), ",".join(CUDA_PYPI_PINS),
                 CUDA_PYPI_TARGET, CUDA_VERSION_DIR):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def devel_dockerfile(base: str, key: str) -> str:
    """The devel stand-in's Dockerfile: compilers, the CUDA wheels and the symlinks that make them a toolkit.

    /usr/local/cuda -> cuda-13.0 -> <target>/nvidia/cu13, as in the real image, so that nvcc is found on PATH and
    torch.utils.cpp_extension finds the toolkit at /usr/local/cuda without CUDA_HOME. The wheels ship only
    lib/libcudart.so.13: the linker needs libcudart.so for -lcudart, and both nvcc.profile and cpp_extension look in
    lib64 (-L$(TOP)/lib64, CUDA_HOME/lib64), so lib64 -> lib. The cccl headers (include/cccl) stay where they are:
    nvcc.profile puts them on nvcc's include path itself, as in the real CUDA 13 toolkit.
    The last RUN compiles and links a kernel, so a broken toolkit fails here rather than in a test.
    """
    cuda = f"{CUDA_PYPI_TARGET}/nvidia/cu13"
    smoke = ("printf '#include <cuda/std/cstdint>\\n__global__ void k(float *x) { x[threadIdx.x] += 1; }\\n"
             "int main() { return 0; }\\n' > /tmp/smoke.cu")
    return "\n".join([
        f"FROM {base}",
        "RUN apt-get update \\",
        f" && apt-get install -y --no-install-recommends {' '.join(DEVEL_APT_PACKAGES)} \\",
        " && rm -rf /var/lib/apt/lists/*",
        "RUN python3.11 -m pip install --no-cache-dir --no-compile --disable-pip-version-check \\",
        f"      --target {CUDA_PYPI_TARGET} {' '.join(CUDA_PYPI_PINS)} \\",
        f" && ln -s {cuda} {CUDA_VERSION_DIR} \\",
        f" && ln -s {CUDA_VERSION_DIR.rsplit('/', 1)[1]} /usr/local/cuda \\",
        " && ln -s libcudart.so.13 /usr/local/cuda/lib/libcudart.so \\",
        " && ln -s lib /usr/local/cuda/lib64",
        "ENV PATH=/usr/local/cuda/bin:${PATH}",
        f"RUN {smoke} \\",
        " && nvcc --version \\",
        " && nvcc -gencode arch=compute_80,code=sm_80 -o /tmp/smoke /tmp/smoke.cu \\",
        " && rm -f /tmp/smoke /tmp/smoke.cu",
        f"LABEL {KEY_LABEL}={key}",
        "",
    ])


def ensure_standin_devel_base(
    client: docker.DockerClient, cache_dir: pathlib.Path, base: str, log: Log = print
) -> str:
    """Return the tag of the devel stand-in built on `base` (ensure_standin_base's tag), building it on a cache miss.

    It plays nvidia/cuda:13.0.x-devel-ubuntu24.04 for builds of torch CUDA extensions (no GPU needed to compile).
    A failed build's whole log is kept in cache_dir; the error quotes its tail.
    """
    key = standin_devel_key(base)
    tag = f"{REPOSITORY}:devel-{key}"
    if engine.present(client, tag) is not None:
        log(f"stand-in devel base {tag}: cache hit")
        return tag
    log(f"building stand-in devel base {tag} on {base} (about 20 s: apt, then ~105 MB of CUDA wheels from PyPI)")
    _build_devel(client, cache_dir, devel_dockerfile(base, key), tag)
    log(f"stand-in devel base {tag}: built")
    return tag


def _build_devel(client: docker.DockerClient, cache_dir: pathlib.Path, dockerfile: str, tag: str) -> None:
    """Build from an in-memory Dockerfile (no context); on failure keep the log and raise with its last lines."""
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        text = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
        lines = [line.rstrip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
        cache_dir.mkdir(parents=True, exist_ok=True)
        log_path = cache_dir / f"standin-{tag.split(':', 1)[1]}.build.log"
        log_path.write_text("\n".join(lines) + "\n")
        raise StandinError(
            f"build of the stand-in devel base {tag} failed ({exc.msg}); full log in {log_path}:\n"
            + "\n".join(lines[-20:])
        ) from None
    except docker.errors.APIError as exc:
        raise StandinError(f"build of the stand-in devel base {tag} failed: {exc}") from None


# --- loopback wheel index --------------------------------------------------


def index_requirements(lock: pathlib.Path) -> list[str]:
    """What a loopback index must hold for the cell whose lock is `lock`: torch plus the other torch-stage pins.

    The lock's `# torch-stage:` header lines (read with the product's reader, lockfile.torch_stage_pins) name what
    the torch stage installs. torch is asked for by its public version (`torch==2.13.0` for a lock's 2.13.0+cpu):
    that specifier matches the 2.13.0+cpu wheel on local disk that `pip download` in LoopbackIndex.fill finds, as
    well as an unlabelled wheel that fill(local_version=...) relabels. The others are pinned at the lock's versions:
    filled with bare `torch==2.13.0`, the index would take the newest filelock, fsspec, ... from PyPI on the day it
    is filled, and the torch stage would drift from the lock's torch-stage lines with the next release of any of
    them (the image checks then fail, rightly). The real PyTorch index serves copies that do not move like that.
    """
    try:
        pins = lockfile.torch_stage_pins(lock.read_text())
    except OSError as exc:
        raise StandinError(f"cannot read the lock {lock}: {exc.strerror or exc}") from None
    torch = [version for name, version in pins.items() if canonicalize_name(name) == "torch"]
    if not torch:
        raise StandinError(f"{lock} has no `# torch-stage: torch==...` line; is it a gpumatrix lock?")
    public = Version(torch[0]).public
    return [f"torch=={public}",
            *(f"{name}=={version}" for name, version in pins.items() if canonicalize_name(name) != "torch")]


class LoopbackIndex:
    """A PEP 503 simple index on 127.0.0.1 (or another address of this host), served from a directory of wheels."""

    def __init__(self, root: pathlib.Path, port: int = 0, fallback: str | None = None, host: str = "127.0.0.1"):
        """fallback: an index (e.g. PYPI_SIMPLE) that a project page this index does not hold is redirected to.
        host: the address served on; the engine's bridge gateway reaches build steps in the default network."""
        self.root = pathlib.Path(root)
        self.port = port
        self.host = host
        self.fallback = fallback
        self.requests: list[str] = []
        self.users: list[str] = []  # the basic-auth user of each request that carried one (pip sends an index URL's)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def files_dir(self) -> pathlib.Path:
        return self.root / "files"

    @property
    def url(self) -> str:
        if self._server is None:
            raise StandinError("index not started")
        return f"http://{self.host}:{self._server.server_address[1]}/simple"

    def fill(self, requirements: list[str], python_version: str = "3.11",
             log: Log = print, local_version: dict[str, str] | None = None) -> None:
        """Download wheels (and dependencies) for a Linux x86_64 CPython with host pip.

        local_version={"torch": "cu130"} relabels those projects' wheels that carry no local
        version (PyPI's CUDA build says 2.14.1) as the PyTorch index publishes them (2.14.1+cu130).
        """
        marker = self.root / f".filled-{self._fill_key(requirements, python_version)}"
        if marker.exists():
            log(f"index {self.root}: wheels for {' '.join(requirements)} already there")
            self._relabel(local_version or {}, log)
            return
        self.files_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--dest", str(self.files_dir),
            "--only-binary=:all:", "--python-version", python_version,
            "--implementation", "cp",
            *(f"--platform={platform}" for platform in WHEEL_PLATFORMS),
            *requirements,
        ]
        log(f"index {self.root}: pip download {' '.join(requirements)}")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StandinError(f"pip download failed:\n{tail}")
        marker.touch()
        self._relabel(local_version or {}, log)

    def _relabel(self, local_version: dict[str, str], log: Log) -> None:
        """Give wheels of the named projects a local version (`wheel pack --local-version`), once.

        `wheel pack` renames the .dist-info directory, rewrites Version: in METADATA and regenerates
        RECORD; the relabelled wheel replaces the original in files/, so reruns find it and do nothing.
        """
        wanted = {canonicalize_name(k): v for k, v in local_version.items()}
        for wheel in sorted(self.files_dir.glob("*.whl")):
            name, version, _, _ = parse_wheel_filename(wheel.name)
            local = wanted.get(canonicalize_name(name))
            if local is None or version.local is not None:
                continue
            log(f"index {self.root}: relabelling {wheel.name} as {version}+{local} (about a minute)")
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".relabel-") as tmp:
                for cmd in (["unpack", "--dest", f"{tmp}/unpacked", str(wheel)],
                            ["pack", "--dest-dir", f"{tmp}/packed", "--local-version", local,
                             f"{tmp}/unpacked/{wheel.name.split('-')[0]}-{version}"]):
                    pathlib.Path(f"{tmp}/packed").mkdir(exist_ok=True)
                    result = subprocess.run([sys.executable, "-m", "wheel", *cmd], capture_output=True, text=True)
                    if result.returncode != 0:
                        raise StandinError(f"wheel {cmd[0]} of {wheel.name} failed:\n{result.stderr[-2000:]}")
                (packed,) = pathlib.Path(f"{tmp}/packed").glob("*.whl")
                os.replace(packed, self.files_dir / packed.name)
            wheel.unlink()

    def add_metadata_only(self, project: str, version: str, local: str | None, python: str = "3.11") -> None:
        """Serve `project==version+local` by its metadata alone: PyPI's wheel of that release for this CPython on
        Linux x86_64 (or a pure-Python one), its METADATA relabelled `version+local` as the PyTorch index publishes
        it (local=None: as it is), and a link that carries the real wheel's sha256. No wheel is stored: a resolver
        that reads PEP 658 metadata needs none, and one that downloads the wheel gets a 404. A project served here
        is not redirected to the fallback: this index offers only the versions added."""
        self.files_dir.mkdir(parents=True, exist_ok=True)
        files = _get(f"{PYPI_SIMPLE}/{project}/", {"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]
        release = [f for f in files if f["filename"].endswith(".whl")
                   and parse_wheel_filename(f["filename"])[1] == Version(version)]
        wheel = _wheel_for(release, f"cp{python.replace('.', '')}", f"{project}=={version}")
        label = f"{version}+{local}" if local else version
        relabelled = wheel["filename"].replace(f"-{version}-", f"-{label}-", 1)
        target = self.files_dir / f"{relabelled}.metadata"
        if not target.exists():
            metadata = _wheel_metadata(wheel["url"])
            metadata = re.sub(r"^Version: .*$", f"Version: {label}", metadata, count=1, flags=re.MULTILINE)
            write_atomic(self.files_dir / f"{relabelled}.sha256", wheel["hashes"]["sha256"] + "\n")
            write_atomic(target, metadata)

    @staticmethod
    def _fill_key(requirements: list[str], python_version: str) -> str:
        text = "\n".join([python_version, *sorted(requirements), *WHEEL_PLATFORMS])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def write_pages(self) -> None:
        """(Re)write simple/index.html and one page per project from files/."""
        projects: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
        metadata_only = {meta.with_suffix("") for meta in self.files_dir.glob("*.whl.metadata")
                         if meta.with_suffix(".sha256").exists()}
        for wheel in sorted(set(self.files_dir.glob("*.whl")) | metadata_only):
            name = parse_wheel_filename(wheel.name)[0]
            projects[canonicalize_name(name)].append(wheel)
        for name, wheels in projects.items():
            links = [_anchor(f"../../files/{w.name}#sha256={_wheel_sha256(w)}", w.name, _metadata_sha256(w))
                     for w in wheels]
            write_atomic(self.root / "simple" / name / "index.html",
                          _page(f"Links for {name}", links))
        root_links = [_anchor(f"{name}/", name) for name in sorted(projects)]
        write_atomic(self.root / "simple" / "index.html",
                      _page("Simple index", root_links))

    def start(self) -> str:
        """Write the pages, serve them in a daemon thread and return the URL."""
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.write_pages()
        handler = _handler_for(self)
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="loopback-index", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def record(self, path: str, user: str | None = None) -> None:
        """Note one GET in self.requests and access.log (and its basic-auth user, never the password)."""
        with self._lock:
            self.requests.append(path)
            if user is not None:
                self.users.append(user)
            with open(self.root / "access.log", "a") as log_file:
                log_file.write(f"GET {path}\n")

    def __enter__(self) -> "LoopbackIndex":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _handler_for(index: LoopbackIndex) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(index.root), **kwargs)

        def do_GET(self):
            path = urllib.parse.unquote(self.path)
            index.record(path, _basic_auth_user(self.headers.get("Authorization")))
            project = re.fullmatch(r"/simple/([^/]+)/?", path)
            if index.fallback and project and not (index.root / "simple" / project.group(1)).is_dir():
                self.send_response(302)
                self.send_header("Location", f"{index.fallback.rstrip('/')}/{project.group(1)}/")
                self.end_headers()
                return
            super().do_GET()

        def list_directory(self, path):
            self.send_error(404, "Not Found")

        def log_message(self, format, *args):
            pass

    return Handler


def _basic_auth_user(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(header.split(None, 1)[1]).decode().partition(":")[0]
    except ValueError:
        return None


def _anchor(href: str, text: str, metadata_sha256: str | None = None) -> str:
    """A link; with metadata_sha256, it announces the wheel's METADATA beside it (PEP 658/714), so that a resolver
    reads the metadata and never downloads the wheel, as it does on the PyTorch index and PyPI."""
    meta = (f' data-core-metadata="sha256={metadata_sha256}" data-dist-info-metadata="sha256={metadata_sha256}"'
            if metadata_sha256 else "")
    return f'<a href="{html.escape(href)}"{meta}>{html.escape(text)}</a><br>'


def _metadata_sha256(wheel: pathlib.Path) -> str:
    """Write the wheel's METADATA as `<wheel>.metadata` (PEP 658) once, and return its sha256."""
    target = wheel.with_name(wheel.name + ".metadata")
    if not target.exists():  # a wheel served by its metadata alone always has it
        target.write_bytes(_metadata_in(wheel))
    return hashlib.sha256(target.read_bytes()).hexdigest()


def _page(title: str, links: list[str]) -> str:
    body = "\n".join(links)
    return (
        "<!DOCTYPE html>\n<html><head>"
        '<meta name="pypi:repository-version" content="1.0">'
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _wheel_sha256(wheel: pathlib.Path) -> str:
    """The wheel's sha256: of the file, or as recorded beside the metadata of a wheel served by its metadata alone."""
    recorded = wheel.with_name(wheel.name + ".sha256")
    return recorded.read_text().strip() if recorded.exists() else _sha256(wheel)


def _get(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.get(url, headers=headers, timeout=60, stream=True)
    if response.status_code != 200:
        raise StandinError(f"GET {url}: HTTP {response.status_code}")
    return response


def _wheel_metadata(url: str) -> str:
    """A wheel's METADATA: its PEP 658 file, or, where PyPI serves none, out of the wheel itself (a few MB for the
    companions; torch's own always has one)."""
    response = requests.get(url + ".metadata", timeout=60)
    if response.status_code == 200:
        return response.text
    with tempfile.TemporaryFile() as file:
        for chunk in _get(url).iter_content(1 << 20):
            file.write(chunk)
        return _metadata_in(file).decode()


def _metadata_in(wheel) -> bytes:
    """The .dist-info/METADATA of a wheel (a path or an open file)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return archive.read(name)


def _wheel_for(files: list[dict], python_tag: str, what: str) -> dict:
    """The release's wheel for this CPython (or a pure-Python one) on Linux x86_64."""
    for file in files:
        if not file["filename"].endswith(".whl"):
            continue
        tags = parse_wheel_filename(file["filename"])[3]
        if any(t.interpreter in (python_tag, "py3") and (t.platform == "any" or t.platform.endswith("x86_64"))
               and t.platform.startswith(("manylinux", "linux", "any")) for t in tags):
            return file
    raise StandinError(f"PyPI has no Linux x86_64 wheel of {what} for {python_tag}")


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in _chunks(file):
            digest.update(chunk)
    return digest.hexdigest()


# --- CLI -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.standins")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="ensure the stand-in base image")
    base.add_argument("--cache-dir", type=pathlib.Path, default=pathlib.Path(".cache"))
    index = commands.add_parser("index", help="fill and serve a loopback wheel index")
    index.add_argument("--root", type=pathlib.Path, required=True)
    index.add_argument("--port", type=int, default=0)
    index.add_argument("--lock", type=pathlib.Path, metavar="LOCK",
                       help="a cell's lock (locks/<cell>.txt): hold its torch and torch-stage pins too")
    index.add_argument("requirements", nargs="*", metavar="REQ")
    args = parser.parse_args(argv)
    if args.command == "index" and not (args.requirements or args.lock):
        parser.error("index: give --lock LOCK or at least one REQ")
    try:
        if args.command == "base":
            to_stderr = functools.partial(print, file=sys.stderr)  # stdout: the tag only
            print(ensure_standin_base(docker.from_env(), args.cache_dir, log=to_stderr))
        else:
            from_lock = index_requirements(args.lock) if args.lock else []
            _serve_forever(args.root, args.port, [*from_lock, *args.requirements])
    except StandinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_forever(root: pathlib.Path, port: int, requirements: list[str]) -> None:
    index = LoopbackIndex(root, port)
    index.fill(requirements)
    with index:
        print(f"serving {index.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
