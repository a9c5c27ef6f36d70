"""Job leases in the worker: the heartbeat that keeps one, the checkpointer that writes only under it, the sweeper.

A worker runs a job only while it holds the job's lease (taken by compare-and-set in `Store.start_run`, with a
fencing token). A thread renews it every third of its length; the worker treats it as held only until its last
renewal plus the lease length minus a margin, so a worker that stalled (paused, cut off from the database) stops
before another worker can have taken the job, and every write it makes names the token, so even a late write is
refused by the store. A sweeper thread in each worker's main process re-queues jobs whose lease lapsed: that,
not the broker's visibility timeout, is how the job of a lost worker host comes back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata

from service.store import Store

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took this job's lease (or the job ended): stop without writing anything."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """The lease held with `token` on `job_id`, renewed by a daemon thread until `stop()`."""

    def __init__(
        self, store: Store, job_id: str, token: int, lease_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.store, self.job_id, self.token, self.lease_s = store, job_id, token, lease_s
        self.clock = clock
        self.renewed = clock()  # the take itself is the first renewal
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id[:8]}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def held(self) -> bool:
        """Held for sure: renewed within the lease length less a safety margin (a tenth, for clock drift)."""
        return not self.lost and self.clock() - self.renewed < self.lease_s * 0.9

    def check(self) -> None:
        if not self.held():
            raise LeaseLost(f"job {self.job_id}: lease {self.token} lost")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            started = self.clock()
            try:
                still = self.store.renew_lease(self.job_id, self.token, self.lease_s)
            except Exception as exc:  # the database is away: keep trying; held() runs out on its own
                log.warning("job %s: could not renew its lease (%s)", self.job_id, type(exc).__name__)
                continue
            if not still:
                log.warning("job %s: lease %d was taken or the job ended; stopping", self.job_id, self.token)
                self.lost = True
                return
            self.renewed = started  # counted from before the round trip: never later than the store's own expiry


class FencedCheckpointer(BaseCheckpointSaver):
    """A checkpointer that writes only while the lease is held, so a late worker cannot overwrite the new holder's
    checkpoints; reads pass through."""

    def __init__(self, inner: BaseCheckpointSaver, lease: Lease) -> None:
        super().__init__(serde=inner.serde)
        self.inner, self.lease = inner, lease

    @property
    def config_specs(self) -> list[Any]:
        return self.inner.config_specs

    def get_tuple(self, config: RunnableConfig) -> Any:
        return self.inner.get_tuple(config)

    def list(self, config: RunnableConfig | None, **kwargs: Any) -> Iterator[Any]:
        return self.inner.list(config, **kwargs)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self.lease.check()
        return self.inner.put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self.lease.check()
        self.inner.put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self.lease.check()
        self.inner.delete_thread(thread_id)

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.inner.get_next_version(current, channel)


class Sweeper:
    """Every `interval` seconds, re-queue the jobs whose lease lapsed (any number of sweepers may run: the store's
    compare-and-set re-queues each job once), and send again the webhook deliveries that are overdue (a message
    lost with a broker restart, a worker lost holding a delayed retry): `resend(event_id, attempt)`."""

    def __init__(
        self,
        store: Store,
        enqueue: Callable[[str], None],
        interval: float,
        resend: Callable[[str, int], None] | None = None,
        grace: float = 60.0,
        stale: float = 60.0,
    ) -> None:
        self.store, self.enqueue, self.interval = store, enqueue, interval
        self.resend, self.grace, self.stale = resend, grace, stale
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def sweep(self) -> list[str]:
        requeued = self.store.requeue_expired(self.enqueue)
        for job_id in requeued:
            log.warning("job %s: its lease lapsed (worker lost?); re-queued", job_id)
        if self.resend is not None:
            for event_id, attempt in self.store.overdue_deliveries(self.grace, self.stale):
                self.resend(event_id, attempt)
        return requeued

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # the database or the broker is away: the next sweep tries again
                log.warning("lease sweep failed (%s)", type(exc).__name__)
