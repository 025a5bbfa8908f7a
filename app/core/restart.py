"""A restart is not a reset: the lives and events of an earlier run of this boot, read back
from the database (app/core/store.py), and what happened while the daemon was down.

`restore` runs before the sources start; `reconcile` after they started, with the start-up
snapshot of /proc: a life the earlier run knew alive that /proc no longer shows (or whose
pid another start now holds) died while the daemon was down. Its exit is not known and is
never guessed: `died` with `exit: null`, `cause: "while_down"` and `died_between`
[when the daemon last recorded, now]. A process /proc shows that the earlier run did not
know was born meanwhile: a `born` event (`late`). Lives born and gone meanwhile cannot be
known: one `gap` event spans the downtime and says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.core.life import Life, SourceSet, iso
from app.core.store import SEQ_BITS, Restored
from app.core.storecodec import life_of
from app.core.tracker import Tracker
from app.procfs import ProcInfo


def restore(tracker: Tracker, got: Restored) -> list[Life]:
    """Put back this boot's lives and event window; returns the lives restored alive."""
    reg = tracker.registry
    alive = [life_of(v) for v in got.alive]
    reg.restore(alive, got.dead, got.boot.first_seen)
    base = got.boot.ord << SEQ_BITS
    events = got.events
    reg.journal.load(events, base, complete=bool(events) and events[0].cursor == base + 1)
    return alive


def reconcile(
    tracker: Tracker, got: Restored, restored: list[Life], infos: Iterable[ProcInfo], now: float
) -> int:
    """The events of the restart itself: one `gap` for the downtime, a `died` for each
    restored life /proc no longer shows, a `born` for each life born meanwhile. Returns how
    many died while down."""
    reg = tracker.registry
    boot = got.boot
    if got.rebooted is not None:
        prev, n, last_seen = got.rebooted
        tracker.note("gap", {
            "source": "daemon", "reason": "node_rebooted", "since": iso(last_seen),
            "until": iso(now), "previous_boot": prev, "lives_rebooted": n,
            "detail": f"the node rebooted: the {n} lives boot {prev} still had are dead "
                      "(cause node_rebooted); what happened since was not seen"}, now)  # fmt: skip
    if not got.resumed:
        return 0
    seen = {info.stat.pid: info for info in infos}
    gone = []
    for life in restored:
        if reg.alive.get(life.pid) is not life:
            continue  # a source reported its death since the start: not while down
        info = seen.get(life.pid)
        if info is None or not life.matches(info.stat.start_ticks):
            gone.append(life)
        elif (info.stat.comm, info.exe, info.argv) != (life.comm, life.exe, life.argv):
            life.set_program(info.stat.comm, info.exe, info.argv)  # it exec'd while down
            reg.touched(life)
    # Alive now and unknown to the earlier run: born while the daemon was down. Each is a
    # `born` event (late): a client resuming across the restart learns of it too.
    gone_pids = {life.pid for life in gone}
    born = [info for pid, info in seen.items() if pid not in reg.alive or pid in gone_pids]
    fields = {
        "source": "daemon", "reason": "daemon_stopped" if boot.clean else "daemon_crashed",
        "since": iso(boot.last_seen), "until": iso(now), "lives_died_while_down": len(gone),
        "lives_born_while_down": len(born),
        "lost_cursors": None if got.lost is None else list(got.lost),
        "detail": "lifewatch was not running: lives born and gone meanwhile were not seen; "
                  "lives it knew that died meanwhile are died with cause while_down, lives "
                  "born meanwhile and alive are born (late)"
                  + ("" if got.lost is None else "; events it had not yet written are lost"),
    }  # fmt: skip
    tracker.note("gap", fields, now)
    for life in gone:
        reg.died(life, None, now, "while_down", SourceSet.SNAPSHOT, died_after=boot.last_seen)
    for info in born:
        reg.learned(info, SourceSet.SNAPSHOT)
    return len(gone)
