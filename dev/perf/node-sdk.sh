#!/usr/bin/env bash
# Node side of the side-by-side refresh benchmark: installs the pinned
# @gohighlevel/api-client (dev/perf/node/package-lock.json) with `npm ci`,
# then runs dev/perf/node/sdk-bench.mjs with the arguments given, e.g.
#
#   dev/perf/node-sdk.sh --sim http://127.0.0.1:8711 --refreshes 2000 --concurrency 8
#
# stdout is sdk-bench's two JSON lines only (ready, done); npm talks on stderr.
# The install is skipped when node_modules already matches the lockfile, so a
# second run needs no network. Uses the machine's node (v20) and npm.
# Knobs: NODE_SDK_REINSTALL=1 forces `npm ci`; NODE_SDK_INSTALL_ONLY=1 installs
# and runs nothing (dev/perf.sh, which starts sdk-bench itself).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/node" && pwd)"

command -v node >/dev/null 2>&1 || { echo "error: node not found (need v20)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "error: npm not found" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
  echo "error: node $(node --version) found, need v20" >&2; exit 1
elif (( major != 20 )); then
  echo "warning: node $(node --version); the figures were taken with v20" >&2
fi

installed() {
  # npm's own record of what it installed, newer than the manifests, and a
  # dependency tree that satisfies them (npm ls needs no network).
  [[ -f $DIR/node_modules/.package-lock.json ]] &&
    [[ $DIR/node_modules/.package-lock.json -nt $DIR/package-lock.json ]] &&
    [[ $DIR/node_modules/.package-lock.json -nt $DIR/package.json ]] &&
    (cd "$DIR" && npm ls --offline --omit=dev >/dev/null 2>&1)
}

if [[ ${NODE_SDK_REINSTALL:-0} == 1 ]] || ! installed; then
  echo "==> npm ci in $DIR" >&2
  (cd "$DIR" && npm ci --prefer-offline --no-audit --no-fund --omit=dev 1>&2)
fi

[[ ${NODE_SDK_INSTALL_ONLY:-0} == 1 ]] && exit 0
exec node "$DIR/sdk-bench.mjs" "$@"
