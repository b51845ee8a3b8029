#!/usr/bin/env bash
# Brings the local stack up and runs one install end to end:
#   moto (DynamoDB + Secrets Manager) -> bootstrap table and secret ->
#   HighLevel simulator -> functions under `cargo lambda watch` ->
#   consent page (agency demo-company with its sub-account demo-location-1)
#   -> oauth-callback -> the install as stored in DynamoDB ->
#   the simulator's signed INSTALL webhook -> marketplace-webhook.
# Then keeps the stack running until Ctrl-C (pass --once to stop after the
# demo), so the sample events in events/ can be sent to it (README, "Try it").
#
# The ports are fixed: moto 127.0.0.1:5055, simulator 127.0.0.1:8700,
# functions 127.0.0.1:9000. The functions' local environment in
# functions/*/Cargo.toml names them, and cargo lambda watch gives that
# environment precedence over the shell's. They are checked free first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ONCE=false
[ "${1:-}" = "--once" ] && ONCE=true
for var in MOTO_PORT SIM_PORT LAMBDA_PORT; do
  if [ -n "${!var:-}" ]; then
    echo "error: $var is no longer read: the local stack's ports are fixed (5055, 8700, 9000) because functions/*/Cargo.toml pins them for cargo lambda watch" >&2
    exit 1
  fi
done

require_free_ports "$LOCAL_MOTO_PORT" "$LOCAL_SIM_PORT" "$LOCAL_LAMBDA_PORT"
use_cargo_lambda
log "building the workspace (debug)"
cargo build --workspace --bins --locked
BIN="$(target_dir)/debug"
# The demo's install pages name the app; a name of your own in the shell wins.
export APP_NAME="${APP_NAME:-HighLevel OAuth demo}"
start_local_stack

COMPANY=demo-company
LOCATION=demo-location-1
log "0. the agency $COMPANY has one sub-account, $LOCATION, in the simulator"
curl -sf -X POST "$SIM_URL/_sim/locations" -H 'content-type: application/json' \
  -d "{\"companyId\":\"$COMPANY\",\"locations\":[{\"id\":\"$LOCATION\",\"name\":\"Demo Location\"}]}"

log "1. consent page: the simulator approves and redirects with a fresh code"
CONSENT=$(consent_url "$COMPANY")
REDIRECT=$(curl -s -o /dev/null -w '%{redirect_url}' "$CONSENT")
echo "   redirected to: ${REDIRECT%%\?*}?code=<redacted>"

log "2. oauth-callback exchanges the code and stores the install"
PAGE=$(curl -s -w '\n%{http_code}' "$REDIRECT")
STATUS=$(tail -n1 <<<"$PAGE")
echo "   HTTP $STATUS: $(sed '$d' <<<"$PAGE" | python3 -c 'import re,sys,html; b=re.sub(r"(?s)<(style|head)>.*?</\1>","",sys.stdin.read()); print(" ".join(html.unescape(re.sub(r"<[^>]+>"," ",b)).split()))')"
[ "$STATUS" = 200 ] || { echo "error: the callback answered $STATUS; see $STATE_DIR/lambda.log" >&2; exit 1; }

log "3. the simulator's signed INSTALL webhook, delivered to marketplace-webhook"
curl -s "$SIM_URL/_sim/webhooks" | python3 -c '
import json, sys, urllib.error, urllib.request
for d in json.load(sys.stdin):
    req = urllib.request.Request(sys.argv[1], data=d["body"].encode(), method="POST",
        headers={"content-type": "application/json", "x-ghl-signature": d["signature"]})
    kind, wid = d["kind"], d["webhookId"]
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            print(f"   {kind} {wid}: HTTP {r.status} {r.read().decode()}")
    except urllib.error.HTTPError as e:
        sys.exit(f"error: the webhook answered {e.code}: {e.read().decode()}")
' "$WEBHOOK"

log "4. the install in DynamoDB (tokens encrypted, metadata readable)"
"$BIN/installs-admin" list

log "5. refresh-sweep invoked once (nothing is due yet: a fresh token has ~24 h left)"
cargo lambda invoke -A 127.0.0.1 -P "$LOCAL_LAMBDA_PORT" refresh-sweep --data-file events/refresh-sweep/scheduled.json
echo

if $ONCE; then
  log "done (--once): stopping the stack"
  exit 0
fi
log "stack is up: moto $AWS_ENDPOINT_URL, simulator $SIM_URL, functions $LAMBDA_URL (Ctrl-C stops)"
echo "   sample events: cargo lambda invoke -A 127.0.0.1 -P $LOCAL_LAMBDA_PORT <function> --data-file events/<function>/<file>.json (README, \"Try it\")"
echo "   a fresh authorization code for events/oauth-callback/install-code.json (single use, 10 minutes):"
echo "     curl -s -o /dev/null -w '%{redirect_url}\\n' '$CONSENT'"
echo "   install again in a browser: open $CONSENT"
echo "   logs: $STATE_DIR/{moto,ghl-sim,lambda}.log"
wait
