"""Partners: a TCP client and server and a Unix-socket pair, resolved to each other's lives
through the kernel's sock_diag and /proc/*/fd; the server's death reaches a `partners_of`
subscriber of the client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.core.service import Service
from app.procfs import read_stat
from tests.spec import call

Client = TestClient[Any, Any]

SERVER = """
import socket, sys, time
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
uds = socket.socket(socket.AF_UNIX); uds.bind(sys.argv[1]); uds.listen()
print(tcp.getsockname()[1], flush=True)
a, _ = tcp.accept(); b, _ = uds.accept()
print("accepted", flush=True)
time.sleep(60)
"""
CLIENT = """
import socket, sys, time
t = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
u = socket.socket(socket.AF_UNIX); u.connect(sys.argv[2])
print("%s:%d" % t.getsockname(), flush=True)
time.sleep(60)
"""


class Pair:
    def __init__(self, server: subprocess.Popen[str], client: subprocess.Popen[str],
                 port: int, client_addr: str) -> None:  # fmt: skip
        self.server, self.client = server, client
        self.port, self.client_addr = port, client_addr


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    path = str(tmp_path / "partner.sock")
    server = subprocess.Popen([sys.executable, "-c", SERVER, path], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    procs = [server]
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), path],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(client)
        assert client.stdout is not None
        client_addr = client.stdout.readline().strip()
        assert server.stdout.readline().strip() == "accepted"
        yield Pair(server, client, port, client_addr)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def life_id(service: Service, pid: int) -> str:
    return service.node.life_id(pid, read_stat(pid).start_ticks)


def peers_of(conns: list[dict[str, Any]], proto: str) -> list[list[str]]:
    return [[p["id"] for p in c["peers"]] for c in conns if c["proto"] == proto]


async def test_connections_name_the_life_at_each_end(
    client: Client, service: Service, pair: Pair
) -> None:
    me, other = life_id(service, pair.client.pid), life_id(service, pair.server.pid)
    resp, body = await call(client, "GET", f"/v1/connections?life={me}")
    assert resp.status == 200 and body["life"] == me
    assert peers_of(body["connections"], "tcp") == [[other]]
    assert peers_of(body["connections"], "unix") == [[other]]
    tcp = next(c for c in body["connections"] if c["proto"] == "tcp")
    assert tcp["local"] == pair.client_addr and tcp["remote"] == f"127.0.0.1:{pair.port}"
    assert tcp["state"] == "established" and tcp["peer_state"] == "known"
    assert body["scan"]["fds"] > 0 and body["scan"]["processes"] > 0
    # And the other way round: the server's accepted sockets lead to the client.
    resp, body = await call(client, "GET", f"/v1/connections?life={other}")
    assert resp.status == 200
    assert peers_of(body["connections"], "tcp") == [[me]]
    assert peers_of(body["connections"], "unix") == [[me]]
    # One connection by its addresses: who holds each end.
    url = f"/v1/connections/peer?local={pair.client_addr}&remote=127.0.0.1:{pair.port}"
    resp, body = await call(client, "GET", url)
    assert resp.status == 200
    assert [h["id"] for h in body["holders"]] == [me]
    assert [p["id"] for p in body["connection"]["peers"]] == [other]


async def test_a_peer_elsewhere_is_unknown_with_a_reason(
    client: Client, service: Service, pair: Pair
) -> None:
    # The listening socket of the server is not a connection; a TCP connection whose other
    # end is not on this node (here: none with those addresses) is refused with 404.
    url = f"/v1/connections/peer?local={pair.client_addr}&remote=192.0.2.1:9"
    resp, err = await call(client, "GET", url)
    assert resp.status == 404 and err["error"] == "not_found"
    for bad in ("local=1.2.3.4&remote=x", "local=1.2.3.4:99999&remote=1.2.3.4:1",
                "local=[zz]:1&remote=1.2.3.4:1"):  # fmt: skip
        resp, err = await call(client, "GET", f"/v1/connections/peer?{bad}")
        assert resp.status == 400 and err["error"] == "bad_address", bad
    resp, err = await call(client, "GET", "/v1/connections?life=otherhost/1/5")
    assert resp.status == 404 and "another host" in err["detail"]
    gone = subprocess.Popen(["true"])
    gone.wait()
    resp, err = await call(
        client, "GET", f"/v1/connections?life={service.node.hostname}/{gone.pid}/5"
    )
    assert resp.status == 404


async def test_partners_death_reaches_a_partners_of_stream(
    client: Client, service: Service, pair: Pair
) -> None:
    me, other = life_id(service, pair.client.pid), life_id(service, pair.server.pid)
    async with client.ws_connect(f"/v1/stream?partners_of={me}&types=died") as ws:
        assert service.follower.following(pair.server.pid) is not None
        t0 = time.monotonic()
        pair.server.send_signal(signal.SIGKILL)
        msg = json.loads((await ws.receive(timeout=5)).data)
        latency = time.monotonic() - t0
    assert msg["type"] == "died" and msg["life"]["id"] == other
    assert msg["life"]["exit"]["signal"] == 9
    assert msg["partner"]["of"] == me
    assert sorted(c["proto"] for c in msg["partner"]["via"]) == ["tcp", "unix"]
    assert latency < 1.0, latency
    assert service.follower.following(pair.server.pid) is None


async def test_follow_partners_holds_a_pidfd_on_each(
    client: Client, service: Service, pair: Pair
) -> None:
    me, other = life_id(service, pair.client.pid), life_id(service, pair.server.pid)
    body_in = json.dumps({"partners_of": me}).encode()
    resp, body = await call(client, "POST", "/v1/follow", body_in)
    assert resp.status == 200 and body["partners_of"] == me
    assert [(p["id"], p["following"]) for p in body["partners"]] == [(other, True)]
    assert len(body["partners"][0]["via"]) == 2
    assert service.follower.following(pair.server.pid) is not None
    resp, err = await call(
        client, "POST", "/v1/follow", b'{"life": "a/1/1", "partners_of": "a/1/1"}'
    )
    assert resp.status == 400 and "exactly one" in err["detail"]
