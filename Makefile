# Everything a fresh machine needs goes through these targets; .venv lives in the repo root.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install data run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,coreml]' || { echo "coremltools is not installable here: Core ML export \
	(lut export-ops --format coreml) and its tests are off"; $(BIN)/pip install -q -e '.[dev]'; }
	touch $@

install: $(STAMP) data

# The embedded proxy data set (Debian's dataset-fashion-mnist); real users point --data at their own folders.
data:
	@test -d $(FASHION_MNIST) || apt-get install -y -q dataset-fashion-mnist \
		|| (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

run: install
	$(BIN)/fastvit-nas model show t8

lint: $(STAMP)
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest tests

bench: install
	$(BIN)/python benchmarks/reparam.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
