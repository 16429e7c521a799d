"""Tooling for tests, the demo and the bench: stand-in bases, loopback indexes and registries. Not shipped with
gpumatrix (pyproject.toml packages only `gpumatrix`)."""
