# Two commands do all set-up: `make serve` and `make test` (both install first when needed).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ROWS_SOURCES := $(addprefix musicgen_local/engine/fast/,rows_linear.cpp rows_maths.h lora_maths.h build.py)
ROWS_KERNEL  := musicgen_local/engine/fast/_build/.built
HOST    ?= 127.0.0.1
PORT    ?= 5000
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install sdk2 ffmpeg rubberband chromium test test-fast test-container serve cog-serve predict tiny-weights \
	weights image lint clean gpu-rehearsal

# The official npm `replicate` client for tests/e2e; re-runs only when its lock file changes.
NODE_E2E := tests/e2e/node_modules/.package-lock.json
# The v2 Python SDK (PyPI `replicate` 2.0.0b4, requirements-sdk2.txt) for tests/e2e, in a virtual environment of its
# own: the 1.0.7 client in $(VENV) has the same package name. The tests run it in a subprocess.
SDK2_VENV := .venv-sdk2
SDK2 := $(SDK2_VENV)/.installed
install: $(STAMP) $(ROWS_KERNEL) ffmpeg rubberband chromium $(NODE_E2E) $(SDK2)

$(NODE_E2E): tests/e2e/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/e2e --no-audit --no-fund; \
	else echo "npm not found: the npm-client e2e tests will be skipped"; fi

$(SDK2): requirements-sdk2.txt
	@if python3 -m venv $(SDK2_VENV) && $(SDK2_VENV)/bin/pip install -q -r requirements-sdk2.txt; then touch $(SDK2); \
	else echo "make install: could not install requirements-sdk2.txt in $(SDK2_VENV): the v2 SDK e2e tests will be skipped" >&2; fi
sdk2: $(SDK2)

# Re-runs only when a requirements file or pyproject changes; a second `make install` takes seconds.
$(STAMP): requirements.txt requirements-dev.txt requirements-ray.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	# audiocraft's own metadata pins torch 2.1 / av 11 (no wheels, no longer installable): skip its deps.
	$(PY) -m pip install --no-deps audiocraft==1.3.0
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# The fast decoder's CPU kernel, built once here for every process that runs from this checkout (no compiler at
# run time); rebuilt when its sources or the installed packages change. See musicgen_local/engine/fast/build.py.
# Without a C++ compiler it is not fatal (the decoder then uses torch's products on CPU) and is retried next time.
$(ROWS_KERNEL): $(STAMP) $(ROWS_SOURCES)
	@if $(PY) -m musicgen_local.engine.fast.build; then touch $(ROWS_KERNEL); \
	else echo "make install: the CPU rows kernel did not build (above); CPU decoding uses torch's products" >&2; fi

ffmpeg:
	@bash scripts/ensure-ffmpeg.sh

# Debian's rubberband-cli: the looper's time stretch (GPL, run as a separate program).
rubberband:
	@bash scripts/ensure-rubberband.sh

# Debian chromium + chromedriver for the playground's browser tests (skipped where they cannot be installed).
chromium:
	@bash scripts/ensure-chromium.sh

RUFF_PATHS := musicgen_local tests predict.py predict_looper.py train.py bench
# pytest-xdist workers for `make test` and `make test-fast` (0: one process).
# Two workers take about 15 minutes on two cores, one process (TEST_JOBS=0) about 25 (docs/development.md).
TEST_JOBS ?= 2
XDIST := -n $(TEST_JOBS) --dist loadscope

test: install
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the rings (official clients, browser, Ray) and the slow tests: a quick check while editing.
# `make test` still runs everything; see docs/development.md.
FAST := not (clients or browser or ray or slow)
test-fast: install
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)
	$(PY) -m pytest -m "$(FAST)" $(XDIST) $(PYTEST_ARGS)

# The container ring (tests/container): `make image`, then the image run as a user runs it (the v1 API with the
# official client, a restart on the data volume, docker stop's drain, Cog's server). Not in `make test`: a first
# build takes ~10 minutes and ~10 GB. CI runs it after `make test` (.ci/run).
test-container: install image
	$(PY) -m pytest -m container tests/container $(PYTEST_ARGS)

serve: install
	$(VENV)/bin/musicgen-local serve --host $(HOST) --port $(PORT)

cog-serve: install
	$(VENV)/bin/musicgen-local cog-serve --host $(HOST) --port $(PORT)

# Eager audiocraft generate vs our decoder; appends to bench/RESULTS.md (see bench/README.md).
bench: install
	$(PY) -m bench.decoder $(BENCH_ARGS)

# The GPU check's dry run as the lent GPU machine (Python 3.12, torch 2.11, .whl/, stand-ins; builds .rehearsal/
# once, ~4 GB from PyPI). Not part of `make test`; see bench/README.md, "GPU check".
gpu-rehearsal: install
	bench/gpu-check --rehearse --device cpu --quick --no-append --out .rehearsal/out

tiny-weights: install
	$(VENV)/bin/musicgen-local weights tiny ./weights

# `make weights` fetches the default model_version; `make weights MODELS="large --mbd"` or MODELS=--all for more.
weights: install
	$(VENV)/bin/musicgen-local weights fetch $(MODELS)

# The container image (Dockerfile), with Docker, or with podman where no Docker daemon answers; the base is
# python:3.11-slim, or one made here with debootstrap where that cannot be pulled (BASE=<image> to choose).
# scripts/ensure-podman.sh, make-base-image.sh and build-image.sh do the work; see the README's "Docker" part.
IMAGE ?= musicgen-local
image:
	@bash scripts/ensure-podman.sh
	@IMAGE=$(IMAGE) BASE=$(BASE) bash scripts/build-image.sh

lint: install
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)

clean:
	rm -rf $(VENV) $(SDK2_VENV) .pytest_cache musicgen_local/engine/fast/_build
