# clamp_pl — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
# OpenMP threads spin only briefly (1000 turns) before sleeping: libgomp's default long spin made small torch ops
# 10-20x slower on a shared 2-core machine, while sleeping at once (OMP_WAIT_POLICY=PASSIVE) made the tiny model's
# step 2x slower on an idle one (the demo's mouse job: 88 s passive, 65 s with this; python -m benchmarks.cpu)
export GOMP_SPINCOUNT ?= 1000
# glibc malloc keeps freed memory instead of returning it to the kernel after every step: CPU training steps stop
# page-faulting their activations back in (CLAMP RN50 step 4.2-5.6 s -> 3.8 s; python -m benchmarks.cpu)
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 1073741824

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install clamp_pl with its pinned dependencies (idempotent)

test: $(STAMP) ## the fast test suite (no e2e, no slow, no gpu)
	$(PY) -m pytest -m "not slow and not gpu and not e2e" -q

test-e2e: $(STAMP) ## the end-to-end tests: trainings, sweeps, DDP, resume, demo, notebook, benchmarks
	$(PY) -m pytest -m "e2e and not slow and not gpu" -q

test-full: $(STAMP) ## every CPU test, e2e and slow ones included
	$(PY) -m pytest -m "not gpu" -q

demo: $(STAMP) ## the main jobs on embedded data: mouse frames; toy few-shot/zero-shot from the shipped starting point
	$(PY) -m clamp_pl.tools.demo

pretrain-toy: $(STAMP) ## retrain the demo's starting point (~30-40 min on 2 cores) into clamp_pl/resources/toy_pretrained/
	$(PY) scripts/pretrain_toy.py $(ARGS)

train: $(STAMP) ## train; pass arguments with ARGS="experiment=fewshot_toy trainer.max_epochs=5"
	$(PY) -m clamp_pl.train $(ARGS)

sweep: $(STAMP) ## toy few-shot on the unseen family (shots x seeds, from the starting point and from scratch), aggregated
	$(PY) -m clamp_pl.train -m experiment=fewshot_unseen_toy,fewshot_unseen_scratch_toy protocol.shots=5,20 seed=1,2 $(ARGS)
	$(PY) -m clamp_pl.tools.aggregate --latest logs/train/multiruns

bench: $(STAMP) ## CPU benchmarks -> docs/benchmarks.md and docs/benchmarks.json
	$(PY) -m benchmarks.cpu $(ARGS)

bench-gpu: $(STAMP) ## GPU benchmark (one CUDA device, < 8 min) -> docs/benchmarks_gpu.md
	$(PY) -m benchmarks.gpu $(ARGS)

check-gpu: $(STAMP) ## the gpu tests + GPU benchmark (one CUDA device, < 8 min) -> docs/gpu_check.md; ARGS=--dry-run on CPU
	$(PY) -m benchmarks.check_gpu $(ARGS)

docs: $(STAMP) ## the user guide: mkdocs build --strict (warnings are errors) into site/; installs the docs extra if missing
	test -x $(VENV)/bin/mkdocs || $(VENV)/bin/pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check clamp_pl tests scripts benchmarks

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff check --fix clamp_pl tests scripts benchmarks
	$(VENV)/bin/ruff format clamp_pl tests scripts benchmarks

clean: ## remove caches and build leftovers (keeps .venv and logs)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

clean-logs: ## remove training logs and outputs
	rm -rf logs/ outputs/ multirun/ wandb/

.PHONY: help install test test-e2e test-full demo pretrain-toy train sweep bench bench-gpu check-gpu docs lint format clean clean-logs
