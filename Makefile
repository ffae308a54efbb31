# Two entry points a new user needs: `make demo` (set up + main job on the bundled model) and
# `make test` (set up + lint + tests). Each creates its own virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (an unpinned torch pulls a multi-GB CUDA build); any torch>=2.1 works.
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/demo

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[export,dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m edgeseg info models/segnet_dsc.pth
	mkdir -p $(OUT)
	$(BIN)/python -m edgeseg export models/segnet_dsc.pth -o $(OUT)/segnet_dsc.onnx --force \
		$$( [ -d ../shared/datasets/oxford-pets-3breeds/images ] && echo --verify-images ../shared/datasets/oxford-pets-3breeds/images --verify-limit 24 )
	$(BIN)/python -m edgeseg check $(OUT)/segnet_dsc.onnx --target tensorrt
	$(BIN)/python -m edgeseg info $(OUT)/segnet_dsc.onnx
	@echo "demo outputs are in $(OUT)/"

lint: $(BIN)/.installed
	$(BIN)/ruff check edgeseg tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
