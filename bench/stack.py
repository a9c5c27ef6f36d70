"""Pieces of the real stack that the fault benchmark and the service tests both start: a free port, waiting for a
condition, a webhook receiver on localhost, and Celery worker processes that can be killed as a lost host is.

The tests import these from here (tests may use bench/, never the other way round).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """The first truthy value of `predicate()`, polled every `every` s; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Receiver:
    """A webhook endpoint on localhost recording every delivery, each verified on arrival (as a receiver does: the
    signature's timestamp is only fresh for 5 minutes) with the reference Standard Webhooks implementation. It can
    be started late (down, then up) and answer its first deliveries with given (status, headers); then 204."""

    def __init__(self, secret: str, replies: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.secret = secret
        self.replies = list(replies or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.verified: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        from standardwebhooks.webhooks import Webhook

        deliveries, verified, replies, verifier = self.deliveries, self.verified, self.replies, Webhook(self.secret)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                deliveries.append((headers, body))
                verified.append({"id": headers["webhook-id"], **verifier.verify(body, headers)})
                status, reply_headers = replies.pop(0) if replies else (204, {})
                self.send_response(status)
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[dict[str, Any]]:
        """Every delivery, verified on arrival (a forged or stale one raised in the handler and is missing here)."""
        return list(self.verified)


class Worker:
    """A `celery worker` process group (main process and its prefork child) on the cpu and webhooks queues, as on a
    host of its own; its output goes to `log`."""

    def __init__(self, env: dict[str, str], name: str, log: Path) -> None:
        self.name = name
        self.log = log.open("a")
        cmd = [sys.executable, "-m", "celery", "-A", "service.celery_app", "worker", "-Q", "cpu,webhooks"]
        cmd += ["-c", "1", "--pool", "prefork", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        cmd += ["--loglevel", "INFO"]
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, env=full_env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def holds(self, lease_owner: str | None) -> bool:
        """Whether the lease holder `host:pid` is this worker's pool child (or itself)."""
        if not lease_owner:
            return False
        pid = int(lease_owner.rsplit(":", 1)[1])
        if pid == self.proc.pid:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole process group, as when its host dies."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
