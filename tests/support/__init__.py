"""Helpers shared by tests/unit and tests/integration (on sys.path through pyproject's `pythonpath = ["tests"]`)."""
