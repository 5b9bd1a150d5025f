#!/usr/bin/env bash
# Creates .venv and installs sluice with its extensions; installs Debian's venv/compiler
# packages first when they are missing and we may (root or passwordless sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-dev}

apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else echo "bootstrap: please install: $*" >&2; return 1; fi
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "bootstrap: sluice needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; "$PYTHON" -m venv .venv; }
fi
# The extensions need a C compiler and the Python headers; without them the pure twins serve.
if ! command -v cc >/dev/null || [ ! -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  apt_install gcc python3-dev || echo "bootstrap: no C toolchain; using the pure-Python twins" >&2
fi
# promtool and prometheus check monitoring/ in the tests (they skip without them, outside CI).
if [[ ",$extras," == *,dev,* ]] && ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus \
    || echo "bootstrap: no promtool; the monitoring tests will be skipped" >&2
fi
# The performance gate (tests/perf/) counts instructions per request under valgrind's callgrind (fails in CI without it).
if [[ ",$extras," == *,dev,* ]] && ! command -v valgrind >/dev/null; then
  apt_install --no-install-recommends valgrind \
    || echo "bootstrap: no valgrind; the performance gate will be skipped (it fails in CI)" >&2
fi
# The integration tests start throwaway PostgreSQL (initdb, postgres) and redis-server processes of their own.
if [[ ",$extras," == *,dev,* ]]; then
  servers=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null || servers+=(postgresql)
  command -v redis-server >/dev/null || servers+=(redis-server)
  if [ ${#servers[@]} -gt 0 ]; then
    apt_install --no-install-recommends "${servers[@]}" \
      || echo "bootstrap: no ${servers[*]}; the store and Redis tests will fail" >&2
  fi
fi
stamp=.venv/.installed-$extras
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find ext -newer "$stamp" -name '*.pyx' 2>/dev/null)" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
