# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A pinned torch takes the local CPU wheel; an unpinned one would pull CUDA packages.
TORCH  := torch==2.13.0
EXTRAS := test,train,bench

.PHONY: demo test example bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' $(TORCH)
	touch $(STAMP)

# TEMPO on the embedded task: builds and warms up the tiny policy (runs/tiny-base, about 2 minutes,
# cached), then 100 RL steps on CPU; prints the reward and eval accuracy as they rise.
demo: $(STAMP)
	$(PY) -m tempo_rl train --estimator tempo --steps 100 --threads 1 --output-dir runs/demo --eval-every 20

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

example: $(STAMP)
	$(PY) -m tempo_rl example

clean-venv:
	rm -rf $(VENV)
