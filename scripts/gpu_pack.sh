#!/usr/bin/env bash
# Pack vLLM 0.25 (pruned to what an H100/H200 prefill needs), the pure-Python wheels it imports and this branch's code
# into zstd pieces of at most PIECE_MIB each, for a GPU host with torch 2.11 and no network. Each device call carries
# one piece (the 64 MiB call limit includes the working tree); scripts/gpu_unpack.sh puts them back together there.
# Usage: PACK_DIR=/path/.gpu-pack scripts/gpu_pack.sh   (PACK_DIR must be git-ignored in the checkout that travels)
# WITH_TOME=1 adds what scripts/gpu_serve.sh needs: `vllm serve`'s server wheels, what `tome ask` imports (the CLI's
# code and langgraph's family) and the SmolLM2 GGUF, in the same stream so that no piece is left half empty.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
PACK_DIR=${PACK_DIR:-$ROOT/.gpu-pack}
PIECE_MIB=${PIECE_MIB:-31}
CACHE=${CACHE:-/tmp/gpuwheels}
PY=${PY:-python3}
STAGE=$(mktemp -d)
mkdir -p "$CACHE" "$PACK_DIR"
# This branch's code as committed, carried on its own (.gpu-pack/code): the device gets the session's main checkout
rm -rf "$PACK_DIR/code" && mkdir -p "$PACK_DIR/code"
# (the trained adapters' folders are left out: 15 MB no GPU bench reads, and the last call's piece must fit beside it)
CODE=(engines kernels scripts pyproject.toml $(git -C "$ROOT" ls-files "bench/*.py"))
# `tome ask` imports these four packages too (not evals/), and reads the examples
[ -z "${WITH_TOME:-}" ] || CODE+=(service workflows memory compressors examples)
git -C "$ROOT" archive --format=tar HEAD "${CODE[@]}" ':(exclude)engines/adapters/*/*' | tar -x -C "$PACK_DIR/code"
# The commit the results will name (the device copy has no .git); a dirty tree would not be that commit.
git -C "$ROOT" diff --quiet HEAD -- "${CODE[@]}" bench || echo "warning: uncommitted changes are not packed"
git -C "$ROOT" rev-parse HEAD >"$PACK_DIR/code/COMMIT"
[ -z "${CODE_ONLY:-}" ] || exit 0

dl() { # cp312 manylinux wheels, no dependency resolution: the list below is the resolution
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$CACHE" "$@"
}
ls "$CACHE"/vllm-0.25.0-*.whl >/dev/null 2>&1 || dl vllm==0.25.0
# What `vllm.LLM` imports for a decoder-only model (found by importing vLLM 0.25's engine, worker and Llama modules
# under -X importtime on the CPU), less what the GPU host's image has (KINDS.md's package list: aiohttp, anyio,
# httpx, regex, tiktoken, ...): each piece is at most 30 MiB, and a 4th costs a device call. gpu_unpack.sh installs
# only the wheels missing there. Left out on purpose: mistral_common (Mistral tokenizers only), outlines_core
# (a structured-output backend imported on first use), and oss-harmony, an unofficial fork that installs the
# `openai_harmony` module: vLLM requires openai-harmony, the real one.
DEPS=(cachetools blake3 msgspec pyzmq cbor2 pybase64 setproctitle partial-json-parser diskcache lark==1.2.2
  depyf==0.20.0 astor dill compressed-tensors==0.17.0 loguru openai==2.54.0 distro jiter sniffio fastapi==0.136.3
  starlette pydantic pydantic_core annotated-types typing-inspection xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
  lm-format-enforcer==0.11.3 interegular gguf openai-harmony ijson python-json-logger watchfiles
  prometheus-fastapi-instrumentator opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
  opentelemetry-semantic-conventions-ai orjson pydantic-extra-types pydantic-settings python-dotenv)
# Pins, where the newest wheel does not fit: openai 3 needs httpx2 (the host has httpx; vLLM asks openai>=2);
# xgrammar >0.2.8 and vLLM's own tvm-ffi pin (0.1.9, for FlashInfer, not installed here) disagree, so the pair that
# imports on the CPU build is used. pydantic-settings and python-dotenv are for engines.settings (Tome's own).
# WITH_TOME: what `vllm serve` adds to vllm.LLM (uvicorn; SageMaker's router module, imported unconditionally) and
# what `tome ask --engine vllm --strategy full` needs that the host lacks: langgraph (workflows.graph) with the
# langchain-core/langsmith it pulls in, and PyStemmer (workflows.verify, imported when an answer is checked), at the
# versions CI runs. Found by running both in a venv of only the host's packages and these (scripts/gpu_serve.sh).
TOME_DEPS=(uvicorn==0.55.0 model-hosting-container-standards==0.1.16 jmespath==1.1.0 supervisor==4.3.0
  langgraph==1.2.24 langgraph-checkpoint==4.3.2 langgraph-prebuilt==1.1.3 langgraph-sdk==0.4.14 langchain-core==1.8.3
  langchain-protocol==0.0.20 langsmith==0.15.1 jsonpatch==1.48 jsonpointer==3.12 ormsgpack==1.13.1 tenacity==9.2.1
  uuid-utils==0.19.0 requests-toolbelt==1.0.0 websockets==17.4 PyStemmer==3.1.0)
[ -z "${WITH_TOME:-}" ] || DEPS+=("${TOME_DEPS[@]}")
wheel() { # the cached wheel of a DEPS entry (its pinned version when pinned)
  local name ver
  name=$(echo "${1%%=*}" | tr - _); ver=${1#*==}; [ "$ver" != "$1" ] || ver=
  ls "$CACHE" | grep -i "^$name-$ver" | head -1
}
for d in "${DEPS[@]}"; do [ -n "$(wheel "$d")" ] || dl "$d" || echo "no wheel: $d"; done

mkdir -p "$STAGE/site" "$STAGE/wheels"
unzip -q "$CACHE"/vllm-0.25.0-*.whl -d "$STAGE/site"
V="$STAGE/site/vllm"
# Not needed on Hopper for a dense decoder: FA2 (Hopper runs FA3), MoE ops, MLA, SM100 FMHA, the Rust tool parser,
# DeepGEMM's builds for other Pythons and its CUTLASS headers.
rm -rf "$V/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$V"/_moe_C*.so "$V"/_flashmla*.so "$V/vllm-rs" \
  "$V/third_party/fmha_sm100" "$V/third_party/deep_gemm/include" "$V/_rust_tool_parser.abi3.so"
find "$V/third_party/deep_gemm" -name '_C.cpython-3*' ! -name '*312*' -delete
for d in "${DEPS[@]}"; do  # only the wheels named above (the cache may hold others from earlier lists)
  cp "$CACHE/$(wheel "$d")" "$STAGE/wheels/"
done
rm -rf "$PACK_DIR"/p* "$PACK_DIR/tools"
# The host has no zstd binary: gpu_unpack.sh decompresses with this wheel, carried uncompressed beside the last piece
ls "$CACHE"/zstandard-*.whl >/dev/null 2>&1 || dl zstandard
mkdir -p "$PACK_DIR/tools" && cp "$(ls "$CACHE"/zstandard-*.whl | head -1)" "$PACK_DIR/tools/"
PARTS=(site wheels)
if [ -n "${WITH_TOME:-}" ]; then  # raw: a Q4_1 GGUF does not compress, zstd passes it through
  GGUF=${GGUF:-$(cd "$ROOT" && .venv/bin/python -c "from engines.models import ALIASES, _package_dir as d
m = ALIASES['smollm2']; print(d(m.module, m.package) / m.filename)")}
  mkdir -p "$STAGE/model" && cp "$GGUF" "$STAGE/model/" && PARTS+=(model)
fi
tar -C "$STAGE" -cf - "${PARTS[@]}" | zstd -q -T0 -${ZSTD_LEVEL:-19} | split -b "${PIECE_MIB}M" -d -a 1 - "$STAGE/piece."
for f in "$STAGE"/piece.*; do i=${f##*.}; mkdir -p "$PACK_DIR/p$i"; mv "$f" "$PACK_DIR/p$i/piece.$i"; done
du -sh "$PACK_DIR"/p*
rm -rf "$STAGE"
