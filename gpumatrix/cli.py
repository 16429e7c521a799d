"""The command line: parse, call the pipeline step, print. Decisions live in the step modules."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import report
from .cells import Expansion, expand
from .errors import UsageError, WorkFailed
from .matrix import load_matrix
from .project import Project
from .render import content_digest, content_tag, environment, render_all, render_cell
from .select import Filters, select


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, instead of argparse's usage dump
        raise UsageError(f"{self.prog}: {message}")


def _pattern(regex: str, what: str):
    def check(value: str) -> str:
        if not re.fullmatch(regex, value):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return value

    return check


CUDA_ARG = _pattern(r"\d+\.\d+|cpu", "a CUDA version such as 12.8, or cpu")
VERSION_ARG = _pattern(r"\d+\.\d+(\.\d+)?", "a version such as 3.11 or 2.7.1")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda", type=CUDA_ARG, help="CUDA version of the base (12.4, 12.8, 13.0) or cpu")
    p.add_argument("--python", type=VERSION_ARG, help="Python version, e.g. 3.11")
    p.add_argument("--torch", type=VERSION_ARG, help="torch release, e.g. 2.7.1")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="build.py", description="Render, build, lock, test and push a matrix of GPU images.")
    top.add_argument("--matrix", type=Path, default=Path("matrix.yaml"), help="the matrix file (default matrix.yaml)")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="write docker/<cell>/Dockerfile for every cell")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and name each stale or missing file")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("list", help="show the cells and what each will contain")
    _add_filters(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--skipped", action="store_true", help="also show axis combinations skipped for lack of wheels")
    p.set_defaults(run=cmd_list)
    return top


def load(matrix_path: Path) -> tuple[Project, Expansion]:
    project = Project(matrix_path)
    matrix = load_matrix(matrix_path)
    return project, expand(matrix, matrix_path, project.requirements)


def cmd_render(args) -> int:
    project, expansion = load(args.matrix)
    result = render_all(project, expansion.cells, expansion.matrix.image, check=args.check)
    if args.check:
        for line in result.stale:
            report.problem(line)
        if result.stale:
            report.info("run `make render` (python build.py render) and commit docker/")
            return 1
        report.info(f"docker/ is up to date ({len(expansion.cells)} cells)")
        return 0
    for path in result.written:
        report.info(f"wrote {path.relative_to(project.root)}")
    for path in result.removed:
        report.info(f"removed {path.relative_to(project.root)}/ (no such cell)")
    report.info(f"{len(expansion.cells)} cells, {len(result.written)} written, {len(result.removed)} removed")
    return 0


def cmd_list(args) -> int:
    project, expansion = load(args.matrix)
    filters = Filters(args.cuda, args.python, args.torch)
    cells = select(expansion, filters)
    env = environment(project.templates)
    records = []
    for cell in cells:
        lock = project.lock(cell.name)
        digest = content_digest(render_cell(env, cell, expansion.matrix.image), _read_bytes(lock), {})
        records.append(report.cell_record(cell, [*cell.tags, content_tag(cell, digest)]))
    if args.format == "json":
        report.print_json(records)
    else:
        report.cells_table(records, expansion.skipped, args.skipped)
    return 0


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.run(args)
    except (UsageError, WorkFailed) as exc:
        report.problem(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        report.problem("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
