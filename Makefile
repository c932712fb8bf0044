# Thin wrappers around `python -m pipeline <stage>`: Make variables become overrides.
# Every option is listed by `make config`; ARGS passes any other section.key=value.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu installs tensorflow-cpu (half the download); cuda installs tensorflow[and-cuda].
ACCEL ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
STAMP := $(VENV)/.installed-$(ACCEL)

OVERRIDES := \
  $(if $(DATASET),data.dataset=$(DATASET)) \
  $(if $(SPLIT_SEED),data.split_seed=$(SPLIT_SEED)) \
  $(if $(DATA_CACHE),data.cache_size=$(DATA_CACHE)) \
  $(if $(IMAGE_SIZE),input.image_size=$(IMAGE_SIZE)) \
  $(if $(BATCH_SIZE),input.batch_size=$(BATCH_SIZE)) \
  $(if $(BACKBONE),model.backbone=$(BACKBONE)) \
  $(if $(WEIGHTS),model.weights=$(WEIGHTS)) \
  $(if $(SEED),train.seed=$(SEED)) \
  $(if $(RUN_NAME),train.run_name=$(RUN_NAME)) \
  $(if $(HEAD_EPOCHS),train.head_epochs=$(HEAD_EPOCHS)) \
  $(if $(EPOCHS),train.fine_tune_epochs=$(EPOCHS)) \
  $(if $(HEAD_LR),train.head_lr=$(HEAD_LR)) \
  $(if $(LR),train.fine_tune_lr=$(LR)) \
  $(if $(PRECISION),train.precision=$(PRECISION)) \
  $(if $(STRATEGY),train.strategy=$(STRATEGY)) \
  $(if $(XLA),train.xla=$(XLA)) \
  $(if $(BUDGET),memory.budget=$(BUDGET)) \
  $(if $(RUN),eval.run=$(RUN)) \
  $(if $(SPLIT),eval.split=$(SPLIT)) \
  $(if $(IN),predict.input=$(IN)) \
  $(if $(OUT),predict.output=$(OUT)) \
  $(if $(SORT_INTO),predict.sort_into=$(SORT_INTO)) \
  $(if $(NAME),experiment.name=$(NAME)) \
  $(if $(GRID),"experiment.grid=$(GRID)") \
  $(if $(REPEATS),experiment.repeats=$(REPEATS)) \
  $(if $(PRESET),experiment.preset=$(PRESET)) \
  $(if $(THRESHOLD),experiment.threshold=$(THRESHOLD)) \
  $(if $(RESULTS),experiment.results=$(RESULTS)) \
  $(ARGS)
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG))
RUN_STAGE = $(PY) -m pipeline $(1) $(CONFIG_FLAG) $(OVERRIDES)

.PHONY: help setup data train bench-train evaluate predict memory experiment experiment-summary config test lint bench-input bench-predict bench-memory lock clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(ACCEL),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)  ## create .venv and install the pinned dependencies (ACCEL=cpu|cuda)

data: $(STAMP)  ## fetch/read DATASET, check every image, split, write data/<dataset>/ manifests
	$(call RUN_STAGE,data)

train: $(STAMP)  ## two-phase fine-tuning into models/<run>/ (runs `data` first if needed; resumable)
	$(call RUN_STAGE,train)

evaluate: $(STAMP)  ## metrics, figures, reports/<run>/index.html (RUN=latest, SPLIT=test|val)
	$(call RUN_STAGE,evaluate)

predict: $(STAMP)  ## classify IN=folder into OUT=predictions.csv (RUN=, SORT_INTO=dir)
	$(call RUN_STAGE,predict)

memory: $(STAMP)  ## per-layer memory/FLOPs for BACKBONE, IMAGE_SIZE, BATCH_SIZE; fit BUDGET=16GiB
	$(call RUN_STAGE,memory $(MEMORY_ARGS))

experiment: $(STAMP)  ## NAME= GRID="k=a,b k2=c,d" REPEATS=3 (or PRESET=width|depth|dropout|epochs)
	$(call RUN_STAGE,experiment)

experiment-summary: $(STAMP)  ## re-summarise NAME= with RESULTS=other/results.csv,... (runs nothing)
	$(PY) -m pipeline experiment --summarize $(CONFIG_FLAG) $(OVERRIDES)

config: $(STAMP)  ## print the effective configuration
	$(call RUN_STAGE,config)

test: $(STAMP)  ## run the test suite (PYTEST_ARGS=... to select)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check pipeline tests benchmarks
	$(PY) -m ruff format --check pipeline tests benchmarks

bench-input: $(STAMP)  ## input pipeline benchmark (images/s, JSON under benchmarks/results/)
	$(PY) benchmarks/input_pipeline.py $(BENCH_ARGS)

bench-train: $(STAMP)  ## cached vs plain phase 1, images/s at 299, FLOPs, % of peak, augmentation, transfer (JSON)
	$(PY) benchmarks/train.py $(BENCH_ARGS)

bench-memory: $(STAMP)  ## measured vs estimated memory per image (JSON under benchmarks/results/)
	$(PY) benchmarks/memory.py $(BENCH_ARGS)

bench-predict: $(STAMP)  ## make predict against a naive loop (JSON under benchmarks/results/)
	$(PY) benchmarks/predict.py $(BENCH_ARGS)

lock: $(STAMP)  ## regenerate constraints.txt from the current environment
	$(PY) -m pip freeze --exclude-editable | sed 's/^tensorflow_cpu @.*/tensorflow-cpu==2.21.0/' > constraints.txt

clean:  ## remove generated data, models and reports (never the user's images)
	find data models reports -mindepth 1 ! -name README.md -exec rm -rf {} +
