"""How the store reaches a database. The engine (:mod:`orchestrator.store`) runs *named
queries* in transactions and never writes SQL; each connector runs them: SQLite
(:mod:`.sqlite`, the default), PostgreSQL (:mod:`.postgres`, for a fleet of daemons) and an
in-memory one for fast tests (:mod:`.memory`, over :mod:`.memory_tables`). The contract they
share is :mod:`.protocol`; the SQL is ``queries.sql`` and ``migrations/``."""

from orchestrator.connectors.protocol import (
    Connector,
    Notifier,
    Row,
    Transaction,
    connect,
    redact_url,
)

__all__ = ["Connector", "Notifier", "Row", "Transaction", "connect", "redact_url"]
