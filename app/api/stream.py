"""The WebSocket stream: journal events pushed as JSON, resumable from a cursor.

Each client has its own bounded queue and its own writer (this handler): the tracker only
appends to the journal, which offers each event to each subscriber without waiting. A slow
client catches up from the journal or gets `gap` + `reset`; it never slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from app.api.follow import follow_for_stream
from app.api.keys import ENCODER, SERVICE, SOCKETS
from app.api.models import StreamQuery
from app.api.wsframe import text_frame
from app.core.identity import LifeId, parse_life_id
from app.core.journal import Accept, Encoder, Event, Push

routes = web.RouteTableDef()
PUSH_LIMIT = 64 * 1024  # bytes waiting in a client's transport before events queue instead


def make_filter(q: StreamQuery, life: tuple[int, int] | None) -> Accept:
    types = frozenset(q.types) if q.types else None
    pid = life[0] if life else q.pid
    comm, exe, canary = q.comm, q.exe, q.canary
    if pid is None and comm is None and exe is None and canary is None:

        def by_type(ev: Event) -> bool:
            return types is None or ev.type in types

        return by_type

    def accept(ev: Event) -> bool:
        if types is not None and ev.type not in types:
            return False
        lv = ev.life
        if lv is None:  # node events (gap, resync, source...) pass unless types exclude them
            return True
        return (
            (pid is None or lv.pid == pid)
            and (life is None or abs(lv.start_ticks - life[1]) <= max(lv.start_slack, 0))
            and (comm is None or lv.comm == comm)
            and (exe is None or lv.exe == exe)
            and (canary is None or lv.canary == canary)
        )

    return accept


@routes.get("/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    q = StreamQuery.model_validate(dict(request.query))
    life: tuple[int, int] | None = None
    if q.life is not None:
        lid: LifeId = parse_life_id(q.life)
        life = (lid.pid, lid.ticks(service.node.clock))
    # A stream about one life holds a pidfd on it while open: its death is then reported
    # even if the event sources lose it (app/core/follow.py).
    followed = life is not None and follow_for_stream(service, *life)
    # Uncompressed: permessage-deflate of each ~0.6 kB event cost more time than the rest of
    # the send (bench/death_latency.py); events are small and mostly go to nearby clients.
    ws = web.WebSocketResponse(
        heartbeat=service.config.heartbeat, max_msg_size=64 * 1024, compress=False
    )
    try:
        await ws.prepare(request)
    except BaseException:
        if followed and life is not None:
            service.follower.release(life[0])
        raise
    request.app[SOCKETS].add(ws)
    enc = request.app[ENCODER]
    push = make_push(ws, request.transport, enc)
    sub = service.journal.subscribe(
        make_filter(q, life), service.config.subscriber_queue, q.after, push
    )
    reader = asyncio.create_task(_drain_client(ws))
    # The client going away closes the subscription, which ends `next_batch`. While the
    # client keeps up, events are pushed onto its socket by the journal itself (make_push)
    # and this loop only sends replays and what queued while the socket was full.
    reader.add_done_callback(lambda _: sub.close())
    try:
        while not ws.closed:
            batch = await sub.next_batch()
            if not batch:
                break  # closed: the client went away
            for ev in batch:
                await ws.send_frame(ev.json(enc), WSMsgType.TEXT)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if followed and life is not None:
            service.follower.release(life[0])
        sub.close()
        request.app[SOCKETS].discard(ws)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
    return ws


def make_push(ws: web.WebSocketResponse, transport: asyncio.Transport | None, enc: Encoder) -> Push:
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
        transport.write(text_frame(ev.json(enc)))
        return True

    return push


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, to see pongs and its close."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
