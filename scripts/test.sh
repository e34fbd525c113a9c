#!/usr/bin/env bash
# Install everything persistkit's tests need on a fresh Debian machine, then run
# the linters, the type checker, the API reference (strict: a broken reference fails)
# and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh
bash scripts/venv.sh
# backtest-kit 19.5.0 from npm, installed once as the bench installs it (its
# cache folder): the migration tests write their state with it.
.venv/bin/python -c "from bench.peers.backtest_kit_peer import BacktestKitPeer as P; \
print('backtest-kit', P.install().version)"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
site=$(mktemp -d)
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
.venv/bin/python -m pytest "$@"
