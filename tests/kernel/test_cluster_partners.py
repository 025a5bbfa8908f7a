"""Partners across nodes (issue 13, against a real nats-server and two real daemons): a TCP
client that is node a's life and a server that is node b's (each spawned by its node's
nursery, so the test-only scope assigns them). a resolves the client's partner to
`b/pid/start` by asking b, and a `partners_of` stream on a receives the server's death."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.helpers import AUTH
from tests.helpers import wait_until_blocking as until
from tests.kernel.cluster_nodes import Node, make_nodes
from tests.natsd import NatsServer, nats_servers

SERVER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
c, _ = s.accept()
time.sleep(120)
"""
CLIENT = """
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(120)
"""


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[list[NatsServer]]:
    with nats_servers(tmp_path / "nats", 1) as servers:
        yield servers


@pytest.fixture
async def pair_of_nodes(
    tmp_path: Path, one_server: list[NatsServer]
) -> AsyncIterator[tuple[Node, Node]]:
    a, b = make_nodes(tmp_path, ["a", "b"], [s.url for s in one_server])
    try:
        a.start()
        b.start()
        await until(lambda: all(
            {p["name"]: p["state"] for p in n.get("/v1/nodes").get("peers", [])}.get(o) == "up"
            for n, o in ((a, "b"), (b, "a"))
        ), 20)  # fmt: skip
        yield a, b
    finally:
        a.close()
        b.close()


async def test_a_partner_on_another_node_is_resolved_and_its_death_pushed(
    pair_of_nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = pair_of_nodes
    port_file = tmp_path / "port"
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    server, server_ticks = b.spawn(sys.executable, str(tmp_path / "server.py"), str(port_file))
    port = await until(lambda: port_file.read_text() if port_file.exists() else None)
    client, client_ticks = a.spawn(sys.executable, str(tmp_path / "client.py"), port)
    me = a.life(client, client_ticks)

    def peers() -> list[dict[str, Any]] | None:
        got = a.get(f"/v1/connections?life={me}")
        conns = [c for c in got.get("connections", []) if c["remote"] == f"127.0.0.1:{port}"]
        return conns[0]["peers"] if conns and conns[0]["peers"] else None

    found = await until(peers)
    assert [(p["host"], p["pid"], p["start_ticks"]) for p in found] == [("b", server, server_ticks)]
    assert found[0]["id"].startswith(f"b/{server}/")
    # b, asked the other way round, names a's client: each node speaks for its own lives.
    back = b.get(f"/v1/connections?life={b.life(server, server_ticks)}")
    tcp = [c for c in back["connections"] if c["local"] == f"127.0.0.1:{port}"]
    assert [(p["host"], p["pid"]) for p in tcp[0]["peers"]] == [("a", client)]

    url = a.ws_url(f"partners_of={me}&types=died")
    async with websockets.connect(url, max_size=None, additional_headers=AUTH) as ws:
        await until(lambda: b.get("/v1/node")["follow"]["followed"] >= 1)  # b holds a pidfd
        t0 = time.monotonic()
        os.kill(server, signal.SIGKILL)
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        latency = time.monotonic() - t0
    assert msg["type"] == "died" and msg["host"] == "b"
    assert msg["life"]["pid"] == server and msg["life"]["exit"]["signal"] == 9
    assert msg["partner"]["of"].startswith(f"a/{client}/")
    assert msg["partner"]["via"][0]["remote"] == f"127.0.0.1:{port}"
    print(f"\npartner on b: resolved; death reached a's partners_of client in "
          f"{latency * 1000:.1f} ms")  # fmt: skip
    assert latency < 1.0
