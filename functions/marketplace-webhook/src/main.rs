//! `marketplace-webhook`: HighLevel's default webhook URL for the app. Takes
//! the raw body and the signature headers, runs `shared::webhook`, and maps
//! its outcome to an HTTP status in one place.
//!
//! HighLevel retries any non-2xx up to 12 times and pauses a URL whose
//! success rate falls under 90 %, so only a failure a retry can fix (storage)
//! answers 5xx; a redelivery of an applied event answers 200 `duplicate`,
//! and a bad delivery answers 4xx once and changes nothing.

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Error, Request, Response, service_fn};
use serde_json::json;
use shared::config::{Env, WebhookConfig};
use shared::services::Services;
use shared::webhook::WebhookError;
use std::sync::Arc;

struct App {
    cfg: WebhookConfig,
    svc: Services,
    app_id: String,
}

// One thread: the work is waiting on HighLevel and DynamoDB, and a
// multi-thread runtime spent more CPU handing tasks between threads (futex
// wake-ups) than the refreshes themselves; Lambda gives small functions a
// fraction of one vCPU anyway.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    shared::metrics::enable();
    let cfg = WebhookConfig::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    // GHL_APP_ID only: the webhook never reads the app secret, so neither
    // its process nor its role holds the client secret or a data key (it
    // erases tokens without opening them).
    let app_id = shared::webhook::app_id(&cfg)
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let svc = Services::load_without_secret(env!("CARGO_PKG_NAME"), &cfg.common, app_id.clone())
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let app = Arc::new(App { cfg, svc, app_id });
    lambda_http::run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(handle(&app, req).await) }
    }))
    .await
}

/// The single mapping from webhook errors to HTTP.
fn status_of(err: &WebhookError) -> StatusCode {
    match err {
        WebhookError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        WebhookError::MissingSignature | WebhookError::BadSignature(_) => StatusCode::UNAUTHORIZED,
        WebhookError::Malformed(_)
        | WebhookError::Stale { .. }
        | WebhookError::FromTheFuture { .. } => StatusCode::BAD_REQUEST,
        WebhookError::WrongApp { .. } => StatusCode::FORBIDDEN,
        WebhookError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

async fn handle(app: &App, req: Request) -> Response<Body> {
    if req.method() != Method::POST {
        tracing::warn!(
            outcome = "refused",
            error = "MethodNotAllowed",
            "webhook answered"
        );
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "MethodNotAllowed", "message": "webhooks are delivered with POST"}),
        );
        r.headers_mut()
            .insert("allow", lambda_http::http::HeaderValue::from_static("POST"));
        return r;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    // lambda_http hands over the exact bytes received (base64-decoded when
    // the event says so); they are verified as they are, never re-serialised.
    let body: &[u8] = req.body().as_ref();
    let result = shared::webhook::handle(
        &app.svc,
        &app.cfg,
        &app.app_id,
        header("x-ghl-signature"),
        header("x-wh-signature"),
        body,
    )
    .await;
    match result {
        Ok((event, applied)) => {
            tracing::info!(
                outcome = applied.name(),
                kind = %event.kind,
                webhook_id = %event.webhook_id,
                company_id = event.company_id.as_deref().unwrap_or(""),
                location_id = event.location_id.as_deref().unwrap_or(""),
                detail = ?applied,
                "webhook answered"
            );
            shared::metrics::count_by("Webhooks", ("Outcome", applied.name()), 1);
            answer(StatusCode::OK, applied.answer())
        }
        Err(e) => {
            let status = status_of(&e);
            if status.is_server_error() {
                tracing::error!(outcome = "failed", error = e.name(), reason = %e, "webhook answered");
            } else {
                tracing::warn!(outcome = "refused", error = e.name(), reason = %e, "webhook answered");
            }
            shared::metrics::count_by("Webhooks", ("Outcome", e.name()), 1);
            answer(status, json!({"error": e.name(), "message": e.to_string()}))
        }
    }
}
