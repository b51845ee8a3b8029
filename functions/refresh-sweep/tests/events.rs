//! State-change events: the real refresh-sweep publishes to an EventBridge
//! bus in moto, a rule forwards them to an SQS queue, and the test reads
//! them back: one event per change of state, with from, to and reason, and
//! never a token.

use serde_json::Value;
use shared::model::InstallId;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::InvokeOptions;
use testkit::stack::{Stack, scheduled_event};

/// A bus of this test's own, a rule for the project's events on it, and a
/// queue the rule delivers to. Returns (bus name, queue url).
async fn bus_to_queue(name: &str) -> (String, String) {
    let sdk = shared::aws::sdk_config().await;
    let eb = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let bus = format!("{name}-bus");
    eb.create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("bus created");
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-queue"))
        .send()
        .await
        .expect("queue created")
        .queue_url
        .expect("queue url");
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("queue arn");
    eb.put_rule()
        .name(format!("{name}-rule"))
        .event_bus_name(&bus)
        .event_pattern(
            serde_json::json!({"source": [shared::events::SOURCE], "detail-type": [shared::events::DETAIL_TYPE]})
                .to_string(),
        )
        .send()
        .await
        .expect("rule created");
    eb.put_targets()
        .rule(format!("{name}-rule"))
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("target added");
    (bus, queue_url)
}

/// Every event the queue holds, drained.
async fn drain(queue_url: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(&shared::aws::sdk_config().await);
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(serde_json::from_str(m.body().unwrap_or("{}")).expect("event JSON"));
            if let Some(handle) = m.receipt_handle() {
                let _ = sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
}

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
