.PHONY: check lint types test bench

PY ?= .venv/bin/python

check: lint types test

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest
