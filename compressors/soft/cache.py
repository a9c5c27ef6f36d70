"""Compressed segments on disk, by content hash: a segment compressed once serves every later question and job.

The key covers everything the vectors depend on (the adapter file, the rate and the segment's token ids),
so a new adapter or another rate never reads stale vectors. Values are safetensors files (exact bytes back:
a cached segment is bit-identical to the one computed). Writes go through a temporary file and a rename,
so a reader never sees half a file and two workers writing the same segment write the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FOLDER = Path("cache") / "compllm"  # under TOME_HOME


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def segment_key(adapter: str, rate: int, ids: Sequence[int]) -> str:
    h = hashlib.sha256(f"{adapter}:{rate}:".encode())
    h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class SegmentCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        return load_file(str(path))["vectors"]

    def put(self, key: str, vectors: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"vectors": vectors.detach().cpu().contiguous()}, str(tmp))
        tmp.replace(path)
