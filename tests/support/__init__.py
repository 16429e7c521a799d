"""Helpers shared by tests/unit and tests/integration (on sys.path through pyproject's `pythonpath = ["tests"]`).

ci: a missing tool is a skip locally, a failure under CI (need, unavailable).
cli: build.py in a child process (cli, build_py, start, follow, wait_for).
containers: the containers a test starts (TrackedContainers, behind the `containers` fixture) and gpumatrix's own.
projects: throw-away project copies and matrix texts.
reports: the build report and the image checks' results, read back.
standins: the stand-in cell, its lock, its loopback index and the override flags.
"""
