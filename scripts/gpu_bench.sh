#!/usr/bin/env bash
# On the GPU host, after the last piece: unpack vLLM, check that it imports with the backend registered, then run
# bench/vllm_prefill.py with the given arguments and copy its results to $OUT.
# The device tool sends the session's main checkout (32 MB) and at most 64 MiB a call, so from here:
#   PACK_DIR=/work/main/.gpu-pack PY=python3 scripts/gpu_pack.sh   (/.gpu-pack/ in .git/info/exclude)
#   calls 1-2 (I = 0, 1), back to back (the machine goes back 30 s after a call), carry [".gpu-pack/pI"]:
#     mkdir -p /tmp/gpu-pack && cp .gpu-pack/pI/piece.I /tmp/gpu-pack/
#   call 3, carry [".gpu-pack/p2", ".gpu-pack/code", ".gpu-pack/tools"]:
#     bash .gpu-pack/code/scripts/gpu_bench.sh 2 3 [bench args]
#   later calls on the warm machine, carry [".gpu-pack/code"]: ATTENTION_S=0 bash .gpu-pack/code/scripts/gpu_bench.sh - 3 ...
# Usage (repo root there): bash .gpu-pack/code/scripts/gpu_bench.sh I N [bench args...]   (I = -: already unpacked;
# no bench args: only the import check and the attention bench). Results name .gpu-pack/code/COMMIT.
set -uo pipefail
I=$1; N=$2; shift 2
[ "$I" = - ] || bash .gpu-pack/code/scripts/gpu_unpack.sh .gpu-pack "$I" "$N" || exit 1
[ -d /tmp/vllm-site ] || exit 0
export PYTHONPATH=$PWD/.gpu-pack/code:/tmp/vllm-site PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
# FlashInfer is not packed (hundreds of MB); vLLM's sampler imports it unless told not to
export VLLM_USE_FLASHINFER_SAMPLER=0
export TOME_COMMIT=${TOME_COMMIT:-$(cat .gpu-pack/code/COMMIT)}
cd .gpu-pack/code
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
python3 -c "import vllm, torch; from engines.vllm_sparse import register; register(); import engines.vllm_flash_sparse; print('vllm', vllm.__version__, torch.__version__, torch.cuda.get_device_name())" 2>&1 | tail -30 | tee -a "$LOG" || exit 1
# The engine rows first, then the one-layer kernel bench for ATTENTION_S seconds (0: skipped), which writes its
# results after each shape and length, so a cut-off run keeps what it measured.
[ $# -eq 0 ] || python3 -m bench.vllm_prefill --out "$OUT" --rows "$OUT/rows.jsonl" "$@" 2>&1 \
  | grep -v "^INFO\|it/s\]" | tee -a "$LOG" | tail -150
[ "${ATTENTION_S:-150}" = 0 ] || timeout "${ATTENTION_S:-150}" python3 -m bench.vllm_attention --out "$OUT" \
  --lengths ${ATTENTION_LENGTHS:-131072 262144 32768 65536} 2>&1 | grep -v "^INFO" | tail -30 | tee -a "$LOG"
