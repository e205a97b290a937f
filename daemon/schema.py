"""Explicit schema setup and upgrades (`clausewatch store init` / `migrate`), replica-safe.

Every table is created with IF NOT EXISTS by the part that owns it; this module runs them
all under one PostgreSQL advisory lock, so several replicas starting at once never race on
DDL, and records the schema version so an upgrade is a deliberate step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from config.settings import StoreSettings
from daemon.projections import MIGRATION_V2
from daemon.sql import Database

CURRENT_VERSION = 2
# version -> statements that take the schema there from the version before.
MIGRATIONS: dict[int, tuple[str, ...]] = {2: MIGRATION_V2}
VERSION_TABLE = ("""CREATE TABLE IF NOT EXISTS cw_schema_version (
    id INTEGER PRIMARY KEY, version INTEGER NOT NULL)""",)


class SchemaError(Exception):
    """The database schema is older or newer than this version of clausewatch."""


@contextmanager
def schema_lock(store: StoreSettings) -> Iterator[None]:
    """Hold the cluster-wide schema lock (PostgreSQL); SQLite's own file lock suffices."""
    if not store.is_postgres:
        yield
        return
    import psycopg

    from daemon.coordination import lock_key

    with psycopg.connect(store.url, autocommit=True, connect_timeout=10) as conn:
        key = lock_key(f"{store.schema or ''}:schema")
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def version(db: Database) -> int | None:
    """The recorded schema version, or None before `init`."""
    db.executescript(VERSION_TABLE)
    value = db.scalar("SELECT version FROM cw_schema_version WHERE id = 1")
    return None if value is None else int(value)


def initialise(db: Database, create: list[Callable[[], Any]]) -> int:
    """Create every table (idempotent) and record the current version if none is recorded."""
    for step in create:
        step()
    current = version(db)
    if current is None:
        db.execute("INSERT INTO cw_schema_version (id, version) VALUES (1, ?) "
                   "ON CONFLICT (id) DO NOTHING", (CURRENT_VERSION,))
        return CURRENT_VERSION
    return current


def migrate(db: Database) -> list[int]:
    """Apply every migration after the recorded version; returns the versions applied."""
    current = version(db)
    if current is None:
        raise SchemaError("the store has no schema yet: run `clausewatch store init` first")
    applied = []
    for target in range(current + 1, CURRENT_VERSION + 1):
        with db.transaction() as tx:
            for statement in MIGRATIONS.get(target, ()):
                tx.execute(statement)
            tx.execute("UPDATE cw_schema_version SET version = ? WHERE id = 1", (target,))
        applied.append(target)
    return applied


def check(db: Database) -> None:
    """Refuse to run against a schema this code does not match."""
    current = version(db)
    if current is None:
        return  # a new store: the caller initialises it
    if current < CURRENT_VERSION:
        raise SchemaError(f"the store's schema is version {current}, this clausewatch needs "
                          f"{CURRENT_VERSION}: run `clausewatch store migrate`")
    if current > CURRENT_VERSION:
        raise SchemaError(f"the store's schema is version {current}, newer than this "
                          f"clausewatch ({CURRENT_VERSION}): upgrade clausewatch")
