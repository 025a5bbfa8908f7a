"""The cluster's settings (`[cluster]` in the TOML file, LIFEWATCH_CLUSTER as JSON): which NATS
servers to use, how to reach them, and the timings of presence. Absent: a single node, no
broker (docs/cluster.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ClusterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nats: tuple[str, ...] = Field(
        ..., min_length=1, description='NATS server URLs, e.g. ["nats://10.0.0.1:4222"]'
    )
    # Passed through to nats-py's connect: credentials and TLS.
    creds: Path | None = Field(None, description="NATS .creds file (JWT + nkey seed)")
    user: str | None = None
    password: str | None = None
    token: str | None = Field(None, description="NATS auth token")
    tls_ca: Path | None = Field(None, description="CA file that signs the servers' certificates")
    tls_cert: Path | None = Field(None, description="client certificate (mutual TLS)")
    tls_key: Path | None = Field(None, description="client certificate's key")
    tls_hostname: str | None = Field(None, description="name to check the server's cert against")
    prefix: str = Field(
        "lifewatch", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="first token of subjects"
    )
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of deaths and presence")
    max_age: float = Field(3600.0, gt=0, description="seconds a stored death is kept")
    max_bytes: int = Field(256 << 20, ge=1 << 20, description="bytes of stored deaths kept")
    heartbeat: float = Field(0.25, gt=0, le=10, description="seconds between heartbeats")
    unreachable_after: float = Field(
        1.0, gt=0, description="seconds without a heartbeat before a peer is `unreachable`"
    )
    presence_ttl: int = Field(
        30, ge=2,
        description="whole seconds a node's presence key lives without refresh; past it the "
        "peer is `gone`. Longer than a JetStream leader election (5-10 s)",
    )  # fmt: skip
    ask_timeout: float = Field(
        0.25, gt=0, le=10, description="seconds to wait for an owner's answer (lookup, follow)"
    )
    outbox: int = Field(
        100_000, ge=16, description="deaths waiting to be stored before the oldest are dropped"
    )
    # Each remote life or cluster event held costs ~2.5 kB (a parsed life, 64-bit CPython).
    remote_lives: int = Field(
        20_000, ge=16, description="lives of other nodes remembered (alive and dead), ~2.5 kB each"
    )
    journal: int = Field(
        10_000, ge=16, description="cluster events kept for scope=cluster replay, ~2.5 kB each"
    )
    replay: float = Field(
        600.0, ge=0,
        description="seconds of stored deaths a node reads from the stream when it starts",
    )  # fmt: skip
    publish_births: bool = Field(True, description="send births and execs (core NATS only)")
    scope_pid: int | None = Field(
        None, ge=1,
        description="test-only: publish only lives that descend from this pid, so that several "
        "daemons on one machine each speak for their own processes (docs/cluster.md)",
    )  # fmt: skip

    @field_validator("nats", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return tuple(s.strip() for s in v.split(",") if s.strip()) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _times(self) -> ClusterSettings:
        if self.unreachable_after < 2 * self.heartbeat:
            raise ValueError("unreachable_after must be at least two heartbeats")
        return self
