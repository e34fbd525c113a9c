#!/usr/bin/env bash
# Run persistkit's benchmark suite (not part of the tests) and write
# docs/performance.md, docs/performance.json and the plots in docs/img/.
# Arguments go to `python -m bench` (e.g. --quick for a smoke run; --help).
# Run as root for the cold-page-cache cases (they write /proc/sys/vm/drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/venv.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]" 2>&1 \
  | { grep -v "^WARNING: Location" || true; }

# The backtest-kit peer runs on Node; the suite installs the npm package itself.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm
  else
    echo "bench.sh: node/npm missing; the backtest-kit peer will be reported as not measured" >&2
  fi
fi

exec .venv/bin/python -m bench "$@"
