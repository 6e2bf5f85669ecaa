# The two commands of the README: `make demo` and `make test`. Both install what is missing.
VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-all demo test lint typecheck unit integration bench clean docs docs-check deb soak

setup:
	@./scripts/bootstrap

# make test also needs the real daemons, podman, ansible and promtool (scripts/bootstrap).
setup-all:
	@./scripts/bootstrap --all

demo: setup
	@$(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy portguard
	$(VENV)/bin/lint-imports

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# docs-check: the docs say what the code does (scripts/gen-docs --check lists every gap).
test: setup-all lint docs-check
	$(PY) -m pytest tests $(PYTEST_ARGS)

# bench/ and the soak take the sandbox from tests/support (PYTHONPATH=tests)
bench: setup
	PYTHONPATH=tests $(PY) bench/who_bench.py
	PYTHONPATH=tests $(PY) bench/preflight_bench.py
	PYTHONPATH=tests $(PY) bench/daemon_cost.py
	PYTHONPATH=tests $(PY) bench/dropin_bench.py

SOAK_SCENARIOS ?= 1000
SOAK_LANES ?= 2
soak: setup
	PYTHONPATH=tests $(PY) bench/soak.py --scenarios $(SOAK_SCENARIOS) --lanes $(SOAK_LANES) && PYTHONPATH=tests $(PY) -m support.bind_oracle

docs: setup
	$(PY) scripts/gen-docs

docs-check: setup
	$(PY) scripts/gen-docs --check

deb:
	./scripts/build-deb

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info dist
