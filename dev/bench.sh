#!/usr/bin/env bash
# Benchmarks: print figures, assert nothing about speed.
#
#   dev/bench.sh                 sweep at 10,000 and 100,000 installs, then slow
#   dev/bench.sh sweep|slow      one of them
#
# token-mint's cache hits and every function's cold start are measured by
# dev/perf.sh (beside HighLevel's Node SDK), not here.
#
# Sweep: refresh-sweep (release build, the binary that ships) over N due
# installs with 200 ms of injected HighLevel latency; prints refreshes/s, the
# ratio to the limit (concurrency / latency), CPU seconds and peak RSS of the
# sweep process. Knobs: BENCH_INSTALLS (default "10000 100000"),
# BENCH_CONCURRENCY (default 4: moto, one Python core, must not be the
# bottleneck; see README), BENCH_LATENCY_MS (200).
# Slow: HighLevel answers slower than the sweep's timeout for a while, then
# normally; installs lost, extra presentations and time until all are active,
# against a strict HighLevel and one with the 30 s same-token window. Knobs:
# BENCH_SLOW_INSTALLS (1000), BENCH_SLOW_SECS (180), BENCH_SLOW_MS (2500),
# BENCH_PERIOD_SECS (30: the schedule, compressed).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

what=${1:-all}
start_moto
log "building release binaries (the deploy profile)"
cargo build --release --locked -p refresh-sweep -p testkit --bin sweep-bench --bin slow-bench --bin refresh-sweep
RELEASE="$(target_dir)/release"

if [[ $what == all || $what == sweep ]]; then
  for n in ${BENCH_INSTALLS:-10000 100000}; do
    log "sweep benchmark: $n installs"
    "$RELEASE"/sweep-bench "$n" "${BENCH_CONCURRENCY:-4}" "${BENCH_LATENCY_MS:-200}"
  done
fi
if [[ $what == all || $what == slow ]]; then
  for grace in 30 0; do
    log "slow HighLevel benchmark: same-token window ${grace} s"
    "$RELEASE"/slow-bench "${BENCH_SLOW_INSTALLS:-1000}" "$grace" "${BENCH_SLOW_SECS:-180}" \
      "${BENCH_SLOW_MS:-2500}" "${BENCH_PERIOD_SECS:-30}"
  done
fi
