# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A pinned torch takes the local CPU wheel; an unpinned one would pull CUDA packages.
TORCH  := torch==2.13.0
EXTRAS := test,train,bench,viz
# The inspect page is tested in headless Chromium (Debian's package; no browser download).
CHROMIUM_STAMP := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test example bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' $(TORCH)
	touch $(STAMP)

$(CHROMIUM_STAMP):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

demo: $(STAMP)
	$(PY) -m tempo_rl example

test: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

example: $(STAMP)
	$(PY) -m tempo_rl example

clean-venv:
	rm -rf $(VENV)
