"""How the store reaches a database. The engine (:mod:`orchestrator.store`) runs *named
queries* in transactions and never writes SQL; each connector runs them: SQLite
(:mod:`.sqlite`, the default), PostgreSQL (:mod:`.postgres`, for a fleet of daemons) and an
in-memory one for fast tests (:mod:`.memory`, over :mod:`.memory_tables`). The contract they
share is :mod:`.protocol`; the SQL is ``queries.sql`` and ``migrations/``."""

import importlib
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors.protocol import Connector, Notifier, Row, Transaction, redact_url

__all__ = ["Connector", "Notifier", "Row", "Transaction", "connect", "redact_url"]


def connect(url: str) -> Connector:
    """The connector for a store URL: ``sqlite:///path``, ``memory://`` or ``postgresql://``."""
    if url.startswith("sqlite://"):
        from orchestrator.connectors import sqlite

        return sqlite.SQLiteConnector(url)
    if url.startswith("memory:"):
        from orchestrator.connectors import memory

        return memory.MemoryConnector()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            postgres: Any = importlib.import_module("orchestrator.connectors.postgres")
        except ImportError as exc:
            raise exceptions.ConfigError(
                "PostgreSQL support needs the 'postgres' extra: "
                "pip install 'magpipe-orchestrator[postgres]'"
            ) from exc
        connector: Connector = postgres.PostgresConnector(url)
        return connector
    raise exceptions.ConfigError(
        f"unknown store URL {redact_url(url)!r}: use sqlite:///path or postgresql://..."
    )
