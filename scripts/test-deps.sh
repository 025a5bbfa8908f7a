#!/usr/bin/env bash
# The Debian packages the tests use, installed by `make test` itself (the README's second
# command must pass on a fresh machine): auditd (auditctl, auditd: tests/kernel), chromium
# (tests/browser) and wrk (bench/lookup_wrk.py). Quick when everything is there: nothing but
# `command -v`. Without root nothing can be installed, and nothing needs to be: the kernel
# and browser tests are skipped then (tests/conftest.py says which and why).
set -euo pipefail

need=()
command -v auditctl >/dev/null || need+=(auditd)
command -v wrk >/dev/null || need+=(wrk)
command -v chromium >/dev/null || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)  # tests/unit/test_packaging.py
command -v setpriv >/dev/null || need+=(util-linux)  # scripts/test-unprivileged.sh
command -v curl >/dev/null || need+=(curl)  # tests/kernel/test_tokens.py (the README's commands)
command -v useradd >/dev/null || need+=(passwd)  # tests/kernel/test_who_reads.py
command -v openssl >/dev/null || need+=(openssl)  # tests/kernel/test_cluster.py (TLS)
# The kernel readers' compiled module (app/netlink/_batch.c, tests/unit/test_batch.py):
# a C compiler and the headers of the python3 that makes the venv.
command -v gcc >/dev/null || need+=(gcc)
python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    2>/dev/null || need+=(python3-dev)
# Debian's python3 makes venvs only with python3-venv (ensurepip); `make` needs one.
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$(id -u)" -ne 0 ]; then
    if ((${#need[@]})); then
        echo "test-deps: not root: not installing the missing Debian packages: ${need[*]}"
    fi
    if [ -n "${CI:-}" ]; then  # tests/conftest.py: in CI a kernel test that cannot run fails
        echo "test-deps: not root: the kernel and browser tests will fail (CI must run as root)"
    else
        echo "test-deps: not root: the kernel and browser tests will be skipped (they need root)"
    fi
    exit 0
fi
# The unprivileged user the daemon runs as (packaging/lifewatch.sysusers); the second pass
# of the kernel tests runs as it (scripts/test-unprivileged.sh).
id lifewatch >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin lifewatch
# promtool (tests/unit/test_promtool.py) alone, out of Debian's prometheus package: the
# package would also install a Prometheus server and its web assets (96 MB) and start it.
if ! command -v promtool >/dev/null; then
    echo "test-deps: installing promtool from Debian's prometheus package"
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null ||
        { apt-get update -qq && apt-get download -qq prometheus; }; } &&
        dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool) &&
        install -m755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi
((${#need[@]})) || exit 0

echo "test-deps: installing the Debian packages ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# auditd's package scripts would start the daemon, which would load Debian's rules (they
# begin with -D: every rule on the node deleted) and hold the audit pid: forbid service
# starts during the install. The tests start (and stop) their own auditd where they need
# one. A policy-rc.d that was already there (Docker images ship one) is left as it is.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    trap 'exit 130' INT TERM HUP  # so that EXIT's trap runs on these too
fi
apt-get install -y -qq "${need[@]}" >/dev/null
