"""A real registry on a loopback port: Debian's docker-registry (distribution v2), for tests and the demo."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry serving `storage` on 127.0.0.1:<free port>; htpasswd authentication when users are given.

    Manifest DELETE is enabled (a test plays a tag that vanished). Use it as a context manager, or call stop().
    """

    def __init__(self, workdir: Path, storage: Path, users: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.addr}"
        self.storage = storage
        self.log = workdir / f"registry-{self.port}.log"
        config = [
            "version: 0.1",
            "log: {level: info}",
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}",
            f"http: {{addr: {self.addr}, secret: test-only-secret}}",
        ]
        if users:
            htpasswd = workdir / f"htpasswd-{self.port}"
            for i, (user, password) in enumerate(users.items()):
                flags = "-Bbc" if i == 0 else "-Bb"
                subprocess.run(["htpasswd", flags, str(htpasswd), user, password], check=True, capture_output=True)
            config.append(f"auth: {{htpasswd: {{realm: gpumatrix-test, path: {htpasswd}}}}}")
        self.config = workdir / f"registry-{self.port}.yml"
        self.config.write_text("\n".join(config) + "\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)],
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def uploads_started(self, repository: str = "gpu-images") -> bool:
        uploads = self.storage / "docker" / "registry" / "v2" / "repositories" / repository / "_uploads"
        return uploads.is_dir() and any(uploads.iterdir())

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
