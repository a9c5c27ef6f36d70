#!/usr/bin/env bash
# On the GPU host, once scripts/gpu_unpack.sh has put vLLM in /tmp/vllm-site: run one command in .gpu-pack/code (this
# branch's code, carried) with vLLM on the path, as scripts/gpu_bench.sh runs its benches.
# Usage (repo root there): bash .gpu-pack/code/scripts/gpu_run.sh python3 -m bench.vllm_decode --out "$OUT" ...
set -uo pipefail
[ -d /tmp/vllm-site ] || { echo "vLLM is not unpacked here (scripts/gpu_unpack.sh)"; exit 1; }
export PYTHONPATH=$PWD/.gpu-pack/code:/tmp/vllm-site PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
export VLLM_USE_FLASHINFER_SAMPLER=0  # FlashInfer is not packed
export TOME_COMMIT=${TOME_COMMIT:-$(cat .gpu-pack/code/COMMIT)}
cd .gpu-pack/code && "$@"
