# Shared by dev/*.sh: install what the project needs and start local stand-ins.
# Everything binds to 127.0.0.1.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$ROOT/.local"
mkdir -p "$STATE_DIR"

# moto and the SDK: fixed fake credentials, and never probe EC2 metadata.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# ensure_pip <command> <pip spec>: installs the PyPI package when the command is missing.
ensure_pip() {
  if ! command -v "$1" >/dev/null 2>&1; then
    log "installing $2"
    python3 -m pip install --quiet --disable-pip-version-check "$2"
    hash -r
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 still not found after pip install $2" >&2; exit 1; }
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
  ensure_pip moto_server 'moto[server]'
  local port=${1:-$(free_port)}
  # Our wrapper, not `moto_server`: see dev/moto_server.py (conditional writes must be atomic).
  python3 "$ROOT/dev/moto_server.py" "$port" >"$STATE_DIR/moto.log" 2>&1 &
  PIDS+=($!)
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  wait_http "$AWS_ENDPOINT_URL/moto-api/" 60
  log "moto server on $AWS_ENDPOINT_URL"
}
