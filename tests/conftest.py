"""Shared fixtures: the local PostgreSQL in a schema of its own, a store on either database,
and a page server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from config.settings import StoreSettings

if TYPE_CHECKING:
    from harness import PageServer

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# One id per test run, so that schemas left by a killed run are easy to recognise.
_RUN = uuid.uuid4().hex[:8]


@dataclass
class PostgresTarget:
    """The local PostgreSQL URL and a fresh schema (more on request), dropped after the test."""

    url: str
    schema: str
    schemas: list[str] = field(default_factory=list)

    def store(self, schema: str | None = None) -> StoreSettings:
        """Store settings for this test's schema (or another one made by new_schema)."""
        return StoreSettings(url=self.url, schema=schema or self.schema)

    def new_schema(self) -> str:
        """Another schema for this test, also dropped afterwards."""
        name = f"cw_test_{_RUN}_{uuid.uuid4().hex[:8]}"
        self.schemas.append(name)
        return name


@pytest.fixture
def pg_url() -> Iterator[PostgresTarget]:
    """The local PostgreSQL (127.0.0.1:5432, database `test`) with a unique schema per test.

    Skipped when the server is unreachable, except in CI (CI=true) where that is a failure.
    The schema is created here (and dropped after), so tests also see that the store works in
    a schema it did not create.
    """
    import psycopg

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = ("PostgreSQL at 127.0.0.1:5432 (database 'test', user postgres) is "
                  f"unreachable: {exc}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    target = PostgresTarget(url=PG_URL, schema="")
    target.schema = target.new_schema()
    try:
        admin.execute(f'CREATE SCHEMA "{target.schema}"')
        yield target
    finally:
        # A store a failed test left open must not make the drop wait forever.
        admin.execute("SET lock_timeout = '10s'")
        for schema in target.schemas:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """A store on a SQLite file, then on PostgreSQL in this test's schema (a module may
    define its own `store_settings` instead)."""
    if request.param == "sqlite":
        return StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    return request.getfixturevalue("pg_url").store()


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    """An aiohttp server on 127.0.0.1:0; `page_server.set(path, body, ...)` sets its answers."""
    # Imported here: the harness pulls in the daemon, which the notifier tests never need.
    from harness import page_server as serve

    with serve() as server:
        yield server
