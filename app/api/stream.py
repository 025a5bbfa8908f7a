"""The WebSocket stream: journal events pushed as JSON, resumable from a cursor.

Each client has its own bounded queue and its own writer (this handler): the tracker only
appends to the journal, which offers each event to the subscribers whose filter could match
(app/core/fanout.py) without waiting. A slow client is told `lagging` with the cursor to
resume after and catches up from the journal, or gets `gap` + `reset`; it never slows anyone
else. A client that does not read at all for `slow_client_close` s is closed with 1013 and
that cursor; one that sends nothing for 3 heartbeats (app/api/heartbeat.py) with 1001. Every
close is logged with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from app.api.callers import WS_PROTOCOL, Caller, caller_of
from app.api.connections import connections_of
from app.api.errors import ApiError
from app.api.follow import BUDGET, follow_for_stream, partner_notes
from app.api.heartbeat import Liveness, keepalive
from app.api.jsontext import dumps
from app.api.keys import CLUSTER, ENCODER, SERVICE, SOCKETS
from app.api.models import StreamQuery
from app.api.wsframe import text_frame
from app.cluster.view import parse_cluster_cursor, resume_from
from app.core.fanout import Interest
from app.core.identity import LifeId, parse_life_id, same_host
from app.core.journal import Accept, Encoder, Event, Journal, Push, Subscriber

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
PUSH_LIMIT = 64 * 1024  # bytes waiting in a client's transport before events queue instead
TRY_AGAIN_LATER = 1013  # RFC 6455 7.4.1 (IANA registry): "Try Again Later"
Frame = Callable[[Event], bytes]  # an event as the WebSocket frame this client is sent


def make_interest(
    q: StreamQuery, life: tuple[int, int] | None, only_uid: int | None = None
) -> Interest:
    return Interest(
        types=frozenset(q.types) if q.types else None,
        pid=life[0] if life else q.pid,
        ticks=life[1] if life else None,
        comm=q.comm,
        exe=q.exe,
        canary=q.canary,
        uid=only_uid,
    )


def make_filter(q: StreamQuery, life: tuple[int, int] | None) -> Accept:
    return make_interest(q, life).matcher()


@dataclass
class Closing:
    """Why the server ends a stream: a close code and reason for the client and the log."""

    code: int
    reason: str


def cluster_filter(q: StreamQuery, lid: LifeId | None) -> Accept:
    """The stream's filter over cluster events (app/cluster/view.py): each carries its
    `host` and its life as decoded JSON, not a LifeView."""
    types = frozenset(q.types) if q.types else None
    host = lid.host if lid is not None else q.host
    pid = lid.pid if lid is not None else q.pid
    start = lid.start if lid is not None else None

    def accept(ev: Event) -> bool:
        f = ev.fields or {}
        if (types is not None and ev.type not in types) or (host and f.get("host") != host):
            return False
        life = f.get("life")
        if not isinstance(life, dict):
            return True  # node events pass unless types or host exclude them
        return (
            (pid is None or life.get("pid") == pid)
            and (not isinstance(start, int) or abs(life.get("start_ticks", -9) - start) <= 1)
            and (q.comm is None or life.get("comm") == q.comm)
            and (q.exe is None or life.get("exe") == q.exe)
            and (q.canary is None or life.get("canary") == q.canary)
        )

    return accept


async def cluster_stream(request: web.Request, q: StreamQuery) -> web.StreamResponse:
    """`scope=cluster`: every node's events from the cluster journal. A `life=` on another
    node is followed there by its owner (best effort: its death comes either way if its
    node sees it)."""
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        raise ApiError(400, "no_cluster", "scope=cluster needs [cluster] settings (a broker)")
    lid = parse_life_id(q.life) if q.life is not None else None
    local: tuple[int, int] | None = None
    if lid is not None and q.life is not None and lid.host != cluster.me:
        await cluster.asker.follow(q.life, lid.host)
    elif lid is not None:
        service = request.app[SERVICE]
        local = (lid.pid, lid.ticks(service.node.clock))
        if not follow_for_stream(service, *local):
            local = None
    accept, after = cluster_filter(q, lid), q.after
    if q.cluster_cursor is not None:
        if q.after is not None:
            raise ApiError(400, "bad_request", "give after= or cluster_cursor=, not both")
        try:
            after, fresh = resume_from(cluster.journal, parse_cluster_cursor(q.cluster_cursor))
        except ValueError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        wanted = accept

        def accept(ev: Event) -> bool:
            return fresh(ev) and wanted(ev)

    ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024, compress=False)
    try:
        await ws.prepare(request)
        request.app[SOCKETS].add(ws)
        await _serve(request, ws, accept, after, journal=cluster.journal)
    finally:
        request.app[SOCKETS].discard(ws)
        if local is not None:
            request.app[SERVICE].follower.release(local[0])
    return ws


@routes.get("/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    q = StreamQuery.model_validate(dict(request.query))
    if q.scope == "cluster":
        return await cluster_stream(request, q)
    if q.host is not None and q.host != service.node.hostname:
        raise ApiError(400, "bad_request", "host= names another node: add scope=cluster")
    if q.partners_of is not None:
        if q.life is not None or q.pid is not None:
            raise ApiError(400, "bad_request", "partners_of does not combine with life or pid")
        return await _partners_stream(request, q, parse_life_id(q.partners_of))
    life: tuple[int, int] | None = None
    if q.life is not None:
        lid: LifeId = parse_life_id(q.life)
        if not same_host(lid.host, service.node.hostname):
            # Another host's life must not match a local one of the same pid and start.
            raise ApiError(
                404, "not_found", f"{lid.host} is another host; no cluster peer is configured"
            )
        life = (lid.pid, lid.ticks(service.node.clock))
    if request.headers.get("Upgrade", "").lower() != "websocket":  # after the query's 400s
        raise ApiError(
            426, "upgrade_required", "/v1/stream is a WebSocket: send `Upgrade: websocket`",
            {"Upgrade": "websocket", "Connection": "Upgrade"},
        )  # fmt: skip
    # A stream about one life holds a pidfd on it while open: its death is then reported
    # even if the event sources lose it (app/core/follow.py).
    caller = caller_of(request)
    budget = request.app[BUDGET]
    if life is not None:
        budget.check(caller.key, service, life[0])
    followed = life is not None and follow_for_stream(service, *life)
    if followed and life is not None:
        budget.add(caller.key, *life)
    # Uncompressed: permessage-deflate of each ~0.6 kB event cost more time than the rest of
    # the send (bench/death_latency.py); events are small and mostly go to nearby clients.
    # No aiohttp heartbeat and no autoping: app/api/heartbeat.py keeps the connection alive
    # and sees every frame the client sends.
    ws = web.WebSocketResponse(
        autoping=False, max_msg_size=64 * 1024, compress=False, protocols=(WS_PROTOCOL,)
    )
    try:
        await ws.prepare(request)
    except BaseException:
        if followed and life is not None:
            service.follower.release(life[0])
        raise
    request.app[SOCKETS].add(ws)
    try:
        only = caller.uid if caller.hidden else None
        await _serve(request, ws, make_interest(q, life, only), q.after)
    finally:
        if followed and life is not None:
            service.follower.release(life[0])
        request.app[SOCKETS].discard(ws)
    return ws


async def _partners_stream(request: web.Request, q: StreamQuery, of: LifeId) -> web.StreamResponse:
    """The events of `of`'s partners, each with the connections it was found through
    (`partner`). Partners on this node are followed with a pidfd while the stream is open;
    with partners on other nodes, the stream reads the cluster journal (every node's events)
    and their owners follow them."""
    service, enc = request.app[SERVICE], request.app[ENCODER]
    cluster = request.app.get(CLUSTER)
    res = await connections_of(request, of)
    notes = await partner_notes(request, res)
    me = service.node.hostname
    of_id = service.node.life_id(res.pid, res.start_ticks)
    remote = cluster is not None and any(host != me for host, _, _ in notes)
    held: list[int] = []
    ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024, compress=False)
    try:
        for host, pid, ticks in notes:
            if host == me:
                if follow_for_stream(service, pid, ticks):
                    held.append(pid)
            elif cluster is not None:
                await cluster.asker.follow(f"{host}/{pid}/{ticks}", host)
        await ws.prepare(request)
        request.app[SOCKETS].add(ws)
        by_life: dict[tuple[Any, Any], bytes] = {
            (host, pid): dumps({"of": of_id, "via": via}) for (host, pid, _), via in notes.items()
        }  # fmt: skip
        encode = encoding_for(caller_of(request), enc)  # argv/exe only for who may see them
        caller = caller_of(request)
        types = frozenset(q.types) if q.types else None

        def splice(data: bytes, key: tuple[Any, Any] | None) -> bytes:
            note = by_life.get(key) if key is not None else None
            if note is None or not data.endswith(b"}"):
                return text_frame(data)
            return text_frame(data[:-1] + b', "partner": ' + note + b"}")

        if remote and cluster is not None:
            starts: dict[tuple[Any, Any], int] = {(h, p): t for h, p, t in notes}

            def accept(ev: Event) -> bool:
                f = ev.fields or {}
                if types is not None and ev.type not in types:
                    return False
                life = f.get("life")
                if not isinstance(life, dict):
                    return True  # node events pass unless types exclude them
                want = starts.get((f.get("host"), life.get("pid")))
                return want is not None and abs(life.get("start_ticks", -9) - want) <= int(
                    bool(life.get("start_derived"))
                )

            def cluster_frame(ev: Event) -> bytes:
                f = ev.fields or {}
                life = f.get("life")
                key = (f.get("host"), life.get("pid")) if isinstance(life, dict) else None
                return splice(encode(ev), key)

            await _serve(request, ws, accept, q.after, cluster_frame, journal=cluster.journal)
            return ws

        def frame(ev: Event) -> bytes:
            return splice(encode(ev), (me, ev.life.pid) if ev.life is not None else None)

        interest = Interest(types=types, lives=frozenset((p, t) for _, p, t in notes),
                            uid=caller.uid if caller.hidden else None)  # fmt: skip
        await _serve(request, ws, interest, q.after, frame)
    finally:
        for pid in held:
            service.follower.release(pid)
        request.app[SOCKETS].discard(ws)
    return ws


async def _serve(
    request: web.Request,
    ws: web.WebSocketResponse,
    interest: Interest | Accept,
    after: int | None,
    frame: Frame | None = None,
    journal: Journal | None = None,
) -> None:
    """Run the client's three jobs (send, read, keepalive) until one ends; then close with a
    code and reason, and log it."""
    service, transport = request.app[SERVICE], request.transport
    cfg = service.config
    loop = asyncio.get_running_loop()
    live = Liveness(cfg.heartbeat, loop.time())
    if frame is None:
        frame = frame_for(caller_of(request), request.app[ENCODER])
    push = make_push(ws, transport, frame)
    sub = (journal or service.journal).subscribe(interest, cfg.subscriber_queue, after, push)
    jobs = [asyncio.create_task(_send(request, ws, sub, cfg.slow_client_close, frame))]
    jobs.append(asyncio.create_task(_read(ws, live)))
    if transport is not None:
        phase = random.uniform(0, cfg.heartbeat)  # spreads pings (heartbeat.keepalive)
        jobs.append(asyncio.create_task(keepalive(transport, live, cfg.slow_client_close, phase)))
    closing: Closing | None = None
    try:
        done, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        closing = _why(jobs, done)
    finally:
        sub.close()
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await _close(request, ws, sub, closing)


def _why(
    jobs: list[asyncio.Task[str | None]], done: set[asyncio.Task[str | None]]
) -> Closing | None:
    """The server's reason to close, if the job that ended gives one (None: the client left)."""
    send, keep = jobs[0], jobs[2] if len(jobs) > 2 else None
    for job in done:
        if job.cancelled() or job.exception() is not None or job.result() is None:
            continue
        if job is send:
            return Closing(TRY_AGAIN_LATER, str(job.result()))
        if job is keep:
            return Closing(WSCloseCode.GOING_AWAY, str(job.result()))
    return None


async def _close(
    request: web.Request, ws: web.WebSocketResponse, sub: Subscriber, closing: Closing | None
) -> None:
    peer = request.remote
    if closing is None:
        log.info("stream client %s closed (code %s), last cursor %d", peer,
                 ws.close_code, sub.delivered)  # fmt: skip
        with contextlib.suppress(Exception):
            await ws.close()
        return
    log.warning("closing stream client %s: %d %s", peer, closing.code, closing.reason)
    # drain=False: a client that does not read would hold the close forever; the close frame
    # goes behind what is already buffered, so the client gets everything up to it.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await ws.close(code=closing.code, message=closing.reason.encode()[:120], drain=False)


async def _send(
    request: web.Request,
    ws: web.WebSocketResponse,
    sub: Subscriber,
    stall_limit: float,
    frame: Frame,
) -> str | None:
    """Send replays and what queued while the client's socket was full, each batch's frames
    in one write. None when the subscription closes; a close reason when the client has not
    drained its socket for `stall_limit` s."""
    transport = request.transport
    while not ws.closed:
        batch = await sub.next_batch()
        if not batch or transport is None or transport.is_closing():
            return None
        transport.write(b"".join([frame(ev) for ev in batch]))
        if transport.get_write_buffer_size() > PUSH_LIMIT:
            try:
                async with asyncio.timeout(stall_limit):
                    await request.writer.drain()
            except TimeoutError:
                return (
                    f"try again later: lagging, resume after cursor {sub.delivered} "
                    f"(not read for {stall_limit:.0f} s)"
                )
    return None


Encode = Callable[[Event], bytes]


def encoding_for(caller: Caller, enc: Encoder) -> Encode:
    """How this caller's events are written: whole, or without the argv and exe of lives it
    may not see in full. Each variant is encoded once per event and shared by every client
    that gets it (Event.json, Event.json_redacted): the choice costs a comparison."""
    if caller.sees_all:
        return lambda ev: ev.json(enc)
    uid = caller.uid

    def encode(ev: Event) -> bytes:
        lv = ev.life
        if lv is None or (uid is not None and lv.uid == uid):
            return ev.json(enc)
        return ev.json_redacted(enc)

    return encode


def frame_for(caller: Caller, enc: Encoder) -> Frame:
    """The WebSocket frame of each event for this caller (see encoding_for). A caller who
    sees everything takes the path it took before redaction existed: no call more."""
    if caller.sees_all:
        return lambda ev: text_frame(ev.json(enc))
    encode = encoding_for(caller, enc)
    return lambda ev: text_frame(encode(ev))


def make_push(ws: web.WebSocketResponse, transport: asyncio.Transport | None, frame: Frame) -> Push:
    """Write an event straight onto the client's socket from the journal's append, on the
    kernel reader's callback: no wakeup of this handler's task between the kernel and the
    client (one hop: a wakeup costs more than the send, bench/death_latency.py). Never
    waits: a socket whose buffer holds more than PUSH_LIMIT bytes, or that is closing, is
    declined and the event takes the queue (bounded, then catch-up or gap + reset), sent by
    the handler with aiohttp's flow control."""

    def push(ev: Event) -> bool:
        if (
            transport is None
            or ws.closed
            or transport.is_closing()
            or transport.get_write_buffer_size() > PUSH_LIMIT
        ):
            return False
        try:
            transport.write(frame(ev))
        except ConnectionError:  # the client just left: ordinary, no traceback (issue 10)
            return False
        return True

    return push


async def _read(ws: web.WebSocketResponse, live: Liveness) -> None:
    """Read what the client sends: any frame shows it alive; pings are answered (autoping is
    off, so that pongs are seen here). Ends when the client closes."""
    loop = asyncio.get_running_loop()
    while True:
        msg = await ws.receive()
        live.seen(loop.time())
        if msg.type == WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
