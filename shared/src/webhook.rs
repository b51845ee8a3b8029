//! HighLevel's marketplace webhooks (INSTALL, UNINSTALL, PLAN_CHANGE), so the
//! fleet this project holds matches the fleet that has the app.
//!
//! Order of checks, each refusing with nothing changed: the body's size, the
//! signature over the exact raw bytes (`x-ghl-signature`, Ed25519; the
//! legacy `x-wh-signature`, RSA-SHA256, only when configured), the JSON, the
//! `appId`, and the `timestamp`'s age. A `webhookId` already applied is a
//! duplicate: answered 2xx, nothing changed.
//!
//! HighLevel retries any non-2xx delivery up to 12 times with exponential
//! backoff, with the same payload (so the same `timestamp`), and pauses a URL
//! whose success rate stays under 90 %. So the accepted age covers the whole
//! retry schedule (`WEBHOOK_MAX_AGE_SECS`, 48 hours by default; the future
//! only by clock skew), ids are remembered twice as long, and a redelivery
//! is a success, not a failure. An old timestamp is safe to accept because
//! nothing is applied on its say-so alone: the signature covers the exact
//! bytes (the timestamp and id included), an id is applied once, and every
//! effect is ordered by event time per grant and per link
//! ([`crate::store::Store::uninstall`], [`crate::store::Store::set_link`],
//! [`crate::store::Store::set_plan`]): an event older than what a grant or
//! link already holds changes nothing. The webhook id is recorded only once
//! the effects are stored, so a failure answers 5xx and HighLevel's retry
//! applies the event again.

use crate::config::WebhookConfig;
use crate::events::StateChanged;
use crate::model::{InstallId, InstallState, now_millis};
use crate::services::Services;
use crate::store::{LinkState, LocationLink, StoreError, UninstallWrite};
use base64::Engine;
use serde_json::{Value, json};

/// The largest body read: HighLevel's install events are under 2 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is {0} bytes; at most {MAX_BODY_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the x-ghl-signature header is missing")]
    MissingSignature,
    #[error("the signature does not match the body ({0})")]
    BadSignature(&'static str),
    #[error("the body is not a webhook event: {0}")]
    Malformed(String),
    #[error("the event is for app {got:?}, not this app")]
    WrongApp { got: String },
    #[error(
        "the event's timestamp is {age_secs} s old; at most {max_age_secs} s are accepted (HighLevel's retries end well before)"
    )]
    Stale { age_secs: i64, max_age_secs: u64 },
    #[error(
        "the event's timestamp is {ahead_secs} s in the future; at most {max_skew_secs} s of clock skew are accepted"
    )]
    FromTheFuture { ahead_secs: i64, max_skew_secs: u64 },
    #[error("storage failed: {0}; the event was not applied, retry")]
    Store(#[from] StoreError),
}

impl WebhookError {
    /// Stable names for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "TooLarge",
            Self::MissingSignature => "MissingSignature",
            Self::BadSignature(_) => "BadSignature",
            Self::Malformed(_) => "Malformed",
            Self::WrongApp { .. } => "WrongApp",
            Self::Stale { .. } => "Stale",
            Self::FromTheFuture { .. } => "FromTheFuture",
            Self::Store(_) => "Storage",
        }
    }
}

/// What an accepted event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A location is now a known location of its company.
    LocationInstalled {
        company_id: String,
        location_id: String,
    },
    /// A company install: its grant arrives through the OAuth callback.
    CompanyInstalled { company_id: String },
    /// Grants marked `uninstalled` and erased, and locations unlinked.
    /// `kept`: grants or locations a newer install holds, left alone.
    Uninstalled {
        target: String,
        grants: usize,
        locations: usize,
        kept: usize,
    },
    /// The plan was stored on these grants, and kept for grants to come.
    PlanChanged {
        target: String,
        plan_id: String,
        grants: Vec<String>,
    },
    /// Older than what the target already holds (a late or out-of-order
    /// delivery): nothing changed.
    Older { target: String, newer_at_ms: i64 },
    /// This `webhookId` was applied before (HighLevel's retry of a delivery
    /// whose answer it did not get): nothing changed.
    Duplicate,
    /// A type this project does not act on (acknowledged, so HighLevel does
    /// not retry it).
    Ignored { kind: String },
}

impl Applied {
    pub fn name(&self) -> &'static str {
        match self {
            Self::LocationInstalled { .. } => "location_installed",
            Self::CompanyInstalled { .. } => "company_installed",
            Self::Uninstalled { .. } => "uninstalled",
            Self::PlanChanged { grants, .. } if grants.is_empty() => "plan_kept",
            Self::PlanChanged { .. } => "plan_changed",
            Self::Older { .. } => "older",
            Self::Duplicate => "duplicate",
            Self::Ignored { .. } => "ignored",
        }
    }

    /// The answer's body: the outcome's name and what was stored.
    pub fn answer(&self) -> Value {
        let mut body = json!({ "status": self.name() });
        match self {
            Self::Uninstalled {
                target,
                grants,
                locations,
                kept,
            } => {
                body["target"] = json!(target);
                body["grantsErased"] = json!(grants);
                body["locationsUnlinked"] = json!(locations);
                body["keptAsNewer"] = json!(kept);
            }
            Self::PlanChanged {
                target,
                plan_id,
                grants,
            } => {
                body["target"] = json!(target);
                body["planId"] = json!(plan_id);
                body["grants"] = json!(grants);
            }
            Self::Older {
                target,
                newer_at_ms,
            } => {
                body["target"] = json!(target);
                body["newerEventAt"] = json!(crate::model::rfc3339_ms(*newer_at_ms));
            }
            _ => {}
        }
        body
    }
}

/// The parts of an event this project reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub webhook_id: String,
    pub app_id: String,
    pub at_ms: i64,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub install_type: Option<String>,
    pub plan_id: Option<String>,
}

/// Checks the signature over the exact bytes received.
pub fn verify(
    cfg: &WebhookConfig,
    ed25519_sig: Option<&str>,
    rsa_sig: Option<&str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(sig) = ed25519_sig.map(str::trim).filter(|s| !s.is_empty()) {
        let sig = b64
            .decode(sig)
            .map_err(|_| WebhookError::BadSignature("x-ghl-signature is not base64"))?;
        return ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &cfg.public_key)
            .verify(body, &sig)
            .map_err(|_| WebhookError::BadSignature("x-ghl-signature"));
    }
    match (
        &cfg.rsa_public_key,
        rsa_sig.map(str::trim).filter(|s| !s.is_empty()),
    ) {
        (Some(key), Some(sig)) => {
            let sig = b64
                .decode(sig)
                .map_err(|_| WebhookError::BadSignature("x-wh-signature is not base64"))?;
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                key,
            )
            .verify(body, &sig)
            .map_err(|_| WebhookError::BadSignature("x-wh-signature"))
        }
        _ => Err(WebhookError::MissingSignature),
    }
}

fn text(obj: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    match obj.get(field)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads `timestamp`: an RFC 3339 string (HighLevel's form) or epoch
/// milliseconds (or seconds) as a number or numeric string.
fn timestamp_ms(v: &Value) -> Option<i64> {
    let from_number = |n: i64| if n < 100_000_000_000 { n * 1000 } else { n };
    match v {
        Value::Number(n) => n.as_i64().map(from_number),
        Value::String(s) => {
            if let Ok(n) = s.trim().parse::<i64>() {
                return Some(from_number(n));
            }
            time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        _ => None,
    }
}

/// Parses an event, naming what is wrong.
pub fn parse(body: &[u8]) -> Result<Event, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| WebhookError::Malformed("not a JSON object".into()))?;
    let kind =
        text(obj, "type").ok_or_else(|| WebhookError::Malformed("type is missing".into()))?;
    let webhook_id = text(obj, "webhookId")
        .ok_or_else(|| WebhookError::Malformed("webhookId is missing".into()))?;
    let app_id =
        text(obj, "appId").ok_or_else(|| WebhookError::Malformed("appId is missing".into()))?;
    let at_ms = obj
        .get("timestamp")
        .and_then(timestamp_ms)
        .ok_or_else(|| WebhookError::Malformed("timestamp is missing or not a time".into()))?;
    let id_ok = |s: &String| {
        s.len() <= crate::mint::MAX_ID_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let company_id = text(obj, "companyId");
    let location_id = text(obj, "locationId");
    for (field, value) in [("companyId", &company_id), ("locationId", &location_id)] {
        if value.as_ref().is_some_and(|v| !id_ok(v)) {
            return Err(WebhookError::Malformed(format!(
                "{field} is not a HighLevel id (1-64 letters, digits, - and _)"
            )));
        }
    }
    if webhook_id.len() > 128 {
        return Err(WebhookError::Malformed(
            "webhookId is longer than 128 characters".into(),
        ));
    }
    Ok(Event {
        kind: kind.to_ascii_uppercase(),
        webhook_id,
        app_id,
        at_ms,
        company_id,
        location_id,
        install_type: text(obj, "installType"),
        plan_id: text(obj, "planId"),
    })
}

/// The marketplace app whose events this webhook applies: `GHL_APP_ID`.
/// Checked at cold start: HighLevel signs every app's webhooks with the same
/// key, so without it another app's UNINSTALL sent to this URL would erase
/// that agency's grants here.
pub fn app_id(cfg: &WebhookConfig) -> Result<String, crate::config::ConfigError> {
    cfg.app_id
        .clone()
        .ok_or(crate::config::ConfigError::Missing {
            var: "GHL_APP_ID",
            expected: "the marketplace app id whose webhooks this function applies (marketplace-webhook reads no app secret)",
        })
}

/// Verifies, checks and applies one delivery for app `app_id`.
pub async fn handle(
    svc: &Services,
    cfg: &WebhookConfig,
    app_id: &str,
    ed25519_sig: Option<&str>,
    rsa_sig: Option<&str>,
    body: &[u8],
) -> Result<(Event, Applied), WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge(body.len()));
    }
    verify(cfg, ed25519_sig, rsa_sig, body)?;
    let event = parse(body)?;
    if app_id != event.app_id {
        return Err(WebhookError::WrongApp {
            got: event.app_id.chars().take(64).collect(),
        });
    }
    check_age(cfg, event.at_ms, now_millis())?;
    if svc.store.webhook_seen(&event.webhook_id).await? {
        return Ok((event, Applied::Duplicate));
    }
    let applied = apply(svc, &event).await?;
    // Recorded after the effects: a failure above leaves no record, so the
    // redelivery applies the event. Effects are idempotent and ordered, so
    // two deliveries racing here do no harm. Kept twice the accepted age, so
    // any delivery old enough to pass the age check is still recognised.
    svc.store
        .record_webhook(&event.webhook_id, cfg.max_age * 2)
        .await?;
    Ok((event, applied))
}

/// An event may be as old as HighLevel's retry schedule, and ahead of our
/// clock only by skew.
fn check_age(cfg: &WebhookConfig, at_ms: i64, now_ms: i64) -> Result<(), WebhookError> {
    let age_ms = now_ms.saturating_sub(at_ms);
    if age_ms > cfg.max_age.as_millis() as i64 {
        return Err(WebhookError::Stale {
            age_secs: age_ms / 1000,
            max_age_secs: cfg.max_age.as_secs(),
        });
    }
    if -age_ms > cfg.max_skew.as_millis() as i64 {
        return Err(WebhookError::FromTheFuture {
            ahead_secs: -age_ms / 1000,
            max_skew_secs: cfg.max_skew.as_secs(),
        });
    }
    Ok(())
}

async fn apply(svc: &Services, e: &Event) -> Result<Applied, WebhookError> {
    let store = &svc.store;
    let missing = |what: &str| WebhookError::Malformed(format!("{} without {what}", e.kind));
    match e.kind.as_str() {
        "INSTALL" => {
            let company_id = e.company_id.clone().ok_or_else(|| missing("companyId"))?;
            match (&e.location_id, e.install_type.as_deref()) {
                (Some(location_id), _) => {
                    let newer = store
                        .set_link(&LocationLink {
                            company_id: company_id.clone(),
                            location_id: location_id.clone(),
                            state: LinkState::Installed,
                            at_ms: e.at_ms,
                            source: "webhook".into(),
                            missing_since_ms: None,
                        })
                        .await?;
                    if !newer {
                        // The callback or a mint may have linked it since,
                        // at its own (later) time: then it stands installed.
                        let link = store.link_of(location_id).await?;
                        if link
                            .as_ref()
                            .is_none_or(|l| l.state == LinkState::Uninstalled)
                        {
                            return Ok(Applied::Older {
                                target: InstallId::Location(location_id.clone()).to_string(),
                                newer_at_ms: link.map_or(0, |l| l.at_ms),
                            });
                        }
                    }
                    Ok(Applied::LocationInstalled {
                        company_id,
                        location_id: location_id.clone(),
                    })
                }
                (None, Some(t)) if t.eq_ignore_ascii_case("location") => Err(missing("locationId")),
                (None, _) => Ok(Applied::CompanyInstalled { company_id }),
            }
        }
        "UNINSTALL" => {
            let reason =
                "HighLevel: the app was uninstalled (UNINSTALL webhook); its tokens are erased";
            uninstall(
                svc,
                e.company_id.as_deref(),
                e.location_id.as_deref(),
                reason,
                e.at_ms,
                "webhook",
            )
            .await
        }
        "PLAN_CHANGE" => {
            let plan_id = e.plan_id.clone().ok_or_else(|| missing("planId"))?;
            let ids = match (&e.location_id, &e.company_id) {
                (Some(l), _) => vec![InstallId::Location(l.clone()), InstallId::Minted(l.clone())],
                (None, Some(c)) => vec![InstallId::Company(c.clone())],
                (None, None) => return Err(missing("companyId or locationId")),
            };
            change_plan(svc, &ids, &plan_id, e.at_ms).await
        }
        other => Ok(Applied::Ignored {
            kind: other.chars().take(40).collect(),
        }),
    }
}

/// A plan change, ordered per grant; kept aside too, for a grant that does
/// not exist yet (the callback or the first mint uses it).
async fn change_plan(
    svc: &Services,
    ids: &[InstallId],
    plan_id: &str,
    at_ms: i64,
) -> Result<Applied, WebhookError> {
    let target = ids[0].to_string();
    let mut grants = Vec::new();
    let mut older = false;
    for id in ids {
        match svc.store.set_plan(id, plan_id, at_ms).await? {
            crate::store::PlanWrite::Stored => grants.push(id.to_string()),
            crate::store::PlanWrite::Older => older = true,
            crate::store::PlanWrite::NoGrant => {}
        }
    }
    let kept = svc.store.keep_plan(&ids[0], plan_id, at_ms).await?;
    if grants.is_empty() && (older || !kept) {
        return older_plan(svc, &ids[0]).await;
    }
    Ok(Applied::PlanChanged {
        target,
        plan_id: plan_id.to_owned(),
        grants,
    })
}

async fn older_plan(svc: &Services, id: &InstallId) -> Result<Applied, WebhookError> {
    let stored = svc.store.get_without_tokens(id).await?;
    Ok(Applied::Older {
        target: id.to_string(),
        newer_at_ms: stored.map_or(0, |i| i.plan_at_ms.max(i.lifecycle_at_ms)),
    })
}

/// An event refused as older than what a location's link holds.
async fn older(svc: &Services, id: &InstallId) -> Result<Applied, WebhookError> {
    let link = svc.store.link_of(id.id()).await?;
    Ok(Applied::Older {
        target: id.to_string(),
        newer_at_ms: link.map_or(0, |l| l.at_ms),
    })
}

/// The local effect of an uninstall, shared by the webhook, reconciliation
/// and the operator's CLI: a location's grants (its own install and the
/// token minted for it), or a company's grant and those of every location
/// linked to it. `at_ms` is the event's time: every part of the effect is
/// ordered by it, and a part that holds a newer event (an install, a
/// reinstall through the callback, a mint) is left alone. A company
/// uninstall older than the company's own grant erases nothing at all: the
/// agency installed again after it.
pub async fn uninstall(
    svc: &Services,
    company_id: Option<&str>,
    location_id: Option<&str>,
    reason: &str,
    at_ms: i64,
    source: &str,
) -> Result<Applied, WebhookError> {
    let store = &svc.store;
    let mut tally = Tally::default();
    let unlink = |company: String, location: String| LocationLink {
        company_id: company,
        location_id: location,
        state: LinkState::Uninstalled,
        at_ms,
        source: source.to_owned(),
        missing_since_ms: None,
    };
    let target = match (location_id, company_id) {
        (Some(loc), company) => {
            let target = InstallId::Location(loc.to_owned());
            let company = match company {
                Some(c) => Some(c.to_owned()),
                None => store.link_of(loc).await?.map(|l| l.company_id),
            };
            if !store
                .set_link(&unlink(company.unwrap_or_default(), loc.to_owned()))
                .await?
            {
                // The location was installed (or uninstalled) again after
                // this event: it changes nothing.
                return older(svc, &target).await;
            }
            tally.locations += 1;
            erase_location(svc, loc, reason, at_ms, &mut tally).await?;
            target
        }
        (None, Some(company)) => {
            let target = InstallId::Company(company.to_owned());
            if let Some(newer_at_ms) = erase(svc, &target, reason, at_ms, &mut tally).await? {
                return Ok(Applied::Older {
                    target: target.to_string(),
                    newer_at_ms,
                });
            }
            // An agency uninstall removes the app from every sub-account,
            // each as ordered as its own UNINSTALL would be.
            for link in store.links_of(company).await? {
                let loc = &link.location_id;
                if !store
                    .set_link(&unlink(company.to_owned(), loc.clone()))
                    .await?
                {
                    tally.kept += 1;
                    continue;
                }
                if link.state == LinkState::Installed {
                    tally.locations += 1;
                }
                erase_location(svc, loc, reason, at_ms, &mut tally).await?;
            }
            target
        }
        (None, None) => {
            return Err(WebhookError::Malformed(
                "UNINSTALL without companyId or locationId".into(),
            ));
        }
    };
    Ok(Applied::Uninstalled {
        target: target.to_string(),
        grants: tally.grants,
        locations: tally.locations,
        kept: tally.kept,
    })
}

#[derive(Default)]
struct Tally {
    grants: usize,
    locations: usize,
    kept: usize,
}

/// A location's own install and the token minted for it.
async fn erase_location(
    svc: &Services,
    loc: &str,
    reason: &str,
    at_ms: i64,
    tally: &mut Tally,
) -> Result<(), WebhookError> {
    for id in [
        InstallId::Location(loc.to_owned()),
        InstallId::Minted(loc.to_owned()),
    ] {
        erase(svc, &id, reason, at_ms, tally).await?;
    }
    Ok(())
}

/// Uninstalls one grant as of `at_ms` and announces the change. Some(time
/// of the newer event) when the grant holds one and was left alone.
async fn erase(
    svc: &Services,
    id: &InstallId,
    reason: &str,
    at_ms: i64,
    tally: &mut Tally,
) -> Result<Option<i64>, WebhookError> {
    match svc.store.uninstall(id, reason, at_ms).await? {
        UninstallWrite::Applied { before } => {
            tally.grants += 1;
            if before.state != InstallState::Uninstalled {
                svc.events
                    .changed(StateChanged::new(
                        id,
                        before.info.company_id.as_deref(),
                        Some(before.state),
                        InstallState::Uninstalled,
                        reason,
                    ))
                    .await;
            }
            Ok(None)
        }
        UninstallWrite::AlreadyApplied | UninstallWrite::NoGrant => Ok(None),
        UninstallWrite::Newer { at_ms } => {
            tracing::info!(install_id = %id, newer_at_ms = at_ms, "uninstall older than the grant's newest event; kept");
            tally.kept += 1;
            Ok(Some(at_ms))
        }
    }
}

/// Reads a public key given as SPKI DER in base64, or as a PEM block.
pub fn spki_der(text: &str) -> Result<Vec<u8>, String> {
    let body: String = if text.contains("-----BEGIN") {
        text.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| "not base64 (nor a PEM block)".to_owned())
}

/// The raw 32-byte Ed25519 key inside an SPKI structure.
pub fn ed25519_key(spki: &[u8]) -> Result<Vec<u8>, String> {
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    match spki.strip_prefix(&PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.to_vec()),
        _ => Err("not an Ed25519 SubjectPublicKeyInfo (44 bytes, OID 1.3.101.112)".into()),
    }
}

/// The PKCS#1 RSAPublicKey inside an SPKI structure (what ring verifies with).
pub fn rsa_key(spki: &[u8]) -> Result<Vec<u8>, String> {
    // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0, key } }
    const RSA_OID: [u8; 11] = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let bad = || "not an RSA SubjectPublicKeyInfo".to_owned();
    let (outer, _) = der(spki, 0x30).ok_or_else(bad)?;
    let (alg, rest) = der(outer, 0x30).ok_or_else(bad)?;
    if !alg.starts_with(&RSA_OID) {
        return Err(bad());
    }
    let (bits, _) = der(rest, 0x03).ok_or_else(bad)?;
    match bits.split_first() {
        Some((0, key)) if !key.is_empty() => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

/// One DER element of the expected tag: (its content, what follows it).
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HighLevel's published webhook key.
    const HIGHLEVEL_KEY: &str = "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=";

    #[test]
    fn highlevels_published_key_reads_as_ed25519() {
        let key = ed25519_key(&spki_der(HIGHLEVEL_KEY).unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        let pem =
            format!("-----BEGIN PUBLIC KEY-----\n{HIGHLEVEL_KEY}\n-----END PUBLIC KEY-----\n");
        assert_eq!(ed25519_key(&spki_der(&pem).unwrap()).unwrap(), key);
        assert!(ed25519_key(&[0u8; 44]).is_err());
        assert!(spki_der("not base64!").is_err());
    }

    #[test]
    fn events_parse_with_either_timestamp_form_and_name_what_is_missing() {
        let e = parse(br#"{"type":"INSTALL","appId":"a","installType":"Location","locationId":"l1","companyId":"c1","timestamp":"2026-11-30T15:12:48.123Z","webhookId":"w1"}"#).unwrap();
        assert_eq!(e.at_ms, 1_796_051_568_123);
        assert_eq!(e.location_id.as_deref(), Some("l1"));
        let e = parse(br#"{"type":"uninstall","appId":"a","companyId":"c1","timestamp":1796051568123,"webhookId":"w2"}"#).unwrap();
        assert_eq!((e.kind.as_str(), e.at_ms), ("UNINSTALL", 1_796_051_568_123));
        for (body, says) in [
            (&br#"[]"#[..], "not a JSON object"),
            (br#"{"appId":"a"}"#, "type is missing"),
            (br#"{"type":"INSTALL","appId":"a","timestamp":1}"#, "webhookId is missing"),
            (br#"{"type":"INSTALL","webhookId":"w","appId":"a","timestamp":"soon"}"#, "timestamp"),
            (br#"{"type":"INSTALL","webhookId":"w","appId":"a","timestamp":1,"locationId":"a/b"}"#, "locationId is not"),
            (b"{not json", "invalid JSON"),
        ] {
            let err = parse(body).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn an_event_may_be_as_old_as_highlevels_retries_and_ahead_only_by_skew() {
        let cfg = crate::config::WebhookConfig::from_env(&crate::config::Env::new(|k| match k {
            "INSTALLS_TABLE" => Some("installs".into()),
            "GHL_APP_SECRET_ID" => Some("s".into()),
            "GHL_REDIRECT_URI" => Some("https://example.com/cb".into()),
            _ => None,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let now = 1_796_051_568_123;
        const HOUR: i64 = 3_600_000;
        for ok in [
            now,
            now - HOUR,
            now - 47 * HOUR,
            now - 48 * HOUR,
            now + 299_000,
        ] {
            assert!(check_age(&cfg, ok, now).is_ok(), "{}", now - ok);
        }
        assert!(matches!(
            check_age(&cfg, now - 48 * HOUR - 1_000, now),
            Err(WebhookError::Stale {
                age_secs: 172_801,
                max_age_secs: 172_800
            })
        ));
        assert!(matches!(
            check_age(&cfg, now + 301_000, now),
            Err(WebhookError::FromTheFuture {
                ahead_secs: 301,
                max_skew_secs: 300
            })
        ));
        assert!(check_age(&cfg, i64::MIN, now).is_err(), "no overflow");
    }

    #[test]
    fn der_lengths_in_long_form_are_read_and_bounded() {
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7u8, 200));
        let (content, rest) = der(&long, 0x04).unwrap();
        assert_eq!((content.len(), rest.len()), (200, 0));
        assert!(der(&[0x04, 0x81], 0x04).is_none());
        assert!(
            der(&[0x04, 0x05, 1, 2], 0x04).is_none(),
            "length beyond the input"
        );
        assert!(rsa_key(&spki_der(HIGHLEVEL_KEY).unwrap()).is_err());
    }
}
