"""The LangGraph checkpointer a worker runs jobs with: PostgreSQL in the stack, SQLite embedded.

Thread id = job id, so a job whose worker died resumes from its last finished graph node on any worker.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

# The job state holds plain data plus the TaskKind enum; allow exactly that type when reading checkpoints back.
SERDE = JsonPlusSerializer(allowed_msgpack_modules=[("engines.types", "TaskKind")])


def open_checkpointer(url: str) -> BaseCheckpointSaver:
    if url.startswith("sqlite"):
        from langgraph.checkpoint.sqlite import SqliteSaver

        path = Path(url.split("///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False), serde=SERDE)
    else:
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            check=ConnectionPool.check_connection,  # a worker lives for days; the database may restart
            open=True,
        )
        saver = PostgresSaver(pool, serde=SERDE)
    saver.setup()
    return saver
