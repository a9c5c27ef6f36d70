"""The passage index: one Qdrant collection per document content hash, built once and reused.

Qdrant runs embedded (local mode, a folder under TOME_HOME) or as a server (a URL). A local folder is locked
to one client at a time, so each process keeps one client per location and closes it at exit.
The collection's metadata records the embedder that built it and whether the build finished; an index
built by another embedder, or left half-built by a crash, is dropped and rebuilt.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when passage cutting changes: older indexes are rebuilt


class IndexUnavailableError(RuntimeError):
    """The vector store cannot be opened or used; the message says what to do."""


@dataclass(frozen=True)
class IndexSpec:
    """What an index must have been built with to be reused."""

    embedder: str
    dim: int
    passage_tokens: int

    def metadata(self, passages: int) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "dim": self.dim,
            "passage_tokens": self.passage_tokens,
            "version": INDEX_VERSION,
            "passages": passages,
            "complete": True,
        }

    def matches(self, metadata: dict[str, Any] | None) -> bool:
        m = metadata or {}
        return bool(m.get("complete")) and all(
            m.get(k) == v
            for k, v in (
                ("embedder", self.embedder),
                ("dim", self.dim),
                ("passage_tokens", self.passage_tokens),
                ("version", INDEX_VERSION),
            )
        )


_clients: dict[str, Any] = {}
_lock = threading.Lock()


def open_client(path: Path | None, url: str | None) -> Any:
    """The process's client for a Qdrant server (url) or a local-mode folder (path)."""
    from qdrant_client import QdrantClient

    key = url or str(path)
    with _lock:
        if key not in _clients:
            if url:
                _clients[key] = QdrantClient(url=url)
            else:
                assert path is not None
                path.mkdir(parents=True, exist_ok=True)
                try:
                    _clients[key] = QdrantClient(path=str(path))
                except RuntimeError as exc:  # portalocker: another process holds the folder
                    raise IndexUnavailableError(
                        f"the local Qdrant folder {path} is in use by another process ({exc}); "
                        "run one process per folder, give each its own TOME_HOME, or set TOME_QDRANT_URL to a server"
                    ) from None
        return _clients[key]


@atexit.register
def close_clients() -> None:
    with _lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:  # closing at exit must never raise
                pass
        _clients.clear()


def collection_name(content_hash: str) -> str:
    return f"doc_{content_hash[:40]}"


class PassageIndex:
    def __init__(self, client: Any, content_hash: str, spec: IndexSpec) -> None:
        self.client = client
        self.name = collection_name(content_hash)
        self.spec = spec

    def status(self) -> str:
        """'ready', 'missing', or why an existing collection cannot be reused."""
        if not self.client.collection_exists(self.name):
            return "missing"
        metadata = self.client.get_collection(self.name).config.metadata
        if self.spec.matches(metadata):
            return "ready"
        if not (metadata or {}).get("complete"):
            return "incomplete"
        return f"built with {metadata.get('embedder')!r} (dim {metadata.get('dim')})"

    def build(self, spans: Sequence[tuple[int, int]], vectors: np.ndarray) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.name):
            self.client.delete_collection(self.name)
        self.client.create_collection(
            self.name,
            vectors_config=models.VectorParams(size=self.spec.dim, distance=models.Distance.COSINE),
            metadata={"complete": False},
        )
        for lo in range(0, len(spans), 256):
            batch = range(lo, min(lo + 256, len(spans)))
            self.client.upsert(
                self.name,
                points=models.Batch(
                    ids=list(batch),
                    vectors=vectors[lo : batch.stop].tolist(),
                    payloads=[{"start": spans[i][0], "end": spans[i][1]} for i in batch],
                ),
            )
        # Written last: a build that dies half-way leaves "complete": False and is rebuilt next time.
        self.client.update_collection(self.name, metadata=self.spec.metadata(len(spans)))

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored (normalized) vectors of these passages, in the order asked."""
        if not ids:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        points = {int(p.id): p.vector for p in self.client.retrieve(self.name, ids=list(ids), with_vectors=True)}
        return np.asarray([points[i] for i in ids], dtype=np.float32)

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(passage id, cosine score), best first."""
        hits = self.client.query_points(self.name, query=vector.tolist(), limit=limit, with_payload=False).points
        return [(int(h.id), float(h.score)) for h in hits]
