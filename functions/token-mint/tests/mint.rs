//! `token-mint` run as real processes under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator.

use ghl_sim::{Fault, Faults, SimConfig};
use serde_json::{Value, json};
use shared::model::{InstallId, InstallState, now_secs};
use std::time::{Duration, Instant};
use testkit::join_all;
use testkit::stack::{Stack, scheduled_event};
use testkit::{FunctionProcess, InvokeError, InvokeOptions};

async fn invoke(stack: &Stack, event: Value) -> Result<Value, InvokeError> {
    stack
        .api
        .invoke_with(event, InvokeOptions::with_deadline(Duration::from_secs(60)))
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
    // Three pages and the one past `count` that confirms the end.
    assert_eq!(stack.sim.counters().installed_locations_calls, 4);
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

/// A successful answer; on anything else, panics with every line the
/// processes logged (a process whose config is invalid never answers).
fn served(r: Result<Value, InvokeError>, procs: &[&FunctionProcess]) -> Value {
    match r {
        Ok(v) => v,
        Err(e) => panic!("expected an answer, got {e:?}; logs:\n{}", all_logs(procs)),
    }
}

/// A function error's (errorType, errorMessage); on anything else, panics
/// with the processes' logs.
fn failed(r: Result<Value, InvokeError>, procs: &[&FunctionProcess]) -> (String, String) {
    match r {
        Err(InvokeError::Function {
            error_type,
            error_message,
        }) => (error_type, error_message),
        Ok(mut v) => {
            // Test output is no place for a token either.
            if let Some(t) = v.get_mut("accessToken") {
                *t = "[redacted]".into();
            }
            panic!(
                "expected a function error, got the answer {v}; logs:\n{}",
                all_logs(procs)
            )
        }
        Err(e) => panic!(
            "expected a function error, got {e:?}; logs:\n{}",
            all_logs(procs)
        ),
    }
}

fn all_logs(procs: &[&FunctionProcess]) -> String {
    procs
        .iter()
        .flat_map(|p| p.logs())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ledger's entry for a refresh token.
fn ledger_entry(stack: &Stack, refresh_token: &str) -> ghl_sim::TokenEntry {
    stack
        .sim
        .ledger()
        .tokens
        .into_iter()
        .find(|t| t.refresh_token == refresh_token)
        .expect("the simulator issued this refresh token")
}

/// Every key that appears more than once in one JSON object, at any depth
/// (`a.b` for a nested object's key). A `serde_json::Value` keeps only the
/// last of duplicate keys, so this walks the raw text with a visitor.
fn duplicate_keys(line: &str) -> Result<Vec<String>, serde_json::Error> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;

    struct Dups(Vec<String>);
    struct DupVisitor;

    impl<'de> Visitor<'de> for DupVisitor {
        type Value = Dups;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_str<E>(self, _: &str) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_unit<E>(self) -> Result<Dups, E> {
            Ok(Dups(Vec::new()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dups, A::Error> {
            let mut out = Vec::new();
            while let Some(Dups(inner)) = seq.next_element()? {
                out.extend(inner);
            }
            Ok(Dups(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dups, A::Error> {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let Dups(inner) = map.next_value()?;
                out.extend(inner.into_iter().map(|k| format!("{key}.{k}")));
                if !seen.insert(key.clone()) {
                    out.push(key);
                }
            }
            Ok(Dups(out))
        }
    }

    impl<'de> Deserialize<'de> for Dups {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dups, D::Error> {
            d.deserialize_any(DupVisitor)
        }
    }

    serde_json::from_str::<Dups>(line).map(|Dups(d)| d)
}

#[test]
fn the_duplicate_key_checker_sees_what_a_value_hides() {
    let line = r#"{"level":"WARN","message":"the text","message":"mint failed","n":{"a":1,"a":[{"b":2,"b":3}]}}"#;
    assert_eq!(
        serde_json::from_str::<Value>(line).unwrap()["message"],
        "mint failed",
        "a Value silently keeps the last duplicate"
    );
    let mut dups = duplicate_keys(line).unwrap();
    dups.sort();
    assert_eq!(
        dups,
        ["message", "n.a", "n.a.b"],
        "every duplicate, at every depth"
    );
    assert!(
        duplicate_keys(r#"{"message":"m","reason":"r","x":[1,null,true,"s",1.5]}"#)
            .unwrap()
            .is_empty()
    );
    assert!(duplicate_keys("not json").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mint_without_time_to_store_presents_nothing() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co-t".into());
    // Near expiry: the company token must be refreshed before it can mint.
    let before = stack.seed_install(&company, "co-t", 100).await;
    stack.sim.add_locations("co-t", &[("loc-t", "T")]);
    let (connect_ms, http_ms, aws_op_ms) = (3_000u64, 10_000u64, 5_000u64);
    let f = stack.spawn(
        "token-mint",
        &[
            ("GHL_CONNECT_TIMEOUT_MS", "3000"),
            ("GHL_HTTP_TIMEOUT_MS", "10000"),
            ("AWS_OPERATION_TIMEOUT_MS", "5000"),
        ],
    );
    let deadline = Duration::from_secs(10);
    // One presentation and its two writes, plus the handler's reserve, do not fit.
    let needed = Duration::from_millis(connect_ms + http_ms + 2 * aws_op_ms + 500);
    assert!(needed > deadline, "the deadline must be too short");
    let items_before = stack.items().await;

    let mint = || {
        stack.api.invoke_with(
            json!({"locationId": "loc-t", "companyId": "co-t"}),
            InvokeOptions::with_deadline(deadline),
        )
    };
    let started = Instant::now();
    let (t, m) = failed(mint().await, &[&f]);
    assert_eq!(t, "UpstreamUnavailable", "{m}");
    assert!(m.contains("too little time is left"), "{m}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting out the deadline: {:?}",
        started.elapsed()
    );

    // The company's refresh token was never presented and still works.
    let entry = ledger_entry(&stack, before.refresh_token.expose());
    assert!(entry.live, "{entry:?}");
    assert_eq!(entry.presented, 0, "{entry:?}");
    assert_eq!(stack.sim.counters().refreshes, 0);
    assert!(stack.sim.counters().location_mints.is_empty());
    let after = stack.install(&company).await;
    assert_eq!(after.lease_owner, None, "no lease left behind");
    assert_eq!(after.lease_until_ms, None);
    assert_eq!(after.state, InstallState::Active);
    assert_eq!(after.version, before.version);
    assert_eq!(after.doubt_since_ms, None);
    assert_eq!(after.refresh_token.expose(), before.refresh_token.expose());
    // Nothing was written: no lease, no mint lock, no minted grant.
    assert_eq!(stack.items().await, items_before, "the table changed");

    // A fresh company token, too: no location token is minted that could
    // not be stored (nobody would keep its chain alive).
    stack
        .seed_install(&InstallId::Company("co-f".into()), "co-f", 86_399)
        .await;
    stack.sim.add_locations("co-f", &[("loc-f", "F")]);
    let items_before = stack.items().await;
    let (t, m) = failed(
        stack
            .api
            .invoke_with(
                json!({"locationId": "loc-f", "companyId": "co-f"}),
                InvokeOptions::with_deadline(deadline),
            )
            .await,
        &[&f],
    );
    assert_eq!(t, "UpstreamUnavailable", "{m}");
    assert!(m.contains("too little time is left"), "{m}");
    assert!(stack.sim.counters().location_mints.is_empty());
    assert_eq!(stack.items().await, items_before, "the table changed");

    // With time enough, the same process mints (the config was valid all along).
    let ok = served(
        invoke(&stack, json!({"locationId": "loc-t", "companyId": "co-t"})).await,
        &[&f],
    );
    assert_eq!(ok["source"], "minted", "{ok}");
    assert_eq!(stack.install(&company).await.refresh_count, 1);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refreshed_minted_grant_is_labelled_refreshed() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-m".into()), "co-m", 86_399)
        .await;
    // A grant minted earlier, now 100 s from expiry.
    let minted_id = InstallId::Minted("loc-m".into());
    let before = stack.seed_install(&minted_id, "co-m", 100).await;
    stack.sim.add_locations("co-m", &[("loc-m", "M")]);
    let f = stack.spawn("token-mint", &[]);

    let r = served(
        invoke(
            &stack,
            json!({"locationId": "loc-m", "minValiditySeconds": 300}),
        )
        .await,
        &[&f],
    );
    assert_eq!(r["source"], "refreshed", "{r}");
    let after = stack.install(&minted_id).await;
    assert_eq!(
        after.refresh_count,
        before.refresh_count + 1,
        "refreshed once"
    );
    assert_eq!(after.version, before.version + 1);
    assert_eq!(
        r["accessToken"].as_str().unwrap(),
        after.access_token.expose()
    );
    assert_ne!(
        r["accessToken"].as_str().unwrap(),
        before.access_token.expose()
    );
    assert!(r["expiresIn"].as_i64().unwrap() > 86_000, "{r}");
    assert!(!ledger_entry(&stack, before.refresh_token.expose()).live);
    assert!(stack.sim.ledger().is_live(after.refresh_token.expose()));
    let counters = stack.sim.counters();
    assert_eq!(counters.refreshes, 1);
    assert_eq!(
        counters.location_mints.get("loc-m"),
        None,
        "the minted chain was kept, not replaced by a new mint"
    );

    // Now it is fresh: served as is.
    let again = served(invoke(&stack, json!({"locationId": "loc-m"})).await, &[&f]);
    assert_eq!(again["source"], "cache", "{again}");
    assert_eq!(again["accessToken"], r["accessToken"]);
    assert_eq!(stack.sim.counters().refreshes, 1);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_lines_carry_each_json_key_once() {
    let stack = Stack::new().await;
    let f = stack.spawn("token-mint", &[]);
    let cases = [
        (
            json!({"locationId": "nowhere"}),
            "InstallNotFound",
            "mint failed",
        ),
        (json!({}), "InvalidRequest", "mint rejected"),
        (
            json!({"action": "listInstalledLocations", "companyId": "co-none"}),
            "InstallNotFound",
            "listing failed",
        ),
    ];
    let mut errors = Vec::new();
    for (event, want_type, _) in &cases {
        let (t, m) = failed(invoke(&stack, event.clone()).await, &[&f]);
        assert_eq!(&t, want_type, "{event}: {m}");
        errors.push(m);
    }

    let logs = f.logs();
    let mut lines = Vec::new();
    for line in &logs {
        let v: serde_json::Map<String, Value> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not a JSON object ({e}): {line}"));
        let dups = duplicate_keys(line).expect("parsed once already");
        assert!(dups.is_empty(), "keys {dups:?} appear twice in: {line}");
        lines.push(v);
    }
    for ((_, want_type, event_name), text) in cases.iter().zip(&errors) {
        let warn: Vec<_> = lines
            .iter()
            .filter(|l| l.get("level").and_then(Value::as_str) == Some("WARN"))
            .filter(|l| l.values().any(|v| v.as_str() == Some(text.as_str())))
            .collect();
        assert_eq!(
            warn.len(),
            1,
            "one WARN line carries {text:?}:\n{}",
            logs.join("\n")
        );
        let warn = warn[0];
        assert_eq!(warn["message"], *event_name, "{warn:?}");
        assert_eq!(warn["error"], *want_type, "{warn:?}");
        let text_keys: Vec<&String> = warn
            .iter()
            .filter(|(_, v)| v.as_str() == Some(text.as_str()))
            .map(|(k, _)| k)
            .collect();
        assert!(
            !text_keys.is_empty() && text_keys.iter().all(|k| *k != "message"),
            "the error text is under its own key, not `message`: {warn:?}"
        );
    }
    stack.assert_logs_clean(&logs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_company_refresh_with_an_unknown_outcome_is_presented_again() {
    let stack = Stack::new().await;
    stack.sim.set_refresh_grace_secs(30);
    let f = stack.spawn("token-mint", &[]);
    // The answer is lost after HighLevel rotated the token: a 502, then a cut connection.
    for (n, fault) in [
        (1, Fault::ServerErrorAfterRotate { status: 502 }),
        (2, Fault::Drop),
    ] {
        let co = format!("co-u{n}");
        let loc = format!("loc-u{n}");
        let company = InstallId::Company(co.clone());
        let before = stack.seed_install(&company, &co, 100).await;
        stack.sim.add_locations(&co, &[(loc.as_str(), "U")]);
        let replays = stack.sim.counters().grace_replays;
        stack.sim.push_fault(fault.clone());

        let r = served(
            invoke(&stack, json!({"locationId": loc, "companyId": co})).await,
            &[&f],
        );
        assert_eq!(r["source"], "minted", "{fault:?}: {r}");
        assert_eq!(
            stack.sim.counters().location_mints.get(&loc),
            Some(&1),
            "{fault:?}"
        );

        let after = stack.install(&company).await;
        assert_eq!(after.state, InstallState::Active, "{fault:?}: {after:?}");
        assert_eq!(after.version, before.version + 1, "{fault:?}");
        assert_eq!(after.doubt_since_ms, None, "{fault:?}");
        assert_eq!(after.lease_owner, None, "{fault:?}");
        let chain = stack
            .sim
            .ledger()
            .newest_chain_for(ghl_sim::UserType::Company, &co, None)
            .expect("the company's chain");
        assert_eq!(
            after.refresh_token.expose(),
            chain.newest_refresh_token,
            "{fault:?}: the install holds its chain's newest token"
        );
        assert!(chain.newest_live, "{fault:?}: {chain:?}");
        assert_eq!(chain.issued, 2, "{fault:?}: rotated once: {chain:?}");
        let first = ledger_entry(&stack, before.refresh_token.expose());
        assert_eq!(first.presented, 2, "{fault:?}: presented again: {first:?}");
        assert_eq!(
            first.successor.as_deref(),
            Some(after.refresh_token.expose()),
            "{fault:?}"
        );
        let counters = stack.sim.counters();
        assert!(
            counters.grace_replays > replays,
            "{fault:?}: answered from the window: {counters:?}"
        );
        assert_eq!(counters.stale_presentations, 0, "{counters:?}");
    }
    assert_eq!(stack.sim.counters().faults_injected, 2);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

/// A TCP proxy in front of moto with DynamoDB's latency tail: each chunk a
/// client sends passes at once, except one in `tail_in` that is held
/// `tail_ms` (a random point of the range) first. Two callers' requests then
/// reach the table in another order than they were sent. Returns the
/// endpoint URL for `AWS_ENDPOINT_URL`.
async fn aws_endpoint_with_latency_tail(tail_in: u64, tail_ms: std::ops::Range<u64>) -> String {
    use std::hash::{BuildHasher, Hasher};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = testkit::stack::aws_endpoint();
    let upstream = upstream
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("proxy binds");
    let local = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        let seed = std::collections::hash_map::RandomState::new();
        let mut n = 0u64;
        while let Ok((client, _)) = listener.accept().await {
            n += 1;
            let (upstream, seed, tail_ms) = (upstream.clone(), seed.clone(), tail_ms.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut chunk = 0u64;
                    loop {
                        let len = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(len) => len,
                        };
                        chunk += 1;
                        let mut h = seed.build_hasher();
                        h.write_u64(n);
                        h.write_u64(chunk);
                        let roll = h.finish();
                        if roll % tail_in == 0 {
                            let ms = tail_ms.start + (roll >> 32) % (tail_ms.end - tail_ms.start);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        if to_server.write_all(&buf[..len]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    format!("http://{local}")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_waves_of_concurrent_mints_for_one_location_make_one_highlevel_call() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-w".into()), "co-w", 86_399)
        .await;
    let warm: Vec<String> = (0..16).map(|i| format!("loc-warm{i}")).collect();
    let rounds: Vec<String> = (0..3).map(|i| format!("loc-w{i}")).collect();
    let locs: Vec<(&str, &str)> = warm
        .iter()
        .chain(&rounds)
        .map(|l| (l.as_str(), "W"))
        .collect();
    stack.sim.add_locations("co-w", &locs);
    stack.sim.set_faults(Faults {
        latency_ms: 500,
        ..Default::default()
    });
    // One DynamoDB call in four takes 150-250 ms more: a caller's read can
    // come before the winner's write of the token while its lock attempt
    // comes after the winner's unlock.
    let endpoint = aws_endpoint_with_latency_tail(4, 150..250).await;
    let procs: Vec<FunctionProcess> = (0..16)
        .map(|_| stack.spawn("token-mint", &[("AWS_ENDPOINT_URL", endpoint.as_str())]))
        .collect();
    let refs: Vec<&FunctionProcess> = procs.iter().collect();
    // Past their cold starts first, so the waves really run side by side.
    let warm_up: Vec<_> = warm
        .iter()
        .map(|l| invoke(&stack, json!({"locationId": l, "companyId": "co-w"})))
        .collect();
    for r in join_all(warm_up).await {
        served(r, &refs);
    }

    // The race is one of timing: three rounds, one location each.
    for loc in &rounds {
        let mint = || invoke(&stack, json!({"locationId": loc, "companyId": "co-w"}));
        let items = stack.items().await.len();
        let first: Vec<_> = (0..8).map(|_| mint()).collect();
        // The second wave starts once the first wave's winner has written
        // its lock (the first write any of them makes) and waits for
        // HighLevel: the newcomers read, miss and join the others polling
        // for the token while the winner stores it and gives up the lock.
        let second = async {
            let waiting = Instant::now();
            while stack.items().await.len() == items {
                assert!(
                    waiting.elapsed() < Duration::from_secs(25),
                    "the first wave never took the lock"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                !stack.sim.counters().location_mints.contains_key(loc),
                "the second wave started too late"
            );
            join_all((0..8).map(|_| mint()).collect()).await
        };
        let (first, second) = tokio::join!(join_all(first), second);
        let results: Vec<Value> = first
            .into_iter()
            .chain(second)
            .map(|r| served(r, &refs))
            .collect();
        let sources: Vec<&str> = results
            .iter()
            .map(|r| r["source"].as_str().unwrap())
            .collect();
        assert_eq!(
            stack.sim.counters().location_mints.get(loc),
            Some(&1),
            "{loc}: exactly one HighLevel call for the location; sources {sources:?}"
        );
        assert_eq!(results.len(), 16);
        let tokens: std::collections::HashSet<&str> = results
            .iter()
            .map(|r| r["accessToken"].as_str().unwrap())
            .collect();
        assert_eq!(tokens.len(), 1, "{loc}: everyone got the one minted token");
        assert_eq!(
            sources.iter().filter(|s| **s == "minted").count(),
            1,
            "{loc}: {sources:?}"
        );
        assert!(
            sources.iter().all(|s| *s == "minted" || *s == "cache"),
            "{loc}: {sources:?}"
        );
        let stored = stack.install(&InstallId::Minted(loc.clone())).await;
        assert_eq!(
            stored.access_token.expose(),
            results[0]["accessToken"].as_str().unwrap(),
            "{loc}: the token served is the one stored"
        );
    }
    let logs: Vec<String> = procs.iter().flat_map(|p| p.logs()).collect();
    stack.assert_logs_clean(&logs, &[]).await;
}

/// The mint refreshes a company grant only with the whole re-presentation
/// window before its deadline, not just one presentation and its writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_mint_refreshes_only_with_the_whole_window_before_its_deadline() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co-w".into());
    let before = stack.seed_install(&company, "co-w", 100).await;
    stack.sim.add_locations("co-w", &[("loc-w", "W")]);
    // One presentation and its writes: 0.3 + 1.5 + 2 × 1 s = 3.8 s; with the
    // 6 s window 9.8 s; the handler keeps 0.5 s.
    let f = stack.spawn(
        "token-mint",
        &[
            ("GHL_CONNECT_TIMEOUT_MS", "300"),
            ("GHL_HTTP_TIMEOUT_MS", "1500"),
            ("GHL_REPRESENT_WINDOW_MS", "6000"),
            ("AWS_ATTEMPT_TIMEOUT_MS", "1000"),
            ("AWS_OPERATION_TIMEOUT_MS", "1000"),
            ("LEASE_SECS", "15"),
        ],
    );
    let items_before = stack.items().await;
    let (t, m) = failed(
        stack
            .api
            .invoke_with(
                json!({"locationId": "loc-w", "companyId": "co-w"}),
                InvokeOptions::with_deadline(Duration::from_secs(8)),
            )
            .await,
        &[&f],
    );
    assert_eq!(t, "UpstreamUnavailable", "{m}");
    assert!(m.contains("too little time is left"), "{m}");
    let entry = ledger_entry(&stack, before.refresh_token.expose());
    assert_eq!(entry.presented, 0, "{entry:?}");
    assert_eq!(stack.items().await, items_before, "the table changed");

    let ok = served(
        stack
            .api
            .invoke_with(
                json!({"locationId": "loc-w", "companyId": "co-w"}),
                InvokeOptions::with_deadline(Duration::from_secs(20)),
            )
            .await,
        &[&f],
    );
    assert_eq!(ok["source"], "minted", "{ok}");
    assert_eq!(stack.install(&company).await.refresh_count, 1);
}

/// A request for another company must not be handed the token a concurrent
/// mint stores: neither the waiter's poll nor the re-read under the lock
/// may skip the company check the cache path makes.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_request_for_another_company_is_refused_not_served() {
    let stack = Stack::new().await;
    for co in ["co-1", "co-2"] {
        stack
            .seed_install(&InstallId::Company(co.into()), co, 86_399)
            .await;
    }
    stack.sim.add_locations("co-1", &[("loc-race", "Race")]);
    stack.sim.set_faults(Faults {
        latency_ms: 1_500,
        ..Default::default()
    });
    let a = stack.spawn("token-mint", &[]);
    let b = stack.spawn("token-mint", &[]);
    let own = invoke(
        &stack,
        json!({"locationId": "loc-race", "companyId": "co-1"}),
    );
    let other = async {
        // Late enough that the first request holds the mint lock.
        tokio::time::sleep(Duration::from_millis(600)).await;
        invoke(
            &stack,
            json!({"locationId": "loc-race", "companyId": "co-2"}),
        )
        .await
    };
    let (own, other) = tokio::join!(own, other);
    let own = served(own, &[&a, &b]);
    assert_eq!(own["source"], "minted", "{own}");
    assert_eq!(own["companyId"], "co-1");
    let (t, m) = failed(other, &[&a, &b]);
    assert_eq!(t, "InvalidRequest", "{m}");
    assert!(m.contains("belongs to company co-1, not co-2"), "{m}");
    assert_eq!(
        stack.sim.counters().location_mints.get("loc-race"),
        Some(&1)
    );
    let logs = all_logs(&[&a, &b]);
    assert!(!logs.contains(own["accessToken"].as_str().unwrap()));
}

const MINT_ARN: &str = "arn:aws:lambda:us-east-1:111122223333:function:token-mint";

/// A Function URL request (payload 2.0) as Lambda builds it for a
/// SigV4-signed caller.
fn url_event(caller_arn: &str, body: Value) -> Value {
    json!({
        "version": "2.0",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "111122223333",
            "http": {"method": "POST", "path": "/"},
            "authorizer": {"iam": {"userArn": caller_arn, "accountId": "111122223333"}}
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

async fn invoke_url(stack: &Stack, caller_arn: &str, body: Value) -> (u64, Value) {
    let opts = InvokeOptions {
        function_arn: format!("{MINT_ARN}:url"),
        ..InvokeOptions::with_deadline(Duration::from_secs(30))
    };
    let r = stack
        .api
        .invoke_with(url_event(caller_arn, body), opts)
        .await
        .expect("the URL entrance answers HTTP");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    (r["statusCode"].as_u64().unwrap(), body)
}

/// Adds `mint_callers` to the stack's app secret (read at cold start).
async fn set_caller_policy(stack: &Stack, policy: Value) {
    stack.set_secret_field("mint_callers", policy).await;
}

fn audit_lines(logs: &[String], message: &str) -> Vec<Value> {
    testkit::stack::json_logs(logs)
        .into_iter()
        .filter(|l| l["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_iam_url_entrance_audits_the_verified_caller_and_applies_the_policy() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-u".into()), "co-u", 86_399)
        .await;
    stack.sim.add_locations("co-u", &[("loc-u", "U")]);
    set_caller_policy(&stack, json!({"role/billing": ["co-u"]})).await;
    let f = stack.spawn("token-mint", &[]);
    let billing = "arn:aws:sts::111122223333:assumed-role/billing/run-7";
    let mallory = "arn:aws:iam::111122223333:user/mallory";
    let request = json!({"locationId": "loc-u", "companyId": "co-u"});

    let before = stack.items().await;
    let (status, body) = invoke_url(&stack, mallory, request.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errorType"], "CallerNotAllowed");
    assert!(body["errorMessage"].as_str().unwrap().contains(mallory));
    // Same role name in another account: not the role the policy names.
    let foreign = "arn:aws:sts::999999999999:assumed-role/billing/x";
    let (status, body) = invoke_url(&stack, foreign, request.clone()).await;
    assert_eq!(
        (status, body["errorType"].as_str()),
        (403, Some("CallerNotAllowed"))
    );
    // A policy limited to companies needs the company named.
    let (status, body) = invoke_url(&stack, billing, json!({"locationId": "loc-u"})).await;
    assert_eq!(
        (status, body["errorType"].as_str()),
        (403, Some("CallerNotAllowed"))
    );
    assert_eq!(
        stack.items().await,
        before,
        "a refused caller changed the table"
    );
    assert!(
        stack.sim.counters().location_mints.is_empty(),
        "a refused caller reached HighLevel"
    );

    let (status, body) = invoke_url(&stack, billing, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "minted");
    assert_eq!(body["companyId"], "co-u");

    let logs = f.logs_once("location token served").await;
    let served = audit_lines(&logs, "location token served");
    assert_eq!(served.len(), 1, "{logs:?}");
    let s = &served[0];
    assert_eq!(s["entrance"], "url");
    assert_eq!(s["caller_arn"], billing);
    assert_eq!(s["function_arn"], format!("{MINT_ARN}:url"));
    assert!(!s["request_id"].as_str().unwrap().is_empty());
    let refused = audit_lines(&logs, "mint rejected");
    let refused_callers: Vec<&str> = refused
        .iter()
        .map(|l| l["caller_arn"].as_str().unwrap())
        .collect();
    assert_eq!(refused_callers, [mallory, foreign, billing], "{logs:?}");
    assert!(refused.iter().all(|l| l["error"] == "CallerNotAllowed"));
    stack.assert_logs_clean(&logs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_invoke_is_audited_with_request_id_and_the_claim_as_a_claim() {
    let stack = Stack::new().await;
    stack
        .seed_install(&InstallId::Company("co-d".into()), "co-d", 86_399)
        .await;
    stack.sim.add_locations("co-d", &[("loc-d", "D")]);
    // A caller policy binds only verified callers; a direct invoke cannot
    // name one, so it is governed by who may invoke the function.
    set_caller_policy(&stack, json!({"role/billing": ["co-other"]})).await;
    let f = stack.spawn("token-mint", &[]);
    let opts = InvokeOptions {
        function_arn: MINT_ARN.into(),
        // The shape the AWS SDKs send (lambda_runtime refuses others).
        client_context: Some(json!({
            "client": {"installation_id": "i", "app_title": "t", "app_version_name": "v", "app_version_code": "c", "app_package_name": "p"},
            "custom": {"caller": "billing-svc"},
            "environment": {}
        })),
        ..InvokeOptions::with_deadline(Duration::from_secs(30))
    };
    let r = stack
        .api
        .invoke_with(
            json!({"locationId": "loc-d", "companyId": "co-d"}),
            opts.clone(),
        )
        .await
        .unwrap();
    assert_eq!(r["source"], "minted");
    // A payload shaped like a URL request, sent by direct invoke, is a
    // request like any other: its "verified" caller is never believed.
    let forged = url_event(
        "arn:aws:sts::111122223333:assumed-role/billing/x",
        json!({"locationId": "loc-d"}),
    );
    let (t, _) = error_type(stack.api.invoke_with(forged, opts).await);
    assert_eq!(t, "InvalidRequest");
    let logs = f.logs_once("location token served").await;
    let served = audit_lines(&logs, "location token served");
    assert_eq!(served.len(), 1, "{logs:?}");
    let s = &served[0];
    assert_eq!(s["entrance"], "invoke");
    assert_eq!(s["claimedCaller"], "billing-svc");
    assert_eq!(s["caller_arn"], "");
    assert_eq!(s["function_arn"], MINT_ARN);
    assert!(!s["request_id"].as_str().unwrap().is_empty());
    assert_eq!(s["audit"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn company_tokens_are_served_refreshed_once_and_never_with_a_refresh_token() {
    // Short-lived tokens, so a request can ask for more life than one has left.
    let stack = Stack::with_sim(SimConfig {
        access_token_ttl_secs: 3_000,
        ..SimConfig::default()
    })
    .await;
    let company = InstallId::Company("co-k".into());
    // Near expiry: the first caller must refresh it first.
    let before = stack.seed_install(&company, "co-k", 100).await;
    stack.sim.set_faults(Faults {
        latency_ms: 200,
        ..Default::default()
    });
    let procs: Vec<_> = (0..3).map(|_| stack.spawn("token-mint", &[])).collect();
    let refs: Vec<&FunctionProcess> = procs.iter().collect();
    let ask = |min: u64| {
        invoke(
            &stack,
            json!({"action": "companyToken", "companyId": "co-k", "minValiditySeconds": min}),
        )
    };
    let burst = join_all((0..6).map(|_| ask(300)).collect()).await;
    let answers: Vec<Value> = burst.into_iter().map(|r| served(r, &refs)).collect();
    let after = stack.install(&company).await;
    assert_eq!(after.version, before.version + 1, "refreshed exactly once");
    assert_eq!(stack.sim.counters().refreshes, 1);
    assert_eq!(stack.sim.ledger().presented_twice(), 0);
    for a in &answers {
        assert_eq!(a["accessToken"].as_str(), Some(after.access_token.expose()));
        assert_eq!(a["userType"], "Company");
        assert_eq!(a["companyId"], "co-k");
        assert_eq!(a["tokenType"], "Bearer");
        assert!(
            a["expiresIn"].as_i64().unwrap() > 2_900,
            "{}",
            a["expiresIn"]
        );
        assert!(a["expiresAt"].as_str().unwrap().ends_with('Z'));
        assert!(a.get("locationId").is_none());
        assert!(a.get("refreshToken").is_none() && !a.to_string().contains("refresh_token"));
        assert!(!a.to_string().contains(after.refresh_token.expose()));
    }
    let sources: Vec<&str> = answers
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources.iter().filter(|s| **s == "refreshed").count(),
        1,
        "{sources:?}"
    );
    assert!(
        sources
            .iter()
            .all(|s| *s == "refreshed" || *s == "company-install"),
        "{sources:?}"
    );

    // Fresh now: served as stored, nothing presented.
    let again = served(ask(300).await, &refs);
    assert_eq!(again["source"], "company-install");
    assert_eq!(again["accessToken"], answers[0]["accessToken"]);
    assert_eq!(stack.sim.counters().refreshes, 1);
    // Asking for more life than it has left refreshes it again.
    let co_2 = InstallId::Company("co-k2".into());
    let short = stack.seed_install(&co_2, "co-k2", 2_000).await;
    let longer = served(
        invoke(
            &stack,
            json!({"action": "companyToken", "companyId": "co-k2", "minValiditySeconds": 2_500}),
        )
        .await,
        &refs,
    );
    assert_eq!(longer["source"], "refreshed", "{}", longer["source"]);
    assert_ne!(
        longer["accessToken"].as_str(),
        Some(short.access_token.expose())
    );
    assert_eq!(stack.sim.counters().refreshes, 2);
    // More than HighLevel's tokens ever have: refused, saying so.
    let (t, m) = failed(ask(3_500).await, &refs);
    assert_eq!(t, "InvalidRequest", "{m}");
    assert!(m.contains("ask for less"), "{m}");
    // A location request still works beside it.
    stack.sim.add_locations("co-k", &[("loc-k", "K")]);
    let loc = served(
        invoke(&stack, json!({"locationId": "loc-k", "companyId": "co-k"})).await,
        &refs,
    );
    assert_eq!(loc["userType"], "Location");

    // The audit line: the location token's fields, the fingerprint, the caller.
    let logs = all_logs(&refs);
    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "company token served")
        .collect();
    assert_eq!(audit.len(), 8, "one audit line per token served:\n{logs}");
    let line = serde_json::to_string(&audit[0]).unwrap();
    for field in [
        "\"audit\":true",
        "token_fp",
        "\"company_id\":\"co-k\"",
        "\"claimedCaller\":\"unknown\"",
        "request_id",
        "function_arn",
        "expires_at",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    stack
        .assert_logs_clean(&logs.lines().map(str::to_owned).collect::<Vec<_>>(), &[])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn company_token_errors_have_the_mints_types_and_change_nothing() {
    let stack = Stack::new().await;
    let f = stack.spawn("token-mint", &[]);
    let ask = |event: Value| invoke(&stack, event);
    let before = stack.items().await;
    for (event, want, text) in [
        (
            json!({"action": "companyToken"}),
            "InvalidRequest",
            "companyId is required",
        ),
        (
            json!({"action": "companyToken", "companyId": "co/x"}),
            "InvalidRequest",
            "only letters",
        ),
        (
            json!({"action": "companyToken", "companyId": "co", "minValiditySeconds": 86_400}),
            "InvalidRequest",
            "whole number",
        ),
        (
            json!({"action": "companyToken", "companyId": "co-none"}),
            "InstallNotFound",
            "has not installed the app",
        ),
    ] {
        let (t, m) = failed(ask(event.clone()).await, &[&f]);
        assert_eq!(t, want, "{event}: {m}");
        assert!(m.contains(text), "{event}: {m}");
    }
    assert_eq!(stack.items().await, before, "bad input changed the table");

    // A revoked company grant: the agency must reinstall.
    let co_r = InstallId::Company("co-kr".into());
    stack.seed_install(&co_r, "co-kr", 60).await;
    stack.sim.revoke(ghl_sim::UserType::Company, "co-kr");
    let (t, m) = failed(
        ask(json!({"action": "companyToken", "companyId": "co-kr"})).await,
        &[&f],
    );
    assert_eq!(t, "NeedsReauthorization", "{m}");
    assert!(m.contains("reinstall"), "{m}");
    let (t, m) = failed(
        ask(json!({"action": "companyToken", "companyId": "co-kr"})).await,
        &[&f],
    );
    assert_eq!(
        t, "NeedsReauthorization",
        "the stored state says so now: {m}"
    );

    // HighLevel's 429 on the refresh: retryable, with the wait.
    let co_l = InstallId::Company("co-kl".into());
    stack.seed_install(&co_l, "co-kl", 60).await;
    stack.sim.push_fault(Fault::RateLimited);
    let (t, m) = failed(
        ask(json!({"action": "companyToken", "companyId": "co-kl"})).await,
        &[&f],
    );
    assert!(t == "RateLimited" || t == "UpstreamUnavailable", "{t}: {m}");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}
