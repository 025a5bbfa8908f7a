"""Where the config file is looked for, and the effective settings written back as TOML
(`lifewatch serve --check-config`, packaging/lifewatch.toml.example), secrets masked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.config import Config

DEFAULT_CONFIG = Path("/etc/lifewatch/lifewatch.toml")
SECRETS = frozenset({"token", "read_token"})
MASK = "********"


def config_file(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $LIFEWATCH_CONFIG (empty: no file), else DEFAULT_CONFIG when it exists."""
    if flag is not None:
        return flag
    named = env.get("LIFEWATCH_CONFIG")
    if named is not None:
        return Path(named) if named else None
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string for these values
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def effective(config: Config) -> str:
    """Every setting as TOML that `load_config` reads back; secrets masked."""
    lines: list[str] = []
    for name in Config.model_fields:
        if name in ("watches", "cluster"):
            continue
        value = getattr(config, name)
        if value is None:
            lines.append(f"# {name}: not set")
        elif name in SECRETS:
            lines.append(f"{name} = {toml_value(MASK)}")
        else:
            lines.append(f"{name} = {toml_value(value)}")
    for watch, spec in config.watches.items():
        lines.append(f"\n[watches.{json.dumps(watch)}]")
        for k, v in spec.model_dump(exclude_defaults=True).items():
            lines.append(f"{k} = {toml_value(v)}")
    if config.cluster is None:
        lines.append("# cluster: not set (a single node)")
    else:
        lines.append("\n[cluster]")
        for k, v in config.cluster.model_dump(exclude_none=True).items():
            shown = MASK if k in ("password", "token") else v
            lines.append(f"{k} = {toml_value(shown)}")
    return "\n".join(lines) + "\n"


def describe(source: Path | None, env: Mapping[str, str] = os.environ) -> str:
    names = (f"LIFEWATCH_{n.upper()}" for n in Config.model_fields)
    used = [n for n in names if n in env]
    head = f"# config file: {source if source else 'none'}"
    if used:
        head += f"\n# from the environment: {', '.join(used)}"
    return head


EXAMPLE_HEAD = """\
# lifewatch settings: /etc/lifewatch/lifewatch.toml (read by default when present;
# another file with --config FILE or LIFEWATCH_CONFIG=FILE). Every setting is listed with
# its default, commented out: uncomment what you change. LIFEWATCH_<NAME> variables and
# command-line flags override this file. Check a file with:
#   lifewatch serve --config FILE --check-config
# (Made by `python -m app.cli.settings > packaging/lifewatch.toml.example`.)
"""
EXAMPLE_WATCHES = """\
# Watches: named process patterns (README, "Dashboard, watches, metrics"). Each criterion
# given must hold: exe, comm, parent are shell globs, argv an RE2 regular expression, uid
# a number; min/max bound the healthy count (min defaults to 1).
# [watches.ntpd]
# exe = "/usr/sbin/ntpd"
# max = 1
# [watches.backup]
# argv = "backup\\\\.sh"
"""


def example() -> str:
    """The commented example config: every setting, its description and its default."""
    import textwrap

    out = [EXAMPLE_HEAD]
    defaults = Config()
    for name, field in Config.model_fields.items():
        if name == "watches":
            continue
        out += [f"# {line}" for line in textwrap.wrap(field.description or "", 96)]
        value = getattr(defaults, name)
        if value is None and name in SECRETS:
            out.append(f'# {name} = "change-me"')
        elif value is None:  # unset: "" reads as unset (app/core/config.py)
            out.append(f'# {name} = ""')
        else:
            out.append(f"# {name} = {toml_value(value)}")
        out.append("")
    out.append(EXAMPLE_WATCHES)
    return "\n".join(out)


if __name__ == "__main__":
    print(example(), end="")
