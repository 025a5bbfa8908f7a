"""The dashboard's cluster panel in headless chromium: node a's page lists peer b `up`, then
`unreachable` while b's daemon is stopped, then `up` again (real nats-server, b a real
daemon subprocess, a in this process)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.api.app import make_app
from app.core.service import Service
from tests.browser.test_dashboard import ARGS, CHROMIUM
from tests.helpers import TOKEN, free_port, make_config
from tests.kernel.cluster_nodes import make_nodes
from tests.natsd import nats_servers


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[int, Any]]:
    with nats_servers(tmp_path / "nats", 1) as servers:
        (b,) = make_nodes(tmp_path, ["b"], [servers[0].url])
        port = free_port()
        cfg = make_config(sources=("proc",), port=port, node_name="a", canary_interval=0,
                          cluster={"nats": [servers[0].url]})  # fmt: skip
        runner = web.AppRunner(make_app(Service(cfg)), shutdown_timeout=1.0)
        try:
            b.start()
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield port, b
        finally:
            await runner.cleanup()
            b.close()


async def test_the_cluster_panel_shows_peers_and_their_states(two_nodes: tuple[int, Any]) -> None:
    from playwright.async_api import async_playwright

    port, b = two_nodes
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            await pg.goto(f"http://127.0.0.1:{port}/#token={TOKEN}")
            peer = '#cluster [data-peer="b"] .state'
            await pg.wait_for_function(f"document.querySelector('{peer}')?.textContent === 'up'",
                                       timeout=15_000)  # fmt: skip
            b.send(signal.SIGSTOP)
            try:
                await pg.wait_for_function(
                    f"document.querySelector('{peer}')?.textContent === 'unreachable'",
                    timeout=10_000,
                )
            finally:
                b.send(signal.SIGCONT)
            await pg.wait_for_function(f"document.querySelector('{peer}')?.textContent === 'up'",
                                       timeout=10_000)  # fmt: skip
            assert not errors, errors
        finally:
            await browser.close()
