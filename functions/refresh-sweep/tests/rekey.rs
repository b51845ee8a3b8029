//! Data-key rotation while sweeps run: `installs-admin rekey` re-seals every
//! install under the new key, concurrently with two sweeps refreshing the
//! same installs. Afterwards every install opens with the new key alone,
//! none was lost, and no refresh token was presented twice.

use ghl_sim::Faults;
use shared::crypto::Keyring;
use shared::model::InstallId;
use shared::redact::SecretString;
use shared::store::Store;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::InvokeOptions;
use testkit::stack::{Stack, scheduled_event};

#[tokio::test(flavor = "multi_thread")]
async fn rekey_under_running_sweeps_loses_nothing() {
    let mut stack = Stack::new().await;
    let due = stack.seed_many("rk-due", 120, 60).await;
    let fresh = stack.seed_many("rk-fresh", 80, 86_399).await;
    let new_key = stack.rotate_data_key("k2").await;
    stack.sim.set_faults(Faults {
        latency_ms: 30,
        ..Default::default()
    });

    let env = [testkit::stack::PATIENT_AWS, &[("SWEEP_CONCURRENCY", "8")]].concat();
    let sweeps = [
        stack.spawn("refresh-sweep", &env),
        stack.spawn("refresh-sweep", &env),
    ];
    let env = stack.env();
    let rekey = async {
        // Start once the sweeps are under way, so the two really overlap.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::process::Command::new(testkit::workspace_bin("installs-admin"))
            .arg("rekey")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await
            .expect("installs-admin runs")
    };
    let opts = || InvokeOptions::with_deadline(Duration::from_secs(120));
    let (a, b, out) = tokio::join!(
        stack.api.invoke_with(scheduled_event(), opts()),
        stack.api.invoke_with(scheduled_event(), opts()),
        rekey
    );
    let (a, b) = (a.expect("sweep a answers"), b.expect("sweep b answers"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("sweep a: {a}\nsweep b: {b}\nrekey: {stdout}{stderr}");
    assert!(out.status.success(), "rekey failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    assert_eq!(summary["examined"], 200, "{summary}");
    assert_eq!(summary["left"], serde_json::json!([]), "{summary}");
    assert!(
        summary["resealed"].as_u64().unwrap() > 0,
        "some installs were still under k1 when rekey reached them: {summary}"
    );
    // An install the rekey held when both sweeps reached it was skipped as
    // locked and is still due: one more run refreshes exactly those.
    let c = stack
        .api
        .invoke_with(scheduled_event(), opts())
        .await
        .expect("sweep c answers");
    assert_eq!(
        a["refreshed"].as_u64().unwrap()
            + b["refreshed"].as_u64().unwrap()
            + c["refreshed"].as_u64().unwrap(),
        120,
        "every due install refreshed exactly once: {a} {b} {c}"
    );

    // Only the new key: anything still sealed under k1 fails to open.
    let only_new = Keyring::from_base64(
        "k2",
        &BTreeMap::from([("k2".to_owned(), SecretString::new(new_key.expose()))]),
    )
    .expect("k2 alone is a keyring");
    let reader = Store::new(
        stack.ddb.clone(),
        &stack.table,
        only_new,
        stack.store().due_policy().clone(),
    );
    let ledger = stack.sim.ledger();
    let all: Vec<&InstallId> = due.iter().chain(fresh.iter()).collect();
    for id in &all {
        let i = reader
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("{id} unreadable with the new key alone: {e}"))
            .unwrap_or_else(|| panic!("{id} lost"));
        assert!(!i.stale_key, "{id} still under an old key");
        assert!(
            ledger.is_live(i.refresh_token.expose()),
            "{id} holds a dead refresh token"
        );
        assert_eq!(i.state.as_str(), "active", "{id}");
        assert!(i.lease_owner.is_none(), "{id} left leased");
    }
    assert_eq!(ledger.presented_twice(), 0);
    for f in &sweeps {
        stack
            .assert_logs_clean(&f.logs(), &[new_key.expose()])
            .await;
    }
    assert!(!stdout.contains(new_key.expose()) && !stderr.contains(new_key.expose()));
}
