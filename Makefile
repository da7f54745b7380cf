# Two commands on a fresh machine: `make run` (the embedded default run) and `make test` (the test-suite).
# Both create .venv and install requirements.txt the first time (and again when requirements.txt changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) bilevel_rlhf.py

test: $(VENV)/.installed
	$(PY) -m pytest -q test_bilevel_rlhf.py

clean:
	rm -rf $(VENV) runs .pytest_cache __pycache__
