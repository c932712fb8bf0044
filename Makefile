# Thin wrappers around `python -m pipeline <stage>`: Make variables become overrides.
# Every option is listed by `make config`; ARGS passes any other section.key=value.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu installs tensorflow-cpu (half the download); cuda installs tensorflow[and-cuda].
ACCEL ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
STAMP := $(VENV)/.installed-$(ACCEL)

# Each Make variable reaches `python -m pipeline` as exactly one argument, whatever it holds
# (spaces, unicode, commas, quotes, $, ~): $(value) takes it literally and `quote` wraps it
# in single quotes for the shell ('\'' for a quote inside). ARGS stays shell words: a list
# of overrides separated by spaces (shell-quote one that holds a space).
quote = '$(subst ','\'',$(1))'
override = $(if $(value $(1)),$(call quote,$(2)=$(value $(1))))

OVERRIDES := \
  $(call override,DATASET,data.dataset) \
  $(call override,SPLIT_SEED,data.split_seed) \
  $(call override,DATA_CACHE,data.cache_size) \
  $(call override,RECHECK,data.recheck) \
  $(call override,IMAGE_SIZE,input.image_size) \
  $(call override,BATCH_SIZE,input.batch_size) \
  $(call override,BACKBONE,model.backbone) \
  $(call override,WEIGHTS,model.weights) \
  $(call override,SEED,train.seed) \
  $(call override,RUN_NAME,train.run_name) \
  $(call override,HEAD_EPOCHS,train.head_epochs) \
  $(call override,EPOCHS,train.fine_tune_epochs) \
  $(call override,HEAD_LR,train.head_lr) \
  $(call override,LR,train.fine_tune_lr) \
  $(call override,PRECISION,train.precision) \
  $(call override,STRATEGY,train.strategy) \
  $(call override,XLA,train.xla) \
  $(call override,BUDGET,memory.budget) \
  $(call override,RUN,eval.run) \
  $(call override,SPLIT,eval.split) \
  $(call override,TTA,input.tta) \
  $(call override,IN,predict.input) \
  $(call override,OUT,predict.output) \
  $(call override,SORT_INTO,predict.sort_into) \
  $(call override,MODEL,predict.model) \
  $(call override,FORMAT,export.format) \
  $(call override,NAME,experiment.name) \
  $(call override,GRID,experiment.grid) \
  $(call override,REPEATS,experiment.repeats) \
  $(call override,PRESET,experiment.preset) \
  $(call override,THRESHOLD,experiment.threshold) \
  $(call override,RESULTS,experiment.results) \
  $(ARGS)
CONFIG_FLAG := $(if $(value CONFIG),--config $(call quote,$(value CONFIG)))
VERBOSE_FLAG := $(if $(VERBOSE),--verbose)
RUN_STAGE = $(PY) -m pipeline $(1) $(VERBOSE_FLAG) $(CONFIG_FLAG) $(OVERRIDES)

.PHONY: help setup setup-beam beam-check beam-predict test-beam lock-beam data review train bench-train evaluate predict export memory experiment experiment-summary config test test-all lint docs bench-input bench-data bench-predict bench-memory bench-recipe bench-export lock clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@echo "setup: installing TensorFlow (ACCEL=$(ACCEL)) and the pinned dependencies into $(VENV)/: a few minutes the first time, quiet until done ..."
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(ACCEL),dev,weights]"
	rm -f $(VENV)/.installed-*
	touch $@
	@echo "setup: done; $(VENV)/ is ready (ACCEL=$(ACCEL))"

setup: $(STAMP)  ## create .venv and install the pinned dependencies (ACCEL=cpu|cuda)

data: $(STAMP)  ## fetch/read DATASET, check every image, split, write data/<dataset>/ manifests
	$(call RUN_STAGE,data)

review: $(STAMP)  ## suspected label errors, outliers, near-duplicates of DATASET: reports/<dataset>/review/
	$(call RUN_STAGE,review)

train: $(STAMP)  ## two-phase fine-tuning into models/<run>/ (runs `data` first if needed; resumable)
	$(call RUN_STAGE,train)

evaluate: $(STAMP)  ## metrics, figures, reports/<run>/index.html (RUN=latest, SPLIT=test|val, TTA=flip)
	$(call RUN_STAGE,evaluate)

predict: $(STAMP)  ## classify IN=folder into OUT=predictions.csv (RUN= [FORMAT=tflite-int8] or MODEL=x.tflite, SORT_INTO=dir, TTA=flip)
	$(call RUN_STAGE,predict)

export: $(STAMP)  ## TFLite fp32/fp16/int8 into models/<run>/export/, scored on the test split (RUN=, FORMAT=)
	$(call RUN_STAGE,export)

memory: $(STAMP)  ## per-layer memory/FLOPs for BACKBONE, IMAGE_SIZE, BATCH_SIZE; fit BUDGET=16GiB
	$(call RUN_STAGE,memory $(MEMORY_ARGS))

experiment: $(STAMP)  ## NAME= GRID="k=a,b k2=c,d" REPEATS=3 (or PRESET=<a file in pipeline/configs/presets/>)
	$(call RUN_STAGE,experiment)

experiment-summary: $(STAMP)  ## re-summarise NAME= with RESULTS=other/results.csv,... (runs nothing)
	$(PY) -m pipeline experiment --summarize $(CONFIG_FLAG) $(OVERRIDES)

config: $(STAMP)  ## print the effective configuration
	$(call RUN_STAGE,config)

# `make test` leaves out the tests marked slow (real backbones trained for minutes); a -m in
# PYTEST_ARGS replaces the marker expression, since pytest keeps the last -m.
test: $(STAMP)  ## the test suite without the slow tests (PYTEST_ARGS=... to select)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)  ## every test, the slow ones included (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

# --strict: a broken link or an anchor that does not exist fails the build (mkdocs.yml).
docs: $(STAMP)  ## build the documentation site from docs/ into site/ (MkDocs, strict)
	$(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check pipeline tests benchmarks
	$(PY) -m ruff format --check pipeline tests benchmarks

bench-input: $(STAMP)  ## input pipeline benchmark (images/s, JSON under benchmarks/results/)
	$(PY) benchmarks/input_pipeline.py $(BENCH_ARGS)

bench-data: $(STAMP)  ## make data on 20,000 photos: first run, unchanged and 1%-changed reruns, peak RSS (JSON)
	$(PY) benchmarks/data.py $(BENCH_ARGS)

bench-train: $(STAMP)  ## cached vs plain phase 1, images/s at 299, FLOPs, % of peak, augmentation, transfer (JSON)
	$(PY) benchmarks/train.py $(BENCH_ARGS)

bench-recipe: $(STAMP)  ## default recipe vs the frozen-feature baseline, 3 photo sets x 3 splits (~45 min, JSON)
	$(PY) benchmarks/recipe.py $(BENCH_ARGS)

bench-export: $(STAMP)  ## TFLite fp32/fp16/int8: size, accuracy, agreement, latency b1/b32 on MobileNet 0.25 and InceptionV3 (34 min on 2 busy cores, JSON)
	$(PY) benchmarks/export.py $(BENCH_ARGS)

bench-memory: $(STAMP)  ## measured vs estimated memory per image (JSON under benchmarks/results/)
	$(PY) benchmarks/memory.py $(BENCH_ARGS)

bench-predict: $(STAMP)  ## make predict against the model alone and a naive loop; memory, resume (JSON under benchmarks/results/)
	$(PY) benchmarks/predict.py $(BENCH_ARGS)

lock: $(STAMP)  ## regenerate constraints.txt from the current environment
	$(PY) -m pip freeze --exclude-editable | sed 's/^tensorflow_cpu @.*/tensorflow-cpu==2.21.0/' > constraints.txt

# Apache Beam (pipeline/beam/) lives in its own venv: apache-beam 2.77 needs older pins than
# constraints.txt's (pillow<13, protobuf<7, pyarrow<26, python-dateutil<3), so `make setup`
# stays as it is and constraints-beam.txt pins this one. BEAM_ARGS are Beam's own options.
BEAM_VENV ?= .venv-beam
BEAM_PY := $(BEAM_VENV)/bin/python
BEAM_STAMP := $(BEAM_VENV)/.installed-$(ACCEL)
BEAM_ARGS ?= --runner=DirectRunner --direct_num_workers=0 --direct_running_mode=multi_processing

$(BEAM_STAMP): pyproject.toml constraints-beam.txt
	@echo "setup-beam: installing TensorFlow (ACCEL=$(ACCEL)) and apache-beam into $(BEAM_VENV)/ ..."
	test -d $(BEAM_VENV) || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_PY) -m pip install --quiet --upgrade pip
	$(BEAM_PY) -m pip install --quiet -c constraints-beam.txt -e ".[$(ACCEL),dev,beam,weights]"
	rm -f $(BEAM_VENV)/.installed-*
	touch $@
	@echo "setup-beam: done; $(BEAM_VENV)/ is ready"

setup-beam: $(BEAM_STAMP)  ## create .venv-beam with apache-beam (pins: constraints-beam.txt)

beam-check: $(BEAM_STAMP)  ## make data's per-image check on Beam: check_report.csv (BEAM_ARGS=runner options)
	$(BEAM_PY) -m pipeline.beam check $(VERBOSE_FLAG) $(CONFIG_FLAG) $(OVERRIDES) -- $(BEAM_ARGS)

beam-predict: $(BEAM_STAMP)  ## make predict on Beam: IN= RUN= OUT= (BEAM_ARGS=runner options)
	$(BEAM_PY) -m pipeline.beam predict $(VERBOSE_FLAG) $(CONFIG_FLAG) $(OVERRIDES) -- $(BEAM_ARGS)

test-beam: $(BEAM_STAMP)  ## the Beam pipelines' tests, in .venv-beam (CI runs it after test-all)
	$(BEAM_PY) -m pytest tests/test_beam.py tests/test_beam_cli.py $(PYTEST_ARGS)

lock-beam: $(BEAM_STAMP)  ## regenerate constraints-beam.txt from .venv-beam
	{ sed -n '1,3p' constraints-beam.txt; $(BEAM_PY) -m pip freeze --exclude-editable \
	  | sed -e 's/^tensorflow_cpu @.*/tensorflow-cpu==2.21.0/' -e 's/^tensorflow_cpu==/tensorflow-cpu==/'; \
	  echo "tensorflow==2.21.0"; } > constraints-beam.txt.new && mv constraints-beam.txt.new constraints-beam.txt

# No $(STAMP): clean needs only the standard library, so it runs before (or without) setup.
clean:  ## remove only the folders the pipeline made under data/ models/ reports/
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pipeline clean $(CONFIG_FLAG) $(OVERRIDES)
