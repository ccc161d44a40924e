#!/usr/bin/env bash
# Refresh requirements.lock: the exact version of every Python package that
# ./bootstrap.sh installs, resolved from pyproject.toml (its dependencies and the `test`
# extra) and scripts/lock.in by pip-tools' pip-compile, run from a throwaway virtual
# environment. Commit the lock with the change that needed it.
#
#   scripts/lock.sh                          after editing pyproject.toml: keep every pin
#                                            that still fits, resolve what changed
#   scripts/lock.sh --upgrade                move every package to its newest fitting release
#   scripts/lock.sh --upgrade-package numpy  move only that one (repeatable)
#
# It resolves with this machine's pip configuration (`pip config list`), as ./bootstrap.sh
# installs with it: torch's CPU-only wheel comes from its find-links folder, so the lock
# pins torch==2.13.0+cpu and none of the nvidia-* CUDA wheels. The lock names no index or
# folder of its own.
set -euo pipefail

cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3.11}"
pip_tools_version=7.6.2

tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
"$python_bin" -m venv "$tools/venv"
pip_pin="$(grep -m1 '^pip==' requirements.lock 2>/dev/null || echo pip)"
"$tools/venv/bin/python" -m pip install -q "$pip_pin" "pip-tools==$pip_tools_version"
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/venv/bin/pip-compile" --quiet \
  --extra test --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
  --newline lf --output-file requirements.lock "$@" pyproject.toml scripts/lock.in
echo "requirements.lock: $(grep -c '^[A-Za-z0-9]' requirements.lock) pinned packages"
