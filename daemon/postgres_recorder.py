"""The PostgreSQL event recorder: eventsourcing's, without psycopg's pipeline mode.

eventsourcing 9.5 sends an append (lock the table, notify, insert) in one pipeline. With a
large append — several first captures, each with a clause list of tens of kB — while the
server is busy with other work, the pipeline sometimes never returned: the client waited
for results in `Pipeline.sync()` while the server waited for the rest of the statement
(`pg_stat_activity`: active, wait event ClientRead). Seen in 2 of 5 benchmark fills of
300 kB-4 MB appends run beside the PostgreSQL tests, and never without the pipeline. A
daemon in that state records nothing more and its watchdog still pings (the event loop is
free): a silent stall. Here the same statements go one after the other in the same
transaction (a few round trips more per append, each well under a millisecond on a local
server), so the table lock still orders commits as notification ids are issued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry


class PostgresRecorder(PostgresApplicationRecorder):
    """Appends without pipeline mode; everything else is the library's."""

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any
                      ) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:
            return super().insert_events(stored_events, **kwargs)  # no pipeline there
        with self.datastore.get_connection() as conn, conn.transaction():
            with conn.cursor() as curs:
                self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return None
            with conn.cursor() as curs:
                # Locks the table, notifies, inserts: a uniqueness violation (a stale
                # aggregate) raises IntegrityError here, as the library's sync() made it.
                self._insert_stored_events(curs, stored_events, **kwargs)
                return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
