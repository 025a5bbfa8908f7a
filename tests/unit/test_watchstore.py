"""Watches changed over the API outlive a restart (app/watchstore.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from app.api.app import make_app
from app.core.service import Service
from app.core.watches import WatchSpec
from app.core.watchstore import WatchStore
from tests.helpers import api_client, make_config

AUTH = {"Authorization": "Bearer t"}


async def restart(tmp_path: Path, **kw: Any) -> Service:
    service = Service(make_config(state_dir=tmp_path, token="t", **kw))
    await service.start()
    return service


async def test_api_changes_are_applied_over_the_config_at_the_next_start(tmp_path: Path) -> None:
    conf = {"ntpd": {"comm": "ntpd"}, "cron": {"comm": "cron"}}
    first = await restart(tmp_path, watches=conf)
    async with api_client(make_app(first, manage=False)) as c:
        assert (await c.put("/v1/watches/sshd", json={"comm": "sshd"}, headers=AUTH)).status == 201
        r = await c.put("/v1/watches/cron", json={"comm": "crond", "max": 1}, headers=AUTH)
        assert r.status == 200
        assert (await c.delete("/v1/watches/ntpd", headers=AUTH)).status == 200
    await first.stop()
    saved = json.loads((tmp_path / "watches.json").read_text())
    assert saved == {"cron": {"comm": "crond", "max": 1, "min": 1, "canary": False},
                     "ntpd": None, "sshd": {"comm": "sshd", "min": 1, "canary": False}}  # fmt: skip

    second = await restart(tmp_path, watches=conf)
    try:
        assert sorted(second.watches.watches) == ["cron", "sshd"]
        assert second.watches.watches["cron"].spec == WatchSpec(comm="crond", max=1)
    finally:
        await second.stop()


async def test_undoing_a_change_leaves_nothing_saved(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json", {"ntpd": WatchSpec(comm="ntpd")})
    store.defined("x", WatchSpec(comm="x"))
    store.removed("x")  # defined and removed over the API: nothing to remember
    store.defined("ntpd", WatchSpec(comm="ntpd"))  # back to the config's own spec
    assert json.loads((tmp_path / "watches.json").read_text()) == {}


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '{"bad": {"nothing": 1}}'])
def test_a_damaged_file_is_ignored_and_said(
    tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "watches.json").write_text(body)
    store = WatchStore(tmp_path / "watches.json", {"ntpd": WatchSpec(comm="ntpd")})
    with caplog.at_level(logging.ERROR):
        assert list(store.watches()) == ["ntpd"]
    assert "ignoring saved watch" in caplog.text
