# Two commands on a fresh machine: `make demo` (offline end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake --cores 1

.PHONY: setup demo test lint accuracy clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-workflow.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-workflow.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(SNAKEMAKE) --configfile config/demo.yaml
	$(SNAKEMAKE) --configfile config/demo.yaml --report results/demo/report.html
	@echo "deltas table: results/demo/report/deltas.md; report: results/demo/report.html"

test: setup
	$(BIN)/python -m pytest

# The proxy accuracy benchmark on ../shared/data: prints the deltas table, writes
# results/accuracy-yolov5n/report/deltas.{md,csv,json}.
accuracy: setup
	$(SNAKEMAKE) --configfile config/accuracy-yolov5n.yaml
	@cat results/accuracy-yolov5n/report/deltas.md

lint: setup
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean-demo:
	rm -rf results/demo results/seeded results/ultralytics-assets
