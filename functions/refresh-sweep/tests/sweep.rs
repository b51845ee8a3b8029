//! `refresh-sweep` run as real processes under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator.

use ghl_sim::{Fault, Faults};
use serde_json::Value;
use shared::model::{InstallId, InstallState, now_secs};
use shared::store::LeaseWhen;
use std::time::Duration;
use testkit::stack::{Stack, scheduled_event};
use testkit::{InvokeError, InvokeOptions};

async fn sweep(stack: &Stack, deadline: Duration) -> Result<Value, InvokeError> {
    stack
        .api
        .invoke_with(scheduled_event(), InvokeOptions::with_deadline(deadline))
        .await
}

/// The companies HighLevel issued a new pair to, in the order it did so.
/// Tokens nobody has presented yet are the ones a refresh handed out (or a
/// seeded install's untouched one, which `prefix` leaves out).
fn highlevel_refresh_order(stack: &Stack, prefix: &str) -> Vec<String> {
    stack
        .sim
        .ledger()
        .tokens
        .into_iter()
        .filter(|t| t.presented == 0 && t.company_id.starts_with(prefix))
        .map(|t| t.company_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn due_installs_are_refreshed_in_due_order_and_the_rest_left_alone() {
    let stack = Stack::with_shards(1).await;
    // Due in a known order: the one expiring soonest first.
    let due: Vec<InstallId> = (0..5)
        .map(|i| InstallId::Company(format!("due-{i}")))
        .collect();
    for (i, id) in due.iter().enumerate().rev() {
        stack.seed_install(id, id.id(), 60 + i as i64 * 10).await;
    }
    let fresh = InstallId::Company("fresh".into());
    let before_fresh = stack.seed_install(&fresh, "fresh", 86_399).await;
    let mut due_before = Vec::new();
    for id in &due {
        let i = stack.install(id).await;
        due_before.push((id.clone(), i.due_at.expect("seeded installs are due")));
    }
    let f = stack.spawn("refresh-sweep", &[("SWEEP_CONCURRENCY", "1")]);
    let summary = sweep(&stack, Duration::from_secs(60))
        .await
        .expect("sweep answers");
    assert_eq!(summary["examined"], 5, "{summary}");
    assert_eq!(summary["refreshed"], 5, "{summary}");
    assert_eq!(summary["complete"], true);
    // With one HighLevel slot the sweep calls HighLevel strictly in due
    // order. Due order is expiry minus the refresh-ahead window minus
    // per-install jitter, so the expected order comes from the stored due
    // times. (Log lines come in completion order, which the journal and commit
    // writes outside the slot may shuffle.)
    let order = highlevel_refresh_order(&stack, "due-");
    let mut expected: Vec<(i64, String)> = Vec::new();
    for (id, due_at) in &due_before {
        expected.push((*due_at, id.id().to_owned()));
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, k)| k).collect();
    assert_eq!(order, expected, "HighLevel asked in due order");
    for id in &due {
        let i = stack.install(id).await;
        assert_eq!(i.refresh_count, 1);
        assert!(i.expires_at > now_secs() + 86_000);
        assert!(i.due_at.unwrap() > now_secs(), "no longer due");
        assert!(stack.sim.ledger().is_live(i.refresh_token.expose()));
    }
    let after_fresh = stack.install(&fresh).await;
    assert_eq!(
        after_fresh.version, before_fresh.version,
        "not-due install untouched"
    );
    assert_eq!(stack.sim.ledger().presented_twice(), 0);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sweeps_at_once_refresh_each_install_exactly_once() {
    let stack = Stack::new().await;
    let ids = stack.seed_many("race", 150, 60).await;
    stack.sim.set_faults(Faults {
        latency_ms: 20,
        ..Default::default()
    });
    let env = [testkit::stack::PATIENT_AWS, &[("SWEEP_CONCURRENCY", "16")]].concat();
    let a = stack.spawn("refresh-sweep", &env);
    let b = stack.spawn("refresh-sweep", &env);
    let (ra, rb) = tokio::join!(
        sweep(&stack, Duration::from_secs(120)),
        sweep(&stack, Duration::from_secs(120))
    );
    let (ra, rb) = (ra.expect("sweep a"), rb.expect("sweep b"));
    let total = ra["refreshed"].as_u64().unwrap() + rb["refreshed"].as_u64().unwrap();
    assert_eq!(total, 150, "a: {ra}\nb: {rb}");
    for id in &ids {
        let i = stack.install(id).await;
        assert_eq!(
            i.refresh_count, 1,
            "{id} refreshed {} times",
            i.refresh_count
        );
        assert!(
            stack.sim.ledger().is_live(i.refresh_token.expose()),
            "{id} holds a dead token"
        );
    }
    let ledger = stack.sim.ledger();
    assert_eq!(
        ledger.presented_twice(),
        0,
        "a refresh token was presented twice"
    );
    let mut logs = a.logs();
    logs.extend(b.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_class_ends_in_its_own_state() {
    let stack = Stack::new().await;
    let _f = stack.spawn(
        "refresh-sweep",
        &[("SWEEP_CONCURRENCY", "1"), ("BREAKER_MIN_ATTEMPTS", "1000")],
    );

    // Invalid grant for a token whose last use we saw -> revoked, out of the due index.
    let revoked = InstallId::Company("gone".into());
    stack.seed_install(&revoked, "gone", 60).await;
    stack.sim.revoke(ghl_sim::UserType::Company, "gone");
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["revoked"], 1, "{s}");
    let i = stack.install(&revoked).await;
    assert_eq!(i.state, InstallState::Revoked);
    assert!(
        i.state_reason.as_deref().unwrap().contains("Invalid grant"),
        "{:?}",
        i.state_reason
    );
    assert!(i.due_at.is_none() && i.state_changed_at >= now_secs() - 60);

    // Location is not active -> suspended, token kept, back to active once it works.
    let suspended = InstallId::Location("sleepy".into());
    stack.seed_install(&suspended, "co-s", 60).await;
    stack.sim.set_location_active("sleepy", false);
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["suspended"], 1, "{s}");
    let i = stack.install(&suspended).await;
    assert_eq!(i.state, InstallState::Suspended);
    assert!(
        i.due_at.unwrap() >= now_secs() + 6 * 3600 - 60,
        "retried after hours"
    );
    assert!(
        stack.sim.ledger().is_live(i.refresh_token.expose()),
        "token kept"
    );
    stack.sim.set_location_active("sleepy", true);
    stack.make_due(&suspended).await;
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["refreshed"], 1, "{s}");
    assert_eq!(stack.install(&suspended).await.state, InstallState::Active);

    // 429 -> retrying, no sooner than HighLevel's interval: HighLevel did not
    // look at the token, so its use is not in doubt.
    let limited = InstallId::Company("limited".into());
    stack.seed_install(&limited, "limited", 60).await;
    stack.sim.push_fault(Fault::RateLimited);
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["retrying"], 1, "{s}");
    let i = stack.install(&limited).await;
    assert_eq!((i.state, i.failures), (InstallState::Retrying, 1));
    assert!(i.due_at.unwrap() >= now_secs() + 8, "retried too soon");
    assert!(i.doubt_since_ms.is_none());
    assert!(stack.sim.ledger().is_live(i.refresh_token.expose()));
    stack.make_due(&limited).await;
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["refreshed"], 1, "recovers: {s}");
    let i = stack.install(&limited).await;
    assert_eq!((i.state, i.failures), (InstallState::Active, 0));

    // 5xx: HighLevel may have rotated, so the same token is presented again
    // at once; this 5xx came before any rotation, so the second answer is a
    // pair, in the same run.
    let flaky = InstallId::Company("flaky".into());
    stack.seed_install(&flaky, "flaky", 60).await;
    stack.sim.push_fault(Fault::ServerError { status: 503 });
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["recovered"], 1, "{s}");
    let i = stack.install(&flaky).await;
    assert_eq!((i.state, i.refresh_count), (InstallState::Active, 1));
    assert!(i.doubt_since_ms.is_none(), "a commit clears the doubt");
    assert!(stack.sim.ledger().is_live(i.refresh_token.expose()));

    // Dropped answer against a strict HighLevel (no same-token window): it
    // rotated, we never heard, the re-presentation earns Invalid grant. That
    // is `lost`, not `revoked`, and the simulator confirms the rotation.
    let dropped = InstallId::Company("dropped".into());
    let seeded = stack.seed_install(&dropped, "dropped", 60).await;
    stack.sim.push_fault(Fault::Drop);
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        (s["lost"].as_u64(), s["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    let i = stack.install(&dropped).await;
    assert_eq!(i.state, InstallState::Lost);
    assert!(i.due_at.is_none() && i.doubt_since_ms.is_some());
    assert!(
        i.state_reason
            .as_deref()
            .unwrap()
            .contains("unknown outcome"),
        "{:?}",
        i.state_reason
    );
    let ledger = stack.sim.ledger();
    let ours = ledger
        .tokens
        .iter()
        .find(|t| t.refresh_token == seeded.refresh_token.expose())
        .unwrap();
    let chain = ledger
        .newest_chain_for(ghl_sim::UserType::Company, "dropped", None)
        .unwrap();
    assert_eq!(
        ours.successor.as_deref(),
        Some(chain.newest_refresh_token.as_str())
    );
    assert_eq!(
        chain.newest_presented, 0,
        "the new pair never reached us: {chain:?} {ledger:?}"
    );
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["examined"], 0, "lost installs are not swept again: {s}");

    // Invalid client credentials: no install marked, run stopped with a stable errorType.
    let innocent = InstallId::Company("innocent".into());
    let before = stack.seed_install(&innocent, "innocent", 60).await;
    stack.sim.set_client_secret("rotated-on-highlevel");
    match sweep(&stack, Duration::from_secs(60)).await {
        Err(InvokeError::Function {
            error_type,
            error_message,
        }) => {
            assert_eq!(error_type, "InvalidClientCredentials");
            assert!(error_message.contains("invalid_client"), "{error_message}");
        }
        other => panic!("expected a function error, got {other:?}"),
    }
    let after = stack.install(&innocent).await;
    assert_eq!(
        (after.state, after.version, after.due_at),
        (InstallState::Active, before.version, before.due_at)
    );
    assert!(after.lease_owner.is_none(), "lease released");
    // Only the dropped token was presented twice, on purpose; none after its successor was used.
    assert_eq!(stack.sim.ledger().presented_twice(), 1);
    assert_eq!(stack.sim.counters().stale_presentations, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_stops_before_the_deadline_and_leaves_the_rest_due() {
    let stack = Stack::new().await;
    let ids = stack.seed_many("slow", 20, 60).await;
    stack.sim.set_faults(Faults {
        latency_ms: 700,
        ..Default::default()
    });
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("SWEEP_CONCURRENCY", "1"),
            ("GHL_HTTP_TIMEOUT_MS", "1500"),
            ("GHL_CONNECT_TIMEOUT_MS", "200"),
            ("GHL_REPRESENT_WINDOW_MS", "1000"),
            ("AWS_ATTEMPT_TIMEOUT_MS", "1500"),
            ("AWS_OPERATION_TIMEOUT_MS", "3000"),
            ("LEASE_SECS", "10"),
            ("SWEEP_DEADLINE_RESERVE_MS", "200"),
        ],
    );
    // Work stops 7.9 s before the deadline (timeouts + two 3 s writes +
    // reserve); 20 s leaves room for a slow cold start on a busy machine, and
    // at 700 ms a refresh, too little time for all 20.
    let s = sweep(&stack, Duration::from_secs(20)).await;
    let s = s.unwrap_or_else(|e| {
        panic!(
            "no answer before the deadline: {e:?}; logs: {:#?}",
            f.logs()
        )
    });
    assert_eq!(s["stopped"], "deadline", "{s}");
    assert_eq!(s["complete"], false);
    let refreshed = s["refreshed"].as_u64().unwrap();
    assert!((1..20).contains(&refreshed), "{s}");
    let mut still_due = 0;
    for id in &ids {
        let i = stack.install(id).await;
        if i.due_at.unwrap() <= now_secs() {
            still_due += 1;
            assert_eq!(i.refresh_count, 0);
            assert!(i.lease_owner.is_none(), "no lease left behind");
        }
    }
    assert_eq!(still_due, 20 - refreshed, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_obtained_but_never_committed_is_recovered_not_burned() {
    let stack = Stack::new().await;
    let id = InstallId::Company("crashy".into());
    let seeded = stack.seed_install(&id, "crashy", 60).await;
    // A worker takes the lease, refreshes, journals the new pair, and dies before the commit.
    let store = stack.store();
    let lease = store
        .acquire_lease(
            &id,
            &shared::store::lease_token("dead-worker"),
            Duration::from_secs(1),
            LeaseWhen::DueBy(now_secs()),
        )
        .await
        .unwrap();
    assert!(matches!(
        lease,
        shared::store::LeaseOutcome::Acquired { .. }
    ));
    let pair = stack.refresh_behind_the_back(&seeded).await;
    store
        .write_journal(&id, seeded.version + 1, &pair, "dead-worker")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let _f = stack.spawn("refresh-sweep", &[]);
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["recovered"], 1, "{s}");
    let i = stack.install(&id).await;
    assert_eq!(
        i.refresh_token, pair.refresh_token,
        "the journaled token was adopted"
    );
    assert_eq!(i.state, InstallState::Active);
    assert!(stack.sim.ledger().is_live(i.refresh_token.expose()));
    assert_eq!(
        stack.sim.ledger().presented_twice(),
        0,
        "the used token was not presented again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_looks_for_a_newer_token_before_revoking() {
    let stack = Stack::new().await;
    let id = InstallId::Company("journaled".into());
    let seeded = stack.seed_install(&id, "journaled", 60).await;
    // The commit after a successful refresh was lost; the lease was given back.
    let pair = stack.refresh_behind_the_back(&seeded).await;
    stack
        .store()
        .write_journal(&id, seeded.version + 1, &pair, "other")
        .await
        .unwrap();
    let _f = stack.spawn("refresh-sweep", &[]);
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["recovered"], 1, "{s}");
    let i = stack.install(&id).await;
    assert_eq!(i.state, InstallState::Active);
    assert_eq!(i.refresh_token, pair.refresh_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_breaker_stops_a_run_that_fails_the_same_way() {
    let stack = Stack::new().await;
    let ids = stack.seed_many("fleet", 30, 60).await;
    for id in &ids {
        stack.sim.revoke(ghl_sim::UserType::Company, id.id());
    }
    let _f = stack.spawn(
        "refresh-sweep",
        &[
            ("SWEEP_CONCURRENCY", "1"),
            ("BREAKER_MIN_ATTEMPTS", "10"),
            ("BREAKER_PERCENT", "50"),
        ],
    );
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["stopped"], "breaker:revoked", "{s}");
    // It trips at the 10th; the one refresh already at HighLevel then
    // (SWEEP_CONCURRENCY = 1) finishes and is recorded. Nothing after that.
    let revoked = s["revoked"].as_u64().unwrap();
    assert!((10..=11).contains(&revoked), "{s}");
    let mut active = 0;
    for id in &ids {
        if stack.install(id).await.state == InstallState::Active {
            active += 1;
        }
    }
    assert_eq!(active, 30 - revoked, "the rest were not marked");
}

/// Bulk seeding (benchmarks, the chaos run) must create exactly what an
/// install creates, or those runs measure something else.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_seeded_installs_match_saved_ones() {
    let stack = Stack::new().await;
    let saved = InstallId::Company("bulk-0".into());
    stack.seed_install(&saved, "bulk-0", 60).await;
    let bulk = stack.seed_many("bulk-x", 1, 60).await.remove(0);
    let items = stack.items().await;
    let item = |id: &InstallId| {
        items
            .iter()
            .find(|i| i["pk"].as_s().ok() == Some(&id.key()))
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let (a, b) = (item(&saved), item(&bulk));
    let names = |i: &testkit::stack::Item| {
        let mut k: Vec<String> = i.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(names(&a), names(&b), "same attributes");
    for same in [
        "state",
        "version",
        "install_count",
        "refresh_count",
        "failures",
        "user_type",
        "key_id",
    ] {
        assert_eq!(a.get(same), b.get(same), "{same}");
    }
    let (sa, sb) = (stack.install(&saved).await, stack.install(&bulk).await);
    assert_eq!((sa.version, sa.state), (sb.version, sb.state));
    assert!(sb.due_at.is_some() && !sb.stale_key);
    assert!(stack.sim.ledger().is_live(sb.refresh_token.expose()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_event_is_refused_and_changes_nothing() {
    let stack = Stack::new().await;
    stack.seed_many("bad-event", 3, 60).await;
    let before = stack.items().await;
    let f = stack.spawn("refresh-sweep", &[]);
    let event: Value = serde_json::from_str(include_str!(
        "../../../events/refresh-sweep/bad-not-an-event.json"
    ))
    .unwrap();
    let r = stack
        .api
        .invoke_with(event, InvokeOptions::with_deadline(Duration::from_secs(60)))
        .await;
    match r {
        Err(InvokeError::Function { error_message, .. }) => {
            assert!(
                error_message.contains("deserialize"),
                "says what was wrong: {error_message}"
            );
        }
        other => panic!("expected a function error, got {other:?}"),
    }
    assert_eq!(stack.items().await, before, "nothing changed");
    assert_eq!(stack.sim.ledger().tokens.len(), 3, "HighLevel never called");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

/// `state_changed_at` and `state_reason` say when and why the install
/// entered its state: a refresh that keeps it active leaves them alone and
/// records `last_refreshed_at`; a change of state rewrites them, and a
/// second failure in the same state keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn state_times_change_only_when_the_state_does() {
    let stack = Stack::new().await;
    let id = InstallId::Company("steady".into());
    let seeded = stack.seed_install(&id, "steady", 60).await;
    let _f = stack.spawn("refresh-sweep", &[]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let s = sweep(&stack, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s["refreshed"], 1, "{s}");
    let i = stack.install(&id).await;
    assert_eq!(i.state, InstallState::Active);
    assert_eq!(
        (i.state_changed_at, i.state_reason.as_deref()),
        (seeded.state_changed_at, seeded.state_reason.as_deref()),
        "a refresh is not a change of state"
    );
    assert!(
        i.last_refreshed_at
            .is_some_and(|t| t > seeded.state_changed_at),
        "{:?}",
        i.last_refreshed_at
    );

    // Two rate limits: the first enters `retrying`, the second keeps it.
    stack.make_due(&id).await;
    stack.sim.push_fault(Fault::RateLimited);
    sweep(&stack, Duration::from_secs(60)).await.unwrap();
    let first = stack.install(&id).await;
    assert_eq!(first.state, InstallState::Retrying, "{first:?}");
    assert!(first.state_changed_at > seeded.state_changed_at);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    stack.make_due(&id).await;
    stack.sim.push_fault(Fault::RateLimited);
    sweep(&stack, Duration::from_secs(60)).await.unwrap();
    let second = stack.install(&id).await;
    assert_eq!(second.state, InstallState::Retrying, "{second:?}");
    assert_eq!(second.state_changed_at, first.state_changed_at);
    assert_eq!(second.failures, first.failures + 1);
}

/// A refresh starts only with its whole re-presentation window before the
/// deadline: with time for one presentation and its writes but not the
/// window, the install is left due and its token is not presented.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_starts_only_with_its_whole_window_before_the_deadline() {
    let stack = Stack::new().await;
    let id = InstallId::Company("window-fits".into());
    let seeded = stack.seed_install(&id, "window-fits", 60).await;
    // One presentation and its writes: 0.3 + 1.5 + 2 × 1 s + the 0.5 s
    // reserve = 4.3 s; with the 4 s window, 8.3 s.
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("GHL_CONNECT_TIMEOUT_MS", "300"),
            ("GHL_HTTP_TIMEOUT_MS", "1500"),
            ("GHL_REPRESENT_WINDOW_MS", "4000"),
            ("AWS_ATTEMPT_TIMEOUT_MS", "1000"),
            ("AWS_OPERATION_TIMEOUT_MS", "1000"),
            ("LEASE_SECS", "10"),
            ("SWEEP_DEADLINE_RESERVE_MS", "500"),
        ],
    );
    let s = sweep(&stack, Duration::from_secs(7))
        .await
        .unwrap_or_else(|e| panic!("{e:?}; logs: {:#?}", f.logs()));
    assert_eq!(
        (s["examined"].as_u64(), s["refreshed"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["stillDue"], 1, "{s}");
    assert_eq!(s["stopped"], "deadline", "{s}");
    let i = stack.install(&id).await;
    assert!(i.lease_owner.is_none() && i.due_at.unwrap() <= now_secs());
    assert_eq!(stack.sim.counters().refreshes, 0, "nothing was presented");

    let s = sweep(&stack, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e:?}; logs: {:#?}", f.logs()));
    assert_eq!(s["refreshed"], 1, "{s}");
    assert_eq!(stack.install(&id).await.version, seeded.version + 1);
}
