# tomoflow: `make demo` and `make test` are all a newcomer needs; each installs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-learning bench-score bench-transfer clean

install: $(STAMP)

# Reinstall only when the project's dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Exits non-zero if any step fails or the classifier did not learn (tomoflow demo's check).
demo: install
	$(PY) -m flows.cli demo --out demo-output

# Everything, the slow tier included (kill tests, the PostgreSQL service test, the full demo): what CI runs.
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast tier, for the edit-test loop: the slow tier is listed in tests/conftest.py (SLOW_TESTS).
test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

bench: install
	$(PY) bench/decode.py

clean:
	rm -rf demo-output .pytest_cache

# tomoflow score's frames/s against the model's forward pass alone (target ratio >= 0.8).
bench-score: install
	$(PY) bench/score.py

# CNN vs the trivial brightness score on a `moderate` synthetic collection (CPU: 5-7 min quiet, up to ~20 min on 2 shared cores).
bench-learning: install
	$(PY) bench/learning.py

# The transfer sweep's controls: a source model, a shuffled-labels model and scratch, swept on a
# second `moderate` collection with 3 repeats; exits 0 when the positive control helps at the smallest size
# and the negative control never does (target: 45 min on 2 quiet cores).
bench-transfer: install
	$(PY) bench/transfer.py
