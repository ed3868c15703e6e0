# vitres-deploy: `make demo` runs the main job, `make test` the test suite. Both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# The suite runs in one process per core, two at most (pytest-xdist; a test module, or class, stays on one worker
# so its fixtures are built once; the longest ones start first: LONGEST_SCOPES in tests/conftest.py).
# `make test PYTEST_WORKERS=` runs it in this process.
PYTEST_WORKERS ?= -n auto --maxprocesses 2 --dist loadscope --no-loadscope-reorder

.PHONY: demo test lint data clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,test]'
	touch $@

data:
	@test -d $(FMNIST) || { \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq dataset-fashion-mnist; }

demo: $(STAMP) data
	$(VENV)/bin/vitres-deploy demo $(DEMO_ARGS)

test: $(STAMP) data
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
