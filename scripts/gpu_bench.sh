#!/usr/bin/env bash
# On the GPU host, after the last piece: unpack vLLM, check that it imports with the backend registered, then run
# bench/vllm_prefill.py with the given arguments and copy its results to $OUT.
# The device tool sends the session's main checkout (32 MB) and at most 64 MiB a call, so from here:
#   PACK_DIR=/work/main/.gpu-pack PY=/work/main/.venv/bin/python scripts/gpu_pack.sh   (/.gpu-pack/ in .git/info/exclude)
#   calls 1-3, back to back (the machine goes back 30 s after a call), carry [".gpu-pack/pI"]:
#     mkdir -p /tmp/gpu-pack && cp .gpu-pack/pI/piece.I /tmp/gpu-pack/
#   call 4, carry [".gpu-pack/p3", ".gpu-pack/code"]: TOME_COMMIT=<hash> bash .gpu-pack/code/scripts/gpu_bench.sh 3 4
# Usage (repo root there): bash .gpu-pack/code/scripts/gpu_bench.sh I N [bench args...]   (I = -: already unpacked)
set -uo pipefail
I=$1; N=$2; shift 2
[ "$I" = - ] || bash .gpu-pack/code/scripts/gpu_unpack.sh .gpu-pack "$I" "$N" || exit 1
[ -d /tmp/vllm-site ] || exit 0
export PYTHONPATH=$PWD/.gpu-pack/code:/tmp/vllm-site PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
cd .gpu-pack/code
python3 -c "import vllm, torch; from engines.vllm_sparse import register; register(); import engines.vllm_flash_sparse; print('vllm', vllm.__version__, torch.__version__, torch.cuda.get_device_name())" 2>&1 | tail -20 || exit 1
timeout 120 python3 -m bench.vllm_attention --out "$OUT" 2>&1 | grep -v "^INFO" | tail -20
python3 -m bench.vllm_prefill --out "$OUT" --rows "$OUT/rows.jsonl" "$@" 2>&1 | grep -v "^INFO\|it/s\]" | tee "$OUT/log.txt" | tail -150
