"""What operators touch: the config file's default place, `serve --check-config`, the example
config, `lifewatch doctor`'s verdicts (a locked audit simulated), and the logs."""

from __future__ import annotations

import io
import json
import logging
import re
import tomllib
from pathlib import Path

import pytest

from app.cli import doctor, settings
from app.cli.logs import Disconnects, JsonFormatter, RateLimit
from app.cli.main import main
from app.core.config import Config
from app.netlink.audit_proto import AuditRule, AuditStatus

EXAMPLE = Path(__file__).parent.parent.parent / "packaging" / "lifewatch.toml.example"


def test_the_example_lists_every_setting_and_parses_uncommented() -> None:
    text = EXAMPLE.read_text()
    assert text == settings.example(), (
        "out of date: python -m app.cli.settings > packaging/lifewatch.toml.example"
    )
    top, _ = text.split("# [watches.", 1)
    listed = set(re.findall(r"(?m)^# ([a-z_]+) = ", top)) | {"watches"}
    assert listed == set(Config.model_fields)
    # Uncommented, it is a valid config (with the defaults, so equal to no config at all).
    live = "\n".join(
        ln[2:] for ln in text.splitlines() if re.match(r"# ([a-z_]+ = |\[watches\.)", ln)
    )
    config = Config.model_validate(tomllib.loads(live))
    secrets = {"token", "read_token", "watches"}
    assert config.model_dump(exclude=secrets) == Config().model_dump(exclude=secrets)
    assert set(config.watches) == {"ntpd", "backup"}


def test_the_default_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "lifewatch.toml"
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", default)
    assert settings.config_file(None, {}) is None  # absent: no file
    default.write_text("port = 9999\n")
    assert settings.config_file(None, {}) == default
    assert settings.config_file(None, {"LIFEWATCH_CONFIG": ""}) is None  # tests, on purpose
    other = tmp_path / "other.toml"
    assert settings.config_file(None, {"LIFEWATCH_CONFIG": str(other)}) == other
    assert settings.config_file(other, {}) == other  # --config wins


def test_check_config_prints_effective_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "lw.toml"
    f.write_text('token = "hunter2"\nport = 9000\n[watches.ntpd]\ncomm = "ntpd"\nmax = 1\n')
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", str(f), "--check-config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and 'token = "********"' in out
    assert f"# config file: {f}" in out
    back = Config.model_validate(tomllib.loads(out))  # what it prints reads back
    assert back.port == 9000 and back.watches["ntpd"].max == 1


def test_check_config_refuses_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "lw.toml"
    f.write_text("port = 'x'\nno_such_setting = 1\n")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", str(f), "--check-config"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "port" in err and "no_such_setting" in err


def test_doctor_says_a_locked_audit_cannot_take_the_rules() -> None:
    locked = AuditStatus(enabled=2, pid=4242, backlog_limit=8192)
    checks = doctor.judge_audit(locked, "", "auditd", [], {})
    lock = next(c for c in checks if c.name == "audit lock")
    assert lock.status == doctor.FAIL and "-e 2" in lock.detail and "multicast" in lock.detail
    assert lock.fix
    assert doctor.worst(checks) == 2


def test_doctor_judges_auditd_rules_and_backlog() -> None:
    st = AuditStatus(enabled=1, pid=77, backlog_limit=64, backlog_wait_time=0)
    theirs = AuditRule(4, 1, frozenset({59}), (), "theirs")
    checks = doctor.judge_audit(
        st, "", "auditd", [theirs], {"/etc/audit/audit.rules": "-D\n-b 64\n"}
    )
    by = {c.name: c for c in checks}
    assert by["audit pid"].status == doctor.OK and "auditd" in by["audit pid"].detail
    assert by["auditd rules"].status == doctor.WARN and "-D" in by["auditd rules"].detail
    assert by["audit backlog"].status == doctor.WARN
    assert by["audit backlog wait"].status == doctor.WARN
    assert doctor.judge_audit(None, "EPERM", None, [], {})[0].status == doctor.FAIL
    ours = AuditRule(4, 1, frozenset({59}), (), "lifewatch:123")
    lookalike = AuditRule(4, 1, frozenset({59}), (), "lifewatch-test-9-auditd")
    by = {c.name: c for c in doctor.judge_audit(st, "", "auditd", [ours, lookalike], {})}
    assert (
        "1 rule(s)" in by["lifewatch rules"].detail and "1 rule(s) of its" in by["audit pid"].detail
    )
    itself = AuditStatus(enabled=1, pid=123, backlog_limit=8192)
    by = {c.name: c for c in doctor.judge_audit(itself, "", "python3", [ours], {})}
    assert "lifewatch itself" in by["audit pid"].detail


def test_doctor_clock_capabilities_state_dir(tmp_path: Path) -> None:
    assert doctor.judge_clock(1000, 1000).status == doctor.OK
    assert doctor.judge_clock(1000, 1011).status == doctor.WARN
    caps = doctor.judge_capabilities({"CAP_AUDIT_READ"}, root=False)
    assert {c.name: c.status for c in caps}["capability CAP_AUDIT_CONTROL"] == doctor.FAIL
    assert doctor.judge_state_dir(tmp_path).status == doctor.OK
    assert doctor.judge_daemon(503, {"status": "degraded"}, "").status == doctor.FAIL


def test_doctor_exit_code_is_the_worst_and_json_lists_every_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made = [doctor.Check("a", doctor.OK, "fine"), doctor.Check("b", doctor.WARN, "hm", "do x")]
    monkeypatch.setattr(doctor, "gather", lambda url, config, error: made)
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--json"])
    assert e.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "warn" and [c["name"] for c in out["checks"]] == ["a", "b"]
    assert out["checks"][1]["fix"] == "do x"


def record(
    msg: str, level: int = logging.WARNING, exc: BaseException | None = None
) -> logging.LogRecord:
    return logging.LogRecord("lifewatch.x", level, __file__, 1, msg, None,
                             (type(exc), exc, None) if exc else None)  # fmt: skip


def test_repeated_warnings_are_rate_limited() -> None:
    now = [0.0]
    limit = RateLimit(window=60, clock=lambda: now[0])
    passed = [limit.filter(record(f"source proc: canary pid {p} missed")) for p in range(5)]
    assert passed == [True, False, False, False, False]
    assert limit.filter(record("source audit: canary pid 9 missed"))  # another source
    now[0] = 61.0
    r = record("source proc: canary pid 77 missed")
    assert limit.filter(r) and "4 more like it" in r.getMessage()
    assert all(limit.filter(record("info", logging.INFO)) for _ in range(3))


def test_json_lines_and_disconnects_without_traceback() -> None:
    r = record("Error handling request", logging.ERROR, ConnectionResetError("peer reset"))
    assert Disconnects().filter(r)
    assert r.exc_info is None and r.levelno == logging.INFO and "client went away" in r.msg
    line = JsonFormatter().format(r)
    assert "\n" not in line
    got = json.loads(line)
    assert got["level"] == "info" and "traceback" not in got
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    h.handle(record("x", logging.ERROR, ValueError("boom")))
    assert json.loads(buf.getvalue())["error"] == "ValueError: boom"
