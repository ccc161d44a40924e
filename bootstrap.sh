#!/usr/bin/env bash
# Set up the regional diagnostic center on a fresh Debian machine, then run it.
#
#   ./bootstrap.sh up     install everything, then start the whole center (rdc up)
#   ./bootstrap.sh test   install everything, then run the full test suite
#   ./bootstrap.sh setup  install only
#
# Installs, when missing: Debian packages (Orthanc and its DICOMweb, WSI and
# PostgreSQL plugins, DCMTK), a virtual environment at .venv with the Python
# dependencies, and the npm dependencies of the front end when it has any.
#
# Python packages are installed at the exact versions in requirements.lock (pip
# first, then every dependency, then this project with --no-deps), npm packages at
# those in viewer/package-lock.json (npm ci). After changing the dependencies in
# pyproject.toml, refresh the lock with `scripts/lock.sh` (`scripts/lock.sh --upgrade`
# moves every package to its newest release) and commit it.
set -euo pipefail

cd "$(dirname "$0")"
mode="${1:-setup}"
case "$mode" in
  up|test|setup) ;;
  *) echo "usage: $0 up|test|setup" >&2; exit 2 ;;
esac

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian packages ---------------------------------------------------------------
# fonts-wqy-zenhei: Chinese text in report PDFs; poppler-utils: the tests read PDFs back;
# chromium: the browser tests (driven by Playwright, never a downloaded browser).
# haproxy: the load balancer of the multi-node deployment (`rdc deploy`), which the
# multi-node tests start.
apt_packages=(orthanc orthanc-dicomweb orthanc-wsi orthanc-postgresql dcmtk fonts-wqy-zenhei
  poppler-utils chromium haproxy)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  "${sudo_cmd[@]}" apt-get update -qq
  # The packages' own service is not used: the center starts Orthanc itself.
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
  # Installing the package starts Debian's own Orthanc service; the center does
  # not use it, so the one this script just installed is stopped and disabled.
  if [[ " ${missing[*]} " == *" orthanc "* ]] && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl disable --now orthanc || true
  fi
  # Likewise Debian's HAProxy service: `rdc deploy` writes the balancer's own config.
  if [[ " ${missing[*]} " == *" haproxy "* ]] && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl disable --now haproxy || true
  fi
fi

# Python ----------------------------------------------------------------------------
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3
"$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "Python 3.11 is required (found $("$python_bin" --version 2>&1))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python_bin" -m venv .venv
fi
# The stamp holds the digest of the lock and pyproject.toml it was installed from, so a
# change of either (an edit, a pull, a checkout) installs again.
stamp=.venv/.rdc-installed
installed_from="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$installed_from" ]; then
  say "installing Python dependencies (requirements.lock)"
  pip_pin="$(grep -m1 '^pip==' requirements.lock)"
  .venv/bin/python -m pip install -q "$pip_pin"
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip check
  echo "$installed_from" > "$stamp"
fi

# npm -------------------------------------------------------------------------------
if [ -f viewer/package.json ]; then
  command -v npm >/dev/null || { echo "Node.js >= 20.19 with npm is required for the web front end" >&2; exit 1; }
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)' || {
    echo "Node.js >= 20.19 is required to build the web front end (found $(node --version))" >&2; exit 1; }
  lock_stamp=viewer/node_modules/.rdc-installed
  if [ ! -f "$lock_stamp" ] || [ viewer/package-lock.json -nt "$lock_stamp" ]; then
    say "installing front-end dependencies"
    (cd viewer && npm ci --no-audit --no-fund) && touch "$lock_stamp"
  fi
  # Two builds: viewer/static is what the center serves; viewer/static-test is the same
  # front end with the browser tests' window.__rdc hook, which the browser tests serve.
  say "building the web front end (and its test build)"
  (cd viewer && npm run build --silent && npm run build:test --silent)
fi

case "$mode" in
  setup)
    say "set up; start the center with: .venv/bin/rdc up" ;;
  up)
    say "starting the center (Ctrl-C stops it)"
    exec .venv/bin/rdc up ;;
  test)
    say "front end: typecheck, lint, unit tests"
    (cd viewer && npm run check)
    say "ruff"
    .venv/bin/ruff check .
    say "mypy"
    .venv/bin/mypy
    say "import-linter (the one-way dependency rules in .importlinter)"
    .venv/bin/lint-imports --no-cache
    say "pytest"
    exec .venv/bin/pytest -q ;;
esac
