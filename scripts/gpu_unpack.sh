#!/usr/bin/env bash
# On the GPU host: append the carried piece to /tmp/gpu-pack, and once all N are there, unpack vLLM into
# /tmp/vllm-site with the wheels the host lacks. Usage: scripts/gpu_unpack.sh PACK_DIR I N
# The host has no zstd binary: without one, the pieces are decompressed by the `zstandard` wheel carried in
# PACK_DIR/tools (gpu_pack.sh puts it there; the last call carries it).
set -euo pipefail
PACK_DIR=$1; I=$2; N=$3
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/gpu-pack
cp "$PACK_DIR/p$I/piece.$I" /tmp/gpu-pack/
ls /tmp/gpu-pack
[ "$(ls /tmp/gpu-pack | wc -l)" -eq "$N" ] || { echo "have $(ls /tmp/gpu-pack | wc -l) of $N pieces"; exit 0; }
rm -rf /tmp/vllm-site /tmp/gpu-x && mkdir -p /tmp/gpu-x
if command -v zstd >/dev/null; then
  unzstd() { zstd -d -q; }
else
  python3 -m pip install -q --no-index --no-deps --target /tmp/gpu-zstd "$PACK_DIR"/tools/zstandard-*.whl
  unzstd() {
    PYTHONPATH=/tmp/gpu-zstd python3 -c \
      "import sys, zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, sys.stdout.buffer)"
  }
fi
cat /tmp/gpu-pack/piece.* | unzstd | tar -x -C /tmp/gpu-x
mv /tmp/gpu-x/site /tmp/vllm-site
# A pack made with WITH_TOME=1 also holds the SmolLM2 GGUF (scripts/gpu_serve.sh converts it)
[ ! -d /tmp/gpu-x/model ] || { rm -rf /tmp/gpu-model && mv /tmp/gpu-x/model /tmp/gpu-model; }
missing=()
for w in /tmp/gpu-x/wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1)
  python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null || missing+=("$w")
done
echo "installing ${#missing[@]} missing wheels"
[ ${#missing[@]} -eq 0 ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/vllm-site "${missing[@]}"
# llguidance: no wheel in vLLM's range for this host; the engine only needs its name (scripts/gpu_stubs)
python3 -c "import llguidance" 2>/dev/null || PYTHONPATH=/tmp/vllm-site python3 -c "import llguidance" 2>/dev/null \
  || cp -r "$HERE/gpu_stubs/llguidance" /tmp/vllm-site/
echo "unpacked: export PYTHONPATH=\$PACK_DIR/code:/tmp/vllm-site"
