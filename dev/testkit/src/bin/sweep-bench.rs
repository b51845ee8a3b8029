//! Sweep benchmark: prints figures, asserts nothing about speed.
//!
//! Seeds N due installs, injects HighLevel latency, runs the real
//! `refresh-sweep` binary once under the Runtime API emulator, and prints
//! refreshes per second, the ratio to the concurrency limit
//! (concurrency ÷ latency), and the sweep process's CPU seconds and peak RSS.
//! Run through `dev/bench.sh`, which starts moto and builds in release.
//!
//!   sweep-bench <installs> <concurrency> <latency-ms>

use ghl_sim::Faults;
use std::time::{Duration, Instant};
use testkit::InvokeOptions;
use testkit::stack::{Stack, scheduled_event};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (installs, concurrency, latency_ms) = match args[..] {
        [a, b, c] => (a as usize, b, c),
        _ => {
            eprintln!("usage: sweep-bench <installs> <concurrency> <latency-ms>");
            std::process::exit(2);
        }
    };
    let stack = Stack::new().await;
    let t = Instant::now();
    stack.seed_many("bench", installs, 60).await;
    eprintln!(
        "seeded {installs} due installs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    stack.sim.set_faults(Faults {
        latency_ms,
        ..Default::default()
    });
    let c = concurrency.to_string();
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("SWEEP_CONCURRENCY", c.as_str()),
            ("RUST_LOG", "warn"),
            ("LEASE_SECS", "60"),
        ],
    );
    // Lambda caps an invocation at 15 minutes; a batch bigger than one run
    // can refresh is finished by the next scheduled runs, as in production.
    let started = Instant::now();
    let (mut refreshed, mut runs) = (0u64, 0u32);
    while refreshed < installs as u64 {
        let summary = stack
            .api
            .invoke_with(
                scheduled_event(),
                InvokeOptions::with_deadline(Duration::from_secs(900)),
            )
            .await
            .expect("sweep answered");
        runs += 1;
        let n = summary["refreshed"].as_u64().unwrap_or(0);
        eprintln!("run {runs}: {summary}");
        refreshed += n;
        if n == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, rss) = testkit::cpu_and_peak_rss(f.pid().expect("sweep pid"));
    let rate = refreshed as f64 / secs;
    let limit = concurrency as f64 / (latency_ms as f64 / 1000.0);
    println!(
        "installs={installs} concurrency={concurrency} latency_ms={latency_ms} refreshed={refreshed} runs={runs} \
         seconds={secs:.1} refreshes_per_sec={rate:.1} limit_per_sec={limit:.1} ratio={:.2} \
         sweep_cpu_seconds={cpu:.2} sweep_peak_rss_mib={rss:.1} presented_twice={}",
        rate / limit,
        stack.sim.ledger().presented_twice()
    );
}
