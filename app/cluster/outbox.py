"""The cluster's outbox on disk: deaths not yet acknowledged by the JetStream stream are kept
in the durable journal's database (app/core/store.py, a component table), so a daemon that
stops or crashes while the broker is unreachable sends them after its restart, with their
true `died_at` and the same `Nats-Msg-Id` (receivers and the stream drop repeats).

Writes go through the store's writer thread in its next group commit: the publisher never
waits on the disk. What a crash can lose is the store's uncommitted tail (docs/storage.md):
at most the deaths of the last commit interval.
"""

from __future__ import annotations

import sqlite3

from app.core.store import Store

NAME, VERSION = "cluster_outbox", 1


def _migrate(c: sqlite3.Connection, have: int) -> None:
    if have < 1:
        c.execute(
            "CREATE TABLE cluster_outbox (mid TEXT PRIMARY KEY, subject TEXT NOT NULL, "
            "body BLOB NOT NULL)"
        )


class DiskOutbox:
    """What the publisher's in-memory outbox holds, mirrored in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.component(NAME, VERSION, _migrate)
        self.refused = 0  # writes the store's full queue refused (counted, never waited on)

    def load(self) -> list[tuple[str, str, bytes]]:
        """The deaths left by earlier runs, oldest first (mid, subject, body). Blocking:
        called in a thread at start, before the publisher runs."""
        db = self.store.reader()
        try:
            return [
                (str(m), str(s), bytes(b))
                for m, s, b in db.execute(
                    "SELECT mid, subject, body FROM cluster_outbox ORDER BY rowid"
                )
            ]
        except sqlite3.OperationalError:  # the table is not there yet: nothing left
            return []
        finally:
            db.close()

    def added(self, mid: str, subject: str, body: bytes) -> None:
        if not self.store.write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO cluster_outbox VALUES (?, ?, ?)", (mid, subject, body)
            )
        ):
            self.refused += 1

    def removed(self, mid: str) -> None:
        if not self.store.write(
            lambda c: c.execute("DELETE FROM cluster_outbox WHERE mid = ?", (mid,))
        ):
            self.refused += 1
