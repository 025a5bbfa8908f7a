"""One node's place in the cluster: the NATS connection, presence, the deaths stream, the
receivers that feed the cluster view, and the owner's side of lookups and follows.

Nothing here runs on the kernel reader's path: the publisher reads the journal through its
own bounded subscriber, receivers run on nats-py's tasks, and a broker that is slow or gone
only makes the outbox grow (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)

from app.cluster.ask import Asker
from app.cluster.outbox import DiskOutbox
from app.cluster.partners import PartnerFinder
from app.cluster.peers import Peers, Presence
from app.cluster.publisher import Publisher, Scope
from app.cluster.subjects import Subjects, decode_token
from app.cluster.view import ClusterView, RemoteLives
from app.core.cluster_settings import ClusterSettings
from app.core.identity import LifeIdError, parse_life_id
from app.core.journal import Encoder, Journal
from app.core.life import iso
from app.core.service import Service
from app.netlink.sockdiag import local_addresses

log = logging.getLogger(__name__)

AnswerFn = Callable[[str], str]  # a local life's answer (LifeAnswer JSON) for its text id
FollowFn = Callable[[str], tuple[int, dict[str, Any]]]  # follow a local life: status, body
STOP_WAIT = 5.0  # s the cluster's tasks get to end once cancelled (stop)
ASK_MAX = 10_000  # lives one ask may name (Config.max_batch's default)
ASK_SLICE = 256  # answers between two yields to the loop (app/api/lives.py CHECK_SLICE)


class Cluster:
    def __init__(
        self,
        service: Service,
        settings: ClusterSettings,
        encoder: Encoder,
        answer: AnswerFn,
        follow: FollowFn,
        api_url: str,
    ) -> None:
        self.service, self.settings = service, settings
        node = service.node
        self.me = node.hostname
        self.subjects = Subjects(settings.prefix)
        # Its addresses are added at start (read in a thread: pyroute2 runs a loop of its own).
        self.presence = Presence(node.boot_id, node.clock.btime, node.clock.hz,
                                 service.started_at, service.version, api_url)  # fmt: skip
        # The cluster journal: every node's life events and node events, read by
        # /v1/stream?scope=cluster. Its own cursors, like the node's journal.
        self.journal = Journal(settings.journal)
        self.peers = Peers(self.me, settings.unreachable_after)
        self.view = ClusterView(self.me, self.journal, self.peers,
                                RemoteLives(settings.remote_lives))  # fmt: skip
        self._answer, self._follow = answer, follow
        self._encoder = encoder
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.connection = "connecting"
        self.connection_since = time.time()
        self.stored_path = "setting up"  # the deaths stream and presence bucket
        self.publisher: Publisher | None = None
        self.asker = Asker(self)
        self.partners = PartnerFinder(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._mono = time.monotonic

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        s, svc = self.settings, self.service
        try:
            addresses = await asyncio.to_thread(local_addresses)
            self.presence = dataclasses.replace(self.presence, addresses=addresses)
        except OSError as e:  # partners on other nodes then cannot find this one's lives
            log.warning("cluster: this node's addresses cannot be read: %s", e)
        scope = Scope(s.scope_pid, svc.registry) if s.scope_pid else None
        self.publisher = Publisher(
            self.me, svc.node.boot_id, self.subjects, svc.journal, self._encoder,
            max(svc.config.subscriber_queue, 16384), s.outbox, s.publish_births, scope,
            lambda mid, body: self.view.received(self.me, mid, body),
        )  # fmt: skip
        if svc.store is not None:  # the outbox is kept in the durable journal's database
            disk = DiskOutbox(svc.store)
            left = self.publisher.restore(await asyncio.to_thread(disk.load))
            self.publisher.disk = disk
            if left:
                log.info("cluster: %d deaths an earlier run left unsent are sent first", left)
        self._tasks = [
            asyncio.create_task(self._connect()),
            asyncio.create_task(self.publisher.run()),
            asyncio.create_task(self.publisher.retry()),
            asyncio.create_task(self._tick()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        # Bounded: a task inside nats-py may swallow its cancellation (its reconnect loop
        # does, nats-io/nats.py#981) and would hold the daemon's stop forever. Seen once: a
        # CI run's in-process node hung in its teardown, not reproduced in 13 runs since.
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT)
            if pending:
                names = ", ".join(sorted(repr(t.get_coro()) for t in pending))
                log.warning("cluster: %d task(s) did not stop within %.0f s; left behind: %s",
                            len(pending), STOP_WAIT, names)  # fmt: skip
        if self.publisher is not None:
            self.publisher.sub.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.nc.close()

    def speaks_for(self, pid: int) -> bool:
        """Whether the live process `pid` is this node's to speak for: every process, unless
        the test-only `scope_pid` narrows the node to one subtree."""
        scope = self.publisher.scope if self.publisher is not None else None
        return scope is None or pid in scope.pids

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    # -- connection ----------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        s = self.settings
        opts: dict[str, Any] = {
            "servers": list(s.nats), "name": f"lifewatch {self.me}", "no_echo": True,
            "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "connect_timeout": 2,
            "ping_interval": 5, "max_outstanding_pings": 2,
            "error_cb": self._error, "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
        }  # fmt: skip
        if s.creds is not None:
            opts["user_credentials"] = str(s.creds)
        for name in ("user", "password", "token", "tls_hostname"):
            if getattr(s, name) is not None:
                opts[name] = getattr(s, name)
        if s.tls_ca is not None or s.tls_cert is not None:
            ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
            if s.tls_cert is not None:
                ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key) if s.tls_key else None)
            opts["tls"] = ctx
        return opts

    async def _connect(self) -> None:
        """Reach NATS (retrying: the daemon serves its own node meanwhile), then subscribe,
        then set up the stored path in the background."""
        while True:
            try:
                self.nc = await nats.connect(**self._options())
                break
            except Exception as e:
                self.connection = f"cannot connect: {e}"
                log.warning("cluster: cannot reach NATS %s: %s", self.settings.nats, e)
                await asyncio.sleep(1.0)
        self.connection, self.connection_since = "connected", time.time()
        nc, sub = self.nc, self.subjects
        await nc.subscribe(sub.all("hb"), cb=self._on_heartbeat)
        await nc.subscribe(sub.all("died"), cb=self._on_event)
        await nc.subscribe(sub.all("life"), cb=self._on_event)
        await nc.subscribe(sub.ask(self.me), cb=self._on_ask)
        await nc.subscribe(sub.follow(self.me), cb=self._on_follow)
        await nc.subscribe(sub.peer(self.me), cb=self.partners.on_peer)
        self.js = nc.jetstream(timeout=2.0)
        assert self.publisher is not None
        self.publisher.nc, self.publisher.js = nc, self.js
        self.publisher.kick()
        self._spawn(self._heartbeat())
        self._spawn(self._stored_path())

    async def _error(self, e: Exception) -> None:
        # nats-py keeps trying its servers itself (max_reconnect_attempts=-1), also on the
        # first connect: its errors are how /v1/nodes can say why it is not connected.
        if self.nc is None or not self.nc.is_connected:
            self.connection = f"cannot connect: {e!r}"[:300]
        log.debug("cluster: NATS error: %r", e)

    async def _disconnected(self) -> None:
        self.connection, self.connection_since = "disconnected", time.time()
        log.warning("cluster: disconnected from NATS")

    async def _reconnected(self) -> None:
        self.connection, self.connection_since = "connected", time.time()
        log.info("cluster: reconnected to NATS")
        if self.publisher is not None:
            self.publisher.kick()

    async def _stored_path(self) -> None:
        """The deaths stream, the presence bucket, a replay of stored deaths and a watch of
        presence keys; retried until JetStream answers (it may be electing a leader)."""
        s, sub, js = self.settings, self.subjects, self.js
        while True:
            try:
                cfg = StreamConfig(
                    name=sub.stream, subjects=[sub.all("died")], max_age=s.max_age,
                    max_bytes=s.max_bytes, num_replicas=s.replicas, storage=StorageType.FILE,
                    discard=DiscardPolicy.OLD, duplicate_window=min(120.0, s.max_age),
                )  # fmt: skip
                try:
                    await js.add_stream(cfg)
                except nats.js.errors.BadRequestError as e:
                    log.info("cluster: deaths stream exists with other settings: %s", e)
                try:
                    self.kv = await js.key_value(sub.bucket)
                except nats.js.errors.BucketNotFoundError:
                    kv = KeyValueConfig(bucket=sub.bucket, history=1, replicas=s.replicas,
                                        limit_marker_ttl=float(s.presence_ttl))  # fmt: skip
                    self.kv = await js.create_key_value(kv)
                # Stored deaths from `replay` s ago on (not the whole stream: each costs a
                # parse), then every new one; an ordered consumer resumes after a disconnect.
                since = datetime.now(UTC) - timedelta(seconds=min(s.replay, s.max_age))
                when = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                      opt_start_time=since)  # fmt: skip
                await js.subscribe(
                    sub.all("died"), cb=self._on_event, stream=sub.stream, config=when,
                    ordered_consumer=True, deliver_policy=DeliverPolicy.BY_START_TIME,
                )  # fmt: skip
                watcher = await self.kv.watchall()
                break
            except Exception as e:
                self.stored_path = f"not ready: {e!r}"
                log.warning("cluster: JetStream not ready: %r", e)
                await asyncio.sleep(1.0)
        self.stored_path = "ready"
        self._spawn(self._announce())
        await self._watch(watcher)

    # -- presence ------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        body = orjson.dumps({"node": self.me, **self.presence.to_dict()})
        subject = self.subjects.heartbeat(self.me)
        while True:
            if self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, body)
            await asyncio.sleep(self.settings.heartbeat)

    async def _announce(self) -> None:
        """This node's presence key, with a per-key TTL: it expires `presence_ttl` s after the
        last refresh, and every watcher sees it go (`gone`)."""
        body = orjson.dumps(self.presence.to_dict())
        subject = f"$KV.{self.subjects.bucket}.{self.subjects.key(self.me)}"
        ttl = self.settings.presence_ttl
        while True:
            try:
                await self.js.publish(subject, body, msg_ttl=ttl, timeout=2.0)
            except Exception as e:
                log.debug("cluster: presence not stored: %r", e)
            await asyncio.sleep(max(1.0, ttl / 3))

    async def _watch(self, watcher: Any) -> None:
        while True:
            try:
                entry = await watcher.updates(timeout=60)
            except Exception:
                continue
            if entry is None:
                continue
            try:
                name = decode_token(entry.key)
            except ValueError:
                continue
            if name == self.me:
                continue
            if entry.operation in ("DEL", "PURGE"):
                self.view.changed(self.peers.expired(name))
                continue
            try:
                presence = Presence.from_dict(orjson.loads(entry.value))
            except (ValueError, orjson.JSONDecodeError):
                continue
            self.view.changed(self.peers.announced(name, presence))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat / 2)
            self.view.changed(self.peers.tick())

    # -- receivers -----------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            host = self.subjects.node_of(msg.subject)
            presence = Presence.from_dict(orjson.loads(msg.data))
        except (ValueError, IndexError, orjson.JSONDecodeError):
            self.view.counters["malformed"] += 1
            return
        self.view.changed(self.peers.heartbeat(host, presence))

    async def _on_event(self, msg: Msg) -> None:
        try:
            host = self.subjects.node_of(msg.subject)
        except (ValueError, IndexError):
            self.view.counters["malformed"] += 1
            return
        mid = (msg.headers or {}).get("Nats-Msg-Id")
        if host == self.me or not mid:
            return  # our own (the JetStream replay), or not ours to trust without an id
        self.view.received(host, mid, msg.data)

    async def _on_ask(self, msg: Msg) -> None:
        """The owner's side of a lookup: answers for lives of this node, as the API would."""
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        try:
            lives = orjson.loads(msg.data)["lives"]
            if not isinstance(lives, list) or len(lives) > ASK_MAX:
                raise ValueError("lives must be a list of at most 10,000 ids")
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
            await msg.respond(orjson.dumps({"error": str(e)}))
            return
        out: list[str] = []
        for i, text in enumerate(lives):
            if i and i % ASK_SLICE == 0:
                await asyncio.sleep(0)
            out.append(self._answer_one(text))
        await msg.respond(("[" + ",".join(out) + "]").encode())

    def _answer_one(self, text: object) -> str:
        if not isinstance(text, str):
            return orjson.dumps({"id": None, "state": "invalid", "error": "not a string"}).decode()
        try:
            lid = parse_life_id(text)
            if lid.host != self.me:
                raise LifeIdError(f"{lid.host} is not this node ({self.me})")
            return self._answer(text)
        except LifeIdError as e:
            return orjson.dumps({"id": text, "state": "invalid", "error": str(e)}).decode()

    async def _on_follow(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            text = orjson.loads(msg.data)["life"]
            if not isinstance(text, str):
                raise ValueError("life must be a string")
            status, body = self._follow(text)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
            status, body = 400, {"error": "bad_request", "detail": str(e)}
        except Exception as e:  # never into nats-py's task: the asker gets a reason
            log.exception("cluster: following %r for a peer failed", msg.data[:400])
            status, body = 500, {"error": "follow_failed", "detail": str(e)}
        await msg.respond(orjson.dumps({"status": status, "body": body}))

    # -- what /v1/nodes shows ---------------------------------------------------------------
    def nodes_json(self) -> dict[str, Any]:
        pub = self.publisher
        assert pub is not None
        lat = sorted(pub.stats.store_latency)
        peers = [
            {
                "name": p.name, "state": p.state, "since": iso(p.since),
                "boot_id": p.presence.boot_id, "boots_seen": p.boots,
                "started_at": iso(p.presence.started_at), "version": p.presence.version,
                "api": p.presence.api, "last_heartbeat": iso(p.last_heartbeat_wall),
                "heartbeats": p.heartbeats,
            }
            for p in sorted(self.peers.peers.values(), key=lambda p: p.name)
        ]  # fmt: skip
        stats = {f.name: getattr(pub.stats, f.name) for f in dataclasses.fields(pub.stats)}
        del stats["store_latency"]
        return {
            "node": self.me,
            "boot_id": self.presence.boot_id,
            "nats": list(self.settings.nats),
            "connection": self.connection,
            "connection_since": iso(self.connection_since),
            "stored_path": self.stored_path,
            "outbox": len(pub.outbox),
            "outbox_on_disk": pub.disk is not None,
            "outbox_oldest_seconds": round(pub.oldest_age(), 3),
            "store_latency_p50": lat[len(lat) // 2] if lat else None,
            "store_latency_p99": lat[int(len(lat) * 0.99)] if lat else None,
            "publish": stats,
            "received": dict(self.view.counters),
            "ask": dict(self.asker.counters),
            "partners": dict(self.partners.counters),
            "remote_lives": len(self.view.lives),
            "peers_by_state": self.peers.counts(),
            "peers": peers,
        }
