#!/usr/bin/env bash
# A real headless Chromium walks the install flow against the local stack
# (moto, the HighLevel simulator, the functions under `cargo lambda watch`,
# the same stack as dev/up.sh and on the same fixed ports):
#
#   1. the simulator's consent page for an agency with two sub-accounts,
#      its 302 to oauth-callback, the code exchange: the final page must say
#      "App installed", name the app (APP_NAME), say how many sub-accounts
#      the install covers, link back to HighLevel, and show no internal
#      error name;
#   2. a denied consent: the failure page, with no internal error name.
#
# Chromium comes from the distribution's packages (installed when missing
# and apt is usable). When it cannot be installed this says so and exits 0:
# a skip that is reported as one, never a pass.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

skip() {
  echo "browser test skipped: Chromium cannot be installed here ($1)"
  exit 0
}

if [ ! -x "$CHROMIUM" ]; then
  command -v apt-get >/dev/null 2>&1 || skip "$CHROMIUM is missing and there is no apt-get"
  [ "$(id -u)" = 0 ] || skip "$CHROMIUM is missing and installing it needs root"
  log "installing Chromium from the distribution's packages (apt-get install chromium)"
  apt_log="$STATE_DIR/apt-chromium.log"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >"$apt_log" 2>&1; then
    # An empty or stale package list is the usual cause: refresh it once.
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$apt_log" 2>&1 \
      || skip "apt-get install chromium failed: $(grep -E '^(E|W):' "$apt_log" | tail -n1 || tail -n1 "$apt_log")"
  fi
  [ -x "$CHROMIUM" ] || skip "apt-get installed chromium but $CHROMIUM is not there"
fi
log "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

use_cargo_lambda
log "building the workspace (debug)"
cargo build --workspace --bins --locked
BIN="$(target_dir)/debug"

APP_NAME="Acme Sync (browser test)"
export APP_NAME
start_local_stack

COMPANY=browser-company
curl -sf -X POST "$SIM_URL/_sim/locations" -H 'content-type: application/json' \
  -d "{\"companyId\":\"$COMPANY\",\"locations\":[{\"id\":\"browser-loc-1\",\"name\":\"One\"},{\"id\":\"browser-loc-2\",\"name\":\"Two\"}]}"

# The first request to a function under cargo lambda watch starts it; a HEAD
# is the callback's side-effect-free probe, so the browser's request finds
# it warm.
log "starting oauth-callback (HEAD probe)"
deadline=$((SECONDS + 300))
until [ "$(curl -s -o /dev/null -w '%{http_code}' -I --max-time 60 "$CALLBACK/")" = 200 ]; do
  (( SECONDS < deadline )) || { echo "error: oauth-callback did not answer its probe; see $STATE_DIR/lambda.log" >&2; exit 1; }
  sleep 1
done

# walk <name> <url>: headless Chromium opens url, follows the redirects and
# writes the final page's DOM to $STATE_DIR/browser-<name>.html.
walk() {
  local profile out="$STATE_DIR/browser-$1.html"
  profile=$(mktemp -d "$STATE_DIR/chromium-profile.XXXXXX")
  log "Chromium: $1"
  if ! timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
      --disable-background-networking --disable-component-update --disable-sync \
      --user-data-dir="$profile" --dump-dom "$2" >"$out" 2>"$STATE_DIR/browser-$1.log"; then
    echo "error: Chromium failed on $1; see $STATE_DIR/browser-$1.log" >&2
    rm -rf "$profile"
    exit 1
  fi
  rm -rf "$profile"
}

# check <name> <text>...: the page's visible text contains every text given,
# and no internal error name appears anywhere in the page.
check() {
  python3 - "$STATE_DIR/browser-$1.html" "${@:2}" <<'PY'
import html, re, sys
path, wanted = sys.argv[1], sys.argv[2:]
dom = open(path, encoding="utf-8").read()
title = re.search(r"(?s)<title>(.*?)</title>", dom)
body = re.sub(r"(?s)<(head|style|script)\b.*?</\1>", " ", dom)
text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
title = html.unescape(title.group(1)) if title else ""
print(f"   title: {title}")
print(f"   text:  {text}")
internal = ["unavailable", "unreachable", "response_lost", "rate_limited", "timeout",
            "invalid_grant", "invalid_client", "location_not_active", "endpoint_removed",
            "HighLevelUnavailable", "HighLevelTimeout", "BadGrant", "ConsentDenied",
            "CodeRejected", "StoreError", "Storage("]
problems = [f"missing {w!r}" for w in wanted if w not in text and w not in title]
problems += [f"shows the internal name {n!r}" for n in internal if n.lower() in dom.lower()]
if problems:
    sys.exit(f"error: {path}: " + "; ".join(problems))
PY
}

walk install "$(consent_url "$COMPANY")"
check install "App installed" "$APP_NAME is now installed for the agency with company id $COMPANY." \
  "It covers 2 sub-accounts." "Back to HighLevel"
grep -q 'href="https://app.gohighlevel.com/"' "$STATE_DIR/browser-install.html" \
  || { echo "error: the success page does not link back to https://app.gohighlevel.com/" >&2; exit 1; }
"$BIN/installs-admin" list | grep -q "$COMPANY" \
  || { echo "error: installs-admin list does not show $COMPANY after the browser's install" >&2; exit 1; }

walk denied "$(consent_url "$COMPANY-denied" "sim_deny=1")"
check denied "Installation failed · $APP_NAME" "The installation was not approved in HighLevel." "Back to HighLevel"
if "$BIN/installs-admin" list | grep -q "$COMPANY-denied"; then
  echo "error: a denied consent stored an install" >&2
  exit 1
fi

log "browser test passed: the install page and the denied-consent page, as Chromium rendered them"
