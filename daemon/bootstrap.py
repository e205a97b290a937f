"""The composition root: opens the store and builds the service, the same way for every entry
point (the daemon, the CLI, the demo)."""

from __future__ import annotations

from config.errors import ConfigError
from config.settings import Settings
from config.taxonomy import load_taxonomy
from daemon import schema
from daemon.coordination import SCHEDULE_SCHEMA
from daemon.outbox import create_schema
from daemon.service import ClauseWatch
from daemon.store import open_store
from domain.classify import Taxonomy


def load_checked_taxonomy(settings: Settings) -> Taxonomy:
    """The configured taxonomy (or the packaged one), with every subscription's categories
    checked against it: a typo in a filter would otherwise silently match nothing."""
    taxonomy = load_taxonomy(settings.taxonomy)
    known = [c.id for c in taxonomy.categories]
    for n, sub in enumerate(settings.subscriptions):
        for category in sub.categories:
            if category not in known:
                raise ConfigError(
                    str(settings.path), f"subscriptions[{n}] ({sub.id}).categories",
                    f"no category {category!r} in the taxonomy "
                    f"{settings.taxonomy or 'packaged with clausewatch'}",
                    f"use ids from `clausewatch categories`: {', '.join(known)}")
    return taxonomy


def open_service(settings: Settings) -> ClauseWatch:
    """Open the store, check its schema version and create what is missing, under the
    cluster-wide schema lock so replicas starting together never race on DDL."""
    taxonomy = load_checked_taxonomy(settings)
    with schema.schema_lock(settings.store):
        store = open_store(settings.store, settings.data_dir)
        try:
            schema.check(store.db)
            service = ClauseWatch(store, detection=settings.detection, taxonomy=taxonomy)
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
