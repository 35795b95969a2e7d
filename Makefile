# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV    := .venv
PY      := $(VENV)/bin/python
BATON   := $(VENV)/bin/baton
HOST    ?= 127.0.0.1
PORT    ?= 8000
EXAMPLE := examples/penguins/bundle
export UV_PYTHON_DOWNLOADS := never

.PHONY: install services run test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Build, check and serve the example bundle; prints the URL and a request to paste.
run: install
	$(BATON) build $(EXAMPLE) --output build/
	$(BATON) check $(EXAMPLE) --report build/check-report.json
	$(BATON) serve $(EXAMPLE) --host $(HOST) --port $(PORT)

## Real services the tests use (PostgreSQL, brokers), started when not answering, and the
## Debian packages they need (Prometheus).
services:
	scripts/ensure-packages.sh
	scripts/ensure-services.sh

## The whole test suite against real uv environments, real worker processes, real PostgreSQL,
## on two pytest-xdist workers (tests sharing a Ray cluster or podman's store stay on one).
test: install services
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

## Side-by-side benchmark against MLServer and a thin ASGI floor (see bench/README.md).
bench: install
	$(PY) bench/run.py

clean:
	rm -rf build dist .pytest_cache
