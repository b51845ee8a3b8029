#!/usr/bin/env bash
# A DynamoDB stand-in: dynalite (Node, in memory; see dev/dynalite/serve.js)
# on 127.0.0.1:PORT. Installs its pinned packages on first use (npm ci).
# About 0.6-0.9 ms of CPU per conditional UpdateItem, on one thread:
# concurrent requests that arrive together queue behind each other.
# Point only DynamoDB at it, leaving moto for the rest:
#   export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:PORT
#
#   dev/dynalite.sh PORT
set -euo pipefail
port=${1:?usage: dev/dynalite.sh PORT}
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/dynalite" && pwd)"
if [ ! -d "$dir/node_modules/dynalite" ]; then
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi
exec node "$dir/serve.js" "$port"
