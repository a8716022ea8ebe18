# Two commands for a fresh machine: `make run` and `make test`. Both build .venv/ first.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
RUN_ARGS ?=
BENCH_ARGS ?=
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test clean bench bench-fmnist bench-kmeans bench-quality bench-quality-fmnist bench-gpu

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(INSTALLED)

# The main job: DeepCluster on the embedded Fashion-MNIST sample, then its metrics and its evaluation.
run: $(INSTALLED)
	$(VENV)/bin/deepcluster run --evaluate $(RUN_ARGS)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

# Benchmarks (docs/PERFORMANCE.md): flow vs plain library loop, per stage; k-means vs faiss and scikit-learn.
bench: $(INSTALLED)
	$(VENV)/bin/deepcluster bench $(BENCH_ARGS)

bench-fmnist: $(INSTALLED) $(FASHION_MNIST)
	$(VENV)/bin/deepcluster bench --dataset fashion-mnist --k 100 --rounds 1 $(BENCH_ARGS)

bench-kmeans: $(INSTALLED)
	$(VENV)/bin/deepcluster bench-kmeans $(BENCH_ARGS)

# Quality (docs/RESULTS.md): the default configuration on the six datasets of the dev suite, 3 seeds each.
bench-quality: $(INSTALLED) $(FASHION_MNIST)
	$(VENV)/bin/deepcluster bench-quality --suite dev --configs default $(BENCH_ARGS)

bench-quality-fmnist: $(INSTALLED) $(FASHION_MNIST)
	$(VENV)/bin/deepcluster bench-quality --suite fashion-mnist $(BENCH_ARGS)

# On a machine with an NVIDIA GPU: the GPU figures of docs/PERFORMANCE.md (bench/gpu.sh; results in $$OUT).
bench-gpu: $(INSTALLED) $(FASHION_MNIST)
	PYTHON=$(PYTHON) bash bench/gpu.sh

# The full Fashion-MNIST, from Debian (the machine's package registry).
$(FASHION_MNIST):
	apt-get update && apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
