# Shortcuts for the commands the README and CONTRIBUTING.md use. `make` alone lists them.
.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format smoke smoke-paper ci

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## editable install with the test tools (pytest, ruff, snakefmt)
	python -m pip install -e ".[test]"

test:  ## the whole test suite, end-to-end runs included (what CI runs)
	python -m pytest

test-fast:  ## the test suite without the slow end-to-end runs
	python -m pytest -m "not slow"

lint:  ## ruff (lint + format check), snakefmt and snakemake --lint
	ruff check .
	ruff format --check .
	snakefmt --check workflow Snakefile
	snakemake --lint

format:  ## apply ruff's fixes and both formatters
	ruff check --fix .
	ruff format .
	snakefmt workflow Snakefile

smoke:  ## the whole DAG on the micro params, in a temporary copy (a few CPU minutes)
	python -m pytest tests/test_workflow.py -m slow -k micro -q

smoke-paper:  ## the 15-group CelebA-64 smoke at the paper file's M = 5,000 on stand-in data (over 30 CPU-minutes)
	NCP_PAPER_SMOKE=1 python -m pytest tests/test_smoke.py -q -k paper_M

ci:  ## exactly what CI runs
	.ci/run
