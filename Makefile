# Entry points. Every target is safe to run again: `setup` only reinstalls when requirements change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup setup-test train test test-all lint format bench
TEST_STAMP := $(VENV)/.test-stamp

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The full tier's extra packages (torch, torchvision, keras: the importers' equality tests).
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

setup-test: $(TEST_STAMP)

# The main job: train the default experiment on the embedded `digits` data (no download).
train: $(STAMP)
	$(PY) scripts/train.py --config experiments/digits.py --workdir runs/digits

# The fast tier (under 5 minutes on 2 idle cores): every package, real assertions.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=10

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
