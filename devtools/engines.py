"""A second Docker engine of a test's (or the bench's) own: a dockerd on its own socket, data root, exec root and bridge, so what a
test does to it (kill it, fill its disk, build on it as a fresh CI runner would) cannot disturb the engine the rest of
the suite uses. (Not `--bridge=none`: a dockerd started with it deletes the `docker0` interface, which the first
engine's containers need.)"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker




class EngineError(Exception):
    """The second engine could not be started or set up."""


class Engine:
    """A dockerd on a socket of its own; `kill` is SIGKILL (a crash), `start` brings it back on the same data."""

    def __init__(self, root: Path, bridge: str):
        self.root = root
        self.bridge = bridge
        self.data = root / "data"
        self.socket = root / "docker.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> docker.DockerClient:
        log = open(self.root / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.data), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "dockerd.pid"), "-H", self.host,
             "--bridge", self.bridge, "--iptables=false", "--ip6tables=false"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client = docker.DockerClient(base_url=self.host)
                client.ping()
                return client
            except docker.errors.DockerException:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        raise EngineError(f"second dockerd did not start: {(self.root / 'dockerd.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """The engine crashes: dockerd and the containerd it started (which would otherwise outlive it)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        subprocess.run(["pkill", "-KILL", "-f", str(self.root / "exec")], check=False)
        # what a reboot does to /run, where the exec root normally lives: containerd cannot start on stale state
        unmount_under(self.root / "exec")
        shutil.rmtree(self.root / "exec", ignore_errors=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # the containerd that dockerd started lives on after a SIGKILL of dockerd
        subprocess.run(["pkill", "-f", str(self.root / "exec")], check=False)


def unmount_under(path: Path) -> None:
    """Lazily unmount everything mounted at or below `path` (overlay layers, the netns file), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m == str(path) or m.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@contextlib.contextmanager
def second_engine(standin_base: str, main_client, bridge: str, bridge_cidr: str, tmpfs_size: str | None = None,
                  more_images: tuple[str, ...] = ()):
    """A fresh dockerd (own socket, data root, exec root and bridge) holding only the stand-in base (and
    `more_images`, such as the devel stand-in): another machine, as far as images and build cache go.
    Yields (Engine, client)."""
    if not shutil.which("dockerd"):
        raise EngineError("dockerd not found: apt-get install docker.io")
    root = Path(tempfile.mkdtemp(prefix="gm-engine-", dir="/tmp"))  # short: unix socket paths are limited
    engine = Engine(root, bridge)
    engine.data.mkdir()
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("addr", "add", bridge_cidr, "dev", bridge)
        ip("link", "set", bridge, "up")
        if tmpfs_size:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", str(engine.data)], check=True)
        client = engine.start()
        for image in (standin_base, *more_images):
            client.images.load(b"".join(main_client.images.get(image).save(named=True)))
        yield engine, client
    finally:
        engine.stop()
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        ip("link", "delete", bridge)


def ip(*args: str) -> None:
    if not shutil.which("ip"):
        raise EngineError("ip not found: apt-get install iproute2")
    subprocess.run(["ip", *args], check=True, capture_output=True)
