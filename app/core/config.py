"""Settings: embedded defaults, overridden by a TOML file, LIFEWATCH_* variables, then flags."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.cluster_settings import ClusterSettings
from app.core.watches import WatchSpec

if TYPE_CHECKING:
    from app.sources.audit import AuditSettings
    from app.sources.proc import ProcSettings

KNOWN_SOURCES = ("audit", "proc")
# What a Host header can name: a DNS name or IPv4 address, or a bracketed IPv6 address, and
# an optional port.
HOST_NAME = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{1,5})?")


class Config(BaseModel):
    """Every setting, with its default. Frozen: the app reads it, nothing changes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(7878, ge=0, le=65535, description="port the API listens on")
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="names (name or name:port) the API answers to besides the loopback "
        "names and `host`; a request naming any other Host is refused (421) so that DNS "
        "rebinding cannot reach it (LIFEWATCH_ALLOWED_HOSTS: comma list or JSON)",
    )
    sources: tuple[str, ...] = Field(
        KNOWN_SOURCES, description="kernel event sources to run: audit, proc"
    )
    priority_boost: int = Field(
        4, ge=0, le=19,
        description="the event loop's thread (the kernel readers) runs at nice -N, as "
        "auditd's priority_boost: under a fork storm deaths are read before the forkers run "
        "again; needs CAP_SYS_NICE (root; the systemd unit sets Nice=-4), else logged and "
        "skipped; 0: off",
    )  # fmt: skip
    journal_size: int = Field(50_000, ge=16, description="events kept for replay (resume window)")
    journal_memory: int = Field(
        1024, ge=16,
        description="of the `journal_size` events, the newest kept in memory; with the "
        "durable journal (`store`) the older ones are read back from disk when a client "
        "replays them (without it, memory holds all `journal_size`)",
    )  # fmt: skip
    history: int = Field(100_000, ge=0, description="dead lives kept for lookups")
    history_bytes: int = Field(
        64 << 20, ge=0,
        description="estimated bytes of dead lives kept for lookups (argv, exe, comm and a "
        "fixed ~640 B each); the oldest are forgotten past it, as past `history`",
    )  # fmt: skip
    argv_max: int = Field(
        4096, ge=0, le=1 << 20,
        description="bytes of argv kept per life, one NUL per argument counted as in "
        "/proc/<pid>/cmdline; longer argv is cut and the life says argv_truncated",
    )  # fmt: skip
    page_bytes: int = Field(
        4 << 20, ge=64 << 10,
        description="most bytes of events or lives in one GET /v1/events or /v1/lives "
        "answer (as well as `limit`); `next` continues where it stopped",
    )  # fmt: skip
    subscriber_queue: int = Field(
        4096, ge=1, description="events queued per WebSocket client before it must catch up"
    )
    token: str | None = Field(
        None,
        description="bearer token that PUT/DELETE /v1/watches and POST /v1/resync require; "
        "without one they are refused (reads stay open)",
    )
    watches: dict[str, WatchSpec] = Field(
        {},  # pydantic copies it for each Config
        description='named process patterns, e.g. [watches.ntpd] comm = "ntpd" '
        "(LIFEWATCH_WATCHES takes JSON)",
    )
    state_dir: Path | None = Field(
        Path("/var/lib/lifewatch"),
        description="where the durable journal (lifewatch.db, see `store`) is kept, btime is "
        "pinned per boot and watches changed over the API are kept (watches.json); empty or "
        "`none`: nothing on disk, history lasts as long as the run",
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    max_batch: int = Field(10_000, ge=1, description="most lives in one POST /v1/lives/check")
    heartbeat: float = Field(
        15.0,
        gt=0,
        description="WebSocket ping interval, seconds; a client that sends nothing (no pong, "
        "no data) for 3 intervals, not counting the daemon's own lateness, is closed (1001)",
    )
    slow_client_close: float = Field(
        120.0,
        gt=0,
        description="seconds a stream client may leave its socket undrained (not reading) "
        "before it is closed with 1013 naming the cursor to resume after",
    )
    # -- audit source (app/sources/audit.py, docs/audit.md) --
    audit_mode: Literal["auto", "unicast", "multicast"] = Field(
        "auto",
        description="auto: unicast when no audit daemon holds the audit pid, else multicast "
        "next to it; unicast: be the audit daemon; multicast: read-only listener (readlog group)",
    )
    audit_backlog_limit: int = Field(
        8192, ge=0, description="kernel audit queue length set in unicast mode (auditctl -b)"
    )
    audit_backlog_wait_time: int = Field(
        15000, ge=0,
        description="how long (kernel jiffies) a task waits for room in a full audit queue "
        "before its record is dropped and counted lost; 0 drops at once (unicast mode)",
    )  # fmt: skip
    audit_rcvbuf: int = Field(
        32 << 20, ge=65536,
        description="receive buffer of the audit record socket, bytes: the kernel waits only "
        "100 ms for room in it, then gives up on those records (docs/audit.md, lossless mode)",
    )  # fmt: skip
    audit_status_interval: float = Field(
        1.0, gt=0, description="seconds between reads of the kernel's lost/backlog counters"
    )
    audit_key: str = Field(
        "lifewatch", min_length=1, max_length=64,
        description="tags lifewatch's audit rules as <key>:<pid>; only its own are removed "
        "on stop (and those of dead runs at start)",
    )  # fmt: skip
    # -- proc connector, pidfd follow, canary (app/sources/proc.py, app/core/follow.py,
    # app/core/canary.py) --
    proc_rcvbuf: int = Field(
        8 << 20, ge=65536, description="proc connector socket receive buffer, bytes"
    )
    max_follow: int = Field(
        1024, ge=0, description="lives followed with a pidfd at once (POST /v1/follow)"
    )
    canary_interval: float = Field(
        5.0, ge=0, description="seconds between canary lives that prove each source works; 0: off"
    )
    canary_deadline: float = Field(
        2.0, gt=0, description="seconds a source has to report a canary's birth and death"
    )
    # -- who may read what (app/api/callers.py, docs/security.md; issue 10) --
    socket: Path | None = Field(
        Path("/run/lifewatch/lifewatch.sock"),
        description="Unix socket serving the same API as TCP; callers are identified by "
        "their uid (SO_PEERCRED) and need no token; any local user may connect (mode "
        "0666); empty: no socket",
    )
    read_token: str | None = Field(
        None,
        description="bearer token for reads over TCP (argv and exe of every life, no "
        "changes); generated into <state_dir>/read-token at first start when unset",
    )
    metrics_open: bool = Field(
        False, description="serve /metrics over TCP without a token (for a Prometheus scraper)"
    )
    insecure: bool = Field(
        False,
        description="allow a non-loopback `host` although TCP carries the token in clear "
        "(lifewatch has no TLS: put it behind a TLS proxy instead)",
    )
    max_connections: int = Field(
        4096, ge=1,
        description="open TCP connections at once; lowered at start to fit the descriptor "
        "limit (ulimit -n) with room kept for the Unix socket, follows and the kernel sources",
    )  # fmt: skip
    max_connections_per_peer: int = Field(
        1024, ge=1, description="open connections at once from one address (TCP) or one uid (Unix)"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a new connection has to send its request's headers"
    )
    idle_timeout: float = Field(
        60.0, gt=0, description="seconds a kept-alive HTTP connection may stay idle"
    )
    max_follow_per_caller: int = Field(
        256, ge=0,
        description="lives one caller (uid on the Unix socket, token on TCP) may have followed "
        "at once (POST /v1/follow and life= streams)",
    )  # fmt: skip
    max_message_bytes: int = Field(
        1 << 20, ge=64 << 10,
        description="largest event or life in one WebSocket message or list entry; a longer "
        "one has its argv cut (argv_truncated) so that it fits",
    )  # fmt: skip
    # -- cluster (app/cluster/, docs/cluster.md) --
    node_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,253}$",
        description="this node's name: the `host` in its life ids (default: the hostname)",
    )  # fmt: skip
    boot_id_file: Path | None = Field(
        None,
        description="test-only: read the boot id from this file instead of "
        "/proc/sys/kernel/random/boot_id (several daemons on one machine, docs/cluster.md)",
    )
    cluster: ClusterSettings | None = Field(
        None,
        description='NATS servers and options, as a [cluster] table: nats = ["nats://host:4222"], '
        "replicas, creds, tls_ca... (docs/cluster.md); absent: a single node, no broker",
    )
    # -- partners (app/core/partners.py: sockets to the lives at their other ends) --
    partners_max_fds: int = Field(
        100_000, ge=1,
        description="most file descriptors one connection lookup reads in /proc/*/fd to find "
        "who holds a socket (about 10 µs each); past it the answer is 503, not a guess",
    )  # fmt: skip
    partners_budget: float = Field(
        1.0, gt=0,
        description="most seconds one connection lookup spends on that scan (503 past it)",
    )  # fmt: skip

    # -- durable journal (app/core/store.py, docs/storage.md) --
    store: bool = Field(
        True,
        description="keep events and lives in SQLite (state_dir/lifewatch.db): lookups, "
        "cursors and history survive a restart; false: memory only",
    )
    store_queue: int = Field(
        100_000, ge=16,
        description="events waiting for the database writer; past it they are not written "
        "(counted, and replayed after a restart as a gap), the event loop never waits",
    )  # fmt: skip
    store_commit_interval: float = Field(
        0.1, gt=0, le=10,
        description="seconds between group commits: an event older than this plus one "
        "commit is on disk",
    )  # fmt: skip
    store_retention_days: float = Field(
        7.0, gt=0, description="events and dead lives older than this are deleted"
    )
    store_max_bytes: int = Field(
        256 << 20, ge=1 << 20,
        description="the database's size bound: past it the oldest events and dead lives "
        "are deleted (the file shrinks by incremental vacuum)",
    )  # fmt: skip
    store_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode: NORMAL survives a daemon crash (kill -9) with "
        "every commit; FULL also survives power loss, at an fsync per commit",
    )

    # Each source gets only its own settings: the sources sit below the domain and never see
    # Config. Their modules are imported here, not at the top, so that a source's module is
    # loaded only when that source is configured (app/core/service.py, build_sources).
    def audit_settings(self) -> AuditSettings:
        from app.sources.audit import AuditSettings

        return AuditSettings(
            mode=self.audit_mode,
            backlog_limit=self.audit_backlog_limit,
            backlog_wait_time=self.audit_backlog_wait_time,
            rcvbuf=self.audit_rcvbuf,
            status_interval=self.audit_status_interval,
            key=self.audit_key,
            argv_max=self.argv_max,
        )

    def proc_settings(self) -> ProcSettings:
        from app.sources.proc import ProcSettings

        return ProcSettings(rcvbuf=self.proc_rcvbuf)

    @field_validator("state_dir", mode="before")
    @classmethod
    def _no_dir(cls, v: Any) -> Any:
        return None if v in ("", "none") else v  # an empty value turns pinning to disk off

    @field_validator("socket", mode="before")
    @classmethod
    def _no_socket(cls, v: Any) -> Any:
        return None if v in ("", "none") else v

    @field_validator("sources", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.lstrip().startswith("[") else v.split(",")
        if isinstance(v, list | tuple):
            v = tuple(s.strip().lower() for s in v if isinstance(s, str) and s.strip())
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not HOST_NAME.fullmatch(h)]
        if bad:
            raise ValueError(f"not a name, address or name:port: {', '.join(bad)}")
        return v

    @field_validator("cluster", mode="before")
    @classmethod
    def _cluster_json(cls, v: Any) -> Any:
        if v == "":
            return None  # unset, as in the example file
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("node_name", "boot_id_file", mode="before")
    @classmethod
    def _unset(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("watches", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("sources")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in KNOWN_SOURCES]
        if bad:
            raise ValueError(f"unknown source(s) {bad}; known: {', '.join(KNOWN_SOURCES)}")
        return v


def load_config(file: Path | None, env: dict[str, str], flags: dict[str, Any]) -> Config:
    """Merge the layers: defaults < file < LIFEWATCH_<NAME> variables < command-line flags."""
    data: dict[str, Any] = {}
    if file is not None:
        with open(file, "rb") as f:
            data.update(tomllib.load(f))
    for name in Config.model_fields:
        value = env.get(f"LIFEWATCH_{name.upper()}")
        if value is not None:
            data[name] = value
    data.update({k: v for k, v in flags.items() if v is not None})
    return Config.model_validate(data)
