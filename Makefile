# Two commands on a fresh machine: `make demo` (offline end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake --cores 1

.PHONY: setup demo test test-slurm lint accuracy accuracy-frontier calibration-curve bench gpu-check clean-demo

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

# The workflow on a one-node SLURM cluster this starts on 127.0.0.1 (root; installs slurm-wlm and munge
# with apt-get where missing), every job through --workflow-profile profiles/slurm; ~3 minutes, also in `make test`.
test-slurm: setup
	$(BIN)/python -m pytest -m slurm tests/test_slurm.py

# The accuracy benchmark on ../shared/data, two trained models: the COCO-trained YOLOv5n proxy (mAP
# against labels and agreement with FP) and the 2-class fall-detection YOLOv8s (agreement only: its
# classes are not COCO's), 128 calibration photos, every lab recipe and issue #24's winners (w4a16_g64_asym,
# w4a16_g32_asym, w4a16_b45): several hours on 2 CPU cores, the YOLOv8s's calibrated recipes most of it.
# Prints both deltas tables; writes results/accuracy-*/report/deltas.{md,csv,json}.
accuracy: setup
	$(SNAKEMAKE) --configfile config/accuracy-yolov5n.yaml
	$(SNAKEMAKE) --configfile config/accuracy-yolov5n.yaml config/accuracy-fall-yolov8s.yaml
	@echo "## YOLOv5n (COCO, 80 classes)"; cat results/accuracy-yolov5n/report/deltas.md
	@echo "## fall-detection YOLOv8s (2 classes, no labels: agreement with FP)"; cat results/accuracy-fall-yolov8s/report/deltas.md
	mkdir -p docs/results
	cp results/accuracy-yolov5n/report/deltas.csv docs/results/accuracy-yolov5n.csv
	cp results/accuracy-fall-yolov8s/report/deltas.csv docs/results/accuracy-fall-yolov8s.csv
	@echo "copied to docs/results/accuracy-{yolov5n,fall-yolov8s}.csv (docs/accuracy.md); commit them with the numbers they change there"

# Accuracy against the number of calibration photos, the default build (w4a16, w4a16_g64_asym), one workflow run
# per count: YOLOv5n at 16/32/64/128 photos, the fall YOLOv8s at 16/32/128 (~1.5 hours on 2 CPU cores); prints
# each table and writes docs/results/calibration-curve-{yolov5n,fall-yolov8s}.csv (docs/accuracy.md).
calibration-curve: setup
	$(BIN)/python -m yolo_w4.calibration_curve --cores 2 --configfile config/accuracy-yolov5n.yaml \
		--counts 16 32 64 128 --out docs/results/calibration-curve-yolov5n.csv
	$(BIN)/python -m yolo_w4.calibration_curve --cores 2 --configfile config/accuracy-yolov5n.yaml \
		config/accuracy-fall-yolov8s.yaml --counts 16 32 128 --out docs/results/calibration-curve-fall-yolov8s.csv

# Accuracy against stored bits per weight (issue #24): uniform groups, a bit budget per layer and learned
# rounding on groups, asymmetric groups (config/accuracy-frontier.yaml), at the default 32 calibration
# photos: YOLOv5n (~1.5 hours on 2 CPU cores), then the fall YOLOv8s for the asymmetric groups (~30 min);
# writes docs/results/frontier-{yolov5n,fall-yolov8s}.csv (docs/accuracy.md "The frontier").
accuracy-frontier: setup
	$(BIN)/python -m yolo_w4.calibration_curve --cores 2 --configfile config/accuracy-yolov5n.yaml \
		config/accuracy-frontier.yaml --counts 32 --out docs/results/frontier-yolov5n.csv
	$(BIN)/python -m yolo_w4.calibration_curve --cores 2 --configfile config/accuracy-yolov5n.yaml \
		config/accuracy-fall-yolov8s.yaml config/accuracy-frontier.yaml --counts 32 \
		--variant w4a16_g32 w4a16_g64_asym_up w4a16_g32_asym_up --out docs/results/frontier-fall-yolov8s.csv

# What the CUDA path really does on an NVIDIA GPU machine (a few minutes): one table, printed
# and written to results/gpu-check/gpu_check.{md,json}. Without a GPU: one line, exit 0.
# GPU_PYTHON=python3 runs it with an existing Python that has the packages (no venv made).
GPU_PYTHON ?=
gpu-check: $(if $(GPU_PYTHON),,setup)
	PYTHONPATH=scripts$${PYTHONPATH:+:$$PYTHONPATH} $(or $(GPU_PYTHON),$(BIN)/python) -m yolo_w4.gpu_check --out results/gpu-check $(GPU_CHECK_ARGS)

# ruff (lint + format), snakefmt and Snakemake's own linter; each failure names the file.
lint: setup
	$(BIN)/ruff check scripts tests
	$(BIN)/ruff format --check scripts tests
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean-demo:
	rm -rf results/demo results/seeded results/ultralytics-assets

# Where time and bytes go (issue #14): a seeded YOLOv10m through the whole workflow from scratch, 20 val2017
# images, w4a16_rtn beside FP (BENCH_ARGS="--variant w4a16 w4a16_g64_asym": the default build); prints the table, writes results/bench/bench.{json,md} with the machine's facts.
# BENCH_ARGS="--before results/bench-before/bench.json" adds a before/after table (--workdir: another checkout).
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m yolo_w4.bench --out results/bench $(BENCH_ARGS)
