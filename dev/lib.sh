# Shared by dev/*.sh: install what the project needs and start local stand-ins.
# Everything binds to 127.0.0.1.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$ROOT/.local"
mkdir -p "$STATE_DIR"

# moto and the SDK: fixed fake credentials, and never probe EC2 metadata.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# use_tool <name>: the virtualenv of a tool pinned in dev/tools.lock
# (.local/tools/<name>), made or remade when missing or when its line in the
# lock changed; prints its directory. The tools' own Python and entry points
# live in <dir>/bin; nothing is installed into the machine's Python.
use_tool() {
  local name=$1 spec venv stamp
  spec=$(awk -v n="$name" '$1 == n { $1 = ""; sub(/^ +/, ""); print }' "$ROOT/dev/tools.lock")
  [ -n "$spec" ] || { echo "error: no tool $name in dev/tools.lock" >&2; return 1; }
  venv="$STATE_DIR/tools/$name"
  stamp="$venv/.installed"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$spec" ]; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
      || { echo "error: python3's venv module is missing (apt-get install python3-venv)" >&2; return 1; }
    log "installing $spec into $venv (dev/tools.lock)"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    # shellcheck disable=SC2086 # one or more requirements, split on purpose
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $spec >&2
    printf '%s' "$spec" >"$stamp"
  fi
  printf '%s\n' "$venv"
}

# use_cargo_lambda: the pinned cargo-lambda first on PATH, so `cargo lambda`
# runs it (and finds the zig it installed, through that venv's python3).
use_cargo_lambda() {
  local venv
  venv=$(use_tool cargo-lambda)
  export PATH="$venv/bin:$PATH"
  hash -r
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http <url> <seconds>
wait_http() {
  local url=$1 deadline=$((SECONDS + $2))
  until curl -s -o /dev/null "$url"; do
    if (( SECONDS > deadline )); then echo "error: $url did not come up within $2 s" >&2; return 1; fi
    sleep 0.2
  done
}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# start_moto [port]: moto's server on 127.0.0.1; exports AWS_ENDPOINT_URL, which the SDK honours.
start_moto() {
  local moto port
  moto=$(use_tool moto)
  port=${1:-$(free_port)}
  # Our wrapper, not `moto_server`: see dev/moto_server.py (conditional writes
  # must be atomic). Run by the pinned moto's own Python.
  "$moto/bin/python" "$ROOT/dev/moto_server.py" "$port" >"$STATE_DIR/moto.log" 2>&1 &
  PIDS+=($!)
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  wait_http "$AWS_ENDPOINT_URL/moto-api/" 60
  log "moto server on $AWS_ENDPOINT_URL"
}

# target_dir: cargo's target directory, as cargo itself resolves it
# (CARGO_TARGET_DIR, .cargo/config.toml's build.target-dir, or ./target).
target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# require_free_ports PORT...: fails, naming each port of 127.0.0.1 that is
# already taken and the process listening on it (from /proc, so no ss or
# lsof is needed), before anything is started on them.
require_free_ports() {
  python3 - "$@" <<'PY'
import glob, os, socket, sys

def owner(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            pid = fd.split("/")[2]
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            return f"pid {pid}: {cmd[:160]}"
    return "owner not visible from here (another user's or container's process?)"

busy = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    # Like the servers that will bind it: a TIME_WAIT leftover is no conflict, a listener is.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        busy.append(port)
    finally:
        s.close()
for port in busy:
    print(f"error: 127.0.0.1:{port} is already in use ({owner(port)})", file=sys.stderr)
if busy:
    print("Stop that process (or the earlier dev/up.sh) and run this again.", file=sys.stderr)
    sys.exit(1)
PY
}

# The local stack's fixed addresses. The functions' [package.metadata.lambda.env]
# (functions/*/Cargo.toml) names the same ports, and `cargo lambda watch` gives
# that environment precedence, so these cannot be moved by the shell.
LOCAL_MOTO_PORT=5055
LOCAL_SIM_PORT=8700
LOCAL_LAMBDA_PORT=9000

# start_local_stack: moto, the table and app secret, the HighLevel simulator
# and the functions under `cargo lambda watch`, on the fixed ports above
# (checked free first). Exports what installs-admin and the callers need:
# AWS_ENDPOINT_URL, INSTALLS_TABLE, GHL_APP_SECRET_ID, GHL_CLIENT_ID,
# GHL_API_BASE_URL, SIM_URL, LAMBDA_URL, CALLBACK, WEBHOOK.
# Needs the workspace built (`cargo build --workspace --bins`).
start_local_stack() {
  require_free_ports "$LOCAL_MOTO_PORT" "$LOCAL_SIM_PORT" "$LOCAL_LAMBDA_PORT"
  local bin
  bin="$(target_dir)/debug"
  # A shell's own settings would change what the demo does (cargo lambda watch
  # passes variables it does not set itself through to the functions).
  unset SUCCESS_REDIRECT_URL GHL_USER_TYPE GHL_APP_URL
  start_moto "$LOCAL_MOTO_PORT"
  export INSTALLS_TABLE=ghl-installs-local GHL_APP_SECRET_ID=ghl-app-local
  export GHL_CLIENT_ID=sim-client-id GHL_CLIENT_SECRET=sim-client-secret GHL_APP_ID=sim-app-id
  log "bootstrap: table and app secret in moto"
  "$bin/installs-admin" bootstrap
  SIM_URL="http://127.0.0.1:$LOCAL_SIM_PORT"
  log "HighLevel simulator on $SIM_URL"
  "$bin/ghl-sim" --listen "127.0.0.1:$LOCAL_SIM_PORT" --client-id "$GHL_CLIENT_ID" \
    --client-secret "$GHL_CLIENT_SECRET" --app-id "$GHL_APP_ID" >"$STATE_DIR/ghl-sim.log" 2>&1 &
  PIDS+=($!)
  wait_http "$SIM_URL/_sim/health" 30
  LAMBDA_URL="http://127.0.0.1:$LOCAL_LAMBDA_PORT"
  CALLBACK="$LAMBDA_URL/lambda-url/oauth-callback"
  WEBHOOK="$LAMBDA_URL/lambda-url/marketplace-webhook"
  # The simulator signs its webhooks with its own key pair, new at every start.
  GHL_WEBHOOK_PUBLIC_KEY=$(curl -s "$SIM_URL/_sim/webhook-key" | python3 -c 'import json,sys;print(json.load(sys.stdin)["publicKey"])')
  export GHL_WEBHOOK_PUBLIC_KEY GHL_API_BASE_URL="$SIM_URL" SIM_URL LAMBDA_URL CALLBACK WEBHOOK
  log "functions under cargo lambda watch on $LAMBDA_URL (environment: functions/*/Cargo.toml)"
  cargo lambda watch -A 127.0.0.1 -P "$LOCAL_LAMBDA_PORT" --timeout 900 >"$STATE_DIR/lambda.log" 2>&1 &
  PIDS+=($!)
  wait_http "$LAMBDA_URL/" 300
}

# consent_url <company> [extra query]: the simulator's consent page for an
# agency install that redirects to the local oauth-callback.
consent_url() {
  local redirect
  redirect=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$CALLBACK")
  echo "$SIM_URL/v2/oauth/chooselocation?response_type=code&client_id=$GHL_CLIENT_ID&redirect_uri=$redirect&scope=oauth.readonly%20oauth.write%20contacts.readonly&sim_user_type=Company&sim_company_id=$1${2:+&$2}"
}
