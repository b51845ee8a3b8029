//! Recovery from unknown outcomes, abandoned leases and replaced grants:
//! `refresh-sweep` run as real processes under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator (strict, or with
//! HighLevel's 30 s same-token window).
//!
//! Each test pins a defect of the earlier design: an unknown outcome ended
//! `in_doubt` for good, a 5xx meant "not consumed", an abandoned lease went
//! straight to `in_doubt`, a slow HighLevel cost every install it touched,
//! a reinstall or an unreadable item left a lease behind, a retried lease
//! write locked out its own writer, and a minted grant revoked behind our
//! back stayed revoked.

use ghl_sim::{Chain, Fault, Faults, Ledger, SimConfig};
use serde_json::Value;
use shared::model::{InstallId, InstallState, now_millis, now_secs};
use shared::store::{Install, LeaseOutcome, LeaseWhen, StateChange, lease_token};
use std::sync::Arc;
use std::time::Duration;
use testkit::stack::{Stack, StoreFault, scheduled_event, store_fault_proxy};
use testkit::{FunctionProcess, InvokeError, InvokeOptions};

async fn sweep(stack: &Stack, deadline: Duration) -> Result<Value, InvokeError> {
    stack
        .api
        .invoke_with(scheduled_event(), InvokeOptions::with_deadline(deadline))
        .await
}

/// A sweep that must answer; on failure the process's logs are in the panic.
async fn sweep_ok(stack: &Stack, f: &FunctionProcess, deadline: Duration) -> Value {
    match sweep(stack, deadline).await {
        Ok(s) => s,
        Err(e) => panic!("sweep failed: {e:?}; logs: {:#?}", f.logs()),
    }
}

/// A stack whose simulator answers a rotated token with the same pair for 30 s.
async fn windowed_stack() -> Stack {
    Stack::with_sim(SimConfig {
        refresh_grace_secs: 30,
        ..SimConfig::default()
    })
    .await
}

/// The newest grant HighLevel holds for an install.
fn newest_chain(ledger: &Ledger, id: &InstallId) -> Chain {
    let chain = match id {
        InstallId::Company(c) => ledger.newest_chain_for(ghl_sim::UserType::Company, c, None),
        InstallId::Location(l) | InstallId::Minted(l) => {
            ledger.newest_chain_for(ghl_sim::UserType::Location, "", Some(l))
        }
    };
    chain.unwrap_or_else(|| panic!("HighLevel holds no grant for {id}"))
}

/// The install is active, leased by nobody, in no doubt, and holds the
/// newest refresh token of its newest grant, which HighLevel still honours.
async fn assert_active_on_newest(stack: &Stack, id: &InstallId) -> Install {
    let i = stack.install(id).await;
    let ledger = stack.sim.ledger();
    let chain = newest_chain(&ledger, id);
    assert_eq!(i.state, InstallState::Active, "{id}: {:?}", i.state_reason);
    assert!(i.lease_owner.is_none(), "{id} left leased");
    assert!(i.doubt_since_ms.is_none(), "{id} still in doubt");
    assert!(
        i.refresh_token.expose() == chain.newest_refresh_token,
        "{id} does not hold its chain's newest token: {chain:?}"
    );
    assert!(chain.newest_live && !chain.revoked, "{id}: {chain:?}");
    i
}

/// The install is `lost` holding `token`, and the simulator confirms why:
/// HighLevel rotated `token` and the pair it issued was never presented
/// (never reached us).
async fn assert_confirmed_lost(stack: &Stack, id: &InstallId, token: &str) {
    let i = stack.install(id).await;
    assert_eq!(i.state, InstallState::Lost, "{id}: {:?}", i.state_reason);
    assert!(
        i.state_reason
            .as_deref()
            .unwrap_or_default()
            .contains("unknown outcome"),
        "{id}: {:?}",
        i.state_reason
    );
    assert!(
        i.due_at.is_none(),
        "{id}: lost installs leave the due index"
    );
    assert!(
        i.doubt_since_ms.is_some() && i.lease_owner.is_none(),
        "{id}"
    );
    assert!(
        i.refresh_token.expose() == token,
        "{id} holds another token"
    );
    let ledger = stack.sim.ledger();
    let ours = ledger
        .tokens
        .iter()
        .find(|t| t.refresh_token == token)
        .unwrap_or_else(|| panic!("{id}: HighLevel never issued the token"));
    let chain = newest_chain(&ledger, id);
    assert!(
        ours.successor.as_deref() == Some(chain.newest_refresh_token.as_str()),
        "{id}: HighLevel did not rotate our token into the chain's newest: {ours:?} {chain:?}"
    );
    assert_eq!(
        chain.newest_presented, 0,
        "{id}: the new pair reached someone: {chain:?}"
    );
}

/// The presentations HighLevel decided on for one refresh token.
fn presentations(stack: &Stack, token: &str) -> u32 {
    stack
        .sim
        .ledger()
        .tokens
        .iter()
        .find(|t| t.refresh_token == token)
        .map(|t| t.presented)
        .unwrap_or_else(|| panic!("HighLevel never issued the token"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_highlevel_costs_no_install_with_the_window() {
    let stack = windowed_stack().await;
    let ids = stack.seed_many("slow-w", 48, 60).await;
    // Every answer comes 500 ms after the client has given up on it.
    stack.sim.set_faults(Faults {
        latency_ms: 2_500,
        ..Default::default()
    });
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("GHL_HTTP_TIMEOUT_MS", "2000"),
            ("SWEEP_CONCURRENCY", "16"),
            ("BREAKER_MIN_ATTEMPTS", "100000"),
        ],
    );
    let s = sweep_ok(&stack, &f, Duration::from_secs(120)).await;
    assert_eq!(
        (s["lost"].as_u64(), s["inDoubt"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["complete"], true, "{s}");
    // Every first answer came after the client's timeout: each install's
    // outcome was unknown, and each got its pair back in the same run (the
    // late first answer or a re-presentation within the window).
    assert_eq!(s["recovered"], 48, "{s}");
    assert_eq!(s["refreshed"], 0, "{s}");
    for id in &ids {
        let i = assert_active_on_newest(&stack, id).await;
        assert_eq!(i.refresh_count, 1, "{id}");
        assert!(i.due_at.unwrap() > now_secs(), "{id} still due");
    }
    let counters = stack.sim.counters();
    assert_eq!(counters.stale_presentations, 0, "{counters:?}");
    assert_eq!(
        counters.refreshes, 48,
        "one rotation per install: {counters:?}"
    );
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_early_breaker_stops_a_slow_run() {
    // Strict HighLevel, answering every request after the client's timeout.
    let stack = Stack::new().await;
    let ids = stack.seed_many("slow-s", 60, 60).await;
    let seeded: Vec<Install> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(stack.install(id).await);
        }
        v
    };
    stack.sim.set_faults(Faults {
        latency_ms: 2_500,
        ..Default::default()
    });
    let concurrency = 4;
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("GHL_HTTP_TIMEOUT_MS", "2000"),
            ("SWEEP_CONCURRENCY", "4"),
            ("BREAKER_MIN_ATTEMPTS", "4"),
            ("BREAKER_PERCENT", "50"),
        ],
    );
    let s = sweep_ok(&stack, &f, Duration::from_secs(120)).await;
    assert_eq!(s["stopped"], "breaker:unknown", "{s}");
    assert_eq!(s["complete"], false, "{s}");
    let mut presented = 0;
    for before in &seeded {
        let id = &before.id;
        let token = before.refresh_token.expose();
        if presentations(&stack, token) == 0 {
            // Never presented: untouched, live, and still due for the next run.
            let i = stack.install(id).await;
            assert_eq!(i.state, InstallState::Active, "{id}");
            assert_eq!((i.version, i.refresh_count), (before.version, 0), "{id}");
            assert!(i.refresh_token.expose() == token, "{id} token changed");
            assert!(stack.sim.ledger().is_live(token), "{id} token dead");
            assert!(i.due_at.unwrap() <= now_secs(), "{id} no longer due");
            assert!(i.lease_owner.is_none(), "{id} left leased");
            continue;
        }
        presented += 1;
        // In flight when the breaker tripped: their late answers are still
        // awaited, so even a strict HighLevel costs them nothing.
        let i = assert_active_on_newest(&stack, id).await;
        assert_eq!(i.version, before.version + 1, "{id}");
    }
    // The breaker counts first answers as they time out, and a slot is held
    // until its refresh has its answer, so it trips before a second wave is
    // taken: about `concurrency` presented. A breaker that counts only
    // finished refreshes lets a second wave through (2 x concurrency).
    assert!(
        (1..=concurrency + 2).contains(&presented),
        "{presented} of 60 presented; the breaker should stop after the first slots: {s}"
    );
    assert_eq!(s["examined"].as_u64(), Some(presented), "{s}");
    assert_eq!(s["recovered"].as_u64(), Some(presented), "{s}");
    assert_eq!(
        (s["lost"].as_u64(), s["inDoubt"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(stack.sim.counters().stale_presentations, 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_after_rotation_is_lost_when_strict_and_recovered_with_the_window() {
    let stack = Stack::new().await;
    let f = stack.spawn(
        "refresh-sweep",
        &[("SWEEP_CONCURRENCY", "1"), ("BREAKER_MIN_ATTEMPTS", "1000")],
    );

    // Strict: HighLevel rotated, then said 502. The re-presentation earns
    // Invalid grant: lost (the new pair exists and never reached us), not revoked.
    let strict = InstallId::Company("rot-strict".into());
    let seeded = stack.seed_install(&strict, "rot-strict", 60).await;
    stack
        .sim
        .push_fault(Fault::ServerErrorAfterRotate { status: 502 });
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(
        (s["lost"].as_u64(), s["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_confirmed_lost(&stack, &strict, seeded.refresh_token.expose()).await;

    // With the window: the same fault, and the re-presentation gets the pair.
    stack.sim.set_refresh_grace_secs(30);
    let windowed = InstallId::Company("rot-window".into());
    let seeded = stack.seed_install(&windowed, "rot-window", 60).await;
    stack
        .sim
        .push_fault(Fault::ServerErrorAfterRotate { status: 502 });
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["recovered"], 1, "{s}");
    assert_eq!(
        (s["lost"].as_u64(), s["inDoubt"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let i = assert_active_on_newest(&stack, &windowed).await;
    assert_eq!(i.version, seeded.version + 1);
    let counters = stack.sim.counters();
    assert!(counters.grace_replays >= 1, "{counters:?}");
    assert_eq!(counters.stale_presentations, 0, "{counters:?}");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_answer_is_recovered_within_the_window() {
    let stack = windowed_stack().await;
    let id = InstallId::Company("dropped-w".into());
    let seeded = stack.seed_install(&id, "dropped-w", 60).await;
    stack.sim.push_fault(Fault::Drop);
    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["recovered"], 1, "{s}");
    assert_eq!(
        (s["lost"].as_u64(), s["inDoubt"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let i = assert_active_on_newest(&stack, &id).await;
    assert_eq!((i.version, i.refresh_count), (seeded.version + 1, 1));
    // Presented twice on purpose: the drop, then the re-presentation the
    // window answered with the same pair.
    assert_eq!(presentations(&stack, seeded.refresh_token.expose()), 2);
    let counters = stack.sim.counters();
    assert_eq!(
        (counters.refreshes, counters.grace_replays),
        (1, 1),
        "{counters:?}"
    );
    assert_eq!(counters.stale_presentations, 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbled_200_and_a_200_without_refresh_token_are_recovered() {
    let stack = windowed_stack().await;
    let f = stack.spawn("refresh-sweep", &[("SWEEP_CONCURRENCY", "1")]);
    for (name, fault) in [
        ("garbled", Fault::Garbled),
        ("no-refresh-token", Fault::NoRefreshToken),
    ] {
        let id = InstallId::Company(name.into());
        let seeded = stack.seed_install(&id, name, 60).await;
        stack.sim.push_fault(fault);
        let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
        assert_eq!(s["recovered"], 1, "{name}: {s}");
        assert_eq!(
            (
                s["lost"].as_u64(),
                s["inDoubt"].as_u64(),
                s["retrying"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{name}: {s}"
        );
        let i = assert_active_on_newest(&stack, &id).await;
        assert_eq!(i.version, seeded.version + 1, "{name}");
        assert_eq!(
            presentations(&stack, seeded.refresh_token.expose()),
            2,
            "{name}"
        );
    }
    let counters = stack.sim.counters();
    assert_eq!(
        (counters.refreshes, counters.grace_replays),
        (2, 2),
        "{counters:?}"
    );
    assert_eq!(counters.stale_presentations, 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_metadata_in_a_200_keeps_the_pair() {
    // Strict: a 200 thrown away for its metadata would be a lost grant.
    let stack = Stack::new().await;
    let id = InstallId::Company("odd".into());
    let seeded = stack.seed_install(&id, "odd", 60).await;
    stack.sim.push_fault(Fault::OddMetadata);
    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["refreshed"], 1, "{s}");
    assert_eq!(
        (
            s["lost"].as_u64(),
            s["inDoubt"].as_u64(),
            s["recovered"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    let i = assert_active_on_newest(&stack, &id).await;
    assert_eq!(i.version, seeded.version + 1);
    assert_eq!(presentations(&stack, seeded.refresh_token.expose()), 1);
    // The scope came as an array and is kept as text; identity is unchanged.
    assert_eq!(i.info.scope, seeded.info.scope);
    assert_eq!(i.info.company_id.as_deref(), Some("odd"));
    assert_eq!(stack.sim.counters().faults_injected, 1);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

/// The environment of a sweep that never re-presents at once and probes an
/// in-doubt install a second later.
const PROBE_ENV: &[(&str, &str)] = &[
    ("GHL_REPRESENT_WINDOW_MS", "0"),
    ("BACKOFF_BASE_SECS", "1"),
    ("BACKOFF_MAX_SECS", "1"),
];

/// Sweeps once with a dropped answer: the install must wait in doubt, due
/// again shortly. Returns the seeded install.
async fn drop_into_doubt(stack: &Stack, f: &FunctionProcess, id: &InstallId) -> Install {
    let seeded = stack.seed_install(id, id.id(), 60).await;
    stack.sim.push_fault(Fault::Drop);
    let s = sweep_ok(stack, f, Duration::from_secs(60)).await;
    assert_eq!(s["inDoubt"], 1, "{s}");
    assert_eq!(
        (s["lost"].as_u64(), s["recovered"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let i = stack.install(id).await;
    assert_eq!(i.state, InstallState::InDoubt, "{:?}", i.state_reason);
    let due = i
        .due_at
        .expect("an in-doubt install stays in the due index");
    assert!(due <= now_secs() + 2, "probed within the backoff: {due}");
    assert!(i.doubt_since_ms.is_some_and(|d| d <= now_millis()));
    assert!(i.lease_owner.is_none());
    assert!(i.refresh_token.expose() == seeded.refresh_token.expose());
    assert_eq!(presentations(stack, seeded.refresh_token.expose()), 1);
    // Wait for the due time itself, not a test shortcut.
    while now_secs() < due {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seeded
}

#[tokio::test(flavor = "multi_thread")]
async fn in_doubt_waits_for_a_probe_that_recovers_it() {
    let stack = windowed_stack().await;
    let f = stack.spawn("refresh-sweep", PROBE_ENV);
    let id = InstallId::Company("probe-w".into());
    let seeded = drop_into_doubt(&stack, &f, &id).await;
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["recovered"], 1, "{s}");
    assert_eq!(s["inDoubt"], 0, "{s}");
    let i = assert_active_on_newest(&stack, &id).await;
    assert_eq!((i.version, i.failures), (seeded.version + 1, 0));
    assert!(i.due_at.unwrap() > now_secs());
    let counters = stack.sim.counters();
    assert_eq!(
        (counters.refreshes, counters.grace_replays),
        (1, 1),
        "{counters:?}"
    );
    assert_eq!(counters.stale_presentations, 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_doubt_probed_after_highlevels_window_is_lost() {
    // Strict: the probe comes after HighLevel stopped answering the old token.
    let stack = Stack::new().await;
    let f = stack.spawn("refresh-sweep", PROBE_ENV);
    let id = InstallId::Company("probe-s".into());
    let seeded = drop_into_doubt(&stack, &f, &id).await;
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(
        (s["lost"].as_u64(), s["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_confirmed_lost(&stack, &id, seeded.refresh_token.expose()).await;
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["examined"], 0, "lost installs are not probed again: {s}");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

/// A worker takes the install's lease for one second and dies.
async fn dead_worker_takes_the_lease(stack: &Stack, id: &InstallId) {
    let taken = stack
        .store()
        .acquire_lease(
            id,
            &lease_token("dead-worker"),
            Duration::from_secs(1),
            LeaseWhen::DueBy(now_secs()),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            taken,
            LeaseOutcome::Acquired {
                abandoned: false,
                ..
            }
        ),
        "{taken:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_lease_is_probed_not_given_up() {
    let stack = windowed_stack().await;
    // This worker died before presenting the token.
    let quiet = InstallId::Company("dead-quiet".into());
    let quiet_seeded = stack.seed_install(&quiet, "dead-quiet", 60).await;
    dead_worker_takes_the_lease(&stack, &quiet).await;
    // This one presented it, and died before journaling the answer.
    let spent = InstallId::Company("dead-spent".into());
    let spent_seeded = stack.seed_install(&spent, "dead-spent", 60).await;
    dead_worker_takes_the_lease(&stack, &spent).await;
    let pair = stack.refresh_behind_the_back(&spent_seeded).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(
        s["refreshed"].as_u64().unwrap() + s["recovered"].as_u64().unwrap(),
        2,
        "{s}"
    );
    assert_eq!(
        (
            s["inDoubt"].as_u64(),
            s["lost"].as_u64(),
            s["skippedLocked"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );

    let i = assert_active_on_newest(&stack, &quiet).await;
    assert_eq!(i.version, quiet_seeded.version + 1);
    assert_eq!(
        presentations(&stack, quiet_seeded.refresh_token.expose()),
        1,
        "the probe was the only presentation"
    );

    // The probe got the very pair the dead worker was given.
    let i = assert_active_on_newest(&stack, &spent).await;
    assert!(i.refresh_token.expose() == pair.refresh_token.expose());
    assert!(i.access_token.expose() == pair.access_token.expose());
    assert_eq!(i.version, spent_seeded.version + 1);
    let counters = stack.sim.counters();
    assert_eq!(
        (counters.refreshes, counters.grace_replays),
        (2, 1),
        "{counters:?}"
    );
    assert_eq!(counters.stale_presentations, 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_lease_whose_token_was_spent_is_lost_when_strict() {
    let stack = Stack::new().await;
    let id = InstallId::Company("dead-strict".into());
    let seeded = stack.seed_install(&id, "dead-strict", 60).await;
    dead_worker_takes_the_lease(&stack, &id).await;
    let pair = stack.refresh_behind_the_back(&seeded).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(
        (s["lost"].as_u64(), s["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_confirmed_lost(&stack, &id, seeded.refresh_token.expose()).await;
    let ledger = stack.sim.ledger();
    assert!(
        newest_chain(&ledger, &id).newest_refresh_token == pair.refresh_token.expose(),
        "the dead worker's pair is the one lost"
    );
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reinstall_during_a_refresh_leaves_no_lease_and_no_doubt() {
    let stack = Stack::new().await;
    let id = InstallId::Company("reinstalled".into());
    let old = stack.seed_install(&id, "reinstalled", 60).await;
    let token = lease_token("slow-worker");
    let taken = stack
        .store()
        .acquire_lease(
            &id,
            &token,
            Duration::from_secs(2),
            LeaseWhen::DueBy(now_secs()),
        )
        .await
        .unwrap();
    let LeaseOutcome::Acquired { install: held, .. } = taken else {
        panic!("lease not taken: {taken:?}");
    };
    // The customer reinstalls while the worker holds the lease.
    let new = stack.seed_install(&id, "reinstalled", 60).await;
    assert!(
        new.lease_owner.is_none(),
        "the reinstall released the lease"
    );
    assert!(new.lease_until_ms.is_none() && new.doubt_since_ms.is_none());
    assert!(new.version > held.version && new.install_count == 2);
    let stored = stack.install(&id).await;
    assert!(stored.lease_owner.is_none());
    // The old worker wakes up: none of its fenced writes lands on the new grant.
    let marked = stack
        .store()
        .record_state(
            &id,
            &token,
            held.version,
            &StateChange {
                state: InstallState::InDoubt,
                reason: "late worker",
                due_at: Some(now_secs()),
                failures: 1,
                doubt_since_ms: Some(now_millis()),
            },
        )
        .await
        .unwrap();
    assert!(!marked, "a late worker marked the reinstalled grant");
    // Past the old lease's end, as a sweep would come.
    while now_millis() <= held.lease_until_ms.unwrap() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(s["refreshed"], 1, "refreshed normally, not probed: {s}");
    assert_eq!(
        (
            s["recovered"].as_u64(),
            s["inDoubt"].as_u64(),
            s["lost"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    let i = assert_active_on_newest(&stack, &id).await;
    assert_eq!(i.version, new.version + 1);
    assert_eq!(presentations(&stack, new.refresh_token.expose()), 1);
    assert_eq!(
        presentations(&stack, old.refresh_token.expose()),
        0,
        "the replaced grant's token was never presented"
    );
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_function_with_an_old_data_key_leaves_no_lease() {
    let mut stack = Stack::new().await;
    let mut warm = stack.spawn("refresh-sweep", &[]);
    // An empty run: the process has finished its cold start and holds k1 only.
    let s = sweep_ok(&stack, &warm, Duration::from_secs(60)).await;
    assert_eq!(s["examined"], 0, "{s}");
    stack.rotate_data_key("k2").await;
    let id = InstallId::Company("sealed-k2".into());
    let seeded = stack.seed_install(&id, "sealed-k2", 60).await;
    assert!(!seeded.stale_key);

    let s = sweep_ok(&stack, &warm, Duration::from_secs(60)).await;
    assert_eq!(
        (
            s["refreshed"].as_u64(),
            s["inDoubt"].as_u64(),
            s["lost"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert!(s["storeErrors"].as_u64().unwrap() >= 1, "{s}");
    let i = stack.install(&id).await;
    assert!(
        i.lease_owner.is_none(),
        "an item it cannot open was left leased"
    );
    assert!(i.lease_until_ms.is_none() && i.doubt_since_ms.is_none());
    assert_eq!((i.state, i.version), (InstallState::Active, seeded.version));
    assert!(i.due_at.unwrap() <= now_secs(), "still due");
    assert!(stack.sim.ledger().is_live(seeded.refresh_token.expose()));
    assert_eq!(presentations(&stack, seeded.refresh_token.expose()), 0);
    let mut logs = warm.logs();
    warm.kill().await;

    // A new execution environment loads k2 and refreshes it at once.
    let fresh = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &fresh, Duration::from_secs(60)).await;
    assert_eq!(s["refreshed"], 1, "{s}");
    assert_eq!(s["storeErrors"], 0, "{s}");
    let i = assert_active_on_newest(&stack, &id).await;
    assert_eq!(i.version, seeded.version + 1);
    logs.extend(fresh.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_write_retried_after_it_landed_is_recognised() {
    let stack = Stack::new().await;
    let id = InstallId::Company("retried-lease".into());
    stack.seed_install(&id, "retried-lease", 60).await;
    let store = stack.store();
    let t = lease_token("w");
    let lease = Duration::from_secs(30);
    let first = store
        .acquire_lease(&id, &t, lease, LeaseWhen::DueBy(now_secs()))
        .await
        .unwrap();
    assert!(
        matches!(
            first,
            LeaseOutcome::Acquired {
                abandoned: false,
                ..
            }
        ),
        "{first:?}"
    );
    // The SDK's retry of the same write, whose first answer was lost.
    let again = store
        .acquire_lease(&id, &t, lease, LeaseWhen::DueBy(now_secs()))
        .await
        .unwrap();
    match &again {
        LeaseOutcome::Acquired {
            install,
            abandoned: false,
        } => assert_eq!(install.lease_owner.as_deref(), Some(t.as_str())),
        other => panic!("the retried lease write was not recognised as ours: {other:?}"),
    }
    // Anyone else, including the same worker's next taking, is held off.
    let other = lease_token("w");
    assert_ne!(other, t);
    let held = store
        .acquire_lease(&id, &other, lease, LeaseWhen::DueBy(now_secs()))
        .await
        .unwrap();
    match held {
        LeaseOutcome::Held { owner, until_ms } => {
            assert_eq!(owner, t);
            assert!(until_ms > now_millis());
        }
        other => panic!("expected Held, got {other:?}"),
    }
    let stored = stack.install(&id).await;
    assert_eq!(stored.lease_owner.as_deref(), Some(t.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minted_grant_revoked_behind_our_back_is_minted_again_by_the_sweep() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co".into());
    let company_before = stack.seed_install(&company, "co", 86_399).await;
    stack.sim.add_locations("co", &[("loc-h", "H")]);
    let minted = InstallId::Minted("loc-h".into());
    let old = stack.seed_install(&minted, "co", 60).await;
    stack.sim.revoke(ghl_sim::UserType::Location, "loc-h");

    let f = stack.spawn("refresh-sweep", &[]);
    let s = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    // Why a remint failed, as the sweep logged it (no tokens in these lines).
    let why: Vec<String> = f
        .logs()
        .into_iter()
        .filter(|l| l.contains("could not be minted again"))
        .collect();
    assert_eq!(
        (s["revoked"].as_u64(), s["reminted"].as_u64()),
        (Some(1), Some(1)),
        "{s}; {why:#?}"
    );
    assert_eq!(s["examined"], 1, "only the minted grant was due: {s}");
    let i = assert_active_on_newest(&stack, &minted).await;
    assert!(i.refresh_token.expose() != old.refresh_token.expose());
    assert!(i.version > old.version);
    assert_eq!(i.info.company_id.as_deref(), Some("co"));
    assert!(i.expires_at > now_secs() + 86_000);
    assert_eq!(
        stack.sim.counters().location_mints.get("loc-h").copied(),
        Some(1)
    );
    // The company grant lent its access token and was not refreshed.
    let c = stack.install(&company).await;
    assert_eq!(
        (c.state, c.version),
        (InstallState::Active, company_before.version)
    );
    // The single-flight mint lock was given back (its item stays until its
    // TTL, with no holder), so a caller can mint at once.
    let held: Vec<_> = stack
        .items()
        .await
        .into_iter()
        .filter(|item| {
            item.get("pk")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|pk| pk.starts_with("lock#"))
                && (item.contains_key("lease_owner") || item.contains_key("lease_until_ms"))
        })
        .collect();
    assert!(held.is_empty(), "mint lock left held: {held:?}");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

/// The journal is the commit's fallback: a commit that cannot be written
/// (every attempt refused by the store) puts the rotated pair in the
/// journal, and the next holder, finding the lease abandoned, adopts it
/// without presenting the spent token again.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_cannot_be_written_goes_to_the_journal_and_is_adopted() {
    let stack = Stack::new().await;
    let id = InstallId::Company("commit-refused".into());
    let seeded = stack.seed_install(&id, "commit-refused", 60).await;
    // The commit is the one UpdateItem that counts refreshes.
    let refuse_commits: Arc<StoreFault> = Arc::new(|op: &str, body: &[u8]| {
        op == "UpdateItem" && String::from_utf8_lossy(body).contains("refresh_count")
    });
    let proxy = store_fault_proxy(refuse_commits).await;
    // Short timeouts and lease, so the commit's retries and the lease both
    // end within the test.
    let tight = [
        ("GHL_REPRESENT_WINDOW_MS", "0"),
        ("GHL_CONNECT_TIMEOUT_MS", "1000"),
        ("GHL_HTTP_TIMEOUT_MS", "2000"),
        ("AWS_ATTEMPT_TIMEOUT_MS", "1000"),
        ("AWS_OPERATION_TIMEOUT_MS", "1000"),
        ("LEASE_SECS", "6"),
    ];
    let mut env: Vec<(&str, &str)> = tight.to_vec();
    env.push(("AWS_ENDPOINT_URL_DYNAMODB", proxy.as_str()));
    let mut refused = stack.spawn("refresh-sweep", &env);
    let summary = sweep_ok(&stack, &refused, Duration::from_secs(12)).await;
    assert_eq!(summary["journaled"], 1, "{summary}");
    assert_eq!(summary["unstored"], 0, "{summary}");
    refused.kill().await;
    let held = stack.install(&id).await;
    assert_eq!(held.version, seeded.version, "the commit never landed");
    assert!(
        held.refresh_token.expose() == seeded.refresh_token.expose(),
        "the row still has the spent token"
    );
    let entry = stack
        .store()
        .newer_journal(&id, seeded.version)
        .await
        .expect("journal read")
        .expect("the rotated pair is in the journal");
    assert!(
        entry.pair.refresh_token.expose()
            == newest_chain(&stack.sim.ledger(), &id).newest_refresh_token,
        "the journal holds HighLevel's newest token"
    );

    // The next sweep, with a working store, once the lease has lapsed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let f = stack.spawn("refresh-sweep", &tight);
    let summary = sweep_ok(&stack, &f, Duration::from_secs(20)).await;
    assert_eq!(summary["recovered"], 1, "{summary}");
    let adopted = assert_active_on_newest(&stack, &id).await;
    assert!(adopted.version > seeded.version);
    assert_eq!(
        stack.sim.ledger().presented_twice(),
        0,
        "the spent token was never presented again"
    );
}

/// Short timeouts and lease, so a commit's retries and a lease both end
/// within a test.
const TIGHT: [(&str, &str); 6] = [
    ("GHL_REPRESENT_WINDOW_MS", "0"),
    ("GHL_CONNECT_TIMEOUT_MS", "1000"),
    ("GHL_HTTP_TIMEOUT_MS", "2000"),
    ("AWS_ATTEMPT_TIMEOUT_MS", "1000"),
    ("AWS_OPERATION_TIMEOUT_MS", "1000"),
    ("LEASE_SECS", "6"),
];

/// One sweep through a store that refuses what `fail` picks; the process is
/// gone when it returns.
async fn sweep_through_faults(stack: &Stack, fail: Arc<StoreFault>) -> Value {
    let proxy = store_fault_proxy(fail).await;
    let mut env: Vec<(&str, &str)> = TIGHT.to_vec();
    env.push(("AWS_ENDPOINT_URL_DYNAMODB", proxy.as_str()));
    let mut f = stack.spawn("refresh-sweep", &env);
    let summary = sweep_ok(stack, &f, Duration::from_secs(12)).await;
    f.kill().await;
    summary
}

/// HighLevel rotated the token, and neither the commit nor the journal could
/// store the pair (an overloaded store). The next holder found the abandoned
/// lease and could not even read the journal. The grant's fate is unknown,
/// so HighLevel's `Invalid grant` must read `lost` (alarm: our failure), not
/// `revoked` ("the customer uninstalled"): the chain at HighLevel is one
/// rotation ahead of the row.
#[tokio::test(flavor = "multi_thread")]
async fn a_pair_no_write_could_store_is_never_called_a_revocation() {
    let stack = Stack::new().await;
    let id = InstallId::Company("unstored".into());
    let seeded = stack.seed_install(&id, "unstored", 60).await;
    let old = seeded.refresh_token.expose().to_owned();

    let refuse_commit_and_journal: Arc<StoreFault> = Arc::new(|op: &str, body: &[u8]| {
        let body = String::from_utf8_lossy(body);
        (op == "UpdateItem" && body.contains("refresh_count"))
            || (op == "PutItem" && body.contains("journal#"))
    });
    let s = sweep_through_faults(&stack, refuse_commit_and_journal).await;
    assert_eq!(
        (s["unstored"].as_u64(), s["journaled"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert!(
        !stack.sim.ledger().is_live(&old),
        "HighLevel rotated the token"
    );
    let held = stack.install(&id).await;
    assert_eq!(held.version, seeded.version, "nothing was stored");
    assert!(held.lease_owner.is_some(), "the lease is the mark");

    // The lease lapses; the next holder takes it as abandoned, and the
    // journal read fails before anything is presented.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let refuse_journal_reads: Arc<StoreFault> = Arc::new(|op: &str, body: &[u8]| {
        op == "Query" && String::from_utf8_lossy(body).contains("journal#")
    });
    let s = sweep_through_faults(&stack, refuse_journal_reads).await;
    assert_eq!(s["storeErrors"], 1, "{s}");
    assert_eq!(presentations(&stack, &old), 1, "not presented again");
    let held = stack.install(&id).await;
    assert!(
        held.lease_owner.is_some() && held.doubt_since_ms.is_none(),
        "the mark of the doubt (an unreleased lease) was kept"
    );

    // A working store: the lease reads as abandoned again, the probe earns
    // `Invalid grant`, and that is a loss, not a revocation.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let f = stack.spawn("refresh-sweep", &TIGHT);
    let s = sweep_ok(&stack, &f, Duration::from_secs(20)).await;
    assert_eq!(
        (s["lost"].as_u64(), s["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_confirmed_lost(&stack, &id, &old).await;
}

/// A refresh whose commit lands writes no journal entry: the lease and the
/// commit are its only writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_committed_refresh_leaves_no_journal_entry() {
    let stack = Stack::new().await;
    let ids = stack.seed_many("no-journal", 5, 60).await;
    let f = stack.spawn("refresh-sweep", &[]);
    let summary = sweep_ok(&stack, &f, Duration::from_secs(60)).await;
    assert_eq!(summary["refreshed"], 5, "{summary}");
    for id in &ids {
        assert_active_on_newest(&stack, id).await;
    }
    let journal: Vec<_> = stack
        .items()
        .await
        .into_iter()
        .filter(|i| i["sk"].as_s().is_ok_and(|sk| sk.starts_with("journal#")))
        .collect();
    assert!(journal.is_empty(), "{} journal entries", journal.len());
}
