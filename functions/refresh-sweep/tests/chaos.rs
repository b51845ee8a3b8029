//! Chaos: many installs, several sweeps and mints at once, injected latency
//! beyond the lease, 5xx, 429, dropped responses, and a sweep process killed
//! mid-run. Afterwards no refresh token may have been presented twice, and
//! every install is active holding the simulator's live token or in an
//! explicit state with its reason.
//!
//! Size: `CHAOS_INSTALLS` (default 120). Longer form:
//! `CHAOS_INSTALLS=5000 cargo test -p refresh-sweep --test chaos -- --nocapture`
//! (with moto up, see dev/test.sh).

use ghl_sim::{Fault, Faults};
use serde_json::json;
use shared::model::{InstallId, InstallState, now_secs};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::InvokeOptions;
use testkit::join_all;
use testkit::stack::{Stack, scheduled_event};

const SWEEP_ENV: &[(&str, &str)] = &[
    ("LEASE_SECS", "5"),
    ("GHL_HTTP_TIMEOUT_MS", "1500"),
    ("GHL_CONNECT_TIMEOUT_MS", "300"),
    ("BACKOFF_BASE_SECS", "1"),
    ("BACKOFF_MAX_SECS", "2"),
    ("SWEEP_CONCURRENCY", "16"),
    ("SWEEP_DEADLINE_RESERVE_MS", "500"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_never_presents_a_refresh_token_twice() {
    let n: usize = std::env::var("CHAOS_INSTALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let started = Instant::now();
    let stack = Stack::new().await;
    let ids = stack.seed_many("chaos", n, 60).await;
    // Locations under the first companies, minted while the sweeps refresh those companies.
    let mint_targets: Vec<(String, String)> = ids
        .iter()
        .take(20)
        .map(|c| (c.id().to_owned(), format!("{}-loc", c.id())))
        .collect();
    for (company, loc) in &mint_targets {
        stack.sim.add_locations(company, &[(loc.as_str(), "Chaos")]);
    }
    stack.sim.set_faults(Faults {
        latency_ms: 20,
        error_5xx_rate: 0.05,
        rate_limit_rate: 0.05,
        drop_rate: 0.02,
    });
    for _ in 0..5 {
        // Beyond the 5 s lease: the caller times out at 1.5 s; HighLevel still rotates.
        stack.sim.push_fault(Fault::Latency { ms: 6_000 });
    }

    // One Runtime API per function, as in Lambda.
    let mint_api = testkit::RuntimeApi::start().await.unwrap();
    let mut sweeps: Vec<_> = (0..3)
        .map(|_| stack.spawn("refresh-sweep", SWEEP_ENV))
        .collect();
    let _mints: Vec<_> = (0..2)
        .map(|_| stack.spawn_on(&mint_api, "token-mint", SWEEP_ENV))
        .collect();
    let mut kills = 0;
    let mut mint_ok = 0;
    let mut mint_err: BTreeMap<String, u32> = BTreeMap::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let api = &stack.api;
        let opts = || InvokeOptions::with_deadline(Duration::from_secs(20));
        let sweep_calls = (0..3).map(|_| api.invoke_with(scheduled_event(), opts()));
        let mint_calls = mint_targets
            .iter()
            .map(|(c, l)| mint_api.invoke_with(json!({"locationId": l, "companyId": c}), opts()));
        let all: Vec<_> = sweep_calls.chain(mint_calls).collect();
        let killer = async {
            if rounds == 1 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                sweeps[0].kill().await;
                kills += 1;
            }
        };
        let (results, ()) = tokio::join!(join_all(all), killer);
        for (i, r) in results.iter().take(3).enumerate() {
            match r {
                Ok(summary) => println!("round {rounds} sweep {i}: {summary}"),
                Err(e) => {
                    println!("round {rounds} sweep {i}: {e:?}; its last log lines:");
                    for line in sweeps[i].logs().iter().rev().take(15).rev() {
                        println!("  {line}");
                    }
                }
            }
        }
        for r in results.into_iter().skip(3) {
            match r {
                Ok(_) => mint_ok += 1,
                Err(e) => {
                    *mint_err
                        .entry(format!("{e:?}").chars().take(40).collect())
                        .or_default() += 1
                }
            }
        }
        if rounds == 1 {
            sweeps[0] = stack.spawn("refresh-sweep", SWEEP_ENV);
        }
        // Let abandoned leases expire and backoffs elapse.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if rounds >= 3 && !any_due(&stack, &ids).await || rounds >= 12 {
            break;
        }
    }

    stack.sim.set_faults(Faults::default());
    let ledger = stack.sim.ledger();
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut all_ids = ids.clone();
    all_ids.extend(
        mint_targets
            .iter()
            .map(|(_, l)| InstallId::Minted(l.clone())),
    );
    for id in &all_ids {
        let Some(i) = stack.store().get(id).await.unwrap() else {
            continue;
        };
        *states.entry(i.state.as_str()).or_default() += 1;
        match i.state {
            InstallState::Active | InstallState::Retrying => {
                assert!(
                    ledger.is_live(i.refresh_token.expose()),
                    "{id} is {} but holds a dead token",
                    i.state.as_str()
                );
            }
            _ => assert!(
                i.state_reason.as_deref().is_some_and(|r| !r.is_empty()),
                "{id} is {} without a reason",
                i.state.as_str()
            ),
        }
        assert!(
            i.state != InstallState::Active
                || i.due_at.unwrap_or(i64::MAX) > now_secs()
                || i.refresh_count > 0,
            "{id} still due and never refreshed"
        );
    }
    let presented_twice = ledger.presented_twice();
    println!(
        "chaos: installs={n} rounds={rounds} kills={kills} mints_ok={mint_ok} mint_errors={mint_err:?} \
         states={states:?} refresh_tokens_issued={} presented_twice={presented_twice} faults_injected={} took={:?}",
        ledger.tokens.len(),
        stack.sim.counters().faults_injected,
        started.elapsed()
    );
    assert_eq!(presented_twice, 0, "a refresh token was presented twice");
    assert!(
        states.get("active").copied().unwrap_or(0) > n / 2,
        "{states:?}"
    );
}

async fn any_due(stack: &Stack, ids: &[InstallId]) -> bool {
    for id in ids {
        if let Some(i) = stack.store().get(id).await.unwrap()
            && i.state.is_refreshable()
            && i.due_at.is_some_and(|d| d <= now_secs())
        {
            return true;
        }
    }
    false
}
