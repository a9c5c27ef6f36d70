"""Compressed segments by content hash, on disk or in Redis: a segment compressed once serves every later question
and job (in Redis, on every worker of the stack, whatever its host).

The key covers everything the vectors depend on (the adapter file, the rate and the segment's token ids),
so a new adapter or another rate never reads stale vectors. Values are safetensors files (exact bytes back:
a cached segment is bit-identical to the one computed). On disk, writes go through a temporary file and a rename,
so a reader never sees half a file and two workers writing the same segment write the same bytes. In Redis each
value is one key (SET is atomic), with an expiry; the stack gives the cache its own Redis with LRU eviction, so a
full cache drops old segments instead of refusing writes or touching the broker's data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

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

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        return [self.get(k) for k in keys]

    def put(self, key: str, vectors: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"vectors": vectors.detach().cpu().contiguous()}, str(tmp))
        tmp.replace(path)


class RedisSegmentCache:
    """The same values (safetensors bytes) in Redis under `prefix`, each expiring `ttl` seconds after its write."""

    def __init__(self, url: str, prefix: str = "tome:compllm:", ttl: int = 30 * 86400) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix, self.ttl = prefix, ttl

    def get(self, key: str) -> torch.Tensor | None:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        if not keys:
            return []
        # one round trip for a whole document's segments
        values = self.client.mget([self.prefix + k for k in keys])
        return [None if v is None else load(v)["vectors"] for v in values]

    def put(self, key: str, vectors: torch.Tensor) -> None:
        self.client.set(self.prefix + key, save({"vectors": vectors.detach().cpu().contiguous()}), ex=self.ttl)
