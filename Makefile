# Two entry points a new user needs: `make demo` (set up + the main job on the bundled model) and
# `make test` (set up + lint + tests). Both create and reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (an unpinned torch pulls a multi-GB CUDA build); any torch>=2.1 works.
TORCH_SPEC ?= torch==2.13.0
# Its tritonserver (Linux x86-64 and arm64) serves models for `edgeseg triton serve` and the tests.
PYTRITON_SPEC ?= nvidia-pytriton==0.7.0
OUT ?= out/demo
SHARED ?= ../shared/datasets
PETS3 := $(SHARED)/oxford-pets-3breeds

.PHONY: demo test lint clean

# PYTHONWARNINGS=ignore on the editable install: setuptools' boxed notice about folders named like the package
$(BIN)/.installed: pyproject.toml
	@echo "==> setting up $(VENV) with $(PYTHON) (once; about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> installing $(TORCH_SPEC) (CPU build: the largest step)"
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	@echo "==> installing edgeseg with its export and dev extras (onnx, onnxsim, OpenVINO, pytest, ruff)"
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e ".[export,dev]"
	@echo "==> installing the Triton server binary (nvidia-pytriton, --no-deps: see README, Triton)"
	$(BIN)/pip install --quiet --no-deps "$(PYTRITON_SPEC)" || \
		echo "no nvidia-pytriton wheel for this machine: the Triton server tests will skip"
	touch $@

# Export the bundled checkpoint, quantize it for the CPU (stored calibration ranges, so no photos
# are needed), then run the live loop over the 37 bundled photos (calibration/: one per breed of
# Oxford-IIIT Pet, CC BY-SA 4.0) and write overlays, masks and a latency report. With ../shared
# present, INT8 is also gated on the 3-breed test split (at most 1 mIoU point lost).
demo: $(BIN)/.installed
	rm -rf $(OUT) && mkdir -p $(OUT)
	$(BIN)/edgeseg info models/segnet_dsc.pth
	$(BIN)/edgeseg export models/segnet_dsc.pth -o $(OUT)/segnet_dsc.onnx
	$(BIN)/edgeseg check $(OUT)/segnet_dsc.onnx --target tensorrt
	if [ -d $(PETS3)/images ]; then \
		$(BIN)/edgeseg quantize $(OUT)/segnet_dsc.onnx --calib-ranges models/segnet_dsc.calib.json \
			-o $(OUT)/segnet_dsc.int8.onnx --val $(PETS3) --max-drop 1.0; \
	else \
		$(BIN)/edgeseg quantize $(OUT)/segnet_dsc.onnx --calib-ranges models/segnet_dsc.calib.json \
			-o $(OUT)/segnet_dsc.int8.onnx; \
	fi
	$(BIN)/edgeseg run $(OUT)/segnet_dsc.int8.onnx --source calibration --view side-by-side \
		--output $(OUT)/overlays --save-masks $(OUT)/masks --report $(OUT)/report.json
	@echo
	@echo "demo outputs in $(OUT)/: segnet_dsc.onnx (FP32), segnet_dsc.int8.onnx (INT8 cpu),"
	@echo "  overlays/ (photo | overlay, one per breed), masks/ (class-id PNGs: 0 pet, 1 background, 2 border),"
	@echo "  report.json (per-stage latency, backend, precision, machine)"
	@echo "the edgeseg command: . $(VENV)/bin/activate (then edgeseg --help)"

lint: $(BIN)/.installed
	$(BIN)/ruff check edgeseg tests benchmarks docs
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -ra --durations=15 tests  # the slowest tests, to keep CI near 15 minutes

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
