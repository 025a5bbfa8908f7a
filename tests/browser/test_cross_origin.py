"""Issue 10's Must-show for browsers, in real Chromium: a page served from another origin
cannot read the stream nor make the daemon follow a life, and a DNS-rebinding request
(`Host: attacker.example`) is refused. Launched as in test_dashboard.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app import procfs
from app.api.app import make_app
from app.core.config import Config
from app.core.service import Service
from tests.browser.test_dashboard import ARGS, CHROMIUM
from tests.helpers import AUTH, TOKEN, free_port

ATTACK = """
async ({port, life}) => {
  const ws = await new Promise(resolve => {
    const got = {opened: false, messages: 0, error: false, code: null};
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/stream?types=exec,born`);
    ws.onopen = () => { got.opened = true; setTimeout(() => ws.close(), 2000); };
    ws.onmessage = () => { got.messages += 1; };
    ws.onerror = () => { got.error = true; };
    ws.onclose = e => { got.code = e.code; resolve(got); };
  });
  let post;
  try {
    const r = await fetch(`http://127.0.0.1:${port}/v1/follow`, {
      method: "POST", headers: {"Content-Type": "text/plain"}, body: JSON.stringify({life}),
    });
    post = `read ${r.status}`;
  } catch (e) {
    post = `failed: ${e}`;
  }
  return {ws, post};
}
"""


class Daemon:
    """lifewatch with the proc source, recording the status of every answer it gives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.service = Service(
            Config(sources=("proc",), state_dir=None, port=self.port, socket=None, token=TOKEN)
        )
        self.answers: list[tuple[str, str, int]] = []
        self.app = make_app(self.service)
        self.app.on_response_prepare.append(self._record)

    async def _record(self, request: web.Request, response: web.StreamResponse) -> None:
        self.answers.append((request.method, request.path, response.status))


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    d = Daemon()
    runner = web.AppRunner(d.app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", d.port).start()
    yield d
    await runner.cleanup()


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """A real page on another origin (another port of the same address)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>elsewhere</title>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


async def test_a_page_from_another_origin_reads_nothing_and_changes_nothing(
    daemon: Daemon, other_origin: str
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it as root")
    from playwright.async_api import async_playwright

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        life = daemon.service.node.life_id(sleeper.pid, procfs.read_stat(sleeper.pid).start_ticks)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page()
                await page.goto(other_origin)
                got: dict[str, Any] = await page.evaluate(
                    ATTACK, {"port": daemon.port, "life": life}
                )
            finally:
                await browser.close()
        # The WebSocket never opened: refused before the upgrade, not one event read.
        assert got["ws"] == {"opened": False, "messages": 0, "error": True, "code": 1006}
        assert ("GET", "/v1/stream", 403) in daemon.answers
        # The text/plain POST (what a <form enctype="text/plain"> sends) reached the daemon,
        # which refused it unread: nothing followed. The page could not even read the 415.
        assert ("POST", "/v1/follow", 415) in daemon.answers
        assert got["post"].startswith("failed")
        assert daemon.service.follower.following(sleeper.pid) is None
        assert len(daemon.service.follower) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_a_dns_rebinding_request_is_refused(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{daemon.port}"
        for path in ("/v1/lives?state=alive", "/v1/stream"):
            async with s.get(base + path, headers={"Host": "attacker.example"}) as r:
                assert r.status == 421 and (await r.json())["error"] == "forbidden_host"
        async with s.get(base + "/v1/lives?state=alive", headers=AUTH) as r:
            assert r.status == 200  # the same request naming the daemon is answered
