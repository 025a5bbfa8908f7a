"""`lifewatch doctor --json` on the live node (as root, and in the unprivileged pass as user
lifewatch with the unit's capabilities): every check is there, the kernel facts are read for
real, a daemon that is not running is a warning, and the exit code is the worst status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port

RANK = {"ok": 0, "warn": 1, "fail": 2}


def test_doctor_json_on_this_node(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = dict(os.environ, LIFEWATCH_STATE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "app", "doctor", "--json", "--url", url],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    out = json.loads(r.stdout)
    by = {c["name"]: c for c in out["checks"]}
    assert r.returncode == max(RANK[c["status"]] for c in out["checks"]) == RANK[out["status"]]
    for cap in ("CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_NET_ADMIN", "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"):  # fmt: skip
        assert by[f"capability {cap}"]["status"] == "ok", by[f"capability {cap}"]
    assert by["audit"]["status"] == "ok" and "not locked" in by["audit"]["detail"]
    assert by["proc connector"]["status"] == "ok"
    assert by["pidfd"]["status"] == "ok"
    assert by["state dir"]["status"] == "ok"
    assert by["daemon"]["status"] == "warn" and by["daemon"]["fix"]
    assert "audit pid" in by and "clock" in by and "config" in by
