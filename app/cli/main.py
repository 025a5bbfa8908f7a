"""The `lifewatch` command: serve, check, tail."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from app import __version__
from app.cli.http import default_url
from app.core.config import Config, load_config

EPILOG = """\
Settings come from, lowest first: embedded defaults, the TOML file of --config
(else $LIFEWATCH_CONFIG, else /etc/lifewatch/lifewatch.toml when it exists),
LIFEWATCH_<NAME> environment variables (e.g. LIFEWATCH_PORT=9000), then flags.
Settings and their defaults:
"""


def _settings_help() -> str:
    lines = []
    for name, field in Config.model_fields.items():
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(default)
        lines.append(f"  {name:<18} {field.description} (default: {default})")
    return EPILOG + "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lifewatch",
        description="Knows which process lives exist on this node, from the kernel's events.",
    )
    p.add_argument("--version", action="version", version=f"lifewatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon (root, or the capabilities of docs/operations.md)",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, help="TOML file with settings")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 7878)")
    serve.add_argument("--sources", help="comma list of kernel sources (default audit,proc)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    serve.add_argument("--socket", help="Unix socket path ('' for none; default "
                       "/run/lifewatch/lifewatch.sock)")  # fmt: skip
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow --host beyond loopback (tokens cross the network in clear)",
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="json: one JSON object per line (journald, collectors)",
    )  # fmt: skip
    serve.add_argument(
        "--check-config", action="store_true",
        help="validate the settings, print the effective ones (secrets masked) and exit",
    )  # fmt: skip
    doctor = sub.add_parser("doctor", help="check this node for lifewatch and say what to fix")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument("--url", default=os.environ.get("LIFEWATCH_URL", "http://127.0.0.1:7878"))

    for name, text in (
        ("check", "ask whether lives (host/pid/start) are alive"),
        ("tail", "print the event stream, one colored line per event"),
        ("ps", "show the live processes as a tree"),
        ("watch", "show a watch's state, then each change"),
        ("whoami", "who the daemon thinks you are, and what you may see"),
        ("resync", "repair the daemon's state from /proc (root or the admin token)"),
        ("nodes", "show the cluster's nodes as this daemon sees them"),
        ("partners", "show a process's connections and the lives at their other ends"),
        ("history", "list dead lives of the whole retained history (every boot kept)"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument(
            "--url", default=default_url(),
            help="the daemon: its Unix socket (unix:PATH, the default) or "
            "http://HOST:PORT (TCP; the token comes from LIFEWATCH_TOKEN or the daemon's token "
            "files, never from the command line)",
        )  # fmt: skip
        if name in ("tail", "ps", "watch"):
            c.add_argument(
                "--color", choices=("auto", "always", "never"), default="auto",
                help="ANSI colors (auto: on a terminal, unless NO_COLOR is set)",
            )  # fmt: skip
        if name == "check":
            c.add_argument("lives", nargs="+", metavar="host/pid/start")
        elif name == "ps":
            c.add_argument("pattern", nargs="?", help="show matches (pid, comm, exe, argv) "
                           "and their ancestors")  # fmt: skip
            c.add_argument("--all", action="store_true", help="include kernel threads, canaries")
        elif name == "partners":
            c.add_argument("pid", type=int, help="a process of this node")
            c.add_argument("--follow", action="store_true", help="then print each partner's death")
        elif name == "history":
            from app.cli.history import add_arguments

            add_arguments(c)
        elif name == "watch":
            c.add_argument("name", help="the watch's name (GET /v1/watches lists them)")
            c.add_argument("--once", action="store_true", help="print the state and exit")
        elif name in ("whoami", "resync"):
            pass
        else:
            c.add_argument("--after", type=int, help="resume after this cursor")
            c.add_argument("--types", help="comma list: born,exec,died,gap,...")
            c.add_argument("--pid", type=int)
            c.add_argument("--comm")
            c.add_argument("--exe")
            c.add_argument("--life", help="host/pid/start")
            c.add_argument("--no-canary", action="store_true", help="hide canary lives")
            c.add_argument("--json", action="store_true", help="print raw JSON events")
    return p


def die(message: str, code: int = 2) -> None:
    print(f"lifewatch: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "doctor":
        from app.cli.doctor import run_doctor

        raise SystemExit(run_doctor(args))
    elif args.command == "check":
        check(args)
    elif args.command == "tail":
        tail(args)
    elif args.command == "ps":
        from app.cli.console import run_ps

        run_ps(args)
    elif args.command in ("whoami", "resync"):
        from app.cli.http import fetch

        if args.command == "whoami":
            print(json.dumps(fetch(f"{args.url}/v1/whoami"), indent=2))
        else:
            print(json.dumps(fetch(f"{args.url}/v1/resync", method="POST"), indent=2))
    elif args.command == "nodes":
        nodes(args)
    elif args.command == "partners":
        from app.cli.partners import run_partners

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_partners(args))
    elif args.command == "history":
        from app.cli.history import run_history

        run_history(args)
    elif args.command == "watch":
        from app.cli.console import run_watch

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_watch(args))


def serve(args: argparse.Namespace) -> None:
    from app.cli.logs import setup_logging
    from app.cli.settings import config_file, describe
    from app.cli.settings import effective as effective_settings

    file = config_file(args.config, os.environ)
    try:
        config = load_config(
            file,
            dict(os.environ),
            {
                "host": args.host,
                "port": args.port,
                "sources": args.sources,
                "socket": args.socket,
                "insecure": args.insecure,
            },
        )
    except ValidationError as e:
        die("bad settings: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                         for x in e.errors()))  # fmt: skip
        return
    except (OSError, ValueError) as e:
        die(f"cannot read the config file: {e}")
        return
    if args.check_config:
        print(describe(file))
        print(effective_settings(config), end="")
        raise SystemExit(0)
    setup_logging(args.log_level.upper(), args.log_format)  # the daemon's, from here on
    if config.sources and os.geteuid() != 0:
        # Not root: fine with the unit's capabilities (docs/operations.md); a source whose
        # capability is missing fails alone, naming it, and the rest runs.
        from app.sources.privilege import NEEDED, effective

        missing = sorted(set(NEEDED) - effective())
        if missing:
            logging.getLogger("lifewatch").warning(
                "not root and without %s: the sources that need them fail or are limited "
                "(lifewatch doctor)",
                ", ".join(missing),
            )
    import uvloop

    try:
        uvloop.run(_serve(config))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            die(f"port {config.port} on {config.host} is already in use")
        if e.errno in (errno.EPERM, errno.EACCES):
            die(f"not permitted: {e} (lifewatch doctor names what is missing)")
        die(str(e))
    except KeyboardInterrupt:
        pass


async def _serve(config: Config) -> None:
    from aiohttp import web

    from app.api.app import make_app
    from app.api.callers import TOKENS
    from app.api.listen import ListenError, exposure_problem, open_listeners, remove_socket
    from app.core.sdnotify import Notifier
    from app.core.service import Service
    from app.core.watchdog import Watchdog

    service = Service(config)
    app = make_app(service)
    problem = exposure_problem(config, app[TOKENS].any)
    if problem:
        die(problem)
    # keepalive_timeout: an idle kept-alive connection is closed (Config.idle_timeout).
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           keepalive_timeout=config.idle_timeout)  # fmt: skip
    await runner.setup()  # starts the service (sources, snapshot)
    watchdog = Watchdog(service, Notifier())  # systemd's notify socket, when it gave one
    try:
        try:
            port = await open_listeners(runner, app, config)
        except ListenError as e:
            die(str(e))
        log = logging.getLogger("lifewatch")
        # What start-up made (modules, the snapshot's lives) lives as long as the daemon: out
        # of the collector's reach, collections walk only what came since.
        gc.collect()
        gc.freeze()
        _boost(config.priority_boost, log)
        log.info("lifewatch %s serving on http://%s:%d%s", __version__, config.host, port,
                 f" and {config.socket}" if config.socket else "")  # fmt: skip
        login = app[TOKENS].login
        if login:
            # In the fragment: a browser never sends it to a server, and the dashboard
            # moves it to its session storage and takes it out of the address bar.
            log.info("dashboard: http://%s:%d/#token=%s", _url_host(config.host), port, login)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watchdog.ready()  # READY=1: snapshot taken, sources running, API listening
        watchdog.start()
        await stop.wait()
    finally:
        await watchdog.stop()  # STOPPING=1
        await runner.cleanup()  # closes sockets, stops sources, removes kernel rules
        remove_socket(config)


def _boost(amount: int, log: logging.Logger) -> None:
    """auditd's priority_boost for the event loop's thread, where the kernel readers run:
    nice -amount (absolute: under the systemd unit's Nice=-4 it is already so). Threads
    started before it (the store's writer) keep theirs. Under a fork storm with a client
    streaming every death, p99 to a `life=` client 43-70 ms at nice 0, 6-11 ms at -4
    (docs/performance.md, "Round 4")."""
    if amount <= 0:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > -amount:  # this thread only, on Linux
            os.setpriority(os.PRIO_PROCESS, 0, -amount)
    except OSError as e:
        log.warning("priority_boost %d not applied: %s (needs CAP_SYS_NICE; the systemd unit "
                    "gives the daemon Nice=-%d)", amount, e.strerror, amount)  # fmt: skip


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def check(args: argparse.Namespace) -> None:
    from app.cli.http import fetch

    out = fetch(f"{args.url}/v1/lives/check", {"lives": args.lives})
    worst = 0
    for r in out["results"]:
        line = f"{r['id']}: {r['state']}"
        if r.get("error"):
            line += f" ({r['error']})"
            worst = max(worst, 2)
        elif r["state"] == "dead" and r.get("exit"):
            ex = r["exit"]
            line += f" (signal {ex['signal']})" if ex["signal"] else f" (exit {ex['code']})"
        if r["state"] != "alive":
            worst = max(worst, 1)
        print(line)
    raise SystemExit(worst)


def tail(args: argparse.Namespace) -> None:
    from app.cli.tail import run_tail

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_tail(args))


def nodes(args: argparse.Namespace) -> None:
    from app.cli.http import fetch

    out = fetch(f"{args.url}/v1/nodes")
    if not out.get("cluster"):
        print(f"{out['node']}: single node (no [cluster] settings)")
        return
    print(f"{out['node']} (this node): NATS {out['connection']}, stored path "
          f"{out['stored_path']}, outbox {out['outbox']}")  # fmt: skip
    for p in out["peers"]:
        print(f"{p['name']}: {p['state']} since {p['since']}, boot {p['boot_id']}, "
              f"last heartbeat {p['last_heartbeat']}, api {p['api']}")  # fmt: skip
    raise SystemExit(0 if all(p["state"] == "up" for p in out["peers"]) else 1)
