"""Passage embeddings with sentence-transformers (all-MiniLM-L6-v2 by default: 384 dims, reads 256 word pieces)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache

import numpy as np

from engines.config import resolve_dtype
from engines.models import resolve_embedder


class Embedder:
    def __init__(self, name: str, dtype: str = "float32") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(str(resolve_embedder(name)), device=_device())
        self.model.to(getattr(torch, dtype))
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self.max_tokens = int(self.model.max_seq_length) - 2  # [CLS] and [SEP]
        self._lock = threading.Lock()  # one model shared by the threads of a worker

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.model.encode(
                list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_embedder(name: str, dtype: str = "float32") -> Embedder:
    """One loaded embedder per name, dtype and process; `auto` is bfloat16 where the device computes it natively
    (engines.config.resolve_dtype), else the float32 one rag uses (no second copy)."""
    return _embedder(name, resolve_dtype(dtype, _device()))


@cache
def _embedder(name: str, dtype: str) -> Embedder:
    return Embedder(name, dtype)
