//! `refresh-sweep`: runs on an EventBridge schedule and refreshes every
//! install that is due (`shared::sweep`); a second, daily schedule whose
//! input is `{"action": "reconcile"}` runs reconciliation
//! (`shared::reconcile`). This maps the event in and the summary (or a
//! stable `errorType`) out.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;
use shared::config::{Env, SweepConfig};
use shared::services::Services;
use shared::sweep::SweepSummary;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The function's errors, each with the `errorType` Lambda reports.
#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error("HighLevel rejected the app's client credentials; fix the app secret. Summary: {0}")]
    InvalidClientCredentials(String),
    #[error(
        "failed to deserialize the event: expected an EventBridge scheduled event or {{\"action\": \"reconcile\"}} ({0}); nothing was done"
    )]
    InvalidEvent(String),
}

impl From<SweepError> for Diagnostic {
    fn from(e: SweepError) -> Self {
        let error_type = match &e {
            SweepError::InvalidClientCredentials(_) => "InvalidClientCredentials",
            SweepError::InvalidEvent(_) => "InvalidEvent",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

// One thread: the work is waiting on HighLevel and DynamoDB, and a
// multi-thread runtime spent more CPU handing tasks between threads (futex
// wake-ups) than the refreshes themselves; Lambda gives small functions a
// fraction of one vCPU anyway.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    shared::metrics::enable();
    let cfg = SweepConfig::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let svc = Services::load(env!("CARGO_PKG_NAME"), &cfg.common)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let (cfg, svc) = (Arc::new(cfg), Arc::new(svc));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (cfg, svc) = (cfg.clone(), svc.clone());
        async move { dispatch(&cfg, svc, event).await }
    }))
    .await
}

async fn dispatch(
    cfg: &SweepConfig,
    svc: Arc<Services>,
    event: LambdaEvent<Value>,
) -> Result<Value, SweepError> {
    let (payload, context) = event.into_parts();
    let deadline = deadline_of(&context);
    let owner = format!("sweep:{}", context.request_id);
    if payload.get("action").and_then(Value::as_str) == Some("reconcile") {
        tracing::info!("reconciliation started");
        let summary = shared::reconcile::run(&svc, cfg, deadline, &owner).await;
        let text = serde_json::to_string(&summary).unwrap_or_default();
        tracing::info!(summary = %text, "reconciliation finished");
        return Ok(serde_json::to_value(summary).unwrap_or_default());
    }
    let _: EventBridgeEvent<Value> = serde_json::from_value(payload).map_err(|e| {
        let e = SweepError::InvalidEvent(e.to_string().chars().take(200).collect());
        tracing::warn!(error = "InvalidEvent", reason = %e, "sweep refused");
        e
    })?;
    let summary = sweep(cfg, svc, deadline, &owner).await?;
    Ok(serde_json::to_value(summary).unwrap_or_default())
}

/// Assumed remaining time when an invocation carries no deadline (local only).
const NO_DEADLINE_MS: i64 = 120_000;

fn deadline_of(context: &lambda_runtime::Context) -> Instant {
    let mut remaining_ms = context.deadline as i64 - shared::model::now_millis();
    if remaining_ms <= 0 {
        // Lambda always sends a future deadline; some local emulators
        // (cargo lambda watch) send none. Work to a bounded default rather
        // than stopping at once or running unbounded.
        tracing::warn!(
            deadline = context.deadline,
            "the invocation carries no usable deadline; assuming {NO_DEADLINE_MS} ms"
        );
        remaining_ms = NO_DEADLINE_MS;
    }
    Instant::now() + Duration::from_millis(remaining_ms as u64)
}

async fn sweep(
    cfg: &SweepConfig,
    svc: Arc<Services>,
    deadline: Instant,
    owner: &str,
) -> Result<SweepSummary, SweepError> {
    let remaining_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    tracing::info!(remaining_ms, "sweep started");
    let summary = shared::sweep::run(svc, cfg, deadline, owner).await;
    let text = serde_json::to_string(&summary).unwrap_or_default();
    tracing::info!(summary = %text, "sweep finished");
    if summary.stopped.as_deref() == Some("invalid_client") {
        return Err(SweepError::InvalidClientCredentials(text));
    }
    Ok(summary)
}
