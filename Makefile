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
	$(BIN)/python -m pip install --quiet -e ".[dev,frd,review]"
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

clean-demo:
	rm -rf runs/bench/default runs/demo
