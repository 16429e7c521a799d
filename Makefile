# The front door. `make image CUDA=12.8` builds one image; `make test` runs every test. See README.md.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MATRIX ?= matrix.yaml
JOBS ?= 1

FILTERS := $(if $(CUDA),--cuda $(CUDA)) $(if $(PYTHON),--python $(PYTHON)) $(if $(TORCH),--torch $(TORCH)) \
           $(if $(FLAVOUR),--flavour $(FLAVOUR))
OVERRIDES := $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(RUNTIME_IMAGE),--runtime-image $(RUNTIME_IMAGE)) \
	$(if $(INDEX_URL),--index-url $(INDEX_URL)) $(if $(NETWORK),--network $(NETWORK)) $(if $(BUILDER),--builder $(BUILDER))
BUILD := $(BIN)/python build.py --matrix $(MATRIX)

.PHONY: venv render check list image images lock lock-check test unit integration demo bench clean
.PHONY: push bake matrix bases bases-check doctor compat compat-check

venv: $(BIN)/.installed

$(BIN)/.installed: requirements-tool.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-tool.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

render: venv
	$(BUILD) render

check: venv
	$(BUILD) render --check

list: venv
	$(BUILD) list $(FILTERS)

image: venv
	$(BUILD) build $(FILTERS) $(OVERRIDES) $(if $(FORCE),--force) $(if $(REGISTRY),--registry $(REGISTRY))

images: venv
	$(BUILD) build --all -j $(JOBS) $(FILTERS) $(OVERRIDES) $(if $(FORCE),--force) $(if $(REGISTRY),--registry $(REGISTRY))

lock: venv
	$(BUILD) lock -j $(JOBS) $(FILTERS) $(OVERRIDES)

lock-check: venv
	$(BUILD) lock --check $(FILTERS)

# Base images by digest (locks/bases.yaml): REFRESH=1 re-resolves every tag; ONLINE=1 makes the check ask the
# registry too; GPUMATRIX_BASES_REGISTRY=URL resolves through a mirror.
bases: venv
	$(BUILD) bases $(if $(REFRESH),--refresh)

bases-check: venv
	$(BUILD) bases --check $(if $(ONLINE),--online)

# The compatibility rows an index states (gpumatrix/data/compat-generated.yaml), read again from the PyTorch index,
# its nightly index and PyPI; DRIFTS=FILE also writes what moved there. compat-check: ONLINE=1 compares with them.
compat: venv
	$(BUILD) compat refresh $(if $(DRIFTS),--drifts $(DRIFTS))

compat-check: venv
	$(BUILD) compat --check $(if $(ONLINE),--online)

.PHONY: test-image
# The image checks (gpumatrix/imagechecks) on the cell's image: GPU=1 / GPU=0 force the GPU checks on or off (default: on when
# the engine has an nvidia runtime), LOCAL=1 checks this host's Python instead, ALL=1 every matching cell.
test-image: venv
	$(BUILD) test $(FILTERS) $(if $(ALL),--all) $(if $(filter 1,$(GPU)),--gpu) $(if $(filter 0,$(GPU)),--no-gpu) \
		$(if $(LOCAL),--local) $(if $(IMAGE),--image $(IMAGE)) \
		$(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(RUNTIME_IMAGE),--runtime-image $(RUNTIME_IMAGE))

.PHONY: sbom
# CycloneDX SBOM of the cell's image (out/sbom/<cell>.cdx.json; see README "SBOM and vulnerability scanning"):
# ALL=1 every matching cell, IMAGE=REF another reference of one cell.
sbom: venv
	$(BUILD) sbom $(FILTERS) $(if $(ALL),--all) $(if $(IMAGE),--image $(IMAGE))

push: venv
	$(BUILD) push $(FILTERS) $(if $(REGISTRY),--registry $(REGISTRY)) $(if $(ATTEMPTS),--attempts $(ATTEMPTS))

bake: venv
	$(BUILD) bake $(FILTERS) $(OVERRIDES) $(if $(REGISTRY),--registry $(REGISTRY))

matrix: venv
	$(BUILD) matrix --format github $(FILTERS)

# Which image starts on this host's driver and has kernels for its GPUs (nvidia-smi), or on another host's:
# DRIVER=570.124.06 GPU="H100,RTX 4090,sm_120" (comma-separated names or archs), NVIDIA_SMI=FILE (recorded output),
# CATALOG=out/catalog (pushed images instead of the matrix), FORMAT=json. Exit 0: one fits; 1: none; 2: bad input.
doctor: venv
	$(BUILD) doctor $(FILTERS) $(if $(DRIVER),--driver $(DRIVER)) $(if $(GPU),--gpu '$(GPU)') \
		$(if $(NVIDIA_SMI),--nvidia-smi-output $(NVIDIA_SMI)) $(if $(CATALOG),--catalog $(CATALOG)) \
		$(if $(FORMAT),--format $(FORMAT))

test: venv
	$(BIN)/python -m pytest --durations=25 tests/unit tests/integration

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv
	$(BIN)/python -m pytest tests/integration

demo: venv
	$(BIN)/python -m devtools.demo

clean:
	rm -rf out .pytest_cache

bench: venv
	$(BIN)/python bench/bench.py $(if $(filter-out cpu,$(CUDA)),--cuda) $(ARGS)
