#!/usr/bin/env python3
"""Entry point: `python build.py --help`. Everything lives in the gpumatrix package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpumatrix.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
