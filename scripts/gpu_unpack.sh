#!/usr/bin/env bash
# On the GPU host: append the carried piece to /tmp/gpu-pack, and once all N are there, unpack vLLM into
# /tmp/vllm-site with the wheels the host lacks. Usage: scripts/gpu_unpack.sh PACK_DIR I N
set -euo pipefail
PACK_DIR=$1; I=$2; N=$3
mkdir -p /tmp/gpu-pack
cp "$PACK_DIR/p$I/piece.$I" /tmp/gpu-pack/
ls /tmp/gpu-pack
[ "$(ls /tmp/gpu-pack | wc -l)" -eq "$N" ] || { echo "have $(ls /tmp/gpu-pack | wc -l) of $N pieces"; exit 0; }
rm -rf /tmp/vllm-site /tmp/gpu-x && mkdir -p /tmp/gpu-x
cat /tmp/gpu-pack/piece.* | zstd -d -q | tar -x -C /tmp/gpu-x
mv /tmp/gpu-x/site /tmp/vllm-site
missing=()
for w in /tmp/gpu-x/wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1)
  python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null || missing+=("$w")
done
echo "installing ${#missing[@]} missing wheels"
[ ${#missing[@]} -eq 0 ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/vllm-site "${missing[@]}"
echo "unpacked: export PYTHONPATH=\$PACK_DIR/code:/tmp/vllm-site"
