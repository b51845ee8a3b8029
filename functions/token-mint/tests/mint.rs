//! `token-mint` run as real processes under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator.

use ghl_sim::{Fault, Faults, SimConfig};
use serde_json::{Value, json};
use shared::model::{InstallId, InstallState, now_secs};
use std::time::Duration;
use testkit::join_all;
use testkit::stack::{Stack, scheduled_event};
use testkit::{InvokeError, InvokeOptions};

async fn invoke(stack: &Stack, event: Value) -> Result<Value, InvokeError> {
    stack
        .api
        .invoke_with(event, InvokeOptions::with_deadline(Duration::from_secs(30)))
        .await
}

fn error_type(r: Result<Value, InvokeError>) -> (String, String) {
    match r {
        Err(InvokeError::Function {
            error_type,
            error_message,
        }) => (error_type, error_message),
        other => panic!("expected a function error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_source_in_order_and_never_a_refresh_token() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-1".into()), "co-1", 86_399)
        .await;
    stack.sim.add_locations("co-1", &[("loc-1", "One")]);
    let f = stack.spawn("token-mint", &[]);

    let minted = invoke(&stack, json!({"locationId": "loc-1", "companyId": "co-1"}))
        .await
        .unwrap();
    assert_eq!(minted["source"], "minted", "{minted}");
    assert_eq!(minted["tokenType"], "Bearer");
    assert_eq!(minted["userType"], "Location");
    assert_eq!(minted["locationId"], "loc-1");
    assert_eq!(minted["companyId"], "co-1");
    assert!(minted["expiresIn"].as_i64().unwrap() > 86_000);
    assert!(minted["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert!(minted.get("refreshToken").is_none() && !minted.to_string().contains("refresh"));
    // The minted grant is stored, encrypted, with its refresh token, for the sweep to keep alive.
    let stored = stack.install(&InstallId::Minted("loc-1".into())).await;
    assert_eq!(
        stored.access_token.expose(),
        minted["accessToken"].as_str().unwrap()
    );
    assert!(stack.sim.ledger().is_live(stored.refresh_token.expose()));
    assert!(stored.due_at.is_some());

    // Served from the store; companyId is optional once the store knows the location.
    let cached = invoke(&stack, json!({"locationId": "loc-1"}))
        .await
        .unwrap();
    assert_eq!(cached["source"], "cache");
    assert_eq!(cached["accessToken"], minted["accessToken"]);
    assert_eq!(stack.sim.counters().location_mints.get("loc-1"), Some(&1));

    // A direct Location install is used (and refreshed first when near expiry).
    let own = InstallId::Location("loc-2".into());
    stack.seed_install(&own, "co-1", 100).await;
    let r = invoke(
        &stack,
        json!({"locationId": "loc-2", "minValiditySeconds": 300}),
    )
    .await
    .unwrap();
    assert_eq!(r["source"], "location-install", "{r}");
    let i = stack.install(&own).await;
    assert_eq!(i.refresh_count, 1, "refreshed under the lease protocol");
    assert_eq!(r["accessToken"].as_str().unwrap(), i.access_token.expose());
    assert!(!stack.sim.counters().location_mints.contains_key("loc-2"));

    // Audit lines carry a fingerprint, never the token.
    let logs = f.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"audit\":true") && l.contains("token_fp"))
    );
    stack.assert_logs_clean(&logs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn min_validity_boundary_and_cache_expiry() {
    let stack = Stack::with_sim(SimConfig {
        access_token_ttl_secs: 3_000,
        ..SimConfig::default()
    })
    .await;
    stack
        .seed_install(&InstallId::Company("co-b".into()), "co-b", 86_399)
        .await;
    stack.sim.add_locations("co-b", &[("loc-b", "B")]);
    let _f = stack.spawn("token-mint", &[]);
    let first = invoke(&stack, json!({"locationId": "loc-b", "companyId": "co-b"}))
        .await
        .unwrap();
    assert_eq!(first["source"], "minted");
    let left = first["expiresIn"].as_i64().unwrap();
    assert!((2_990..=3_000).contains(&left), "{first}");
    // Just inside: served from cache.
    let r = invoke(
        &stack,
        json!({"locationId": "loc-b", "minValiditySeconds": left - 30}),
    )
    .await
    .unwrap();
    assert_eq!(r["source"], "cache");
    // Just outside: the cached token is not good enough.
    let r = invoke(
        &stack,
        json!({"locationId": "loc-b", "minValiditySeconds": left + 30}),
    )
    .await
    .unwrap();
    assert_ne!(r["source"], "cache", "{r}");
    assert_ne!(r["accessToken"], first["accessToken"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_mints_for_one_location_make_one_highlevel_call() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-s".into()), "co-s", 86_399)
        .await;
    stack.sim.add_locations("co-s", &[("loc-s", "S")]);
    stack.sim.set_faults(Faults {
        latency_ms: 300,
        ..Default::default()
    });
    let _procs: Vec<_> = (0..4).map(|_| stack.spawn("token-mint", &[])).collect();
    let calls: Vec<_> = (0..8)
        .map(|_| invoke(&stack, json!({"locationId": "loc-s", "companyId": "co-s"})))
        .collect();
    let results = join_all(calls).await;
    let tokens: std::collections::HashSet<String> = results
        .iter()
        .map(|r| {
            r.as_ref().expect("every caller served")["accessToken"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "everyone got the one minted token");
    assert_eq!(stack.sim.counters().location_mints.get("loc-s"), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn company_token_near_expiry_is_refreshed_once_while_a_sweep_runs() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co-n".into());
    let before = stack.seed_install(&company, "co-n", 120).await;
    let locs: Vec<String> = (0..5).map(|i| format!("loc-n{i}")).collect();
    let pairs: Vec<(&str, &str)> = locs.iter().map(|l| (l.as_str(), l.as_str())).collect();
    stack.sim.add_locations("co-n", &pairs);
    stack.sim.set_faults(Faults {
        latency_ms: 200,
        ..Default::default()
    });
    let _mints: Vec<_> = (0..3).map(|_| stack.spawn("token-mint", &[])).collect();
    let sweep_api = testkit::RuntimeApi::start().await.unwrap();
    let _sweep = stack.spawn_on(&sweep_api, "refresh-sweep", &[]);
    let api = &stack.api;
    let opts = || InvokeOptions::with_deadline(Duration::from_secs(60));
    let mut calls = vec![sweep_api.invoke_with(scheduled_event(), opts())];
    for l in &locs {
        calls.push(api.invoke_with(json!({"locationId": l, "companyId": "co-n"}), opts()));
    }
    let outs: Vec<Value> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("served"))
        .collect();
    let after = stack.install(&company).await;
    assert_eq!(
        after.version,
        before.version + 1,
        "the company token was refreshed exactly once"
    );
    assert!(stack.sim.ledger().is_live(after.refresh_token.expose()));
    assert_eq!(
        stack.sim.ledger().presented_twice(),
        0,
        "no refresh token presented twice"
    );
    assert_eq!(
        outs.iter().filter(|o| o["source"] == "minted").count(),
        5,
        "{outs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_location_grant_heals_from_the_company() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-h".into()), "co-h", 86_399)
        .await;
    let own = InstallId::Location("loc-h".into());
    stack.seed_install(&own, "co-h", 60).await;
    stack.sim.revoke(ghl_sim::UserType::Location, "loc-h");
    let _f = stack.spawn("token-mint", &[]);
    let r = invoke(&stack, json!({"locationId": "loc-h"}))
        .await
        .unwrap();
    assert_eq!(r["source"], "minted", "{r}");
    assert_eq!(stack.install(&own).await.state, InstallState::Revoked);
}

#[tokio::test(flavor = "multi_thread")]
async fn installed_locations_are_paged_through() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-p".into()), "co-p", 86_399)
        .await;
    let ids: Vec<String> = (0..250).map(|i| format!("loc-p{i:03}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|l| (l.as_str(), "Sub-account")).collect();
    stack.sim.add_locations("co-p", &pairs);
    let _f = stack.spawn("token-mint", &[]);
    let r = invoke(
        &stack,
        json!({"action": "listInstalledLocations", "companyId": "co-p"}),
    )
    .await
    .unwrap();
    assert_eq!(r["count"], 250, "{}", r["count"]);
    let got: std::collections::BTreeSet<&str> = r["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["locationId"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 250);
    assert!(ids.iter().all(|i| got.contains(i.as_str())));
    assert_eq!(stack.sim.counters().installed_locations_calls, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_stable_types_and_bad_input_changes_nothing() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-e".into()), "co-e", 86_399)
        .await;
    stack.sim.add_locations("co-e", &[("loc-e", "E")]);
    let _f = stack.spawn("token-mint", &[]);
    let before = stack.items().await;
    let long = "x".repeat(10_240);
    for (event, expect) in [
        (json!({}), "locationId is required"),
        (json!({"locationId": 42}), "must be a string"),
        (
            json!({"locationId": "l", "minValiditySeconds": "soon"}),
            "must be a number",
        ),
        (json!({"locationId": long}), "at most 64"),
        (json!({"action": "deleteEverything"}), "unknown action"),
        (json!("just a string"), "JSON object"),
    ] {
        let (t, m) = error_type(invoke(&stack, event.clone()).await);
        assert_eq!(t, "InvalidRequest", "{event}");
        assert!(m.contains(expect), "{m}");
        assert!(m.len() < 300);
    }
    let (t, _) = error_type(invoke(&stack, json!({"locationId": "nowhere"})).await);
    assert_eq!(t, "InstallNotFound");
    let (t, m) = error_type(
        invoke(
            &stack,
            json!({"locationId": "loc-x", "companyId": "co-unknown"}),
        )
        .await,
    );
    assert_eq!(t, "InstallNotFound", "{m}");
    assert_eq!(stack.items().await, before, "bad input changed the table");
    assert_eq!(
        stack.sim.counters().location_mints.len(),
        0,
        "bad input reached HighLevel"
    );

    let (t, m) = error_type(
        invoke(
            &stack,
            json!({"locationId": "loc-other", "companyId": "co-e"}),
        )
        .await,
    );
    assert_eq!(t, "LocationNotInstalled", "{m}");

    stack.sim.push_fault(Fault::RateLimited);
    let (t, m) =
        error_type(invoke(&stack, json!({"locationId": "loc-e", "companyId": "co-e"})).await);
    assert_eq!(t, "RateLimited", "{m}");
    assert!(m.contains("retry after"));
    stack.sim.push_fault(Fault::ServerError { status: 502 });
    let (t, _) =
        error_type(invoke(&stack, json!({"locationId": "loc-e", "companyId": "co-e"})).await);
    assert_eq!(t, "UpstreamUnavailable");

    // A revoked company grant needs the agency to reinstall.
    let co_r = InstallId::Company("co-r".into());
    stack.seed_install(&co_r, "co-r", 60).await;
    stack.sim.add_locations("co-r", &[("loc-r", "R")]);
    stack.sim.revoke(ghl_sim::UserType::Company, "co-r");
    let (t, m) =
        error_type(invoke(&stack, json!({"locationId": "loc-r", "companyId": "co-r"})).await);
    assert_eq!(t, "NeedsReauthorization", "{m}");
    assert!(m.contains("reinstall"));
    assert!(now_secs() > 0);
}
