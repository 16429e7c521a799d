"""Containers in tests: those a test starts itself (TrackedContainers: labelled with the test, always removed), and
those gpumatrix started (product_containers)."""

from __future__ import annotations

import os

import docker

TEST_LABEL = "io.gpumatrix.test"  # the node id of the test that started the container
SESSION_LABEL = "io.gpumatrix.test.pid"  # the pytest process: other sessions may share the engine


class TrackedContainers:
    """The containers of one test, like docker-stacks' TrackedContainer: each carries the test's labels, and
    remove_all() (the `containers` fixture calls it when the test ends, passed or failed) removes every container
    with those labels, including one whose start failed after the engine had created it."""

    def __init__(self, client, test_id: str):
        self.client = client
        self.labels = {TEST_LABEL: test_id, SESSION_LABEL: str(os.getpid())}

    def start(self, image: str, command=("sleep", "infinity"), network: str = "none"):
        """A running container of `image` (its entrypoint cleared), for `docker exec`."""
        return self.client.containers.run(image, list(command), entrypoint=[], detach=True, network_mode=network,
                                          labels=self.labels)

    def run_in(self, image: str, command: str | list[str], network: str = "none") -> str:
        """The stdout of `command` (a string runs in bash -c) in a fresh container of `image`; asserts exit 0.

        It runs through exec in a started container: the logs of a container that exits at once can come back
        empty (dockerd 20.10 returned '' for a `cat` once)."""
        argv = ["bash", "-c", command] if isinstance(command, str) else command
        box = self.start(image, network=network)
        try:
            code, (out, err) = box.exec_run(argv, demux=True)
        finally:
            box.remove(force=True)
        assert code == 0, f"{argv} exited {code}: {(err or out or b'').decode()[-3000:]}"
        return (out or b"").decode()

    def remove_all(self) -> None:
        wanted = [f"{key}={value}" for key, value in self.labels.items()]
        for container in self.client.containers.list(all=True, sparse=True, filters={"label": wanted}):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:  # gone already
                pass


def product_containers(client, role: str, pid: int | None = None, image: str | None = None) -> list:
    """The containers gpumatrix started as `role` (lock, imagetest, sbom), only those of gpumatrix process `pid` or of
    `image` when given: other runs may share the engine."""
    filters: dict = {"label": [f"io.gpumatrix.role={role}", *([f"io.gpumatrix.pid={pid}"] if pid else [])]}
    if image:
        filters["ancestor"] = image
    return client.containers.list(all=True, sparse=True, filters=filters)
