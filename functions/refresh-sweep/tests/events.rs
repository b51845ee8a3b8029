//! State-change events: the real refresh-sweep publishes to an EventBridge
//! bus in moto, a rule forwards them to an SQS queue, and the test reads
//! them back: one event per change of state, with from, to and reason, and
//! never a token.

use serde_json::Value;
use shared::model::InstallId;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::InvokeOptions;
use testkit::bus::{bus_to_queue, drain};
use testkit::stack::{Stack, scheduled_event};

#[tokio::test(flavor = "multi_thread")]
async fn every_state_change_reaches_eventbridge_without_a_token() {
    let stack = Stack::new().await;
    let name = stack.table.replace("installs-", "events-");
    let (bus, queue) = bus_to_queue(&name).await;
    let revoked = InstallId::Company("ev-gone".into());
    let sleepy = InstallId::Location("ev-sleepy".into());
    let fine = InstallId::Company("ev-fine".into());
    stack.seed_install(&revoked, "ev-gone", 60).await;
    stack.seed_install(&sleepy, "ev-co", 60).await;
    stack.seed_install(&fine, "ev-fine", 60).await;
    stack.sim.revoke(ghl_sim::UserType::Company, "ev-gone");
    stack.sim.set_location_active("ev-sleepy", false);
    let f = stack.spawn("refresh-sweep", &[("EVENT_BUS_NAME", bus.as_str())]);
    let sweep = || {
        stack.api.invoke_with(
            scheduled_event(),
            InvokeOptions::with_deadline(Duration::from_secs(60)),
        )
    };
    let s = sweep()
        .await
        .unwrap_or_else(|e| panic!("{e:?}: {:#?}", f.logs()));
    assert_eq!(
        (&s["revoked"], &s["suspended"], &s["refreshed"]),
        (&1.into(), &1.into(), &1.into()),
        "{s}"
    );
    // The location comes back: suspended -> active.
    stack.sim.set_location_active("ev-sleepy", true);
    stack.make_due(&sleepy).await;
    let s = sweep()
        .await
        .unwrap_or_else(|e| panic!("{e:?}: {:#?}", f.logs()));
    assert_eq!(s["refreshed"], 1, "{s}");

    let events = drain(&queue).await;
    let mut changes: BTreeMap<String, Vec<(Value, Value)>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["source"], shared::events::SOURCE);
        assert_eq!(e["detail-type"], shared::events::DETAIL_TYPE);
        let d = &e["detail"];
        assert_eq!(e["resources"][0], d["installId"], "{e}");
        assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
        assert!(d["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        changes
            .entry(d["installId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((d["from"].clone(), d["to"].clone()));
    }
    assert_eq!(
        changes.get("company#ev-gone"),
        Some(&vec![("active".into(), "revoked".into())]),
        "{events:#?}"
    );
    assert_eq!(
        changes.get("location#ev-sleepy"),
        Some(&vec![
            ("active".into(), "suspended".into()),
            ("suspended".into(), "active".into())
        ]),
        "{events:#?}"
    );
    assert!(
        !changes.contains_key("company#ev-fine"),
        "a refresh that changes no state publishes nothing: {events:#?}"
    );
    let sleepy_event = events
        .iter()
        .find(|e| e["detail"]["to"] == "suspended")
        .expect("suspended event");
    assert_eq!(sleepy_event["detail"]["kind"], "location");
    assert_eq!(sleepy_event["detail"]["companyId"], "ev-co");
    // No token or secret in any event.
    let text = serde_json::to_string(&events).unwrap();
    for secret in stack.secrets().await {
        assert!(
            secret.len() < 8 || !text.contains(&secret),
            "an event carries a token"
        );
    }
    stack.assert_logs_clean(&f.logs(), &[]).await;
}
