"""The watchdog's verdict on made-up health: a reader with data waiting and nothing read is
stalled, an idle one is not, a failed source does not hold the pings, a missed canary does;
STATUS= is sent on change only, WATCHDOG=1 only when healthy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.canary import CanaryStats, SourceVerdict
from app.core.watchdog import Watchdog
from app.sources.base import DEGRADED, FAILED, OK, SourceHealth


class FakeSource:
    def __init__(self, name: str, state: str = OK) -> None:
        self.name = name
        self.h = SourceHealth(state, "", 0.0, {"datagrams": 0, "socket_queue_bytes": 0})

    def health(self) -> SourceHealth:
        return self.h


@dataclass
class FakeCanary:
    stats: CanaryStats = field(default_factory=CanaryStats)


class FakeService:
    def __init__(self, *sources: FakeSource) -> None:
        self.sources = list(sources)
        self.canary: FakeCanary | None = FakeCanary()

    def source_health(self, s: FakeSource) -> SourceHealth:
        return s.health()


class FakeNotifier:
    watchdog_interval: float | None = 15.0
    enabled = True

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def notify(self, **f: str) -> bool:
        self.sent.append(f)
        return True

    def status(self, s: str) -> bool:
        return self.notify(status=s)

    def ready(self, s: str) -> bool:
        return self.notify(ready="1", status=s)

    def watchdog(self) -> bool:
        return self.notify(watchdog="1")

    def stopping(self, s: str = "stopping") -> bool:
        return self.notify(stopping="1")


def dog(service: FakeService) -> tuple[Watchdog, FakeNotifier]:
    n = FakeNotifier()
    s: Any = service
    return Watchdog(s, n), n  # type: ignore[arg-type]


def pings(n: FakeNotifier) -> int:
    return sum(1 for f in n.sent if f.get("watchdog") == "1")


def test_stalled_reader_holds_the_pings_idle_reader_does_not() -> None:
    proc = FakeSource("proc")
    w, n = dog(FakeService(proc))
    w.ready()
    assert n.sent[0] == {"ready": "1", "status": "proc ok"}
    assert w.tick().healthy and pings(n) == 1  # idle: nothing waiting, nothing read
    proc.h.counters.update(datagrams=5, socket_queue_bytes=4096)
    assert w.tick().healthy  # read 5 since the last check, though more waits
    v = w.tick()  # nothing read since, 4096 bytes waiting: stalled
    assert not v.healthy and "proc reader stalled" in v.why and pings(n) == 2
    assert n.sent[-1]["status"].startswith("proc ok; watchdog held: proc reader stalled")
    proc.h.counters.update(datagrams=9, socket_queue_bytes=0)
    assert w.tick().healthy and pings(n) == 3
    assert n.sent[-2]["status"] == "proc ok"  # STATUS= on change, then the ping


def test_a_failed_source_does_not_hold_the_pings_a_missed_canary_does() -> None:
    audit, proc = FakeSource("audit", FAILED), FakeSource("proc")
    service = FakeService(audit, proc)
    w, n = dog(service)
    w.ready()
    audit.h.counters.update(datagrams=0, socket_queue_bytes=99)  # failed: not judged
    assert w.tick().healthy and w.tick().healthy
    assert service.canary is not None
    service.canary.stats.verdicts["proc"] = SourceVerdict(state=DEGRADED)
    v = w.tick()
    assert not v.healthy and "proc missed the canary" in v.why
    before = len(n.sent)
    w.tick()
    assert len(n.sent) == before  # same status, no ping: nothing sent
