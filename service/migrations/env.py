"""Alembic environment: the URL comes from the Config (service.store.migrate sets it), the metadata from models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.models import Base

url = context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
