"""The job API's app: `create_app(settings)` assembles the routes (service/routes/), the page (service/web.py),
the middleware and the problem+json error handlers; `app_from_environment` is uvicorn's factory (`tome serve`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engines.settings import Settings
from service import web
from service.auth import bootstrap_keys
from service.deps import Services
from service.errors import add_error_handlers
from service.inputs import LimitBody
from service.middleware import MeasureRequests
from service.routes import ROUTERS
from workflows.registry import build_strategies


def create_app(settings: Settings) -> FastAPI:
    strategies = sorted(build_strategies(settings))  # the names a job may request; they run in the workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(settings, strategies)
        app.state.services = services
        bootstrap_keys(services.store, settings.api_keys, services.key_secret)
        yield
        services.store.db_engine.dispose()

    app = FastAPI(
        title="Tome",
        version="0.1.0",
        description="Questions, summaries and extraction over documents longer than a model's context.",
        lifespan=lifespan,
    )
    for router in ROUTERS:
        app.include_router(router)
    web.mount(app, settings, strategies)
    app.add_middleware(LimitBody, limit=settings.body_limit())
    app.add_middleware(MeasureRequests)
    add_error_handlers(app)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn's app factory (`tome serve`, `uvicorn --factory service.api:app_from_environment`): each uvicorn
    worker process is an entry point and builds its settings from TOME_* once."""
    return create_app(Settings())
