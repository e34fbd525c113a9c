#!/usr/bin/env bash
# Install the system packages the real-server tests need: redis-server,
# redis-tools (redis-cli, used to create the test cluster), strace, faketime
# (a process whose wall clock steps back, in the multi-process tests), and
# nodejs and npm (the migration tests write state with the real backtest-kit
# from npm, installed as the bench installs it).
# Idempotent and fast when everything is already present. The Debian redis
# service is never left running: the tests start their own servers on free
# loopback ports, and nothing may hold port 6379.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=0
for bin in redis-server redis-cli strace faketime node npm; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        missing=1
    fi
done

if [ "$missing" -eq 1 ]; then
    # Prevent dpkg from starting services during install where possible
    # (no-op inside containers without an init system, harmless elsewhere).
    policy_rc=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy_rc" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy_rc" >/dev/null
        $SUDO chmod +x "$policy_rc"
        created_policy=1
    fi
    cleanup() {
        if [ "$created_policy" -eq 1 ]; then
            $SUDO rm -f "$policy_rc"
        fi
    }
    trap cleanup EXIT

    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        redis-server redis-tools strace faketime nodejs npm
fi

# Make sure no system redis service is running or enabled.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop redis-server.service >/dev/null 2>&1 || true
    $SUDO systemctl disable redis-server.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/redis-server ]; then
    $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/redis-server ]; then
    $SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
# Last resort: a daemon started by the package with the system config.
if command -v pgrep >/dev/null 2>&1; then
    for pid in $(pgrep -x redis-server -u redis 2>/dev/null || true); do
        $SUDO kill "$pid" 2>/dev/null || true
    done
fi

for bin in redis-server redis-cli strace faketime node npm; do
    command -v "$bin" >/dev/null 2>&1 || { echo "install-system-deps: $bin still missing" >&2; exit 1; }
done
echo "install-system-deps: $(redis-server --version | head -n1)"
