# `make demo`: set up .venv and run the offline default GRAPE job (train, then evaluate before/after).
# `make test`: set up .venv and chromium (for the Space's browser test), then the quick tests (`-m "not slow"`);
# `make test-all`: the same setup, then every test, the slow ones too (training stages, two processes, the browser):
# what CI (.ci/run) runs. `make quality`: ruff.
# `make space`: set up .venv and start the Gradio Space (spaces/app.py) on http://127.0.0.1:$(PORT).
.PHONY: setup demo test test-all quality style space

VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PORT ?= 7860

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
		recipes/grpo_grape.py --config recipes/SmolLM2-135M-Instruct/grpo/config_multi30k_de_demo.yaml

space: setup
	GRADIO_SERVER_PORT=$(PORT) $(BIN)/python spaces/app.py

test: setup
	@bash scripts/setup_browser.sh
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	@bash scripts/setup_browser.sh
	$(BIN)/python -m pytest -q

quality: setup
	$(BIN)/ruff check grape_hf tests recipes benchmarks spaces
	$(BIN)/ruff format --check grape_hf tests recipes benchmarks spaces

style: setup
	$(BIN)/ruff check --fix grape_hf tests recipes benchmarks spaces
	$(BIN)/ruff format grape_hf tests recipes benchmarks spaces
