"""What build.py wrote, read back: the build report and the image checks' results (`build.py test`).

No name here starts with `test`: a test module importing it would collect it as a test.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpumatrix import imagetest


def build_report(project: Path, name: str = "out/build-report.json") -> dict[str, dict]:
    """The build report's records by cell name, in the report's order."""
    return {c["cell"]: c for c in json.loads((project / name).read_text())["cells"]}


def check_results(out: Path, cell: str) -> tuple[dict, dict[str, dict]]:
    """The record `build.py test` wrote into `out` and the JUnit cases of its run by name."""
    record = json.loads((out / f"{cell}.json").read_text())
    cases = {c["name"]: c for c in imagetest.parse_junit(out / f"{cell}.xml")}
    return record, cases
