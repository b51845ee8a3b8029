//! HighLevel's marketplace webhooks (INSTALL, UNINSTALL, PLAN_CHANGE), so the
//! fleet this project holds matches the fleet that has the app.
//!
//! Order of checks, each refusing with nothing changed: the body's size, the
//! signature over the exact raw bytes (`x-ghl-signature`, Ed25519; the
//! legacy `x-wh-signature`, RSA-SHA256, only when configured), the JSON, the
//! `appId`, the `timestamp` against the replay window, and the `webhookId`
//! against the ones already processed. Then the event is applied; every
//! effect is idempotent and ordered by the event's time, and the webhook id
//! is recorded (a conditional write with a TTL) only once the effects are
//! stored, so a failure answers 5xx and HighLevel's retry applies it again.

use crate::config::WebhookConfig;
use crate::events::StateChanged;
use crate::model::{InstallId, InstallState, now_millis};
use crate::services::Services;
use crate::store::{LinkState, LocationLink, StoreError};
use base64::Engine;
use serde_json::Value;

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
        "the event's timestamp is {age_secs} s away from now; at most {window_secs} s are accepted (replay protection)"
    )]
    Stale { age_secs: i64, window_secs: u64 },
    #[error("webhook {0} was already processed")]
    Replayed(String),
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
            Self::Replayed(_) => "Replayed",
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
    CompanyInstalled {
        company_id: String,
    },
    /// Grants marked `uninstalled` and erased, and locations unlinked.
    Uninstalled {
        target: String,
        grants: usize,
        locations: usize,
    },
    PlanChanged {
        target: String,
        plan_id: String,
    },
    /// A type this project does not act on (acknowledged, so HighLevel does
    /// not retry it).
    Ignored {
        kind: String,
    },
}

impl Applied {
    pub fn name(&self) -> &'static str {
        match self {
            Self::LocationInstalled { .. } => "location_installed",
            Self::CompanyInstalled { .. } => "company_installed",
            Self::Uninstalled { .. } => "uninstalled",
            Self::PlanChanged { .. } => "plan_changed",
            Self::Ignored { .. } => "ignored",
        }
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

/// Verifies, checks and applies one delivery.
pub async fn handle(
    svc: &Services,
    cfg: &WebhookConfig,
    ed25519_sig: Option<&str>,
    rsa_sig: Option<&str>,
    body: &[u8],
) -> Result<(Event, Applied), WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge(body.len()));
    }
    verify(cfg, ed25519_sig, rsa_sig, body)?;
    let event = parse(body)?;
    let ours = cfg.app_id.as_deref().or(svc.app.app_id.as_deref());
    if let Some(ours) = ours
        && ours != event.app_id
    {
        return Err(WebhookError::WrongApp {
            got: event.app_id.chars().take(64).collect(),
        });
    }
    let age_ms = now_millis() - event.at_ms;
    if age_ms.unsigned_abs() > cfg.replay_window.as_millis() as u64 {
        return Err(WebhookError::Stale {
            age_secs: age_ms / 1000,
            window_secs: cfg.replay_window.as_secs(),
        });
    }
    if svc.store.webhook_seen(&event.webhook_id).await? {
        return Err(WebhookError::Replayed(event.webhook_id.clone()));
    }
    let applied = apply(svc, &event).await?;
    // Recorded after the effects: a failure above leaves no record, so the
    // redelivery applies the event. Effects are idempotent, so two
    // deliveries racing here do no harm.
    svc.store
        .record_webhook(&event.webhook_id, cfg.replay_window * 2)
        .await?;
    Ok((event, applied))
}

async fn apply(svc: &Services, e: &Event) -> Result<Applied, WebhookError> {
    let store = &svc.store;
    let missing = |what: &str| WebhookError::Malformed(format!("{} without {what}", e.kind));
    match e.kind.as_str() {
        "INSTALL" => {
            let company_id = e.company_id.clone().ok_or_else(|| missing("companyId"))?;
            match (&e.location_id, e.install_type.as_deref()) {
                (Some(location_id), _) => {
                    store
                        .set_link(&LocationLink {
                            company_id: company_id.clone(),
                            location_id: location_id.clone(),
                            state: LinkState::Installed,
                            at_ms: e.at_ms,
                            source: "webhook".into(),
                            missing_since_ms: None,
                        })
                        .await?;
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
            for id in &ids {
                store.set_plan(id, &plan_id).await?;
            }
            Ok(Applied::PlanChanged {
                target: ids[0].to_string(),
                plan_id,
            })
        }
        other => Ok(Applied::Ignored {
            kind: other.chars().take(40).collect(),
        }),
    }
}

/// The local effect of an uninstall, shared by the webhook and
/// reconciliation: a location's grants (its own install and the token minted
/// for it), or a company's grant and those of every location linked to it.
pub async fn uninstall(
    svc: &Services,
    company_id: Option<&str>,
    location_id: Option<&str>,
    reason: &str,
    at_ms: i64,
    source: &str,
) -> Result<Applied, WebhookError> {
    let store = &svc.store;
    let mut grants = 0;
    let mut locations = 0;
    let target;
    let unlink = |company: String, location: String| LocationLink {
        company_id: company,
        location_id: location,
        state: LinkState::Uninstalled,
        at_ms,
        source: source.to_owned(),
        missing_since_ms: None,
    };
    match (location_id, company_id) {
        (Some(loc), company) => {
            target = InstallId::Location(loc.to_owned()).to_string();
            let company = match company {
                Some(c) => Some(c.to_owned()),
                None => store.link_of(loc).await?.map(|l| l.company_id),
            };
            store
                .set_link(&unlink(company.unwrap_or_default(), loc.to_owned()))
                .await?;
            locations += 1;
            for id in [
                InstallId::Location(loc.to_owned()),
                InstallId::Minted(loc.to_owned()),
            ] {
                grants += usize::from(erase(svc, &id, reason, at_ms).await?);
            }
        }
        (None, Some(company)) => {
            target = InstallId::Company(company.to_owned()).to_string();
            grants += usize::from(
                erase(svc, &InstallId::Company(company.to_owned()), reason, at_ms).await?,
            );
            // An agency uninstall removes the app from every sub-account.
            for link in store.links_of(company).await? {
                if link.state == LinkState::Installed {
                    store
                        .set_link(&unlink(company.to_owned(), link.location_id.clone()))
                        .await?;
                    locations += 1;
                }
                for id in [
                    InstallId::Location(link.location_id.clone()),
                    InstallId::Minted(link.location_id.clone()),
                ] {
                    grants += usize::from(erase(svc, &id, reason, at_ms).await?);
                }
            }
        }
        (None, None) => {
            return Err(WebhookError::Malformed(
                "UNINSTALL without companyId or locationId".into(),
            ));
        }
    }
    Ok(Applied::Uninstalled {
        target,
        grants,
        locations,
    })
}

/// Uninstalls one grant and announces the change. False when none was
/// stored (or it is newer than the event).
async fn erase(
    svc: &Services,
    id: &InstallId,
    reason: &str,
    at_ms: i64,
) -> Result<bool, WebhookError> {
    let Some(before) = svc.store.get(id).await? else {
        return Ok(false);
    };
    if !svc.store.uninstall(id, reason, at_ms).await? {
        return Ok(false);
    }
    svc.events
        .changed(StateChanged::new(
            id,
            before.info.company_id.as_deref(),
            Some(before.state),
            InstallState::Uninstalled,
            reason,
        ))
        .await;
    Ok(true)
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
