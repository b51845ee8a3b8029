//! `token-mint`: invoked directly (IAM-authorised Lambda Invoke) by the app
//! owner's other services. Parses the request, runs `shared::mint`, and maps
//! errors to stable `errorType`s in one place.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;
use shared::config::{Env, MintConfig};
use shared::mint::{MintError, Minter, Request};
use shared::refresh::RefreshPolicy;
use shared::services::Services;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct App {
    cfg: MintConfig,
    svc: Services,
    policy: RefreshPolicy,
}

/// Kept back from the invocation's deadline for the answer itself.
const DEADLINE_RESERVE: Duration = Duration::from_millis(500);

/// The single mapping from mint errors to Lambda function errors.
#[derive(Debug)]
struct FunctionError(MintError);

impl From<FunctionError> for Diagnostic {
    fn from(e: FunctionError) -> Self {
        Diagnostic {
            error_type: e.0.error_type().into(),
            error_message: e.0.to_string(),
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
    let cfg = MintConfig::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let svc = Services::load(env!("CARGO_PKG_NAME"), &cfg.common)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let policy = RefreshPolicy::new(&cfg.common);
    let app = Arc::new(App { cfg, svc, policy });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let app = app.clone();
        async move { handle(&app, event).await }
    }))
    .await
}

/// Who called, as far as the invoke context tells: a `caller` field in the
/// client context (set by the calling service), else unknown.
fn caller(ctx: &lambda_runtime::Context) -> String {
    ctx.client_context
        .as_ref()
        .and_then(|c| c.custom.get("caller").cloned())
        .map(|c| c.chars().take(128).collect())
        .unwrap_or_else(|| "unknown".into())
}

async fn handle(app: &App, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let caller = caller(&event.context);
    let owner = format!("mint:{}", event.context.request_id);
    // Lambda always sends a deadline; a local emulator may send none (0).
    let left_ms = event.context.deadline as i64 - shared::model::now_millis();
    let deadline = (left_ms > 0).then(|| {
        (Instant::now() + Duration::from_millis(left_ms as u64))
            .checked_sub(DEADLINE_RESERVE)
            .unwrap_or_else(Instant::now)
    });
    let minter = Minter {
        svc: &app.svc,
        policy: &app.policy,
        owner: &owner,
        app_id: app.cfg.app_id.as_deref(),
        deadline,
    };
    let request = shared::mint::parse_request(&event.payload).map_err(|e| {
        tracing::warn!(caller, error = e.error_type(), reason = %e, "mint rejected");
        FunctionError(e)
    })?;
    match request {
        Request::Mint(req) => match minter.mint(&req).await {
            Ok(resp) => {
                tracing::info!(
                    audit = true,
                    caller,
                    company_id = resp.company_id.as_deref().unwrap_or(""),
                    location_id = %resp.location_id,
                    source = resp.source,
                    token_fp = %resp.access_token.fingerprint(),
                    expires_at = %resp.expires_at,
                    "location token served"
                );
                shared::metrics::count_by("MintServed", ("Source", resp.source), 1);
                serde_json::to_value(&resp).map_err(|e| {
                    FunctionError(MintError::Internal(format!("response serialisation: {e}")))
                })
            }
            Err(e) => {
                tracing::warn!(caller, location_id = %req.location_id, error = e.error_type(), reason = %e, "mint failed");
                shared::metrics::count_by("MintErrors", ("ErrorType", e.error_type()), 1);
                Err(FunctionError(e))
            }
        },
        Request::CompanyToken {
            company_id,
            min_validity_secs,
        } => match minter
            .serve_company_token(&company_id, min_validity_secs)
            .await
        {
            Ok(resp) => {
                // The location token's audit fields, location empty: one
                // query over `audit` finds every token served.
                tracing::info!(
                    audit = true,
                    caller,
                    company_id = %resp.company_id,
                    location_id = "",
                    user_type = resp.user_type,
                    source = resp.source,
                    token_fp = %resp.access_token.fingerprint(),
                    expires_at = %resp.expires_at,
                    "company token served"
                );
                shared::metrics::count_by("MintServed", ("Source", resp.source), 1);
                serde_json::to_value(&resp).map_err(|e| {
                    FunctionError(MintError::Internal(format!("response serialisation: {e}")))
                })
            }
            Err(e) => {
                tracing::warn!(caller, company_id, error = e.error_type(), reason = %e, "company token failed");
                shared::metrics::count_by("MintErrors", ("ErrorType", e.error_type()), 1);
                Err(FunctionError(e))
            }
        },
        Request::ListInstalledLocations { company_id } => {
            match minter.installed_locations(&company_id).await {
                Ok(list) => {
                    tracing::info!(
                        caller,
                        company_id,
                        count = list.count,
                        "installed locations listed"
                    );
                    serde_json::to_value(&list).map_err(|e| {
                        FunctionError(MintError::Internal(format!("response serialisation: {e}")))
                    })
                }
                Err(e) => {
                    tracing::warn!(caller, company_id, error = e.error_type(), reason = %e, "listing failed");
                    Err(FunctionError(e))
                }
            }
        }
    }
}
