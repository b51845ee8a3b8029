//! The install leg: an authorization code from HighLevel's redirect becomes a
//! stored install, exactly once per code.
//!
//! A code is claimed in the table before it is exchanged, so a browser
//! refresh or double click never exchanges twice; the second request waits
//! for the first and shows the same outcome.

use crate::config::CallbackConfig;
use crate::events::StateChanged;
use crate::ghl::GhlError;
use crate::handoff::{Handoff, HandoffError, HandoffKeys};
use crate::model::{InstallId, InstallState, TokenPair, UserType, now_millis, now_secs};
use crate::redact::SecretString;
use crate::services::Services;
use crate::store::{CodeRecord, Install, StoreError, code_hash};
use std::time::Duration;

/// HighLevel's codes are a few dozen characters; anything this long is not one.
pub const MAX_CODE_LEN: usize = 512;
/// How long a repeated request waits for the first one to finish.
const PENDING_WAIT: Duration = Duration::from_secs(10);
const PENDING_POLL: Duration = Duration::from_millis(200);
/// A claim older than this whose holder never finished is abandoned.
const PENDING_ABANDONED_MS: i64 = 60_000;

/// Why a callback did not produce an install. Stable names; the function
/// maps each to an HTTP status in one place.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("method {0} is not allowed; HighLevel redirects here with GET")]
    MethodNotAllowed(String),
    #[error("the request has no authorization code (?code=…)")]
    MissingCode,
    #[error(
        "the authorization code is {0} characters long; HighLevel's codes are at most {MAX_CODE_LEN}"
    )]
    CodeTooLong(usize),
    #[error("the authorization code contains characters HighLevel never uses")]
    CodeMalformed,
    #[error("the installation was not approved ({error}): {description}")]
    ConsentDenied { error: String, description: String },
    #[error("HighLevel rejected the authorization code: {message}")]
    CodeRejected { message: String },
    #[error(
        "HighLevel rejected this app's credentials; the app owner must fix its client id and secret"
    )]
    AppCredentialsRejected,
    #[error("HighLevel's answer was not usable: {0}")]
    BadGrant(&'static str),
    #[error("HighLevel is unavailable right now ({0})")]
    HighLevelUnavailable(String),
    #[error("HighLevel did not answer in time")]
    HighLevelTimeout,
    #[error("this install is still being completed by an earlier request")]
    StillProcessing,
    #[error("this authorization code was already used by an earlier request that did not finish")]
    CodeAbandoned,
    #[error("the install could not be saved: {0}")]
    Storage(#[from] StoreError),
}

impl InstallError {
    pub fn name(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::MissingCode => "MissingCode",
            Self::CodeTooLong(_) => "CodeTooLong",
            Self::CodeMalformed => "CodeMalformed",
            Self::ConsentDenied { .. } => "ConsentDenied",
            Self::CodeRejected { .. } => "CodeRejected",
            Self::AppCredentialsRejected => "AppCredentialsRejected",
            Self::BadGrant(_) => "BadGrant",
            Self::HighLevelUnavailable(_) => "HighLevelUnavailable",
            Self::HighLevelTimeout => "HighLevelTimeout",
            Self::StillProcessing => "StillProcessing",
            Self::CodeAbandoned => "CodeAbandoned",
            Self::Storage(_) => "Storage",
        }
    }
}

/// The parts of the redirect request the flow reads.
#[derive(Debug, Default)]
pub struct CallbackRequest {
    pub method: String,
    pub code: Option<SecretString>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What was installed, for the page and the redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub id: InstallId,
    pub user_type: UserType,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub reinstall: bool,
    /// False when an earlier request for the same code did the work.
    pub fresh: bool,
    /// A bulk (agency) install: how many sub-accounts it approved.
    pub approved_locations: usize,
    /// Whether the agency asked for future sub-accounts too.
    pub install_to_future_locations: Option<bool>,
    /// Epoch seconds of this install (the latest, for a reinstall).
    pub installed_at: i64,
}

impl Installed {
    /// `url` with the install's ids and their signature added to its query
    /// (`userType`, `companyId`, `locationId`, `installedAt`, `exp`, `kid`,
    /// `sig`; see [`crate::handoff`]), before any `#fragment`: where
    /// `SUCCESS_REDIRECT_URL` sends the browser. Ids only, never a token.
    /// The parameters are form-encoded (a space is `+`), as a browser
    /// submitting a GET form would send them. Valid until `now_secs + ttl`.
    pub fn success_redirect(
        &self,
        url: &url::Url,
        keys: &HandoffKeys,
        ttl: Duration,
        now_secs: i64,
    ) -> Result<String, HandoffError> {
        let params = keys.sign(&Handoff {
            user_type: self.user_type.as_str().to_owned(),
            company_id: self.company_id.clone(),
            location_id: self.location_id.clone(),
            installed_at: self.installed_at,
            exp: now_secs.saturating_add(ttl.as_secs() as i64),
        })?;
        let mut target = url.clone();
        target.query_pairs_mut().extend_pairs(params);
        Ok(target.into())
    }

    fn from_install(install: &Install, fresh: bool) -> Self {
        Self {
            user_type: install.id.user_type(),
            company_id: install.info.company_id.clone(),
            location_id: install.info.location_id.clone(),
            reinstall: install.install_count > 1,
            id: install.id.clone(),
            fresh,
            approved_locations: install.info.approved_locations.as_ref().map_or(0, Vec::len),
            install_to_future_locations: install.info.install_to_future_locations,
            installed_at: install.last_installed_at,
        }
    }
}

/// HEAD gets no side effects: link scanners probe URLs with it.
pub enum CallbackOutcome {
    Installed(Installed),
    Probe,
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Checks the request before anything is touched.
fn validate(req: &CallbackRequest) -> Result<Option<&SecretString>, InstallError> {
    match req.method.as_str() {
        "GET" => {}
        "HEAD" => return Ok(None),
        other => return Err(InstallError::MethodNotAllowed(clip(other, 16))),
    }
    if let Some(error) = req.error.as_deref().filter(|e| !e.is_empty()) {
        return Err(InstallError::ConsentDenied {
            error: clip(error, 64),
            description: clip(
                req.error_description
                    .as_deref()
                    .unwrap_or("the user did not approve the installation"),
                200,
            ),
        });
    }
    let code = req
        .code
        .as_ref()
        .filter(|c| !c.expose().trim().is_empty())
        .ok_or(InstallError::MissingCode)?;
    if code.len() > MAX_CODE_LEN {
        return Err(InstallError::CodeTooLong(code.expose().chars().count()));
    }
    if !code.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InstallError::CodeMalformed);
    }
    Ok(Some(code))
}

/// Runs the install leg for one redirect.
pub async fn handle(
    cfg: &CallbackConfig,
    svc: &Services,
    req: &CallbackRequest,
) -> Result<CallbackOutcome, InstallError> {
    let Some(code) = validate(req)? else {
        return Ok(CallbackOutcome::Probe);
    };
    let hash = code_hash(code);
    let code_fp = &hash[..12];
    // A claim only lives while an exchange is pending or after it succeeded;
    // a failed attempt gives it back, so a waiter that sees it vanish claims
    // it again and gets HighLevel's own answer for the code.
    for _ in 0..2 {
        match svc.store.claim_code(&hash).await? {
            None => {
                return exchange(cfg, svc, code, &hash, code_fp)
                    .await
                    .map(CallbackOutcome::Installed);
            }
            Some(record) => {
                tracing::info!(
                    code_fp,
                    "authorization code seen before; waiting for its outcome"
                );
                if let Some(installed) = replay(svc, &hash, record).await? {
                    return Ok(CallbackOutcome::Installed(installed));
                }
            }
        }
    }
    Err(InstallError::CodeAbandoned)
}

async fn exchange(
    cfg: &CallbackConfig,
    svc: &Services,
    code: &SecretString,
    hash: &str,
    code_fp: &str,
) -> Result<Installed, InstallError> {
    let result = exchange_and_save(cfg, svc, code).await;
    match &result {
        Ok((id, _)) => {
            svc.store
                .finish_code(
                    hash,
                    &CodeRecord::Done {
                        install: id.clone(),
                    },
                )
                .await?;
        }
        Err(e) => {
            // Nothing was stored: leave the table as it was.
            if let Err(release) = svc.store.release_code(hash).await {
                tracing::error!(code_fp, error = %release, "could not release the code claim");
            }
            tracing::warn!(code_fp, error = e.name(), "code exchange failed");
        }
    }
    let (id, install) = result?;
    let installed = Installed::from_install(&install, true);
    tracing::info!(
        install_id = %id,
        code_fp,
        reinstall = installed.reinstall,
        install_count = install.install_count,
        "install stored"
    );
    Ok(installed)
}

async fn exchange_and_save(
    cfg: &CallbackConfig,
    svc: &Services,
    code: &SecretString,
) -> Result<(InstallId, Install), InstallError> {
    let grant = svc
        .ghl
        .exchange_code(&svc.app, code, cfg.user_type, &cfg.redirect_uri)
        .await
        .map_err(|err| match err {
            GhlError::InvalidGrant { message, .. } | GhlError::Rejected { message, .. } => {
                InstallError::CodeRejected { message }
            }
            GhlError::InvalidClient { .. } => InstallError::AppCredentialsRejected,
            GhlError::Timeout => InstallError::HighLevelTimeout,
            other => InstallError::HighLevelUnavailable(other.kind().into()),
        })?;
    let user_type = grant.user_type.unwrap_or(cfg.user_type);
    let id = InstallId::for_grant(
        user_type,
        grant.company_id.as_deref(),
        grant.location_id.as_deref(),
    )
    .ok_or(InstallError::BadGrant("it named no company or location"))?;
    let refresh_token = grant
        .refresh_token
        .clone()
        .ok_or(InstallError::BadGrant("it carried no refresh token"))?;
    let pair = TokenPair {
        access_token: grant.access_token.clone(),
        refresh_token,
        expires_at: now_secs() + grant.expires_in as i64,
    };
    let mut info = grant.info();
    info.user_type = Some(user_type);
    // Only the earlier state is wanted: its tokens may be sealed under a
    // data key older than the one this function holds (the callback keeps
    // only the current one), so they are not opened. A failed read must not
    // pass for "never installed" (the event would say `installed` for a
    // reinstall), but it must not lose the fresh tokens either: logged, and
    // the grant is stored all the same.
    let before = match svc.store.get_without_tokens(&id).await {
        Ok(found) => found.map(|i| i.state),
        Err(e) => {
            tracing::warn!(install_id = %id, error = %e, "earlier install not read; the event may say installed for a reinstall");
            None
        }
    };
    let install = svc.store.save_grant(&id, &pair, &info, "installed").await?;
    let reason = if before.is_some() {
        "reinstalled"
    } else {
        "installed"
    };
    svc.events
        .changed(StateChanged::new(
            &id,
            info.company_id.as_deref(),
            before,
            InstallState::Active,
            reason,
        ))
        .await;
    link_installed_locations(svc, &id, &info).await;
    Ok((id, install))
}

/// The locations this grant covers become known locations of the company at
/// once: a location install's own, and a bulk install's approved ones, so
/// the mint serves them without `companyId`. A failure does not fail the
/// install (the tokens are stored); reconciliation links them later.
async fn link_installed_locations(svc: &Services, id: &InstallId, info: &crate::model::GrantInfo) {
    let Some(company_id) = info.company_id.as_deref() else {
        return;
    };
    let locations: Vec<String> = match id {
        InstallId::Location(l) => vec![l.clone()],
        _ => info.approved_locations.clone().unwrap_or_default(),
    };
    if locations.is_empty() {
        return;
    }
    match svc
        .store
        .link_locations(company_id, &locations, now_millis(), "callback")
        .await
    {
        Ok(n) => {
            tracing::info!(install_id = %id, locations = locations.len(), linked = n, "installed locations linked")
        }
        Err(e) => {
            tracing::error!(install_id = %id, error = %e, "installed locations not linked; reconciliation will")
        }
    }
}

/// Waits for an earlier request's outcome. `None`: its claim was given back
/// (it failed), so the caller should claim the code itself.
async fn replay(
    svc: &Services,
    hash: &str,
    mut record: CodeRecord,
) -> Result<Option<Installed>, InstallError> {
    let waited_from = std::time::Instant::now();
    loop {
        match record {
            CodeRecord::Done { install } => {
                // Ids and times only: the tokens may since have been
                // re-sealed under a key this function does not hold.
                let stored = svc
                    .store
                    .get_without_tokens(&install)
                    .await?
                    .ok_or(InstallError::CodeAbandoned)?;
                return Ok(Some(Installed::from_install(&stored, false)));
            }
            CodeRecord::Pending { claimed_at_ms } => {
                if now_millis() - claimed_at_ms > PENDING_ABANDONED_MS {
                    return Err(InstallError::CodeAbandoned);
                }
                if waited_from.elapsed() >= PENDING_WAIT {
                    return Err(InstallError::StillProcessing);
                }
                tokio::time::sleep(PENDING_POLL).await;
                match svc.store.get_code(hash).await? {
                    Some(r) => record = r,
                    None => return Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed() -> Installed {
        Installed {
            id: InstallId::Location("l 1".into()),
            user_type: UserType::Location,
            company_id: Some("c&1".into()),
            location_id: Some("l 1".into()),
            reinstall: false,
            fresh: true,
            approved_locations: 0,
            install_to_future_locations: None,
            installed_at: 1_700_000_000,
        }
    }

    fn keys() -> HandoffKeys {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        HandoffKeys::from_base64("h1", &[("h1".to_string(), SecretString::new(key))].into())
            .unwrap()
    }

    const NOW: i64 = 1_700_000_100;

    fn redirect(i: &Installed, url: &str) -> String {
        i.success_redirect(
            &url::Url::parse(url).unwrap(),
            &keys(),
            Duration::from_secs(300),
            NOW,
        )
        .unwrap()
    }

    /// The redirect's query, without the signature (which varies by key).
    fn unsigned(target: &str) -> String {
        let (head, rest) = target.split_once("&sig=").unwrap();
        let frag = rest.find('#').map(|at| &rest[at..]).unwrap_or("");
        format!("{head}{frag}")
    }

    #[test]
    fn success_redirect_appends_encoded_ids_and_a_verifiable_signature() {
        let i = installed();
        let target = redirect(&i, "https://x.example/done");
        assert_eq!(
            unsigned(&target),
            "https://x.example/done?userType=Location&companyId=c%261&locationId=l+1&installedAt=1700000000&exp=1700000400&kid=h1"
        );
        let pairs: Vec<(String, String)> = url::Url::parse(&target)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let h = keys().verify(&pairs, NOW).unwrap();
        assert_eq!(
            (
                h.company_id.as_deref(),
                h.location_id.as_deref(),
                h.installed_at
            ),
            (Some("c&1"), Some("l 1"), 1_700_000_000)
        );
        assert_eq!(keys().verify(&pairs, NOW + 301), Err(HandoffError::Expired));
        assert_eq!(
            unsigned(&redirect(&i, "https://x.example/done?a=b")),
            "https://x.example/done?a=b&userType=Location&companyId=c%261&locationId=l+1&installedAt=1700000000&exp=1700000400&kid=h1"
        );
        let company = Installed {
            user_type: UserType::Company,
            location_id: None,
            ..installed()
        };
        assert_eq!(
            unsigned(&redirect(&company, "https://x.example/")),
            "https://x.example/?userType=Company&companyId=c%261&installedAt=1700000000&exp=1700000400&kid=h1"
        );
    }

    #[test]
    fn success_redirect_puts_the_ids_before_the_fragment() {
        let i = installed();
        let target = redirect(&i, "https://x.example/app#/welcome");
        assert!(target.ends_with("#/welcome"), "{target}");
        assert_eq!(
            unsigned(&target),
            "https://x.example/app?userType=Location&companyId=c%261&locationId=l+1&installedAt=1700000000&exp=1700000400&kid=h1#/welcome"
        );
        let target = redirect(&i, "https://x.example/app?tab=1#/welcome?x=y");
        assert!(target.ends_with("#/welcome?x=y"), "{target}");
        let parsed = url::Url::parse(&redirect(&i, "https://x.example/app?#top")).unwrap();
        assert_eq!(parsed.fragment(), Some("top"));
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            pairs[..3],
            [
                ("userType".to_owned(), "Location".to_owned()),
                ("companyId".to_owned(), "c&1".to_owned()),
                ("locationId".to_owned(), "l 1".to_owned()),
            ]
        );
        assert!(keys().verify(&pairs, NOW).is_ok());
    }

    fn req(method: &str, code: Option<&str>) -> CallbackRequest {
        CallbackRequest {
            method: method.into(),
            code: code.map(SecretString::new),
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        assert!(matches!(
            validate(&req("POST", Some("abc"))),
            Err(InstallError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            validate(&req("GET", None)),
            Err(InstallError::MissingCode)
        ));
        assert!(matches!(
            validate(&req("GET", Some("  "))),
            Err(InstallError::MissingCode)
        ));
        let long = "a".repeat(MAX_CODE_LEN + 1);
        assert!(matches!(
            validate(&req("GET", Some(&long))),
            Err(InstallError::CodeTooLong(513))
        ));
        assert!(matches!(
            validate(&req("GET", Some("a b"))),
            Err(InstallError::CodeMalformed)
        ));
        assert!(matches!(validate(&req("HEAD", Some("abc"))), Ok(None)));
        assert!(matches!(validate(&req("GET", Some("abc123"))), Ok(Some(_))));
        let denied = CallbackRequest {
            method: "GET".into(),
            error: Some("access_denied".into()),
            ..Default::default()
        };
        let err = validate(&denied).unwrap_err();
        assert_eq!(err.name(), "ConsentDenied");
        assert!(err.to_string().contains("access_denied"));
    }

    #[test]
    fn error_messages_never_echo_the_code() {
        let code = "secret-code-value";
        let r = req("GET", Some(&format!("{code}\u{7f}")));
        let err = validate(&r).unwrap_err();
        assert!(!err.to_string().contains(code));
    }
}
