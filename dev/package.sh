#!/usr/bin/env bash
# Builds the four functions as they deploy (release profile, arm64, for
# provided.al2023) with cargo-lambda, checks each bootstrap is an aarch64
# Linux executable, and prints its size. `sam build` runs the same build.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

FUNCTIONS=(oauth-callback marketplace-webhook refresh-sweep token-mint)
use_cargo_lambda
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  log "adding the aarch64-unknown-linux-gnu target"
  rustup target add aarch64-unknown-linux-gnu
fi
log "cargo lambda build --release --arm64"
args=()
for f in "${FUNCTIONS[@]}"; do args+=(--bin "$f"); done
cargo lambda build --release --arm64 --locked "${args[@]}"

# cargo-lambda writes under cargo's target directory, which CARGO_TARGET_DIR
# (or .cargo/config.toml) may move out of ./target.
LAMBDA_DIR="$(target_dir)/lambda"
for f in "${FUNCTIONS[@]}"; do
  bin="$LAMBDA_DIR/$f/bootstrap"
  [ -f "$bin" ] || { echo "error: $bin was not built" >&2; exit 1; }
  # ELF magic, 64-bit, and e_machine 183 (EM_AARCH64).
  python3 - "$bin" <<'PY'
import struct, sys
path = sys.argv[1]
with open(path, "rb") as f:
    head = f.read(20)
if head[:4] != b"\x7fELF" or head[4] != 2 or struct.unpack_from("<H", head, 18)[0] != 183:
    sys.exit(f"error: {path} is not a 64-bit aarch64 ELF executable")
PY
  printf '%-20s %s bytes (%s MiB)\n' "$f" "$(stat -c %s "$bin")" "$(python3 -c "import os,sys;print(round(os.path.getsize(sys.argv[1])/1048576,1))" "$bin")"
done

# The README's size table is regenerated from this build, never typed.
python3 - "$ROOT/README.md" "$LAMBDA_DIR" "${FUNCTIONS[@]}" <<'PY'
import os, re, sys
readme, lambda_dir, functions = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = ["| function | arm64 `bootstrap` |", "|---|---|"]
for f in functions:
    n = os.path.getsize(os.path.join(lambda_dir, f, "bootstrap"))
    rows.append(f"| {f} | {n / 1048576:.1f} MiB ({n:,} bytes) |")
text = open(readme).read()
start, end = "<!-- sizes:start (dev/package.sh writes this table) -->", "<!-- sizes:end -->"
if start not in text or end not in text:
    sys.exit(f"error: {readme} has no {start} ... {end} markers for the size table")
new = re.sub(re.escape(start) + r".*?" + re.escape(end), start + "\n" + "\n".join(rows) + "\n" + end, text, flags=re.S)
if new != text:
    open(readme, "w").write(new)
    print("README.md: size table updated from this build")
PY
