"""The API's routes, one module per resource; `ROUTERS` is what the app includes, in this order."""

from __future__ import annotations

from service.routes import documents, events, health, jobs

ROUTERS = (documents.router, jobs.router, health.router, events.router)
