"""The durable store as the service uses it: opened from the config, wired to the journal
and the registry, this boot's state put back (app/core/store.py, app/core/restart.py)."""

from __future__ import annotations

import logging

from app.core.config import Config
from app.core.identity import NodeIdentity
from app.core.life import Life
from app.core.restart import restore
from app.core.store import Restored, Store, StoreSettings
from app.core.tracker import Tracker

log = logging.getLogger(__name__)
DB_NAME = "lifewatch.db"


def store_settings(config: Config) -> StoreSettings | None:
    if not config.store or config.state_dir is None:
        return None
    return StoreSettings(
        path=config.state_dir / DB_NAME,
        queue=config.store_queue,
        commit_interval=config.store_commit_interval,
        retention=config.store_retention_days * 86400.0,
        max_bytes=config.store_max_bytes,
        synchronous=config.store_synchronous,
    )


def open_store(config: Config, node: NodeIdentity) -> tuple[Store | None, Restored | None]:
    """The store and what it read back; (None, None) when configured off or when the state
    directory cannot hold it (logged: the daemon then runs from memory, and says so on
    /v1/node)."""
    settings = store_settings(config)
    if settings is None:
        return None, None
    store = Store(settings)
    try:
        window = min(config.journal_memory, config.journal_size)  # the journal's memory
        got = store.open(node, config.history, window, config.history_bytes)
    except OSError as e:
        log.error("durable journal off: cannot open %s: %s", settings.path, e)
        return None, None
    log.info("durable journal %s: boot %s (ord %d), %s; %d alive, %d dead, %d events read "
             "back, %d rows unreadable", settings.path, node.boot_id, got.boot.ord,
             "resumed" if got.resumed else "new boot", len(got.alive), len(got.dead),
             len(got.events), got.skipped)  # fmt: skip
    return store, got


def attach_store(store: Store | None, got: Restored | None, tracker: Tracker) -> list[Life]:
    """Put this boot's state back, then send every change to the store; start its writer."""
    if store is None or got is None:
        return []
    alive = restore(tracker, got)
    got.alive, got.dead, got.events = [], [], []  # held by the registry and journal now
    journal = tracker.registry.journal
    journal.sink = store.put
    journal.archive = store  # events that left memory are read back from disk
    journal.foreign = store.cursor_reason
    tracker.registry.keep = store.put
    store.last_cursor = lambda: journal.last_cursor
    store.start()
    return alive
