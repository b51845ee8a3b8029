//! `oauth-callback`: the marketplace redirect URI. Parses the request, runs
//! the shared install flow, and shapes the answer: the one place where
//! install errors become HTTP statuses.

use lambda_http::http::StatusCode;
use lambda_http::{Body, Error, Request, RequestExt, Response, service_fn};
use shared::config::{CallbackConfig, Env};
use shared::html::page;
use shared::install::{CallbackOutcome, CallbackRequest, InstallError, Installed};
use shared::model::UserType;
use shared::redact::SecretString;
use shared::services::Services;
use std::sync::Arc;

struct App {
    cfg: CallbackConfig,
    svc: Services,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    shared::metrics::enable();
    let cfg = match CallbackConfig::from_env(&Env::process()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    let svc = match Services::load(env!("CARGO_PKG_NAME"), &cfg.common).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    let app = Arc::new(App { cfg, svc });
    lambda_http::run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(handle(&app, req).await) }
    }))
    .await
}

async fn handle(app: &App, req: Request) -> Response<Body> {
    let query = req.query_string_parameters();
    let request = CallbackRequest {
        method: req.method().as_str().to_owned(),
        code: query.first("code").map(SecretString::new),
        error: query.first("error").map(str::to_owned),
        error_description: query.first("error_description").map(str::to_owned),
    };
    let result = shared::install::handle(&app.cfg, &app.svc, &request).await;
    match &result {
        Ok(CallbackOutcome::Installed(i)) => {
            tracing::info!(outcome = "installed", install_id = %i.id, fresh = i.fresh, reinstall = i.reinstall, "callback answered");
            shared::metrics::count("Installs", 1);
        }
        Ok(CallbackOutcome::Probe) => tracing::info!(outcome = "probe", "callback answered"),
        Err(e) => {
            tracing::warn!(outcome = "error", error = e.name(), reason = %e, "callback answered");
            shared::metrics::count("InstallErrors", 1);
        }
    }
    respond(&app.cfg, result)
}

/// The single mapping from install outcomes to HTTP.
fn status_of(err: &InstallError) -> StatusCode {
    match err {
        InstallError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        InstallError::MissingCode
        | InstallError::CodeTooLong(_)
        | InstallError::CodeMalformed
        | InstallError::ConsentDenied { .. }
        | InstallError::CodeRejected { .. } => StatusCode::BAD_REQUEST,
        InstallError::StillProcessing | InstallError::CodeAbandoned => StatusCode::CONFLICT,
        InstallError::AppCredentialsRejected
        | InstallError::BadGrant(_)
        | InstallError::HighLevelUnavailable(_) => StatusCode::BAD_GATEWAY,
        InstallError::HighLevelTimeout => StatusCode::GATEWAY_TIMEOUT,
        InstallError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// What the user should do next, in words.
fn advice(err: &InstallError) -> &'static str {
    match err {
        InstallError::MethodNotAllowed(_) => "Open this address from HighLevel's install flow.",
        InstallError::MissingCode | InstallError::CodeTooLong(_) | InstallError::CodeMalformed => {
            "This page must be reached from HighLevel's install screen. Start the installation again from the HighLevel Marketplace."
        }
        InstallError::ConsentDenied { .. } => {
            "Nothing was installed. To install, start again from the HighLevel Marketplace and approve access."
        }
        InstallError::CodeRejected { .. } | InstallError::CodeAbandoned => {
            "Authorization codes work once and expire quickly. Start the installation again from the HighLevel Marketplace."
        }
        InstallError::StillProcessing => "Reload this page in a few seconds.",
        InstallError::AppCredentialsRejected | InstallError::BadGrant(_) => {
            "Nothing was installed. The app's owner has been alerted; please try again later."
        }
        InstallError::HighLevelUnavailable(_)
        | InstallError::HighLevelTimeout
        | InstallError::Storage(_) => {
            "Nothing was installed. Please try the installation again in a few minutes."
        }
    }
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        // The URL carries the code: never send it on as a referrer.
        .header("referrer-policy", "no-referrer")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header("allow", "GET, HEAD");
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

fn what(i: &Installed) -> String {
    match i.user_type {
        UserType::Company => format!(
            "The app is now installed for the agency with company id {}.",
            i.company_id.as_deref().unwrap_or(i.id.id())
        ),
        UserType::Location => format!(
            "The app is now installed for the sub-account with location id {}.",
            i.location_id.as_deref().unwrap_or(i.id.id())
        ),
    }
}

/// A bulk install's reach, in words (empty for a single install).
fn bulk(i: &Installed) -> String {
    let future = match i.install_to_future_locations {
        Some(true) => " It will also be installed on sub-accounts the agency creates later.",
        _ => "",
    };
    match i.approved_locations {
        0 if future.is_empty() => String::new(),
        0 => future.trim_start().to_owned(),
        1 => format!("It covers 1 sub-account.{future}"),
        n => format!("It covers {n} sub-accounts.{future}"),
    }
}

fn respond(cfg: &CallbackConfig, result: Result<CallbackOutcome, InstallError>) -> Response<Body> {
    match result {
        Ok(CallbackOutcome::Probe) => html(StatusCode::OK, String::new()),
        Ok(CallbackOutcome::Installed(i)) => {
            if let Some(url) = &cfg.success_redirect_url {
                let target = i.success_redirect(url);
                return Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", target)
                    .header("cache-control", "no-store")
                    .header("referrer-policy", "no-referrer")
                    .body(Body::Empty)
                    .unwrap_or_else(|_| Response::new(Body::Empty));
            }
            let heading = if i.reinstall {
                "App reinstalled"
            } else {
                "App installed"
            };
            html(
                StatusCode::OK,
                page(
                    heading,
                    heading,
                    &[
                        what(&i),
                        bulk(&i),
                        "You can close this window and return to HighLevel.".into(),
                    ],
                    true,
                ),
            )
        }
        Err(err) => {
            let status = status_of(&err);
            // Storage errors carry DynamoDB detail that belongs in logs, not on a page.
            let message = match &err {
                InstallError::Storage(_) => "The installation could not be saved.".to_owned(),
                other => format!("{}.", capitalise(&other.to_string())),
            };
            html(
                status,
                page(
                    "Installation failed",
                    "Installation failed",
                    &[message, advice(&err).into()],
                    false,
                ),
            )
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
