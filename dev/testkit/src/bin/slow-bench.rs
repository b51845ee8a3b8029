//! Slow-HighLevel benchmark: prints figures, asserts nothing about speed.
//!
//! Seeds N due installs. For the first `slow-secs`, HighLevel answers every
//! request `slow-ms` late, slower than the sweep's `GHL_HTTP_TIMEOUT_MS`
//! (2000 ms here): it still processes (and rotates) each refresh, the answer
//! just comes after the client gave up. Then HighLevel is normal (50 ms).
//! The real `refresh-sweep` binary (defaults otherwise: concurrency 64, a
//! 25 s re-presentation window) runs every `period` seconds, as its schedule
//! would, until every install is `active` and not due, or `lost`.
//!
//! Run against a strict HighLevel (`grace-secs` 0: a used token is dead at
//! once) and HighLevel's 30 s same-token window. Printed: installs lost (the
//! simulator confirming each rotation), extra HighLevel calls spent on
//! re-presentations and probes, and the time until every install is active.
//! Run through `dev/bench.sh slow`, which starts moto and builds in release.
//!
//!   slow-bench <installs> <grace-secs> <slow-secs> <slow-ms> <period-secs>

use ghl_sim::Faults;
use shared::model::{InstallState, now_secs};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::InvokeOptions;
use testkit::stack::{Stack, scheduled_event};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (installs, grace, slow_secs, slow_ms, period) = match args[..] {
        [a, b, c, d, e] => (a as usize, b, c, d, e),
        _ => {
            eprintln!(
                "usage: slow-bench <installs> <grace-secs> <slow-secs> <slow-ms> <period-secs>"
            );
            std::process::exit(2);
        }
    };
    let stack = Stack::new().await;
    stack.sim.set_refresh_grace_secs(grace);
    let ids = stack.seed_many("slow", installs, 60).await;
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("RUST_LOG", "warn"),
            ("GHL_HTTP_TIMEOUT_MS", "2000"),
            ("BACKOFF_BASE_SECS", "5"),
            ("BACKOFF_MAX_SECS", "30"),
        ],
    );
    stack.sim.set_faults(Faults {
        latency_ms: slow_ms,
        ..Default::default()
    });
    let started = Instant::now();
    let mut slow = true;
    let mut runs = 0u32;
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let (states, settled_after) = loop {
        if slow && started.elapsed() >= Duration::from_secs(slow_secs) {
            stack.sim.set_faults(Faults {
                latency_ms: 50,
                ..Default::default()
            });
            slow = false;
            eprintln!(
                "{:.0} s: HighLevel is normal again",
                started.elapsed().as_secs_f64()
            );
        }
        let run_started = Instant::now();
        let summary = stack
            .api
            .invoke_with(
                scheduled_event(),
                InvokeOptions::with_deadline(Duration::from_secs(300)),
            )
            .await;
        runs += 1;
        match &summary {
            Ok(s) => {
                eprintln!("{:.0} s run {runs}: {s}", started.elapsed().as_secs_f64());
                for (k, v) in s.as_object().into_iter().flatten() {
                    if let Some(n) = v.as_u64()
                        && !k.ends_with("Ms")
                        && !k.ends_with("Secs")
                    {
                        *totals.entry(k.clone()).or_default() += n;
                    }
                }
            }
            Err(e) => eprintln!("run {runs}: {e:?}"),
        }
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut waiting = 0;
        for id in &ids {
            let i = stack.install(id).await;
            *states.entry(i.state.as_str()).or_default() += 1;
            if i.state.is_refreshable()
                && (i.state != InstallState::Active || i.due_at.is_some_and(|d| d <= now_secs()))
            {
                waiting += 1;
            }
        }
        if waiting == 0 && !slow {
            break (states, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(slow_secs + 1800) {
            eprintln!("gave up after 30 minutes of normal HighLevel: {states:?}");
            break (states, started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(period).saturating_sub(run_started.elapsed())).await;
    };
    let ledger = stack.sim.ledger();
    let counters = stack.sim.counters();
    let presentations: u64 = ledger
        .tokens
        .iter()
        .map(|t| u64::from(t.presented + t.presented_while_inactive))
        .sum();
    // Each install needs one presentation; everything beyond was spent on
    // re-presentations and probes.
    let refreshed = totals.get("refreshed").copied().unwrap_or(0)
        + totals.get("recovered").copied().unwrap_or(0);
    let mut confirmed = 0;
    for id in &ids {
        let i = stack.install(id).await;
        if i.state == InstallState::Lost
            && ledger
                .tokens
                .iter()
                .find(|t| t.refresh_token == i.refresh_token.expose())
                .and_then(|t| t.successor.as_deref())
                .is_some_and(|s| {
                    ledger
                        .chain_of(s)
                        .is_some_and(|c| c.newest_refresh_token == s && c.newest_presented == 0)
                })
        {
            confirmed += 1;
        }
    }
    let (cpu, rss) = testkit::cpu_and_peak_rss(f.pid().expect("sweep pid"));
    println!(
        "installs={installs} grace_secs={grace} slow_secs={slow_secs} slow_ms={slow_ms} timeout_ms=2000 concurrency=64 \
         runs={runs} states={states:?} lost={} lost_confirmed_by_simulator={confirmed} \
         presentations={presentations} extra_presentations={} refreshed_or_recovered={refreshed} \
         grace_replays={} stale_presentations={} seconds_until_settled={:.0} sweep_cpu_seconds={cpu:.1} sweep_peak_rss_mib={rss:.1}",
        states.get("lost").copied().unwrap_or(0),
        presentations.saturating_sub(installs as u64),
        counters.grace_replays,
        counters.stale_presentations,
        settled_after.as_secs_f64(),
    );
}
