#!/usr/bin/env bash
# The Node and Python token clients (clients/node, clients/python): installs
# their pinned packages and runs their unit tests. The proof through the real
# SDKs against token-mint is a Rust test (dev/testkit/tests/clients.rs),
# which needs `setup` first and fails, saying so, without it.
#
#   dev/clients.sh setup   npm ci in clients/node; a virtualenv in
#                          .local/venv-clients with clients/python/requirements.txt
#   dev/clients.sh test    setup, then node:test and unittest
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

VENV="$STATE_DIR/venv-clients"

# Node and npm, and Python's venv module, from the distribution when missing.
ensure_runtimes() {
  local missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v node >/dev/null 2>&1 || { echo "error: node is still missing" >&2; exit 1; }
}

setup() {
  ensure_runtimes
  # Again whenever the lockfile is newer than the last install.
  if [ ! -d clients/node/node_modules/@aws-sdk/client-lambda ] ||
     [ clients/node/package-lock.json -nt clients/node/node_modules/.package-lock.json ]; then
    log "npm ci (clients/node)"
    (cd clients/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  if ! cmp -s clients/python/requirements.txt <("$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null); then
    log "pip install -r clients/python/requirements.txt (into $VENV)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r clients/python/requirements.txt
  fi
}

case "${1:-}" in
  setup) setup ;;
  test)
    setup
    log "node:test (clients/node)"
    (cd clients/node && node --test test/)
    log "unittest (clients/python)"
    (cd clients/python && "$VENV/bin/python" -m unittest discover -s tests -t . -v)
    ;;
  *) echo "usage: dev/clients.sh setup|test" >&2; exit 2 ;;
esac
