"""The composition root: opens the store and builds the service, the same way for every entry
point (the daemon, the CLI, the demo)."""

from __future__ import annotations

from config.settings import Settings
from daemon import schema
from daemon.coordination import SCHEDULE_SCHEMA
from daemon.outbox import create_schema
from daemon.service import ClauseWatch
from daemon.store import open_store


def open_service(settings: Settings) -> ClauseWatch:
    """Open the store, check its schema version and create what is missing, under the
    cluster-wide schema lock so replicas starting together never race on DDL."""
    with schema.schema_lock(settings.store):
        store = open_store(settings.store, settings.data_dir)
        try:
            schema.check(store.db)
            service = ClauseWatch(store, detection=settings.detection)
            steps = [lambda: create_schema(store.db)]
            if settings.store.is_postgres:
                steps.append(lambda: store.db.executescript(SCHEDULE_SCHEMA))
            schema.initialise(store.db, steps)
        except BaseException:
            store.close()
            raise
    return service


def migrate_store(settings: Settings) -> list[int]:
    """Apply pending schema migrations, under the schema lock."""
    with schema.schema_lock(settings.store):
        store = open_store(settings.store, settings.data_dir)
        try:
            return schema.migrate(store.db)
        finally:
            store.close()
