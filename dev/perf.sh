#!/usr/bin/env bash
# Side by side: our release binaries and HighLevel's Node SDK
# (@gohighlevel/api-client, installed from the npm registry by
# dev/perf/node-sdk.sh) against the same HighLevel simulator, and the
# README's performance table regenerated from the run. Prints figures,
# asserts nothing about speed (see dev/testkit/src/bin/perf-bench.rs).
#
#   dev/perf.sh            run and rewrite the README table
#   dev/perf.sh --no-readme
#
# DynamoDB is dev/dynalite.sh (dynalite, in memory, kept alive, atomic
# conditional writes), so the store is not the bottleneck the benchmark
# measures; Secrets Manager and EventBridge stay on moto. Knobs: see
# perf-bench (PERF_REFRESHES, PERF_LATENCY_MS, PERF_JITTER_MS,
# PERF_CONCURRENCY, PERF_COLD, PERF_MINTS).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

write_readme=1
[[ ${1:-} == --no-readme ]] && write_readme=0

command -v node >/dev/null 2>&1 || { echo "error: node (v20) is needed for the Node SDK side" >&2; exit 1; }
log "installing the pinned Node SDK (npm ci, once)"
NODE_SDK_INSTALL_ONLY=1 dev/perf/node-sdk.sh
start_moto
port=$(free_port)
dev/dynalite.sh "$port" >"$STATE_DIR/dynalite.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$port"
wait_http "$AWS_ENDPOINT_URL_DYNAMODB/__stats" 120
log "dynalite (DynamoDB) on $AWS_ENDPOINT_URL_DYNAMODB"

log "building release binaries (the deploy profile)"
cargo build --release --locked -p oauth-callback -p refresh-sweep -p token-mint \
  -p marketplace-webhook -p testkit --bins
table="$STATE_DIR/perf-table.md"
PERF_TABLE="$table" PERF_NODE_DIR="$ROOT/dev/perf/node" "$(target_dir)/release/perf-bench"

if (( write_readme )); then
  python3 - "$ROOT/README.md" "$table" "$(git rev-parse --short HEAD)" <<'PY'
import re, sys, datetime
readme, table, commit = sys.argv[1:]
text = open(readme).read()
start, end = "<!-- perf:start (dev/perf.sh writes this table) -->", "<!-- perf:end -->"
if start not in text or end not in text:
    sys.exit(f"error: {readme} has no {start} ... {end} markers for the performance table")
body = open(table).read().rstrip() + f" Run of {datetime.date.today()} at commit {commit}.\n"
new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: start + "\n" + body + end, text, flags=re.S)
open(readme, "w").write(new)
print("README.md: performance table updated from this run")
PY
fi
