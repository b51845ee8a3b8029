#!/usr/bin/env bash
# Brings the local stack up and runs one install end to end:
#   moto (DynamoDB + Secrets Manager) -> bootstrap table and secret ->
#   HighLevel simulator -> functions under `cargo lambda watch` ->
#   consent page -> oauth-callback -> the install as stored in DynamoDB ->
#   the simulator's signed INSTALL webhook -> marketplace-webhook.
# Then keeps the stack running until Ctrl-C (pass --once to stop after the demo).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ONCE=false
[ "${1:-}" = "--once" ] && ONCE=true
MOTO_PORT=${MOTO_PORT:-5055}
SIM_PORT=${SIM_PORT:-8700}
LAMBDA_PORT=${LAMBDA_PORT:-9000}

ensure_pip cargo-lambda cargo-lambda
log "building the workspace (debug)"
cargo build --workspace --bins --locked

start_moto "$MOTO_PORT"

export INSTALLS_TABLE=ghl-installs-local
export GHL_APP_SECRET_ID=ghl-app-local
export GHL_CLIENT_ID=sim-client-id GHL_CLIENT_SECRET=sim-client-secret GHL_APP_ID=sim-app-id
log "bootstrap: table and app secret in moto"
target/debug/installs-admin bootstrap

log "HighLevel simulator on 127.0.0.1:$SIM_PORT"
target/debug/ghl-sim --listen "127.0.0.1:$SIM_PORT" --client-id "$GHL_CLIENT_ID" --client-secret "$GHL_CLIENT_SECRET" --app-id "$GHL_APP_ID" \
  >"$STATE_DIR/ghl-sim.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SIM_PORT/_sim/health" 30

CALLBACK="http://127.0.0.1:$LAMBDA_PORT/lambda-url/oauth-callback"
WEBHOOK="http://127.0.0.1:$LAMBDA_PORT/lambda-url/marketplace-webhook"
# The simulator signs its webhooks with its own key pair: the webhook function checks against it.
GHL_WEBHOOK_PUBLIC_KEY=$(curl -s "http://127.0.0.1:$SIM_PORT/_sim/webhook-key" | python3 -c 'import json,sys;print(json.load(sys.stdin)["publicKey"])')
export GHL_WEBHOOK_PUBLIC_KEY
export GHL_API_BASE_URL="http://127.0.0.1:$SIM_PORT"
export GHL_REDIRECT_URI="$CALLBACK"
export RUST_LOG=info
log "functions under cargo lambda watch on 127.0.0.1:$LAMBDA_PORT"
cargo lambda watch -A 127.0.0.1 -P "$LAMBDA_PORT" --timeout 900 >"$STATE_DIR/lambda.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$LAMBDA_PORT/" 300

COMPANY=demo-company
log "1. consent page: the simulator approves and redirects with a fresh code"
CONSENT="http://127.0.0.1:$SIM_PORT/v2/oauth/chooselocation?response_type=code&client_id=$GHL_CLIENT_ID&redirect_uri=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$CALLBACK")&scope=oauth.readonly%20oauth.write%20contacts.readonly&sim_user_type=Company&sim_company_id=$COMPANY"
REDIRECT=$(curl -s -o /dev/null -w '%{redirect_url}' "$CONSENT")
echo "   redirected to: ${REDIRECT%%\?*}?code=<redacted>"

log "2. oauth-callback exchanges the code and stores the install"
PAGE=$(curl -s -w '\n%{http_code}' "$REDIRECT")
STATUS=$(tail -n1 <<<"$PAGE")
echo "   HTTP $STATUS: $(sed '$d' <<<"$PAGE" | python3 -c 'import re,sys,html; b=re.sub(r"(?s)<(style|head)>.*?</\1>","",sys.stdin.read()); print(" ".join(html.unescape(re.sub(r"<[^>]+>"," ",b)).split()))')"
[ "$STATUS" = 200 ] || { echo "error: the callback answered $STATUS; see $STATE_DIR/lambda.log" >&2; exit 1; }

log "3. the simulator's signed INSTALL webhook, delivered to marketplace-webhook"
curl -s "http://127.0.0.1:$SIM_PORT/_sim/webhooks" | python3 -c '
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
target/debug/installs-admin list

log "5. refresh-sweep invoked once (nothing is due yet: a fresh token has ~24 h left)"
cargo lambda invoke -A 127.0.0.1 -P "$LAMBDA_PORT" refresh-sweep --data-file events/refresh-sweep/scheduled.json
echo

if $ONCE; then
  log "done (--once): stopping the stack"
  exit 0
fi
log "stack is up: moto $AWS_ENDPOINT_URL, simulator http://127.0.0.1:$SIM_PORT, functions http://127.0.0.1:$LAMBDA_PORT (Ctrl-C stops)"
echo "   install again: open $CONSENT"
echo "   logs: $STATE_DIR/{moto,ghl-sim,lambda}.log"
wait
