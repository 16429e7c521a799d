"""Run work on a bounded number of daemon threads, with the main thread free to take Ctrl-C and SIGTERM.

ThreadPoolExecutor joins its workers at exit, so an interrupted build would run to its end first. Daemon workers
end with the process instead: the engine sees the connection close and cancels the build, and `on_cancel` removes
what the workers started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_parallel(
    fn: Callable[[T], R],
    items: Sequence[T],
    jobs: int,
    on_cancel: Callable[[], None] = lambda: None,
    grace: float = 0.0,
) -> list[R]:
    """fn over items on `jobs` daemon threads. On Ctrl-C/SIGTERM: on_cancel(), up to `grace` seconds for the
    workers to wind down (on_cancel should make them fail fast), on_cancel() once more, then re-raise."""
    results: list = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)
    pending = list(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop(0)
            try:
                results[index] = fn(items[index])
            except BaseException as exc:  # handed to the main thread below
                errors[index] = exc

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(jobs, len(items))))]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
    except BaseException:
        with lock:
            pending.clear()
        on_cancel()
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        on_cancel()
        raise
    for error in errors:
        if error is not None:
            raise error
    return results
