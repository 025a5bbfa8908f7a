"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

It loads the page, sees a process the test spawns appear and then its death in the feed,
and sees the page recover by itself after the server restarts (a new daemon run: its
cursors are all larger, so the page gets `reset` and re-reads state).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.api.app import make_app
from app.core.config import Config
from app.core.service import Service
from app.core.watches import WatchSpec
from tests.helpers import TOKEN, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = os.environ.get("LIFEWATCH_SCREENSHOTS")
# A duration no other test on the machine uses: the watch matches only our sleeper.
SLEEP = f"{30 + os.getpid() % 10_000 / 100_000:.5f}"


class Server:
    """One daemon run on a fixed port; `restart` is a new run (new cursors, new journal)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        cfg = Config(
            sources=("proc",), state_dir=None, port=self.port, heartbeat=2.0,
            socket=None, token=TOKEN,
            watches={"sleeper": WatchSpec(argv=f"^sleep {SLEEP}$")},
        )  # fmt: skip
        service = Service(cfg)
        self.runner = web.AppRunner(make_app(service), shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server(free_port())
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it as root")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = await browser.new_page(viewport={"width": 1440, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        await browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


async def shot(pg: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    await pg.screenshot(path=str(path), full_page=True)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)


async def watch_state(pg: Any, state: str) -> None:
    await pg.wait_for_function(
        "s => document.querySelector('#watches [data-watch=\"sleeper\"] .state')"
        "?.textContent.startsWith(s)", arg=state, timeout=10_000,
    )  # fmt: skip


async def see_a_life_and_its_death(pg: Any, server: Server) -> None:
    proc = subprocess.Popen(["sleep", SLEEP])
    try:
        # It shows in the process tree (alive), as a birth in the feed, and in its watch.
        await pg.wait_for_selector(f'#tree .p[data-pid="{proc.pid}"]', timeout=10_000)
        await pg.wait_for_selector(
            f'#feed .e[data-type="born"][data-pid="{proc.pid}"]', timeout=10_000
        )
        await watch_state(pg, "running")
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait)
    died = await pg.wait_for_selector(
        f'#feed .e[data-type="died"][data-pid="{proc.pid}"]', timeout=10_000
    )
    assert "SIGKILL" in await died.inner_text()
    await watch_state(pg, "not running")


async def test_dashboard_follows_lives_and_survives_a_restart(
    server: Server, page: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    await page.goto(f"{url}#token={TOKEN}")  # the login URL the daemon prints at start
    await page.wait_for_function("document.getElementById('conn').textContent === 'live'")
    # The token left the address bar and the history for the tab's session storage.
    assert page.url == url
    assert await page.evaluate("sessionStorage.getItem('lifewatch-token')") == TOKEN
    # What a process names itself is shown, never applied: bidi overrides and controls as
    # \uXXXX (U+202E would turn "gpj.exe" around), HTML escaped.
    shown = await page.evaluate("esc('evil\u202egpj.exe\u0007<b>')")
    assert shown == "evil\\u202egpj.exe\\u0007&lt;b&gt;"
    assert await page.inner_text("#host") == socket.gethostname()
    await watch_state(page, "not running")
    await see_a_life_and_its_death(page, server)
    await shot(page, tmp_path, "dashboard-live")

    await server.stop()
    await page.wait_for_function(
        "document.getElementById('conn').textContent !== 'live'", timeout=10_000
    )
    await shot(page, tmp_path, "dashboard-server-down")
    await server.start()
    # The page reconnects by itself with its old cursor, gets `reset` (another run) and
    # re-reads state; then it follows the new run as before.
    await page.wait_for_selector('#feed .e[data-type="reset"]', timeout=15_000)
    await page.wait_for_function(
        "document.getElementById('conn').textContent === 'live'", timeout=15_000
    )
    await see_a_life_and_its_death(page, server)
    await shot(page, tmp_path, "dashboard-after-restart")


PAIR_SERVER = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
time.sleep(60)
"""
PAIR_CLIENT = """
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("ok", flush=True)
time.sleep(60)
"""


async def test_process_detail_shows_partners_and_their_death(
    server: Server, page: Any, tmp_path: Path
) -> None:
    srv = subprocess.Popen([sys.executable, "-c", PAIR_SERVER], stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None
    port = srv.stdout.readline().strip()
    cli = subprocess.Popen([sys.executable, "-c", PAIR_CLIENT, port], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        assert cli.stdout is not None and cli.stdout.readline().strip() == "ok"
        await page.goto(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
        await page.wait_for_function("document.getElementById('conn').textContent === 'live'")
        row = await page.wait_for_selector(f'#tree .p[data-pid="{cli.pid}"]', timeout=10_000)
        await row.click()
        cell = await page.wait_for_selector("#partners .peer-state", timeout=10_000)
        peer = await cell.get_attribute("data-life")
        assert peer is not None and f"/{srv.pid}/" in peer
        assert f"127.0.0.1:{port}" in await page.inner_text("#partners")
        await shot(page, tmp_path, "dashboard-partners")
        srv.kill()
        await page.wait_for_function(
            "document.querySelector('#partners .peer-state').textContent === 'dead'",
            timeout=10_000,
        )
    finally:
        for p in (srv, cli):
            p.kill()
            await asyncio.to_thread(p.wait)
