# Entry points. Every target is safe to run again: `setup` only reinstalls when requirements change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
LOCK := requirements-lock.txt
# Every file that names a requirement; a change to any reinstalls (make setup) or asks for `make lock`.
REQUIREMENTS := pyproject.toml requirements.txt requirements-dev.txt requirements-bench.txt \
	requirements-databases.txt requirements-notebook.txt requirements-test.txt

.PHONY: setup setup-test train test test-all lint format bench lock accel-check accel-wheels accel-data accel-peers
TEST_STAMP := $(VENV)/.test-stamp

# The package (editable) with its dependencies and the dev tools, every version from the lock.
$(STAMP): $(REQUIREMENTS) $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes research 2>/dev/null || true  # the distribution's old name
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The full tier's extra packages (the `test` extra: torch, torchvision, keras for the importers'
# equality tests; the database drivers; the `notebook` extra: nbclient runs the tour), from the lock.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test,notebook]"
	touch $(TEST_STAMP)

setup-test: $(TEST_STAMP)

# The one-line refresh of the lock after a requirement changed: pip resolves the package with
# every extra, keeping each old pin that still fits (LOCK_FROM= lets every pin move).
LOCK_FROM ?= $(LOCK)
lock:
	$(PY) -m pip install --dry-run --ignore-installed --quiet --report - $(if $(LOCK_FROM),-c $(LOCK_FROM)) ".[test,notebook]" | $(PY) scripts/lock.py > $(LOCK).new && mv $(LOCK).new $(LOCK)

# The main job: train the default experiment on the embedded `digits` data (no download).
train: $(STAMP)
	$(PY) scripts/train.py --config experiments/digits.py --workdir runs/digits

# The fast tier (under 5 minutes on 2 idle cores): every package, real assertions. Two
# pytest-xdist workers, each taking whole test files (module fixtures stay in one process);
# their compiled programs meet in the session's compilation cache. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=10

# Everything: the fast tier plus the tests marked `slow` and those needing requirements-test.txt.
test-all: $(TEST_STAMP)
	$(PY) -m pytest -q --durations=25

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) scripts/bench.py

# ---------------------------------------------------------------- accelerators (README, "Accelerators")
# The full check on a GPU machine (scripts/accelerator_check.py; `--smoke` is the CPU version):
# PART=1, then PART=2, one device call of under 8 minutes each, into $OUT/accel/<part> (a
# device call's $OUT) or runs/accel/<part>. The wheels of .whl (accel-wheels) go to /tmp/site.
PART ?= 1
ACCEL_OUT ?= $(if $(OUT),$(OUT)/accel/$(PART),runs/accel/$(PART))
accel-check:
	if ls .whl/*.whl >/dev/null 2>&1; then $(PYTHON) -m pip install -q --no-index --no-deps \
		--no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
	PYTHONPATH=/tmp/site$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
		$(PYTHON) scripts/accelerator_check.py --part $(PART) --out $(ACCEL_OUT)

# Wheels of the packages the GPU image lacks (Python 3.12, manylinux x86-64) into .whl/.
# What requirements.txt names is either in the image (its own versions) or a wheel here
# (the pinned version), or skipped (ACCEL_SKIP). tests/bench/test_accelerator_check.py checks this;
# tests/test_packaging.py checks each version here is the lock's, and pip gets the lock too.
ACCEL_IMAGE := jax jaxlib flax optax orbax-checkpoint numpy scipy absl-py etils scikit-learn \
	pyyaml packaging matplotlib pillow tqdm pytest pytest-xdist execnet torch torchvision
ACCEL_WHEELS := ml-collections==1.1.0 tensorflow-datasets==4.9.10 array-record==0.8.6 \
	grain==0.2.18 tensorboardx==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 \
	simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 \
	googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0 \
	importlib-resources==7.1.0 optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 \
	colorlog==6.12.0
ACCEL_SDISTS := promise==2.3
# CPU convolutions only (conv "onednn"): the GPU convolves with XLA's cuDNN calls, and a
# CPU without them takes "tiled". 39 MB that need not travel.
ACCEL_SKIP := onednn-cpu-gomp onednn-devel-cpu-gomp
WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
accel-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(WHEEL_PLATFORMS) -c $(LOCK) -d .whl $(ACCEL_WHEELS)
	$(PYTHON) -m pip wheel --no-deps -c $(LOCK) -w .whl $(ACCEL_SDISTS)  # pure Python, built here
	du -sh .whl

# shared/data in three pieces under 64 MiB each (.gpu-data/1, 2, 3), one device call each.
ACCEL_DATA_SRC ?= $(or $(RESEARCH_DATA_DIR),../shared/data)
accel-data:
	rm -rf .gpu-data
	$(PYTHON) scripts/accelerator_check.py --pack-data $(ACCEL_DATA_SRC) --out .gpu-data

# airbench94.py (Jordan 2024) for the side-by-side speedrun, from a clone of its repository
# (github.com/KellerJordan/cifar10-airbench; fetched, never committed: .peers/ is ignored).
AIRBENCH_GIT ?=
accel-peers:
	test -n "$(AIRBENCH_GIT)" || (echo "error: set AIRBENCH_GIT=<a clone of KellerJordan/cifar10-airbench>" >&2; exit 2)
	mkdir -p .peers
	git --git-dir=$(AIRBENCH_GIT) show HEAD:legacy/airbench94.py > .peers/airbench94.py \
		|| git -C $(AIRBENCH_GIT) show HEAD:legacy/airbench94.py > .peers/airbench94.py
