"""`make demo`: the whole pipeline on a machine that reaches neither Docker Hub nor the PyTorch index.

It makes the stand-in base and the loopback torch index (the same code the integration tests use), then runs
`make image CUDA=cpu` against them and shows what came out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import engine
from .cli import load
from .select import Filters, choose_one
from .errors import UsageError
from .standins import LoopbackIndex, StandinError, cpu_index_requirements, ensure_standin_base

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"


def log(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def main() -> int:
    try:
        client = engine.connect()
    except UsageError as exc:
        log(str(exc))
        return 2
    try:
        base = ensure_standin_base(client, CACHE, log=log)
    except StandinError as exc:
        log(str(exc))
        return 1
    index = LoopbackIndex(CACHE / "index-cpu")
    index.fill(cpu_index_requirements(), log=log)
    with index:
        log(f"stand-in base {base}; torch index {index.url}")
        make = ["make", "image", "CUDA=cpu", f"BASE_IMAGE={base}", f"RUNTIME_IMAGE={base}",
                f"INDEX_URL={index.url}", "NETWORK=host"]
        log(" ".join(make))
        if subprocess.run(make, cwd=ROOT).returncode != 0:
            return 1
    _, expansion = load(ROOT / "matrix.yaml")
    image = choose_one(expansion, Filters(cuda="cpu"))[0].tags[0]
    shown = client.containers.run(image, ["python", "-c", "import torch, numpy; print('torch', torch.__version__, "
                                          "'numpy', numpy.__version__, 'cuda', torch.version.cuda)"], remove=True)
    log(f"{image}: {shown.decode().strip()}")
    log("next: `make image CUDA=12.8` on a machine that reaches nvidia/cuda and download.pytorch.org")
    return 0


if __name__ == "__main__":
    sys.exit(main())
