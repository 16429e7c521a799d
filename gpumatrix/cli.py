"""The command line: parse, call the pipeline step, print. Decisions live in the step modules."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from . import bases, compat, grammar, report, secrets
from .cells import Expansion
from .errors import UsageError, WorkFailed
from .matrix import REGISTRY_PATTERN
from .pipeline import load
from .project import Project, read_input, write_atomic
from .render import environment, render_all
from .lock import lock_cells
from .lockfile import check_all, read_lock, remake_reason
from .build import IN_REGISTRY, prepare, record_bases, run_builds, write_report
from .buildkit import BUILDERS
from .registry import Lookup
from .request import BuildOverrides, request_for
from .secrets import has_credentials
from .select import Filters, choose_one, select


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, instead of argparse's usage dump
        raise UsageError(f"{self.prog}: {message}")


def _pattern(regex: str, what: str):
    def check(value: str) -> str:
        if not re.fullmatch(regex, value, re.ASCII):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return value

    return check


CUDA_ARG = _pattern(r"\d+\.\d+|cpu", "a CUDA version such as 12.8, or cpu")
VERSION_ARG = _pattern(r"\d+\.\d+(\.\d+)?", "a version such as 3.11 or 2.7.1")
FLAVOUR_ARG = _pattern(r"[a-z0-9]+(-[a-z0-9]+)*", "a flavour name such as serve (lower case, digits, dashes)")
REGISTRY_ARG = _pattern(REGISTRY_PATTERN.strip("^$"), "a registry and namespace such as ghcr.io/acme or 127.0.0.1:5000/team")
TORCH_ARG = _pattern(r"\d+\.\d+\.\d+(\.dev\d{8})?", "a torch release such as 2.7.1 (or a nightly 2.16.0.dev20261120)")
IMAGE_ARG = _pattern(grammar.IMAGE_REFERENCE, "an image reference such as nvidia/cuda:12.8.1-base-ubuntu24.04")
NETWORK_ARG = _pattern(grammar.NETWORK, "a Docker network mode such as host")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda", type=CUDA_ARG, help="CUDA version of the base (12.4, 12.8, 13.0) or cpu")
    p.add_argument("--python", type=VERSION_ARG, help="Python version, e.g. 3.11")
    p.add_argument("--torch", type=TORCH_ARG, help="torch release, e.g. 2.7.1, or a nightly 2.16.0.devYYYYMMDD")
    p.add_argument("--flavour", type=FLAVOUR_ARG,
                   help="a flavour of the matrix's `include`, or none for the cells without one (default: any; "
                        "one cell is the one without)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="build.py", description="Render, build, lock, test and push a matrix of GPU images.")
    top.add_argument("--matrix", type=Path, default=Path("matrix.yaml"), help="the matrix file (default matrix.yaml)")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="write docker/<cell>/Dockerfile for every cell")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and name each stale or missing file")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("bases", help="pin every base image tag of the matrix to its digest in locks/bases.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--refresh", action="store_true", help="re-resolve every tag, not only the unpinned ones")
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 naming each base not pinned and each pin no cell uses")
    p.add_argument("--online", action="store_true",
                   help="with --check: also ask the registry and name each tag that moved or vanished")
    p.add_argument("--registry", default=os.environ.get(bases.ENV_REGISTRY) or None,
                   help=f"resolve every base through this registry (a pull-through mirror, e.g. http://127.0.0.1:5000) "
                        f"instead of the image's own (env {bases.ENV_REGISTRY})")
    p.set_defaults(run=cmd_bases)

    p = sub.add_parser("list", help="show the cells and what each will contain")
    _add_filters(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--skipped", action="store_true", help="also show axis combinations skipped for lack of wheels")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("build", help="build images: one cell (defaults fill the gaps), or every match with --all")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="build every cell that matches the filters")
    p.add_argument("--force", action="store_true", help="rebuild even when the content tag is present")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step (implies --force)")
    p.add_argument("-j", "--jobs", type=_positive, default=1, help="cells built in parallel (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every build step's output")
    _add_overrides(p)
    p.add_argument("--report", type=Path, default=None, help="JSON build report (default out/build-report.json)")
    p.add_argument("--locked", action="store_true",
                   help="refuse a missing or stale lock instead of making it first (always so when CI is set)")
    p.add_argument("--registry", type=REGISTRY_ARG,
                   help="look each content tag up in this registry (the one push pushes to; default: `registry` of "
                        "matrix.yaml): a cell already there is done, not built")
    p.add_argument("--no-lookup", action="store_true", help="do not ask the registry first")
    p.set_defaults(run=cmd_build)

    p = sub.add_parser("lock", help="resolve each cell's torch stage from the torch index's metadata and pip-compile "
                                    "its app layers against it into locks/<cell>.txt")
    _add_filters(p)
    p.add_argument("--check", action="store_true", help="compile nothing; exit 1 and name each stale or missing lock")
    p.add_argument("-j", "--jobs", type=_positive, default=2, help="cells locked in parallel (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the base-stage build output")
    _add_overrides(p)
    p.set_defaults(run=cmd_lock)

    p = sub.add_parser("test", help="run the image checks (gpumatrix/imagechecks) on one cell's image, or every match with --all")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="test every cell that matches the filters")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_const", const=True, default=None,
                     help="give the container the GPUs and fail (never skip) the GPU checks without one")
    gpu.add_argument("--no-gpu", dest="gpu", action="store_const", const=False,
                     help="no GPUs, skip the GPU checks (default: GPUs when the engine has an nvidia runtime)")
    p.add_argument("--local", action="store_true",
                   help="check a Python environment on this host (testinfra's local backend) instead of an image")
    p.add_argument("--interpreter", help="with --local: that environment's Python (default: python on PATH)")
    p.add_argument("--image", type=IMAGE_ARG, help="check this image reference instead of the cell's tag (one cell)")
    p.add_argument("--base-image", type=IMAGE_ARG, help="the --base-image the image was built with (its labels name it)")
    p.add_argument("--runtime-image", type=IMAGE_ARG, help="the --runtime-image the image was built with")
    p.add_argument("--out", type=Path, default=None, help="results directory (default out/tests)")
    p.set_defaults(run=cmd_test)

    p = sub.add_parser("sbom", help="write a CycloneDX SBOM of one cell's image (or every match with --all)")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="every cell that matches the filters")
    p.add_argument("--image", type=IMAGE_ARG, help="this image reference instead of the cell's tag (one cell)")
    p.add_argument("--out", type=Path, default=None, help="SBOM directory (default out/sbom)")
    p.set_defaults(run=cmd_sbom)

    p = sub.add_parser("push", help="push tested images (every tag) to a registry, verify digests, write the catalog")
    _add_filters(p)
    p.add_argument("--registry", type=REGISTRY_ARG,
                   help="registry/namespace to push to, e.g. ghcr.io/acme (default: the matrix's)")
    p.add_argument("--attempts", type=_positive, default=3, help="tries per tag on transient failures (default 3)")
    p.add_argument("--catalog", type=Path, default=None, help="catalog directory (default out/catalog)")
    p.set_defaults(run=cmd_push)

    p = sub.add_parser("catalog", help="merge catalogs of pushed images (e.g. CI artifacts) into out/catalog")
    p.add_argument("parts", nargs="+", type=Path, help="catalog directories or images.json files to merge")
    p.add_argument("--catalog", type=Path, default=None, help="catalog directory (default out/catalog)")
    p.set_defaults(run=cmd_catalog)

    p = sub.add_parser("matrix", help="the cells as a CI matrix (GitHub Actions strategy.matrix JSON)")
    _add_filters(p)
    p.add_argument("--format", choices=("github",), default="github")
    p.set_defaults(run=cmd_matrix)

    p = sub.add_parser("bake", help="write docker-bake.json: one BuildKit target per cell and a group of all")
    _add_filters(p)
    _add_overrides(p)
    p.add_argument("--registry", type=REGISTRY_ARG, help="registry/namespace for the tags (default: the matrix's)")
    p.add_argument("--output", type=Path, default=None, help="the bake file (default docker-bake.json)")
    p.set_defaults(run=cmd_bake)

    from .doctor import DRIVER_PATTERN
    p = sub.add_parser("doctor", help="which image starts on this host's driver and has kernels for its GPUs")
    _add_filters(p)
    p.add_argument("--driver", type=_pattern(DRIVER_PATTERN, "an NVIDIA driver version such as 550.54.15"),
                   help="the driver version (default: ask this host's nvidia-smi)")
    p.add_argument("--gpu", action="append", default=[], metavar="NAME|sm_XY",
                   help="a GPU by name (H100, 'RTX 4090') or arch (sm_90); repeat, or separate with commas, for "
                        "several (default: ask nvidia-smi)")
    p.add_argument("--nvidia-smi-output", type=Path, metavar="FILE",
                   help="read what `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader` "
                        "printed on some host, instead of asking this one")
    p.add_argument("--catalog", type=Path, default=None, metavar="DIR|FILE",
                   help="judge the pushed images of a catalog (out/catalog or its images.json), not the matrix")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser("compat", help="refresh the compatibility rows an index states (compat refresh), or name "
                                      "each way they drifted from their sources (--check --online)")
    p.add_argument("action", nargs="?", choices=("refresh",), help="read the sources and rewrite the generated rows")
    p.add_argument("--check", action="store_true", help="exit 1 and name each problem; with --online, each drift")
    p.add_argument("--online", action="store_true", help="with --check: compare with what the sources say now")
    p.add_argument("--index-url", dest="compat_index", type=_http_url, metavar="URL",
                   help="the PyTorch index's root (default: compat.yaml `refresh: index`)")
    p.add_argument("--nightly-url", dest="compat_nightly", type=_http_url, metavar="URL",
                   help="the nightly index's root (default: compat.yaml `refresh: nightly`)")
    p.add_argument("--pypi-url", dest="compat_pypi", type=_http_url, metavar="URL",
                   help="PyPI's simple index (default: compat.yaml `refresh: pypi`)")
    p.add_argument("--registry", dest="compat_registry", metavar="URL",
                   help="with --check --online: read the nvidia/cuda tag lists from this mirror, not Docker Hub")
    p.add_argument("--generated", type=Path, metavar="FILE",
                   help="the generated rows (default: gpumatrix/data/compat-generated.yaml)")
    p.add_argument("--drifts", type=Path, metavar="FILE",
                   help="with refresh: also write what moved, one line each, to FILE (a pull request's body)")
    p.set_defaults(run=cmd_compat)

    p = sub.add_parser("changes", help="what a refresh moved (compat rows, base digests, lock pins): --save DIR "
                                       "before it, --since DIR after it (a markdown table, a pull request's body)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--save", type=Path, metavar="DIR", help="copy the files a refresh may rewrite into DIR")
    which.add_argument("--since", type=Path, metavar="DIR", help="compare the files now with the copy in DIR")
    p.add_argument("--output", type=Path, metavar="FILE", help="with --since: write the table to FILE, not stdout")
    p.add_argument("--generated", type=Path, metavar="FILE",
                   help="the generated compatibility rows (default: gpumatrix/data/compat-generated.yaml)")
    p.set_defaults(run=cmd_changes)
    return top


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s\"'$`@]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL without credentials")
    return value.rstrip("/")


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def _builder(value: str) -> str:
    if value not in BUILDERS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is no builder: {' or '.join(BUILDERS)} (--builder or $GPUMATRIX_BUILDER)")
    return value


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-image", type=IMAGE_ARG,
                   help="devel base instead of nvidia/cuda (a mirror, or the test stand-in)")
    p.add_argument("--runtime-image", type=IMAGE_ARG, help="slim runtime base instead of nvidia/cuda ...-base")
    p.add_argument("--index-url", default=os.environ.get("GPUMATRIX_INDEX_URL") or None,
                   help="torch index instead of download.pytorch.org; {variant} is replaced (default: "
                        "$GPUMATRIX_INDEX_URL, the place for an index URL with credentials)")
    p.add_argument("--network", type=NETWORK_ARG,
                   help="network mode of the build containers, e.g. host to reach a loopback index")
    p.add_argument("--builder", type=_builder, default=os.environ.get("GPUMATRIX_BUILDER") or None,
                   help="buildkit (through docker buildx) or classic (the docker SDK); default: `builder` in "
                        "matrix.yaml, else buildkit where docker buildx answers ($GPUMATRIX_BUILDER)")


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
    for path in result.kept:
        report.info(f"kept {path.relative_to(project.root)}/: no such cell, but it holds more than a rendered "
                    "Dockerfile; remove it by hand if it is not needed")
    report.info(f"{len(expansion.cells)} cells, {len(result.written)} written, {len(result.removed)} removed")
    return 0


def cmd_bases(args) -> int:
    project, expansion = load(args.matrix, pinned=False)
    wanted = bases.base_references(expansion.cells)
    pins = bases.read_pins(project.bases)
    rel = project.relative(project.bases)
    if args.online and not args.check:
        raise UsageError("--online goes with --check (resolving always asks the registry)")
    if args.check:
        return _check_bases(pins, wanted, rel, bases.Resolver(args.registry) if args.online else None)
    result = bases.update(pins, wanted, bases.Resolver(args.registry), refresh=args.refresh)
    bases.write_pins(project.bases, result.pins)
    for ref in result.added:
        report.info(f"pinned {ref}@{result.pins[ref].digest}")
    for ref, old, new in result.moved:
        report.info(f"moved {ref}: {old} -> {new}")
    for ref in result.dropped:
        report.info(f"dropped {ref} (no cell uses it)")
    report.info(f"{rel}: {len(result.pins)} bases pinned ({len(result.added)} new, {len(result.moved)} moved, "
                f"{len(result.dropped)} dropped); run `make render` to use them")
    return 0


def _check_bases(pins: dict, wanted: list[str], rel: str, resolver) -> int:
    found = bases.offline_problems(pins, wanted, rel)
    if resolver is not None:
        found += bases.online_problems(pins, wanted, resolver)
    for line in found:
        report.problem(line)
    if found:
        report.info(f"run `make bases` (python build.py bases{' --refresh' if resolver else ''}) on a machine that "
                    f"reaches the registry, then `make render`, and commit {rel} and docker/")
        return 1
    report.info(f"{rel} is up to date ({len(wanted)} bases{', checked against the registry' if resolver else ''})")
    return 0


def cmd_list(args) -> int:
    project, expansion = load(args.matrix)
    filters = Filters(args.cuda, args.python, args.torch, args.flavour)
    cells = select(expansion, filters)
    env = environment(project.templates)
    records = []
    for cell in cells:  # the tags a build would give, whatever state the lock is in (list never refuses)
        req = request_for(env, cell, expansion.matrix.image, _read_bytes(project.lock(cell.name)), BuildOverrides())
        records.append(report.cell_record(cell, req.tags))
    if args.format == "json":
        report.print_json(records)
    else:
        report.cells_table(records, expansion.skipped, args.skipped)
    return 0


def chosen_cells(args, expansion: Expansion, verb: str) -> list:
    """Every match with --all; otherwise the one cell the defaults pick, saying which and why."""
    filters = Filters(args.cuda, args.python, args.torch, args.flavour)
    if args.all:
        return select(expansion, filters)
    cell, why = choose_one(expansion, filters)
    report.info(f"{verb} {cell.name}: {why}")
    return [cell]


def overrides_of(args) -> BuildOverrides:
    return BuildOverrides(args.base_image, args.runtime_image, args.index_url, args.network,
                          getattr(args, "builder", None))


def cmd_build(args) -> int:
    project, expansion = load(args.matrix)
    cells = chosen_cells(args, expansion, "building")
    overrides = overrides_of(args)
    _note_unpinned(cells, overrides)
    report_path = args.report or project.out / "build-report.json"
    _refuse_directory(report_path, "--report")
    if not (args.locked or ci_is_set()):
        _lock_first(project, expansion.matrix.image, cells, overrides, args.jobs, args.verbose)
    requests = prepare(project, expansion.matrix.image, cells, overrides, nocache=args.no_cache, say=report.info)
    with report.BuildProgress([r.cell.name for r in requests], args.verbose) as progress:
        outcomes = run_builds(requests, args.jobs, args.force or args.no_cache, progress,
                              _lookup(args, expansion.matrix))
    write_report(report_path, outcomes)
    record_bases(project, requests, outcomes)
    report.build_summary(outcomes)
    report.info(f"build report: {report_path}")
    for o in outcomes:
        if o.status != "failed":
            report.info(f"{o.cell}: {' '.join(o.tags)}")
    _fail_if_any([o.cell for o in outcomes if o.status == "failed"], len(outcomes), "cells failed")
    return 0


def _lookup(args, matrix) -> Lookup | None:
    """Where build looks content tags up: `<registry>/<image>` (--registry, else matrix.yaml's)."""
    if args.no_lookup:
        return None
    return Lookup(f"{(args.registry or matrix.registry).rstrip('/')}/{matrix.image}", report.info)


ONE_IMAGE_ONLY = "--image names one image, but {count} cells match: narrow the filters to one cell"


def _fail_if_any(failed: list[str], total: int, what: str) -> None:
    """Exit 1 naming every cell whose work failed (the others' results are written already)."""
    if failed:
        raise WorkFailed(f"{len(failed)} of {total} {what}: {', '.join(failed)}")


def _refuse_directory(path: Path, option: str) -> None:
    """A file the command will write is checked before the work starts, not after it."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give the path of a file")


def _note_unpinned(cells: list, overrides: BuildOverrides) -> None:
    """A build on a base named by tag alone works, but what it pulls can change under the same tag: say so."""
    used = {ref for c in cells for ref, overridden in ((c.base_image, overrides.base_image),
                                                         (c.runtime_image, overrides.runtime_image)) if not overridden}
    unpinned = sorted(ref for ref in used if bases.parse_reference(ref).digest is None)
    if unpinned:
        report.info(f"note: base image(s) named by tag, not digest: {', '.join(unpinned)}; "
                    "`make bases` pins them in locks/bases.yaml")


def cmd_lock(args) -> int:
    from .lockfile import orphan_locks

    project, expansion = load(args.matrix)
    cells = select(expansion, Filters(args.cuda, args.python, args.torch, args.flavour))
    if args.check:
        found = check_all(project, cells)
        orphans = orphan_locks(project, list(expansion.cells))  # the whole matrix: filters narrow what is checked
        for line in found + orphans:
            report.problem(line)
        if found:
            report.info("run `make lock` (python build.py lock) and commit locks/")
        if found or orphans:
            return 1
        report.info(f"locks/ is up to date ({sum(1 for c in cells if c.layers)} locks)")
        return 0
    _run_locks(project, expansion.matrix.image, cells, overrides_of(args), args.jobs, args.verbose)
    return 0


def ci_is_set() -> bool:
    """CI=true or CI=1 (any case): a CI run never makes a lock on its own, it refuses a missing or stale one."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _lock_first(project, image: str, cells: list, overrides: BuildOverrides, jobs: int, verbose: bool) -> None:
    """uv's and cargo's convention on a developer's machine: a missing or stale lock is made before the build, and
    the build says so. A damaged lock is not replaced (it may hold someone's edits): the build refuses it."""
    todo = []
    for cell in cells:
        why = remake_reason(project, cell, read_lock(project, cell)) if cell.layers else None
        if why:
            report.info(f"locking {cell.name}: {why}; commit {project.relative(project.lock(cell.name))}")
            todo.append(cell)
    if todo:
        _run_locks(project, image, todo, overrides, jobs, verbose)


def _run_locks(project, image: str, cells: list, overrides: BuildOverrides, jobs: int, verbose: bool) -> None:
    """Lock the cells, one progress line each; every cell runs even when another fails. Exit 2 when a cell's .in
    files ask for what cannot be, 1 when a lock failed otherwise."""
    with report.BuildProgress([c.name for c in cells if c.layers], verbose) as progress:
        results = lock_cells(project, image, cells, overrides, jobs, progress, report.info)
    for r in results:
        if r.error:
            report.problem(r.error if r.bad_input else f"{r.cell}: {r.error}")
        else:
            report.info(f"{r.cell}: wrote {r.path.relative_to(project.root)}")
    refused = [r.cell for r in results if r.bad_input]
    if refused:
        raise UsageError(f"{len(refused)} of {len(results)} locks refused for their input: {', '.join(refused)}")
    _fail_if_any([r.cell for r in results if r.error], len(results), "locks failed")


def cmd_test(args) -> int:
    from . import imagetest

    project, expansion = load(args.matrix)
    cells = chosen_cells(args, expansion, "testing")
    if args.image and len(cells) != 1:
        raise UsageError(ONE_IMAGE_ONLY.format(count=len(cells)))
    if args.interpreter and not args.local:
        raise UsageError("--interpreter goes with --local (the image's own Python is checked otherwise)")
    if args.local and args.image:
        raise UsageError("--local checks this host's environment, --image a container: pick one")
    options = imagetest.Options(gpu=args.gpu, local=args.local, interpreter=args.interpreter, image=args.image,
                                base_image=args.base_image, runtime_image=args.runtime_image, out=args.out)
    results = imagetest.run_cells(project, expansion.matrix.image, cells, options, report.info)
    for r in results:
        if r.mode == IN_REGISTRY:
            report.info(f"{r.cell}: in the registry as {r.image}, tested before it was pushed; nothing to test")
            continue
        c = r.counts
        report.info(f"{r.cell}: {'passed' if r.passed else 'FAILED'} ({c.get('passed', 0)} passed, "
                    f"{c.get('failed', 0) + c.get('error', 0)} failed, {c.get('skipped', 0)} skipped); "
                    f"{r.junit}, {r.summary}")
        for f in r.failures:
            report.problem(f"{r.cell}: {f['check']}: {f['message'].splitlines()[0]}")
    _fail_if_any([r.cell for r in results if not r.passed], len(results), "cells failed the image checks")
    return 0


def cmd_sbom(args) -> int:
    from . import engine, sbom

    project, expansion = load(args.matrix)
    cells = chosen_cells(args, expansion, "SBOM of")
    if args.image and len(cells) != 1:
        raise UsageError(ONE_IMAGE_ONLY.format(count=len(cells)))
    out = args.out or project.out / "sbom"
    results = sbom.run_cells(engine.connect(), cells, args.image, out, report.info)
    for r in results:
        if r.error:
            report.problem(r.error)
        else:
            report.info(f"{r.cell}: wrote {project.relative(r.path)} ({r.components} components) "
                        f"of image {r.image_id[7:19]}")
    _fail_if_any([r.cell for r in results if r.error], len(results), "SBOMs failed")
    return 0


def cmd_push(args) -> int:
    from . import push

    project, expansion = load(args.matrix)
    cells = select(expansion, Filters(args.cuda, args.python, args.torch, args.flavour))
    catalog_dir = args.catalog or project.out / "catalog"
    outcomes = push.run(project, cells, args.registry or expansion.matrix.registry,
                        expansion.matrix.image, catalog_dir, push.RetrySettings(attempts=args.attempts), report.info)
    for o in outcomes:
        if o.status == "pushed":
            report.info(f"{o.cell}: pushed {len(o.tags)} tag(s) in {o.duration:.1f}s: {o.reference}")
        elif o.status == IN_REGISTRY:
            report.info(f"{o.cell}: in the registry as {o.repository}:{o.tags[0]}@{o.digest}, pushed before; "
                        "nothing to push")
        else:
            report.problem(f"{o.cell}: {o.error}")
    report.info(f"catalog: {catalog_dir / 'images.json'}, {catalog_dir / 'images.md'}")
    _fail_if_any([o.cell for o in outcomes if o.status == "failed"], len(outcomes), "pushes failed")
    return 0


def cmd_catalog(args) -> int:
    from . import catalog

    project = Project(args.matrix)
    catalog_dir = args.catalog or project.out / "catalog"
    missing = [f"{p}: no images.json in this directory" if p.is_dir() else f"{p}: no such catalog file"
               for p in args.parts if not (p / "images.json" if p.is_dir() else p).exists()]
    if missing:
        raise UsageError("\n".join(missing))
    entries = catalog.merge_catalogs(catalog_dir, args.parts)
    report.info(f"catalog: {len(entries)} images in {catalog_dir / 'images.json'}, {catalog_dir / 'images.md'}")
    return 0


def cmd_matrix(args) -> int:
    from .fanout import github_matrix

    _, expansion = load(args.matrix)
    cells = select(expansion, Filters(args.cuda, args.python, args.torch, args.flavour))
    sys.stdout.write(json.dumps(github_matrix(cells), separators=(",", ":")) + "\n")
    return 0


def cmd_bake(args) -> int:
    from .fanout import bake_file, write_contexts

    project, expansion = load(args.matrix)
    cells = select(expansion, Filters(args.cuda, args.python, args.torch, args.flavour))
    overrides = overrides_of(args)
    if overrides.index_url and has_credentials(overrides.index_url):
        raise UsageError("--index-url (or GPUMATRIX_INDEX_URL) holds credentials, which docker-bake.json would keep "
                         "in plain text; bake without them and give them at build time: "
                         "docker buildx bake --set '*.args.TORCH_INDEX_URL=...'")
    context_root = project.out / "bake"
    data, files = bake_file(project, expansion.matrix.image, cells, overrides, args.registry, context_root)
    output = args.output or project.root / "docker-bake.json"
    write_contexts(files, context_root)
    write_atomic(output, json.dumps(data, indent=2) + "\n")
    report.info(f"wrote {output} ({len(cells)} targets, group `all`) and build contexts under {context_root}")
    report.info(f"build the matrix: docker buildx bake -f {output} all")
    return 0


def cmd_doctor(args) -> int:
    from . import doctor

    host = doctor.find_host(args.driver, args.gpu, args.nvidia_smi_output)
    filters = Filters(args.cuda, args.python, args.torch, args.flavour)
    if args.catalog is not None:
        candidates, prefer_python = doctor.catalog_candidates(args.catalog, filters), None
    else:
        _, expansion = load(args.matrix)
        candidates = [doctor.candidate_of_cell(c) for c in select(expansion, filters)]
        prefer_python = expansion.matrix.defaults.python
    diagnosis = doctor.diagnose(host, candidates, prefer_python)
    if args.format == "json":
        report.print_json(doctor.as_json(diagnosis))
    else:
        report.out.print(doctor.table(diagnosis))
        for line in doctor.summary_lines(diagnosis):
            report.out.print(line, markup=False)
    return 0 if diagnosis.recommended else 1


def cmd_compat(args) -> int:
    from . import compatsources

    if (args.action == "refresh") == args.check:
        raise UsageError("compat: give `refresh` or `--check` (one of them)")
    if args.online and not args.check:
        raise UsageError("compat: --online goes with --check (a refresh always reads the sources)")
    if args.drifts is not None and args.action != "refresh":
        raise UsageError("compat: --drifts goes with refresh")
    if args.compat_registry is not None and not args.online:
        raise UsageError("compat: --registry goes with --check --online")
    path = args.generated or compat.generated_path()
    sources = compatsources.Sources.from_facts(args.compat_index, args.compat_nightly, args.compat_pypi)
    if args.action == "refresh":
        moved = compatsources.refresh(sources, path)
        if args.drifts is not None:
            write_atomic(args.drifts, "".join(f"{line}\n" for line in moved))
        for line in moved:
            report.info(line)
        report.info(f"{_shown(path)}: rewritten from {sources.index}, {len(moved)} change(s)")
        return 0
    generated = compat.read_generated(path)
    problems = compat.data_problems(generated)
    index_drifts, cuda_drifts = [], []
    if args.online:
        reading = compatsources.read_sources(sources)
        index_drifts = compatsources.drifts(generated, reading.rows)
        cuda_drifts = compatsources.cuda_base_drifts(bases.Resolver(args.compat_registry))
        for line in compatsources.waiting_on_index(reading):
            report.info(line)
    for line in problems + index_drifts + cuda_drifts:
        report.problem(line)
    if index_drifts:
        report.info("run `make compat` (python build.py compat refresh) and commit the generated rows")
    if cuda_drifts:
        report.info(f"move the CUDA rows of gpumatrix/{compat.HAND} by hand: patch, driver floor and cuDNN, each "
                    "with its source")
    if problems or index_drifts or cuda_drifts:
        return 1
    report.info(f"{_shown(path)}: no problems" + (f", and it matches {sources.index}" if args.online else ""))
    return 0


def cmd_changes(args) -> int:
    from . import changes

    project = Project(args.matrix)
    if args.save is not None:
        if args.output is not None:
            raise UsageError("changes: --output goes with --since")
        changes.save(project, args.save, args.generated)
        report.info(f"saved the compatibility rows, base digests and locks in {args.save}")
        return 0
    if not (args.since / changes.COMPAT_COPY).is_file():
        raise UsageError(f"changes: {args.since} holds no copy made by `changes --save`")
    body = changes.table(changes.since(project, args.since, args.generated))
    if args.output is not None:
        write_atomic(args.output, body)
    else:
        report.out.print(body, markup=False, end="")
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_bytes(path: Path) -> bytes | None:
    if not path.exists():
        return None
    return read_input(path, "lock").encode()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: `finally` blocks remove containers, temp files never replace real ones."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main_thread else None
    try:
        # Every secret this run may see, remembered before anything can print it: report.py masks them all.
        argv = sys.argv[1:] if argv is None else list(argv)
        secrets.forget()
        secrets.remember_environment()
        given = secrets.remember_options(argv, "--index-url")
        args = parser().parse_args(argv)
        if getattr(args, "index_url", None) is not None:
            secrets.check_index_url(args.index_url, "--index-url" if given else "GPUMATRIX_INDEX_URL")
        return args.run(args)
    except (UsageError, WorkFailed) as exc:
        report.problem(str(exc))  # report masks every line it prints
        return exc.exit_code
    except KeyboardInterrupt as exc:
        report.problem("terminated" if isinstance(exc, Terminated) else "interrupted")
        return 143 if isinstance(exc, Terminated) else 130
    except (OSError, ValueError) as exc:  # UnicodeError is a ValueError: bad input no step put into words
        if os.environ.get("GPUMATRIX_TRACEBACK"):  # for whoever debugs gpumatrix itself
            raise
        report.problem(secrets.one_line(exc))
        return UsageError.exit_code
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
