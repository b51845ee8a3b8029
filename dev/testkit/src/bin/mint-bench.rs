//! Token-mint benchmark: prints figures, asserts nothing about speed.
//!
//! 1. Cache-hit mints: `<mints>` sequential invocations of the real
//!    `token-mint` binary for a location whose minted token is stored, under
//!    the Runtime API emulator, against moto. Prints the latency
//!    distribution and the function's CPU per mint, next to the same number
//!    of plain DynamoDB reads of that item from this process (one consistent
//!    GetItem and a decrypt): the difference is the mint's own overhead plus
//!    the Runtime API round trip.
//! 2. Cold start: `<cold>` times, a fresh `token-mint` process is started and
//!    sent one cache-hit mint; prints process start → answer.
//!
//! Run through `dev/bench.sh`, which starts moto and builds in release.
//!
//!   mint-bench <mints> <cold>

use serde_json::json;
use shared::model::InstallId;
use std::time::{Duration, Instant};
use testkit::stack::Stack;
use testkit::{InvokeOptions, RuntimeApi, cpu_and_peak_rss, percentile_ms};

fn dist(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>().as_secs_f64() * 1000.0 / v.len().max(1) as f64;
    println!(
        "{name}: n={} mean_ms={mean:.2} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        v.len(),
        percentile_ms(&v, 50.0),
        percentile_ms(&v, 90.0),
        percentile_ms(&v, 99.0),
        percentile_ms(&v, 100.0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (mints, cold) = match args[..] {
        [a, b] => (a, b),
        _ => {
            eprintln!("usage: mint-bench <mints> <cold-starts>");
            std::process::exit(2);
        }
    };
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-bench".into()), "co-bench", 86_399)
        .await;
    stack
        .sim
        .add_locations("co-bench", &[("loc-bench", "Bench")]);
    let event = json!({"locationId": "loc-bench", "companyId": "co-bench"});
    let opts = || InvokeOptions::with_deadline(Duration::from_secs(30));

    let f = stack.spawn("token-mint", &[("RUST_LOG", "warn")]);
    let first = stack
        .api
        .invoke_with(event.clone(), opts())
        .await
        .expect("first mint");
    assert_eq!(first["source"], "minted", "{first}");
    for _ in 0..20 {
        stack
            .api
            .invoke_with(event.clone(), opts())
            .await
            .expect("warm-up mint");
    }
    let pid = f.pid().expect("token-mint pid");
    let (cpu_before, _) = cpu_and_peak_rss(pid);
    let mut lat = Vec::with_capacity(mints);
    for _ in 0..mints {
        let t = Instant::now();
        let r = stack
            .api
            .invoke_with(event.clone(), opts())
            .await
            .expect("mint");
        lat.push(t.elapsed());
        assert_eq!(r["source"], "cache", "{r}");
    }
    let (cpu_after, rss) = cpu_and_peak_rss(pid);
    dist("cache-hit mint (invoke round trip)", lat);
    println!(
        "token-mint cpu_ms_per_mint={:.3} peak_rss_mib={rss:.1}",
        (cpu_after - cpu_before) * 1000.0 / mints as f64
    );
    let id = InstallId::Minted("loc-bench".into());
    let mut reads = Vec::with_capacity(mints);
    for _ in 0..mints {
        let t = Instant::now();
        stack.store().get(&id).await.expect("read").expect("stored");
        reads.push(t.elapsed());
    }
    dist("one DynamoDB GetItem + decrypt (baseline)", reads);

    let mut starts = Vec::with_capacity(cold);
    for _ in 0..cold {
        let api = RuntimeApi::start().await.expect("runtime API");
        let t = Instant::now();
        let mut p = stack.spawn_on(&api, "token-mint", &[("RUST_LOG", "warn")]);
        let r = api
            .invoke_with(event.clone(), opts())
            .await
            .expect("cold mint");
        starts.push(t.elapsed());
        assert_eq!(r["source"], "cache", "{r}");
        p.kill().await;
    }
    dist(
        "cold start (process start to first answer, incl. secret fetch)",
        starts,
    );
}
