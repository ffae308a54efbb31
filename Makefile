# Two entry points a new user needs: `make demo` (set up + the main job on the bundled model) and
# `make test` (set up + lint + tests). Both create and reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (an unpinned torch pulls a multi-GB CUDA build); any torch>=2.1 works.
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/demo
SHARED ?= ../shared/datasets
PETS3 := $(SHARED)/oxford-pets-3breeds
PETS37 := $(SHARED)/oxford-pets-37breeds-photos

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[export,dev]"
	touch $@

# Export the bundled checkpoint, quantize it for the CPU (stored calibration ranges, so no photos
# are needed), then run the live loop over photos and write overlays, masks and a latency report.
# With ../shared present: one photo of each of 37 breeds, and INT8 is gated on the 3-breed test split.
# Without it: scikit-image's sample photos (a cat, and three without animals), all CC0/public domain.
demo: $(BIN)/.installed
	rm -rf $(OUT) && mkdir -p $(OUT)/input
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
	if [ -d $(PETS37) ]; then \
		for f in $$(ls $(PETS37)/*.jpg | awk 'NR % 10 == 1'); do ln -s "$$(realpath "$$f")" $(OUT)/input/; done; \
	else \
		skdata="$$($(BIN)/python -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")"; \
		cp "$$skdata/chelsea.png" "$$skdata/coffee.png" "$$skdata/astronaut.png" "$$skdata/rocket.jpg" $(OUT)/input/; \
	fi
	$(BIN)/edgeseg run $(OUT)/segnet_dsc.int8.onnx --source $(OUT)/input --warmup 1 --view side-by-side \
		--output $(OUT)/overlays --save-masks $(OUT)/masks --report $(OUT)/report.json
	@echo
	@echo "demo outputs in $(OUT)/: segnet_dsc.onnx (FP32), segnet_dsc.int8.onnx (INT8 cpu),"
	@echo "  overlays/ (side-by-side JPEGs), masks/ (class-id PNGs: 0 pet, 1 background, 2 border), report.json"

lint: $(BIN)/.installed
	$(BIN)/ruff check edgeseg tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
