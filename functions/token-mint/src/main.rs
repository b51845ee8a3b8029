//! `token-mint`: invoked directly (IAM-authorised Lambda Invoke) by the app
//! owner's other services, or through its optional IAM Function URL. Parses the request, runs `shared::mint`, and maps
//! errors to stable `errorType`s in one place.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};
use shared::callers;
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

/// Who is asking, as far as the entrance can tell. A direct invoke proves
/// nothing about its caller (the client context is the caller's own
/// words, logged as `claimedCaller`); the IAM Function URL's caller ARN was
/// verified by Lambda. Request id and function ARN let an auditor join the
/// line to CloudTrail's record of the invoke.
struct Who {
    entrance: &'static str,
    caller_arn: Option<String>,
    claimed: String,
    request_id: String,
    function_arn: String,
}

impl Who {
    fn of(ctx: &lambda_runtime::Context, entrance: &'static str) -> Self {
        let claimed = ctx
            .client_context
            .as_ref()
            .and_then(|c| c.custom.get("caller").cloned())
            .map(|c| c.chars().take(128).collect())
            .unwrap_or_else(|| "unknown".into());
        Self {
            entrance,
            caller_arn: None,
            claimed,
            request_id: ctx.request_id.clone(),
            function_arn: ctx.invoked_function_arn.clone(),
        }
    }

    fn caller_arn(&self) -> &str {
        self.caller_arn.as_deref().unwrap_or("")
    }
}

async fn handle(app: &App, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    if callers::via_url_alias(&event.context.invoked_function_arn) {
        return Ok(handle_url(app, &event).await);
    }
    let who = Who::of(&event.context, "invoke");
    serve(app, &who, &event.context, &event.payload)
        .await
        .map_err(FunctionError)
}

/// The IAM Function URL: the verified caller is the audited identity and
/// the one the caller policy judges. Errors are answered as HTTP.
async fn handle_url(app: &App, event: &LambdaEvent<Value>) -> Value {
    let mut who = Who::of(&event.context, "url");
    let result = match callers::url_request(&event.payload) {
        Ok(r) if r.method == "POST" => {
            who.caller_arn = Some(r.caller_arn);
            serve(app, &who, &event.context, &r.body).await
        }
        Ok(r) => {
            who.caller_arn = Some(r.caller_arn);
            Err(MintError::InvalidRequest(
                "the mint's URL accepts POST with a JSON body".into(),
            ))
        }
        Err(reason) => Err(MintError::CallerNotAllowed(reason)),
    };
    // `serve` logs its own refusals; this one never reached it.
    if let Err(e) = &result
        && who.caller_arn.is_none()
    {
        tracing::warn!(entrance = who.entrance, request_id = %who.request_id, function_arn = %who.function_arn, error = e.error_type(), reason = %e, "mint rejected");
    }
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (
            http_status(&e),
            json!({"errorType": e.error_type(), "errorMessage": e.to_string()}),
        ),
    };
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store"},
        "body": body.to_string(),
    })
}

/// The single mapping from mint errors to the URL's HTTP statuses.
fn http_status(e: &MintError) -> u16 {
    match e {
        MintError::InvalidRequest(_) => 400,
        MintError::CallerNotAllowed(_) => 403,
        MintError::InstallNotFound(_) | MintError::LocationNotInstalled(_) => 404,
        MintError::NeedsReauthorization(_) => 409,
        MintError::AppUninstalled(_) => 410,
        MintError::RateLimited { .. } => 429,
        MintError::UpstreamUnavailable(_) => 503,
        MintError::Internal(_) => 500,
    }
}

/// A verified caller outside the caller policy is refused before anything
/// is read or called.
fn admit(app: &App, who: &Who, request: &Request) -> Result<(), MintError> {
    let (Some(arn), Some(policy)) = (&who.caller_arn, &app.svc.app.mint_callers) else {
        return Ok(());
    };
    let company = match request {
        Request::Mint(m) => m.company_id.as_deref(),
        Request::ListInstalledLocations { company_id }
        | Request::CompanyToken { company_id, .. } => Some(company_id.as_str()),
    };
    policy
        .check(arn, callers::account_of(&who.function_arn), company)
        .map_err(|r| MintError::CallerNotAllowed(r.to_string()))
}

async fn serve(
    app: &App,
    who: &Who,
    ctx: &lambda_runtime::Context,
    payload: &Value,
) -> Result<Value, MintError> {
    let owner = format!("mint:{}", ctx.request_id);
    // Lambda always sends a deadline; a local emulator may send none (0).
    let left_ms = ctx.deadline as i64 - shared::model::now_millis();
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
    let request = shared::mint::parse_request(payload)
        .and_then(|r| admit(app, who, &r).map(|()| r))
        .inspect_err(|e| {
            tracing::warn!(
                audit = true,
                entrance = who.entrance,
                caller_arn = who.caller_arn(),
                claimedCaller = %who.claimed,
                request_id = %who.request_id,
                function_arn = %who.function_arn,
                error = e.error_type(),
                reason = %e,
                "mint rejected"
            );
        })?;
    match request {
        Request::Mint(req) => match minter.mint(&req).await {
            Ok(resp) => {
                tracing::info!(
                    audit = true,
                    entrance = who.entrance,
                    caller_arn = who.caller_arn(),
                    claimedCaller = %who.claimed,
                    request_id = %who.request_id,
                    function_arn = %who.function_arn,
                    company_id = resp.company_id.as_deref().unwrap_or(""),
                    location_id = %resp.location_id,
                    source = resp.source,
                    token_fp = %resp.access_token.fingerprint(),
                    expires_at = %resp.expires_at,
                    "location token served"
                );
                shared::metrics::count_by("MintServed", ("Source", resp.source), 1);
                serde_json::to_value(&resp)
                    .map_err(|e| MintError::Internal(format!("response serialisation: {e}")))
            }
            Err(e) => {
                tracing::warn!(entrance = who.entrance, caller_arn = who.caller_arn(), claimedCaller = %who.claimed, request_id = %who.request_id, location_id = %req.location_id, error = e.error_type(), reason = %e, "mint failed");
                shared::metrics::count_by("MintErrors", ("ErrorType", e.error_type()), 1);
                Err(e)
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
                    entrance = who.entrance,
                    caller_arn = who.caller_arn(),
                    claimedCaller = %who.claimed,
                    request_id = %who.request_id,
                    function_arn = %who.function_arn,
                    company_id = %resp.company_id,
                    location_id = "",
                    user_type = resp.user_type,
                    source = resp.source,
                    token_fp = %resp.access_token.fingerprint(),
                    expires_at = %resp.expires_at,
                    "company token served"
                );
                shared::metrics::count_by("MintServed", ("Source", resp.source), 1);
                serde_json::to_value(&resp)
                    .map_err(|e| MintError::Internal(format!("response serialisation: {e}")))
            }
            Err(e) => {
                tracing::warn!(entrance = who.entrance, caller_arn = who.caller_arn(), claimedCaller = %who.claimed, request_id = %who.request_id, company_id, error = e.error_type(), reason = %e, "company token failed");
                shared::metrics::count_by("MintErrors", ("ErrorType", e.error_type()), 1);
                Err(e)
            }
        },
        Request::ListInstalledLocations { company_id } => {
            match minter.installed_locations(&company_id).await {
                Ok(list) => {
                    tracing::info!(
                        entrance = who.entrance,
                        caller_arn = who.caller_arn(),
                        claimedCaller = %who.claimed,
                        request_id = %who.request_id,
                        company_id,
                        count = list.count,
                        "installed locations listed"
                    );
                    serde_json::to_value(&list)
                        .map_err(|e| MintError::Internal(format!("response serialisation: {e}")))
                }
                Err(e) => {
                    tracing::warn!(entrance = who.entrance, caller_arn = who.caller_arn(), claimedCaller = %who.claimed, request_id = %who.request_id, company_id, error = e.error_type(), reason = %e, "listing failed");
                    Err(e)
                }
            }
        }
    }
}
