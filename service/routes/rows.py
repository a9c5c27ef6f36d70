"""Response models filled from database rows, by one rule for every resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from service.store import aware

Model = TypeVar("Model", bound=BaseModel)


def from_row(model: type[Model], row: Any, **values: Any) -> Model:
    """`model` with every field the row has taken from it (timestamps made timezone-aware: SQLite drops the zone),
    then `values` for the fields the row names otherwise or lacks."""
    fields = {name: getattr(row, name) for name in model.model_fields if hasattr(row, name)}
    timestamps = {name: aware(value) for name, value in fields.items() if isinstance(value, datetime)}
    return model(**{**fields, **timestamps, **values})
