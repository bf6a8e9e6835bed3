# Two entry points for a fresh machine; both bootstrap .venv and are idempotent.
#   make demo   generate the embedded dataset, train the small preset, evaluate it, export it
#               (FP32, FP16, INT8), check each export against PyTorch (toolkit parity) and
#               benchmark them side by side with PyTorch (toolkit bench)
#   make test   run the test suite
# Variables can be overridden: make demo SEED=1 (its own run directory, runs/small-seed1)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/sort-of-clevr
SEED ?= 0
RUN := runs/small-seed$(SEED)
DEMO_SCENES ?= 10000
# The budget is in steps, never seconds, so that a seed trains the same on any machine: the
# curriculum stages, then this many epochs (11,901 steps at most).
DEMO_EPOCHS ?= 7
# The first steps ask only left/right and top/bottom questions, which no image statistic answers:
# the model must find the object the question names. A second stage adds shape questions, with what
# finds the object held (--freeze-binding), so that the object's cell learns its shape
# (bench/training.md; without the stages, or without the hold, seed 2 misses the floors there).
# Each stage ends once learned (mean training loss under 0.05), after this many steps at the latest.
DEMO_CURRICULUM ?= 3000
# The demo fails (exit 1) below these held-out accuracies, in percent: each of non-relational and
# relational, and each question type. They are the main job's targets; every seed measured with
# this recipe cleared them by 7 points or more (bench/training.md).
DEMO_MIN_GROUP ?= 90
DEMO_MIN_TYPE ?= 85
# The tritonserver binary (2.51) and Triton's Python backend for tests/triton/test_triton_server.py,
# from nvidia-pytriton's wheel, installed without its dependencies into its own folder: its Python
# API, which the toolkit does not use, pins numpy<2 (pyproject.toml's `serve` extra says more).
# Its 2.51 Python backend stub does need numpy 1.x: that goes beside it, for the stub alone.
PYTRITON ?= nvidia-pytriton==0.7.0
STUB_NUMPY ?= numpy==1.26.4

.PHONY: demo test clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,export,plot,dev,serve]'
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/nvidia-pytriton \
	  '$(PYTRITON)'
	$(BIN)/python -m pip install --quiet --no-deps --upgrade \
	  --target $(VENV)/nvidia-pytriton/stub-site-packages '$(STUB_NUMPY)'
	touch $(STAMP)

$(DATA)/dataset.json: | $(STAMP)
	$(BIN)/toolkit data generate --out $(DATA) --scenes $(DEMO_SCENES) --image-size 64

$(RUN)/best.safetensors: $(DATA)/dataset.json | $(STAMP)
	$(BIN)/toolkit train --data $(DATA) --out $(RUN) --preset small --seed $(SEED) \
	  --epochs $(DEMO_EPOCHS) --batch-size 64 --lr 1e-3 --warmup-steps 300 \
	  --curriculum-types horizontal,vertical --curriculum-types horizontal,vertical,shape \
	  --curriculum-steps $(DEMO_CURRICULUM) --freeze-binding

demo: $(RUN)/best.safetensors
	$(BIN)/toolkit eval --checkpoint $(RUN) --data $(DATA) --json $(RUN)/eval.json \
	  --min-group-accuracy $(DEMO_MIN_GROUP) --min-type-accuracy $(DEMO_MIN_TYPE)
	$(BIN)/toolkit export --checkpoint $(RUN) --precision fp32
	$(BIN)/toolkit export --checkpoint $(RUN) --precision fp16 --from-onnx export/model.onnx \
	  --data $(DATA) --auto-fallback
	$(BIN)/toolkit export --checkpoint $(RUN) --precision int8 --from-onnx export/model.onnx \
	  --data $(DATA) --calibration $(DATA) --calib-samples 256 --target tensorrt --auto-fallback
	# --auto-fallback keeps in float the fewest convolutions and matrix products that the held-out
	# check needs (none on seeds 0, 1 and 2: bench/export.md); parity then gates on all 6,000 rows.
	$(BIN)/toolkit parity --reference $(RUN) --candidate export/model.fp16.onnx
	$(BIN)/toolkit parity --reference $(RUN) --candidate export/model.int8.onnx \
	  --json export/parity.int8.json
	$(BIN)/toolkit bench --onnx export/model.onnx --onnx export/model.fp16.onnx \
	  --onnx export/model.int8.onnx --batch 1,8 --seq 32 --iters 20 --json export/bench.json \
	  --plot export/bench.png

test: $(STAMP)
	$(BIN)/python -m pytest

clean-demo:
	rm -rf $(DATA) runs/small-seed*
