"""packaging/: the systemd unit passes `systemd-analyze verify` and keeps its exposure score
(`systemd-analyze security --offline=true`) at or under 2.5; the sysusers and tmpfiles
snippets agree with it (docs/operations.md, "systemd")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.sources.privilege import NEEDED

PACKAGING = Path(__file__).parent.parent.parent / "packaging"
UNIT = PACKAGING / "lifewatch.service"
MAX_EXPOSURE = 2.5


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (scripts/test-deps.sh installs systemd)")
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    return tool


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout (verify insists it exists)."""
    text = UNIT.read_text().replace(
        "ExecStart=/usr/bin/lifewatch serve", f"ExecStart={sys.executable} -m app serve"
    )
    assert text != UNIT.read_text()
    out = tmp_path / "lifewatch.service"
    out.write_text(text)
    return out


def test_the_unit_verifies(tmp_path: Path) -> None:
    r = subprocess.run([analyze(), "verify", str(unit_here(tmp_path))],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "lifewatch.service" not in r.stderr, r.stderr  # no warning about our unit


def test_the_exposure_score_stays_low(tmp_path: Path) -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager",
                        str(unit_here(tmp_path))], capture_output=True, text=True)  # fmt: skip
    m = re.search(r"Overall exposure level for lifewatch\.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m[1]) <= MAX_EXPOSURE, r.stdout


def test_the_unit_asks_for_what_the_code_knows_it_needs() -> None:
    s = settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["User"] == ["lifewatch"]
    caps = set(s["AmbientCapabilities"][0].split())
    assert caps == set(NEEDED) == set(s["CapabilityBoundingSet"][0].split())
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["SystemCallArchitectures"] == ["native"] and "WatchdogSec" in s


def test_sysusers_and_tmpfiles_name_the_same_user_and_dirs() -> None:
    assert (PACKAGING / "lifewatch.sysusers").read_text().count("u lifewatch ") == 1
    tmpfiles = (PACKAGING / "lifewatch.tmpfiles").read_text()
    assert "d /run/lifewatch 0755 lifewatch lifewatch" in tmpfiles
