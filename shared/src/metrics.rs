//! CloudWatch Embedded Metric Format: one JSON line per data point on
//! stdout, which Lambda ships to CloudWatch Logs and CloudWatch turns into
//! metrics without any API call. Off unless a function turns it on, so
//! library tests stay quiet.

use std::sync::atomic::{AtomicBool, Ordering};

pub const NAMESPACE: &str = "GhlOAuth";
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn emit(function: &str, dimensions: &[(&str, &str)], metrics: &[(&str, f64, &str)]) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut doc = serde_json::Map::new();
    let mut dim_names: Vec<&str> = vec!["Function"];
    doc.insert("Function".into(), function.into());
    for (k, v) in dimensions {
        dim_names.push(k);
        doc.insert((*k).into(), (*v).into());
    }
    let defs: Vec<_> = metrics
        .iter()
        .map(|(name, _, unit)| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    for (name, value, _) in metrics {
        doc.insert((*name).into(), (*value).into());
    }
    doc.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": crate::model::now_millis(),
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [dim_names], "Metrics": defs}],
        }),
    );
    println!("{}", serde_json::Value::Object(doc));
}

fn function_name() -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into())
}

/// Latency of one HighLevel call, by operation and outcome.
pub fn ghl_call(op: &str, millis: u64, error_kind: Option<&str>) {
    emit(
        &function_name(),
        &[("Operation", op), ("Outcome", error_kind.unwrap_or("ok"))],
        &[("HighLevelLatency", millis as f64, "Milliseconds")],
    );
}

/// A counter, e.g. refresh outcomes or mint sources.
pub fn count(metric: &str, value: u64) {
    emit(&function_name(), &[], &[(metric, value as f64, "Count")]);
}

/// A counter split by one more dimension, e.g. mints by source.
pub fn count_by(metric: &str, dimension: (&str, &str), value: u64) {
    emit(
        &function_name(),
        &[dimension],
        &[(metric, value as f64, "Count")],
    );
}

/// A gauge in seconds, e.g. the age of the oldest due install.
pub fn seconds(metric: &str, value: f64) {
    emit(&function_name(), &[], &[(metric, value, "Seconds")]);
}
