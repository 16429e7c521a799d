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


def suite_with_arch_added(client, project: Path, cell: str, image_id: str, arch: str, tmp_path: Path
                          ) -> tuple[int, dict[str, dict]]:
    """The image suite run again on `image_id` the way `build.py test` runs it (engine.container + run_suite), with
    `arch` added to the cell's target archs in the expectations `build.py test` wrote: (exit code, cases by name)."""
    from gpumatrix import engine

    expect = json.loads((project / "out" / "tests" / f"{cell}.expect.json").read_text())
    expect["archs"] = [arch, *expect["archs"]]
    edited = tmp_path / f"{arch}.expect.json"
    edited.write_text(json.dumps(expect))
    named = type("CellName", (), {"name": cell})()
    with engine.container(client, image_id, named, "imagetest") as container:
        code = imagetest.run_suite(f"docker://{container.id}", edited, tmp_path / f"{arch}.xml")
    return code, {c["name"]: c for c in imagetest.parse_junit(tmp_path / f"{arch}.xml")}
