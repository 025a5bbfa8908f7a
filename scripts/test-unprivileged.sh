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

# The venv's interpreter may live where the lifewatch user cannot reach it (a pyenv under
# /root): then the system's python3 of the same version runs the venv's packages.
py=.venv/bin/python
pypath=$PWD
if ! "${priv[@]}" test -x "$(readlink -f "$py")"; then
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    want=$("$py" -c 'import sys; print(sys.version_info[:2])')
    [ "$(/usr/bin/python3 -c 'import sys; print(sys.version_info[:2])')" = "$want" ] || {
        echo "test-unprivileged: the lifewatch user cannot run $py and /usr/bin/python3 is not $want"
        exit 1
    }
    py=/usr/bin/python3
    pypath=$PWD:$site
fi
echo "test-unprivileged: tests/kernel as user lifewatch with ${caps// /, } only"
exec "${priv[@]}" env HOME=/nonexistent PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$pypath" \
    LIFEWATCH_TEST_UNPRIVILEGED=1 "$py" -m pytest -p no:cacheprovider -q tests/kernel "$@"
