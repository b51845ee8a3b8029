//! Side by side: our functions and HighLevel's Node SDK against the same
//! HighLevel simulator. Prints figures, asserts nothing about speed (it exits
//! non-zero only when something went wrong: a failed refresh, a token
//! presented twice, a function that never became ready).
//!
//! 1. Cold start: each function binary, spawned under a fresh Runtime API
//!    emulator, until it first asks for work (`/next`): configuration read,
//!    app secret fetched, clients built. The Node SDK: spawned until it has
//!    required `@gohighlevel/api-client` and built its client.
//! 2. Refreshes: the Node SDK refreshes `refreshes` grants (concurrency 8,
//!    HighLevel latency as set); refresh-sweep refreshes the same number of
//!    due installs at concurrency 8, then more at 32 and 64. For each: the
//!    rate, the ratio to concurrency ÷ latency, CPU per refresh and peak RSS
//!    of the process, and the store stand-in's service time: a GetItem timed
//!    from here every 20 ms beside the run, and, when DynamoDB is
//!    dev/dynalite.sh (`AWS_ENDPOINT_URL_DYNAMODB`), the stand-in's own
//!    UpdateItem service time and CPU share from its `/__stats`.
//! 3. token-mint cache hits against one GetItem of the same item.
//!
//! Writes a Markdown table to the path in `PERF_TABLE` (dev/perf.sh puts it
//! in the README). Knobs (environment): PERF_REFRESHES (2000),
//! PERF_LATENCY_MS (200), PERF_JITTER_MS (40: each HighLevel answer takes
//! latency ± this, uniformly), PERF_CONCURRENCY ("8 32 64"), PERF_COLD (10),
//! PERF_MINTS (1000), PERF_NODE_DIR (dev/perf/node), PERF_ONLY=cold (the
//! cold starts alone, no table).
//!
//!   perf-bench

use ghl_sim::Faults;
use serde_json::{Value, json};
use shared::model::InstallId;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::stack::{Stack, scheduled_event};
use testkit::{InvokeOptions, RuntimeApi, cpu_and_peak_rss, percentile_ms};
use tokio::io::{AsyncBufReadExt, BufReader};

const FUNCTIONS: [&str; 4] = [
    "oauth-callback",
    "refresh-sweep",
    "token-mint",
    "marketplace-webhook",
];

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: u64) -> u64 {
    let v = knob(name, &default.to_string());
    v.parse().unwrap_or_else(|_| {
        eprintln!("{name} must be a whole number, got {v:?}");
        std::process::exit(2)
    })
}

fn fail(what: String) -> ! {
    eprintln!("perf-bench: {what}");
    std::process::exit(1)
}

#[derive(Clone, Copy)]
struct Dist {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn dist(mut v: Vec<Duration>) -> Dist {
    v.sort();
    Dist {
        p50: percentile_ms(&v, 50.0),
        p90: percentile_ms(&v, 90.0),
        p99: percentile_ms(&v, 99.0),
        max: percentile_ms(&v, 100.0),
    }
}

/// Spawn → first `/next`, `n` times.
async fn cold_start(stack: &Stack, bin: &str, n: u64) -> Dist {
    let mut starts = Vec::new();
    for _ in 0..n {
        let api = RuntimeApi::start().await.expect("runtime API");
        let t = Instant::now();
        let mut p = stack.spawn_on(&api, bin, &[("RUST_LOG", "warn")]);
        if tokio::time::timeout(Duration::from_secs(10), api.polled())
            .await
            .is_err()
        {
            fail(format!("{bin} was not ready within 10 s: {:?}", p.logs()));
        }
        starts.push(t.elapsed());
        p.kill().await;
    }
    dist(starts)
}

fn node_command(dir: &Path, sim: &str, refreshes: u64) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("node");
    c.arg(dir.join("sdk-bench.mjs"))
        .args(["--sim", sim, "--concurrency", "8"])
        .args(["--refreshes", &refreshes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}

/// Reads JSON lines from the Node bench until one has `event` = `want`.
async fn node_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    want: &str,
) -> Value {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["event"] == want
        {
            return v;
        }
    }
    fail(format!("the Node SDK bench ended before its {want:?} line"))
}

struct NodeFigures {
    ready: Dist,
    cpu_ms_per_refresh: f64,
    peak_rss_mib: f64,
    rate: f64,
    version: String,
}

async fn node_sdk(dir: &Path, sim: &str, refreshes: u64, cold: u64) -> NodeFigures {
    let mut readies = Vec::new();
    for _ in 0..cold.min(5) {
        let t = Instant::now();
        let mut child = node_command(dir, sim, 1)
            .spawn()
            .unwrap_or_else(|e| fail(format!("node could not start: {e}")));
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        node_line(&mut lines, "ready").await;
        readies.push(t.elapsed());
        let _ = child.kill().await;
    }
    let mut child = node_command(dir, sim, refreshes)
        .spawn()
        .unwrap_or_else(|e| fail(format!("node could not start: {e}")));
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    node_line(&mut lines, "ready").await;
    let done = node_line(&mut lines, "done").await;
    let status = child.wait().await.expect("node exits");
    if !status.success() || done["failures"].as_u64() != Some(0) {
        fail(format!("the Node SDK's refreshes failed: {done}"));
    }
    println!("node sdk: {done}");
    NodeFigures {
        ready: dist(readies),
        cpu_ms_per_refresh: done["cpu_ms_per_refresh"].as_f64().unwrap_or(f64::NAN),
        peak_rss_mib: done["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        rate: refreshes as f64 / done["wall_s"].as_f64().unwrap_or(f64::NAN),
        version: done["sdk_version"].as_str().unwrap_or("?").to_owned(),
    }
}

struct SweepRun {
    concurrency: u64,
    refreshed: u64,
    rate: f64,
    ratio: f64,
    cpu_ms_per_refresh: f64,
    peak_rss_mib: f64,
    store: Dist,
    /// The stand-in's own figures for the run, when it reports them.
    stand_in: Option<StandIn>,
}

struct StandIn {
    update_p50: f64,
    update_p99: f64,
    cpu_share: f64,
}

/// dev/dynalite.sh's `/__stats` (the service time of each operation, from
/// the request's body arrival to the end of its answer); `reset` starts a
/// new period. None for a stand-in without it (moto).
async fn stand_in_stats(reset: bool) -> Option<StandIn> {
    let url = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok()?;
    let q = if reset { "?reset=1" } else { "" };
    let v: Value = reqwest::get(format!("{}/__stats{q}", url.trim_end_matches('/')))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let update = &v["ops"]["UpdateItem"];
    Some(StandIn {
        update_p50: update["p50_ms"].as_f64()?,
        update_p99: update["p99_ms"].as_f64()?,
        cpu_share: v["cpu_share"].as_f64()?,
    })
}

/// Times one consistent GetItem of `probe` every 20 ms until `stop`.
async fn probe_store(stack: Arc<Stack>, probe: InstallId, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut times = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if stack.store().get(&probe).await.is_ok() {
            times.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times
}

async fn sweep(
    stack: &Arc<Stack>,
    probe: &InstallId,
    concurrency: u64,
    installs: u64,
    latency_ms: u64,
) -> SweepRun {
    stack
        .seed_many(&format!("c{concurrency}"), installs as usize, 60)
        .await;
    let c = concurrency.to_string();
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("SWEEP_CONCURRENCY", c.as_str()),
            ("RUST_LOG", "warn"),
            // DynamoDB-like timeouts: the stand-in answers in milliseconds.
            ("AWS_ATTEMPT_TIMEOUT_MS", "2000"),
            ("AWS_OPERATION_TIMEOUT_MS", "5000"),
        ],
    );
    let pid = f.pid().expect("sweep pid");
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe_store(stack.clone(), probe.clone(), stop.clone()));
    stand_in_stats(true).await;
    let started = Instant::now();
    let summary = stack
        .api
        .invoke_with(
            scheduled_event(),
            InvokeOptions::with_deadline(Duration::from_secs(900)),
        )
        .await
        .unwrap_or_else(|e| fail(format!("the sweep failed: {e:?}")));
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let store = dist(prober.await.expect("prober"));
    let stand_in = stand_in_stats(false).await;
    let (cpu, rss) = cpu_and_peak_rss(pid);
    let refreshed = summary["refreshed"].as_u64().unwrap_or(0);
    if refreshed != installs {
        fail(format!(
            "the sweep at concurrency {concurrency} refreshed {refreshed} of {installs}: {summary}"
        ));
    }
    let rate = refreshed as f64 / secs;
    let limit = concurrency as f64 * 1000.0 / latency_ms as f64;
    println!(
        "sweep: concurrency={concurrency} refreshed={refreshed} seconds={secs:.1} rate={rate:.1} \
         ratio={:.2} cpu_ms_per_refresh={:.3} peak_rss_mib={rss:.1} store_p50_ms={:.2} store_p99_ms={:.2}",
        rate / limit,
        cpu * 1000.0 / refreshed as f64,
        store.p50,
        store.p99
    );
    SweepRun {
        concurrency,
        refreshed,
        rate,
        ratio: rate / limit,
        cpu_ms_per_refresh: cpu * 1000.0 / refreshed as f64,
        peak_rss_mib: rss,
        store,
        stand_in,
    }
}

struct MintFigures {
    hit: Dist,
    read: Dist,
    cpu_ms: f64,
}

async fn mints(stack: &Stack, n: u64) -> MintFigures {
    stack
        .seed_install(&InstallId::Company("co-perf".into()), "co-perf", 86_399)
        .await;
    stack.sim.add_locations("co-perf", &[("loc-perf", "Perf")]);
    let event = json!({"locationId": "loc-perf", "companyId": "co-perf"});
    let opts = || InvokeOptions::with_deadline(Duration::from_secs(30));
    let api = RuntimeApi::start().await.expect("runtime API");
    let f = stack.spawn_on(&api, "token-mint", &[("RUST_LOG", "warn")]);
    for i in 0..21 {
        let r = api
            .invoke_with(event.clone(), opts())
            .await
            .unwrap_or_else(|e| fail(format!("mint failed: {e:?}")));
        let want = if i == 0 { "minted" } else { "cache" };
        if r["source"] != want {
            fail(format!("mint {i}: expected source {want}: {r}"));
        }
    }
    let pid = f.pid().expect("token-mint pid");
    let (cpu_before, _) = cpu_and_peak_rss(pid);
    let mut hits = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = api
            .invoke_with(event.clone(), opts())
            .await
            .unwrap_or_else(|e| fail(format!("mint failed: {e:?}")));
        hits.push(t.elapsed());
        if r["source"] != "cache" {
            fail(format!("expected a cache hit: {r}"));
        }
    }
    let (cpu_after, _) = cpu_and_peak_rss(pid);
    let id = InstallId::Minted("loc-perf".into());
    let mut reads = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        stack.store().get(&id).await.expect("read").expect("stored");
        reads.push(t.elapsed());
    }
    MintFigures {
        hit: dist(hits),
        read: dist(reads),
        cpu_ms: (cpu_after - cpu_before) * 1000.0 / n as f64,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} × {model}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let refreshes = number("PERF_REFRESHES", 2000);
    let latency_ms = number("PERF_LATENCY_MS", 200);
    let jitter_ms = number("PERF_JITTER_MS", 40);
    let cold = number("PERF_COLD", 10);
    let mint_n = number("PERF_MINTS", 1000);
    let concurrencies: Vec<u64> = knob("PERF_CONCURRENCY", "8 32 64")
        .split_whitespace()
        .map(|c| {
            c.parse().unwrap_or_else(|_| {
                eprintln!("PERF_CONCURRENCY must list whole numbers, got {c:?}");
                std::process::exit(2)
            })
        })
        .collect();
    let node_dir = PathBuf::from(knob("PERF_NODE_DIR", "dev/perf/node"));
    let load_before = loadavg();

    let stack = Arc::new(Stack::new().await);
    let probe = InstallId::Company("store-probe".into());
    stack.seed_install(&probe, "store-probe", 86_399).await;

    let mut colds = Vec::new();
    for bin in FUNCTIONS {
        let d = cold_start(&stack, bin, cold).await;
        println!(
            "cold start {bin}: p50_ms={:.1} p90_ms={:.1} max_ms={:.1}",
            d.p50, d.p90, d.max
        );
        colds.push((bin, d));
    }
    if knob("PERF_ONLY", "") == "cold" {
        return;
    }

    stack.sim.set_faults(Faults {
        latency_ms,
        latency_jitter_ms: jitter_ms,
        ..Default::default()
    });
    let node = node_sdk(&node_dir, &stack.sim.base_url(), refreshes, cold).await;
    println!(
        "node sdk {}: ready p50_ms={:.1} cpu_ms_per_refresh={:.3} peak_rss_mib={:.1}",
        node.version, node.ready.p50, node.cpu_ms_per_refresh, node.peak_rss_mib
    );

    let mut runs = Vec::new();
    for (i, &c) in concurrencies.iter().enumerate() {
        // The first run refreshes as many as the SDK did, for CPU per refresh;
        // the others enough to fill their concurrency for about 20 s.
        let installs = if i == 0 {
            refreshes
        } else {
            refreshes.max(c * 100)
        };
        runs.push(sweep(&stack, &probe, c, installs, latency_ms).await);
    }
    let twice = stack.sim.ledger().presented_twice();
    if twice != 0 {
        fail(format!("{twice} refresh tokens were presented twice"));
    }
    stack.sim.set_faults(Faults::default());

    let mint = mints(&stack, mint_n).await;
    println!(
        "cache-hit mint p50_ms={:.2} p90_ms={:.2}; GetItem p50_ms={:.2} p90_ms={:.2}; mint cpu_ms={:.3}",
        mint.hit.p50, mint.hit.p90, mint.read.p50, mint.read.p90, mint.cpu_ms
    );
    let load_after = loadavg();

    let table = render(&Report {
        colds: &colds,
        node: &node,
        runs: &runs,
        mint: &mint,
        refreshes,
        latency_ms,
        jitter_ms,
        cold,
        mint_n,
        machine: format!(
            "{}; load average (1, 5, 15 min) {load_before} before, {load_after} after",
            cpu_model()
        ),
    });
    println!("{table}");
    if let Ok(path) = std::env::var("PERF_TABLE") {
        std::fs::write(&path, &table).unwrap_or_else(|e| fail(format!("{path}: {e}")));
    }
}

struct Report<'a> {
    colds: &'a [(&'static str, Dist)],
    node: &'a NodeFigures,
    runs: &'a [SweepRun],
    mint: &'a MintFigures,
    refreshes: u64,
    latency_ms: u64,
    jitter_ms: u64,
    cold: u64,
    mint_n: u64,
    machine: String,
}

fn render(r: &Report<'_>) -> String {
    let mut t = String::new();
    let node = r.node;
    t.push_str(&format!(
        "| measure | ours (release build) | Node SDK {} | ours ÷ SDK | target |\n|---|---|---|---|---|\n",
        node.version
    ));
    for (bin, d) in r.colds {
        t.push_str(&format!(
            "| cold start, spawn → ready, `{bin}` (p50 / max of {}) | {:.1} / {:.1} ms | {:.0} / {:.0} ms | {:.2} | ≤ 15 ms |\n",
            r.cold,
            d.p50,
            d.max,
            node.ready.p50,
            node.ready.max,
            d.p50 / node.ready.p50
        ));
    }
    if let Some(first) = r.runs.first() {
        t.push_str(&format!(
            "| CPU per refresh, {} refreshes at concurrency {} (ours: lease + HighLevel + commit; SDK: HighLevel only) | {:.3} ms | {:.3} ms | {:.2} | ≤ 1.0 ms |\n",
            first.refreshed,
            first.concurrency,
            first.cpu_ms_per_refresh,
            node.cpu_ms_per_refresh,
            first.cpu_ms_per_refresh / node.cpu_ms_per_refresh
        ));
        t.push_str(&format!(
            "| peak RSS over those refreshes | {:.1} MiB | {:.1} MiB | {:.2} | |\n",
            first.peak_rss_mib,
            node.peak_rss_mib,
            first.peak_rss_mib / node.peak_rss_mib
        ));
        t.push_str(&format!(
            "| refreshes/s at concurrency {} | {:.1} | {:.1} | {:.2} | |\n",
            first.concurrency,
            first.rate,
            node.rate,
            first.rate / node.rate
        ));
    }
    for run in r.runs {
        let stand_in = run.stand_in.as_ref().map_or_else(
            || "not reported".to_owned(),
            |s| {
                format!(
                    "UpdateItem {:.1} / {:.1} ms, {:.0} % of a core",
                    s.update_p50,
                    s.update_p99,
                    s.cpu_share * 100.0
                )
            },
        );
        t.push_str(&format!(
            "| refresh-sweep at concurrency {}, {} installs: rate ÷ (concurrency ÷ {} ms) ({:.1}/s; {:.3} ms CPU per refresh, {:.1} MiB peak RSS). Store, seen from a client: GetItem p50 / p99 {:.1} / {:.1} ms; its own: {stand_in} | {:.2} | | | ≥ 0.9 |\n",
            run.concurrency,
            run.refreshed,
            r.latency_ms,
            run.rate,
            run.cpu_ms_per_refresh,
            run.peak_rss_mib,
            run.store.p50,
            run.store.p99,
            run.ratio,
        ));
    }
    let m = r.mint;
    t.push_str(&format!(
        "| cache-hit mint over one GetItem + decrypt of the same item, p50 ({} each; {:.2} against {:.2} ms) | +{:.2} ms | | | ≤ 1 ms |\n",
        r.mint_n,
        m.hit.p50,
        m.read.p50,
        m.hit.p50 - m.read.p50
    ));
    t.push_str(&format!(
        "| token-mint CPU per cache-hit mint | {:.3} ms | | | |\n",
        m.cpu_ms
    ));
    t.push_str(&format!(
        "\nMachine: {}. HighLevel latency {} ± {} ms (the simulator's, uniform), {} refreshes for the CPU figures.\n",
        r.machine, r.latency_ms, r.jitter_ms, r.refreshes
    ));
    t
}
