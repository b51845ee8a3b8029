//! `oauth-callback`: the marketplace redirect URI. Parses the request, runs
//! the shared install flow, and shapes the answer: the one place where
//! install errors become HTTP statuses.

use lambda_http::http::StatusCode;
use lambda_http::{Body, Error, Request, RequestExt, Response, service_fn};
use shared::app_secret::DataKeys;
use shared::config::{CallbackConfig, DEFAULT_APP_NAME, Env};
use shared::handoff::HandoffKeys;
use shared::html::{Link, page};
use shared::install::{CallbackOutcome, CallbackRequest, InstallError, Installed};
use shared::model::UserType;
use shared::redact::SecretString;
use shared::services::Services;
use std::sync::Arc;

struct App {
    cfg: CallbackConfig,
    svc: Services,
    /// Signs the `SUCCESS_REDIRECT_URL` hand-off; Some whenever it is set.
    handoff: Option<HandoffKeys>,
}

// One thread: the work is waiting on HighLevel and DynamoDB, and a
// multi-thread runtime spent more CPU handing tasks between threads (futex
// wake-ups) than the refreshes themselves; Lambda gives small functions a
// fraction of one vCPU anyway.
#[tokio::main(flavor = "current_thread")]
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
    // The callback only seals the tokens of a fresh grant, under the
    // current data key, and reads an earlier install without opening its
    // tokens: an old data key would only widen what a compromise of this
    // public function exposes.
    let svc = match Services::load_with(env!("CARGO_PKG_NAME"), &cfg.common, DataKeys::CurrentOnly)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    let handoff = match svc
        .app
        .handoff_for_redirect(cfg.success_redirect_url.is_some())
    {
        Ok(k) => k.cloned(),
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e.into());
        }
    };
    let app = Arc::new(App { cfg, svc, handoff });
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
    respond(&app.cfg, app.handoff.as_ref(), result)
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

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the customer reads about a failure: a fixed sentence per error,
/// never an internal name (`unavailable`, `rate_limited`, `response_lost`,
/// `invalid_grant`, …), HighLevel's raw message, nor text from the request
/// itself (anyone can craft `?error_description=`). The log line keeps the
/// full error.
fn customer_message(err: &InstallError) -> String {
    match err {
        InstallError::MethodNotAllowed(_) => {
            "This address only accepts the GET request of HighLevel's redirect.".into()
        }
        InstallError::MissingCode => "The request has no authorization code (?code=…).".into(),
        InstallError::CodeTooLong(n) => format!(
            "The authorization code is {n} characters long; HighLevel's codes are at most {}.",
            shared::install::MAX_CODE_LEN
        ),
        InstallError::CodeMalformed => {
            "The authorization code contains characters HighLevel never uses.".into()
        }
        InstallError::ConsentDenied { .. } => {
            "The installation was not approved in HighLevel.".into()
        }
        InstallError::CodeRejected { .. } => {
            "HighLevel did not accept the authorization code.".into()
        }
        InstallError::AppCredentialsRejected => {
            "HighLevel did not accept this app's credentials.".into()
        }
        InstallError::BadGrant(_) => "HighLevel's answer could not be used.".into(),
        InstallError::HighLevelUnavailable(_) => {
            "HighLevel could not complete the installation right now.".into()
        }
        InstallError::HighLevelTimeout => "HighLevel did not answer in time.".into(),
        InstallError::StillProcessing => {
            "This installation is still being completed by an earlier request.".into()
        }
        InstallError::CodeAbandoned => {
            "This authorization code was already used by an earlier request that did not finish."
                .into()
        }
        InstallError::Storage(_) => "The installation could not be saved.".into(),
    }
}

/// The app's name at the start of a sentence: the default is lower case
/// ("this app"); a configured name is used exactly as written.
fn subject(app_name: &str) -> String {
    if app_name == DEFAULT_APP_NAME {
        capitalise(app_name)
    } else {
        app_name.to_owned()
    }
}

/// The page title: the outcome, then the app's name when one is configured.
fn title(outcome: &str, app_name: &str) -> String {
    if app_name == DEFAULT_APP_NAME {
        outcome.to_owned()
    } else {
        format!("{outcome} · {app_name}")
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
        // Nothing may frame these pages (clickjacking), load anything but
        // the inline style, or submit anywhere.
        .header("content-security-policy", CSP)
        .header("x-frame-options", "DENY");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header("allow", "GET, HEAD");
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

fn what(app_name: &str, i: &Installed) -> String {
    let name = subject(app_name);
    match i.user_type {
        UserType::Company => format!(
            "{name} is now installed for the agency with company id {}.",
            i.company_id.as_deref().unwrap_or(i.id.id())
        ),
        UserType::Location => format!(
            "{name} is now installed for the sub-account with location id {}.",
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

/// `handoff` signs the redirect; the cold start made sure it is there
/// whenever `SUCCESS_REDIRECT_URL` is set, and no unsigned redirect is sent.
fn respond(
    cfg: &CallbackConfig,
    handoff: Option<&HandoffKeys>,
    result: Result<CallbackOutcome, InstallError>,
) -> Response<Body> {
    match result {
        Ok(CallbackOutcome::Probe) => html(StatusCode::OK, String::new()),
        Ok(CallbackOutcome::Installed(i)) => {
            let signed = match (&cfg.success_redirect_url, handoff) {
                (Some(url), Some(keys)) => i
                    .success_redirect(url, keys, cfg.handoff_ttl, shared::model::now_secs())
                    .map_err(|e| {
                        // The install is stored; the page says so instead.
                        tracing::warn!(install_id = %i.id, error = %e, "hand-off not signed; showing the page");
                    })
                    .ok(),
                _ => None,
            };
            if let Some(target) = signed {
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
                    &title(heading, &cfg.app_name),
                    heading,
                    &[
                        what(&cfg.app_name, &i),
                        bulk(&i),
                        "You can close this window and return to HighLevel.".into(),
                    ],
                    true,
                    Some(&back_to_highlevel(cfg)),
                ),
            )
        }
        Err(err) => {
            let status = status_of(&err);
            html(
                status,
                page(
                    &title("Installation failed", &cfg.app_name),
                    "Installation failed",
                    &[customer_message(&err), advice(&err).into()],
                    false,
                    Some(&back_to_highlevel(cfg)),
                ),
            )
        }
    }
}

fn back_to_highlevel(cfg: &CallbackConfig) -> Link<'_> {
    Link {
        label: "Back to HighLevel",
        href: cfg.ghl_app_url.as_str(),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::Env;
    use shared::model::InstallId;
    use std::collections::HashMap;

    /// Every `GhlError::kind()` and other internal name a log may carry.
    const INTERNAL_NAMES: &[&str] = &[
        "invalid_grant",
        "location_not_active",
        "invalid_client",
        "unauthorized",
        "rejected",
        "rate_limited",
        "unavailable",
        "unreachable",
        "timeout",
        "response_lost",
        "endpoint_removed",
        "HighLevelUnavailable",
        "HighLevelTimeout",
        "BadGrant",
        "Storage",
    ];

    fn config(extra: &[(&str, &str)]) -> CallbackConfig {
        let mut vars: HashMap<String, String> = [
            ("INSTALLS_TABLE", "installs"),
            ("GHL_APP_SECRET_ID", "ghl/app"),
            ("GHL_REDIRECT_URI", "https://example.com/cb"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.retain(|_, v| !v.is_empty());
        CallbackConfig::from_env(&Env::new(|k| vars.get(k).cloned())).expect("config")
    }

    fn body(resp: Response<Body>) -> String {
        match resp.into_body() {
            Body::Text(t) => t,
            Body::Binary(b) => String::from_utf8(b).unwrap(),
            Body::Empty => String::new(),
            _ => unreachable!("the callback answers text"),
        }
    }

    fn installed() -> Installed {
        Installed {
            id: InstallId::Company("co-1".into()),
            user_type: UserType::Company,
            company_id: Some("co-1".into()),
            location_id: None,
            reinstall: false,
            fresh: true,
            approved_locations: 3,
            install_to_future_locations: None,
            installed_at: 1_700_000_000,
        }
    }

    fn errors() -> Vec<InstallError> {
        let mut all = vec![
            InstallError::MethodNotAllowed("POST".into()),
            InstallError::MissingCode,
            InstallError::CodeTooLong(600),
            InstallError::CodeMalformed,
            InstallError::ConsentDenied {
                error: "access_denied".into(),
                description: "Call +1 555 0100 to unlock your account".into(),
            },
            InstallError::CodeRejected {
                message: "authorization code is invalid".into(),
            },
            InstallError::CodeRejected {
                message: "invalid_grant: expired".into(),
            },
            InstallError::AppCredentialsRejected,
            InstallError::BadGrant("it carried no refresh token"),
            InstallError::HighLevelTimeout,
            InstallError::StillProcessing,
            InstallError::CodeAbandoned,
        ];
        for kind in [
            "unavailable",
            "response_lost",
            "rate_limited",
            "unreachable",
            "timeout",
        ] {
            all.push(InstallError::HighLevelUnavailable(kind.into()));
        }
        all
    }

    #[test]
    fn failure_pages_name_no_internal_error_and_echo_no_request_text() {
        let cfg = config(&[("APP_NAME", "Acme Sync")]);
        for err in errors() {
            let logged = err.to_string();
            let page = body(respond(&cfg, None, Err(err)));
            let text = page.split("<body>").nth(1).unwrap();
            for name in INTERNAL_NAMES {
                assert!(
                    !text.contains(name),
                    "the page for {logged:?} shows {name:?}: {text}"
                );
            }
            assert!(!page.contains("555 0100"), "request text echoed: {page}");
            assert!(page.contains("Installation failed · Acme Sync"), "{page}");
        }
        let page = body(respond(
            &cfg,
            None,
            Err(InstallError::HighLevelUnavailable("response_lost".into())),
        ));
        assert!(
            page.contains("HighLevel could not complete the installation right now."),
            "{page}"
        );
    }

    #[test]
    fn the_kind_stays_in_the_error_for_the_logs() {
        let err = InstallError::HighLevelUnavailable("rate_limited".into());
        assert!(err.to_string().contains("rate_limited"));
    }

    #[test]
    fn success_page_names_the_app_links_back_and_cannot_be_framed() {
        let cfg = config(&[("APP_NAME", "Acme <Sync>")]);
        let resp = respond(&cfg, None, Ok(CallbackOutcome::Installed(installed())));
        assert_eq!(resp.status(), StatusCode::OK);
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        let page = body(resp);
        assert!(
            page.contains("<title>App installed · Acme &lt;Sync&gt;</title>"),
            "{page}"
        );
        assert!(page.contains("<h1>App installed</h1>"), "{page}");
        assert!(
            page.contains(
                "Acme &lt;Sync&gt; is now installed for the agency with company id co-1."
            ),
            "{page}"
        );
        assert!(page.contains("It covers 3 sub-accounts."), "{page}");
        assert!(
            page.contains(
                "href=\"https://app.gohighlevel.com/\" rel=\"noreferrer\">Back to HighLevel</a>"
            ),
            "{page}"
        );
    }

    #[test]
    fn default_name_reads_as_a_sentence_and_the_link_follows_ghl_app_url() {
        let cfg = config(&[("GHL_APP_URL", "https://crm.example.com/")]);
        let page = body(respond(
            &cfg,
            None,
            Ok(CallbackOutcome::Installed(installed())),
        ));
        assert!(page.contains("<title>App installed</title>"), "{page}");
        assert!(
            page.contains("This app is now installed for the agency"),
            "{page}"
        );
        assert!(page.contains("href=\"https://crm.example.com/\""), "{page}");
        let err = body(respond(&cfg, None, Err(InstallError::MissingCode)));
        assert!(err.contains("href=\"https://crm.example.com/\""), "{err}");
        assert!(err.contains("<title>Installation failed</title>"), "{err}");
    }

    #[test]
    fn success_redirect_is_signed_and_keeps_the_fragment_last() {
        let cfg = config(&[(
            "SUCCESS_REDIRECT_URL",
            "https://app.example.com/welcome#/done",
        )]);
        let key = "BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=";
        let keys =
            HandoffKeys::from_base64("h1", &[("h1".to_string(), SecretString::new(key))].into())
                .unwrap();
        let resp = respond(
            &cfg,
            Some(&keys),
            Ok(CallbackOutcome::Installed(installed())),
        );
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()["location"].to_str().unwrap();
        assert!(
            location.starts_with("https://app.example.com/welcome?userType=Company&companyId=co-1&installedAt=1700000000&exp=")
                && location.contains("&kid=h1&sig=")
                && location.ends_with("#/done"),
            "{location}"
        );
        // Every value here is plain (ids, digits, hex): no decoding needed.
        let query = location
            .split_once('?')
            .unwrap()
            .1
            .split('#')
            .next()
            .unwrap();
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        assert!(keys.verify(&pairs, shared::model::now_secs()).is_ok());
        // Without keys (never the case once started) nothing unsigned leaves.
        let resp = respond(&cfg, None, Ok(CallbackOutcome::Installed(installed())));
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("location").is_none());
    }
}
