# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch pinned to the build available on the project's CPU machines; pyproject keeps the range open.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast mutation clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e ".[dev,frd,review,slurm,ray]"
	touch $(STAMP)

install: $(STAMP)

# The default job on the embedded dataset (no download): the default benchmark, a GAN and a
# diffusion model trained and measured alike; report in runs/bench/default/report.md.
# Running it again reuses what is finished (`make clean-demo` starts afresh).
demo: install
	$(BIN)/raresynth bench benchmarks/default.yaml

test: install
	$(BIN)/python -m pytest -q

# Everything but the tests marked `slow` (multi-process runs, FRD, the longest trainings): the quick check while editing.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Mutation testing (cosmic-ray, configs in mutation/): small bugs planted one at a time in the metric, split,
# checkpoint and regularizer modules, each run against its tests. Slow (hours for all): not part of `make test`.
# `make mutation MODULES="regularizer split"` runs some; sessions and reports go to mutation/out/. See docs/testing.md.
MODULES ?= regularizer checkpoint split metrics-swd metrics-prdc metrics-msssim metrics-fidelity metrics-memorization

mutation: install
	$(BIN)/python -m pip install --quiet "cosmic-ray>=8.7"
	mkdir -p mutation/out
	set -e; for module in $(MODULES); do \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/cosmic-ray init mutation/$$module.toml mutation/out/$$module.sqlite; \
	  $(BIN)/python mutation/skip_annotations.py mutation/out/$$module.sqlite; \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/cosmic-ray exec mutation/$$module.toml mutation/out/$$module.sqlite; \
	  $(BIN)/cr-report mutation/out/$$module.sqlite --show-pending > mutation/out/$$module.txt; \
	  tail -n 3 mutation/out/$$module.txt; \
	done

clean-demo:
	rm -rf runs/bench/default runs/demo
