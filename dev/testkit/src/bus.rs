//! A bus of a test's own in moto, with a rule that forwards the project's
//! state-change events to a queue the test reads back.

use serde_json::Value;

/// A bus of this test's own, a rule for the project's events on it, and a
/// queue the rule delivers to. Returns (bus name, queue url).
pub async fn bus_to_queue(name: &str) -> (String, String) {
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
pub async fn drain(queue_url: &str) -> Vec<Value> {
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
