# Two commands for a fresh machine: `make run` and `make test`. Both build .venv/ first.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: run test clean

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(INSTALLED)

# The main job: DeepCluster on the embedded Fashion-MNIST sample, then its metrics.
run: $(INSTALLED)
	$(VENV)/bin/deepcluster run $(RUN_ARGS)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
