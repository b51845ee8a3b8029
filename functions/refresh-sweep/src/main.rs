//! `refresh-sweep`: runs on an EventBridge schedule and refreshes every
//! install that is due. The work lives in `shared::sweep`; this maps the
//! event in and the summary (or a stable `errorType`) out.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
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
}

impl From<SweepError> for Diagnostic {
    fn from(e: SweepError) -> Self {
        let error_type = match &e {
            SweepError::InvalidClientCredentials(_) => "InvalidClientCredentials",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    shared::metrics::enable();
    let cfg = SweepConfig::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let svc = Services::load(env!("CARGO_PKG_NAME"), &cfg.common)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let (cfg, svc) = (Arc::new(cfg), Arc::new(svc));
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| {
            let (cfg, svc) = (cfg.clone(), svc.clone());
            async move { sweep(&cfg, svc, event).await }
        },
    ))
    .await
}

/// Assumed remaining time when an invocation carries no deadline (local only).
const NO_DEADLINE_MS: i64 = 120_000;

async fn sweep(
    cfg: &SweepConfig,
    svc: Arc<Services>,
    event: LambdaEvent<EventBridgeEvent<serde_json::Value>>,
) -> Result<SweepSummary, SweepError> {
    let mut remaining_ms = event.context.deadline as i64 - shared::model::now_millis();
    if remaining_ms <= 0 {
        // Lambda always sends a future deadline; some local emulators
        // (cargo lambda watch) send none. Work to a bounded default rather
        // than stopping at once or running unbounded.
        tracing::warn!(
            deadline = event.context.deadline,
            "the invocation carries no usable deadline; assuming {NO_DEADLINE_MS} ms"
        );
        remaining_ms = NO_DEADLINE_MS;
    }
    let remaining_ms = remaining_ms as u64;
    let deadline = Instant::now() + Duration::from_millis(remaining_ms);
    let owner = format!("sweep:{}", event.context.request_id);
    tracing::info!(remaining_ms, "sweep started");
    let summary = shared::sweep::run(svc, cfg, deadline, &owner).await;
    let text = serde_json::to_string(&summary).unwrap_or_default();
    tracing::info!(summary = %text, "sweep finished");
    if summary.stopped.as_deref() == Some("invalid_client") {
        return Err(SweepError::InvalidClientCredentials(text));
    }
    Ok(summary)
}
