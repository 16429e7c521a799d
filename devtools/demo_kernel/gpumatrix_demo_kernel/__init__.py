"""add_one(x): x + 1 for a contiguous float32 CUDA tensor, computed by a compiled CUDA kernel.

Importing this package loads the extension module but touches no GPU: it imports on a machine without one.
"""

import torch  # first: loads libtorch and libc10, which the extension links

from . import _C

__all__ = ["add_one"]
__version__ = "0.1.0"


def add_one(x: torch.Tensor) -> torch.Tensor:
    """A new tensor: x + 1 (x: contiguous float32 on a CUDA device)."""
    return _C.add_one(x)
