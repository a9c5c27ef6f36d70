"""Request metrics as plain ASGI middleware (the body limit is service.inputs.LimitBody)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import Services


class MeasureRequests:
    """Counts and times every request by route template (plain ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            svc: Services | None = getattr(scope["app"].state, "services", None)
            if svc is not None:
                path = getattr(scope.get("route"), "path", "unmatched")
                svc.metrics.requests.labels(scope["method"], path, str(status)).inc()
                svc.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)
