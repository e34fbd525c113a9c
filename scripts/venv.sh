#!/usr/bin/env bash
# Create .venv (once) and install persistkit with every extra, the dev tools and
# the out-of-tree backend plug-ins under adapters/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}
pip_install --upgrade pip
packages=(-e ".[dev]")
for plugin in adapters/*/pyproject.toml; do
  [ -e "$plugin" ] && packages+=(-e "$(dirname "$plugin")")
done
pip_install "${packages[@]}"
