//! The vocabulary: who installed, what state an install is in, and what
//! HighLevel hands back for a grant.

use crate::redact::SecretString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// HighLevel's `userType`: an agency (company) or a sub-account (location).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserType {
    Company,
    Location,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Company => "Company",
            Self::Location => "Location",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Company" => Some(Self::Company),
            "Location" => Some(Self::Location),
            _ => None,
        }
    }

    /// As HighLevel may spell it in an answer (`company`, `LOCATION`).
    pub fn parse_loose(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("company") {
            Some(Self::Company)
        } else if s.eq_ignore_ascii_case("location") {
            Some(Self::Location)
        } else {
            None
        }
    }
}

/// The identity of a stored grant. A location can hold two: its own OAuth
/// install, and a token minted for it from its company's grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstallId {
    Company(String),
    Location(String),
    Minted(String),
}

impl InstallId {
    /// For a grant HighLevel issued through the OAuth flow.
    pub fn for_grant(
        user_type: UserType,
        company_id: Option<&str>,
        location_id: Option<&str>,
    ) -> Option<Self> {
        match user_type {
            UserType::Company => company_id
                .filter(|s| !s.is_empty())
                .map(|c| Self::Company(c.to_owned())),
            UserType::Location => location_id
                .filter(|s| !s.is_empty())
                .map(|l| Self::Location(l.to_owned())),
        }
    }

    /// The table's partition key.
    pub fn key(&self) -> String {
        match self {
            Self::Company(id) => format!("company#{id}"),
            Self::Location(id) => format!("location#{id}"),
            Self::Minted(id) => format!("minted#{id}"),
        }
    }

    pub fn parse_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('#')?;
        if id.is_empty() {
            return None;
        }
        match kind {
            "company" => Some(Self::Company(id.to_owned())),
            "location" => Some(Self::Location(id.to_owned())),
            "minted" => Some(Self::Minted(id.to_owned())),
            _ => None,
        }
    }

    /// The `user_type` to send when refreshing this grant.
    pub fn user_type(&self) -> UserType {
        match self {
            Self::Company(_) => UserType::Company,
            Self::Location(_) | Self::Minted(_) => UserType::Location,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Company(id) | Self::Location(id) | Self::Minted(id) => id,
        }
    }
}

impl fmt::Display for InstallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Where an install stands. The README's state diagram is the prose twin of this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallState {
    /// Refreshing on schedule.
    Active,
    /// A transient failure (429, 5xx, timeout before sending); retried with backoff.
    Retrying,
    /// `Location is not active`: refresh token kept, retried after hours.
    Suspended,
    /// `Invalid grant` for a token whose previous use we had confirmed (no
    /// unknown outcome on record) and no newer token anywhere: HighLevel
    /// revoked the grant (an uninstall or a revocation). Terminal.
    Revoked,
    /// A refresh was sent and its outcome is unknown (timeout, dropped
    /// connection, 5xx, unreadable answer) even after re-presenting it within
    /// HighLevel's window. A waiting state: the sweep presents the token once
    /// more later (a probe), which either recovers the grant or confirms it
    /// lost. Presenting it again risks nothing: a spent token only earns
    /// `Invalid grant`.
    InDoubt,
    /// `Invalid grant` after an unknown outcome: HighLevel rotated the token
    /// and the answer carrying the new pair never arrived. Terminal.
    Lost,
    /// HighLevel told us (an UNINSTALL webhook, or reconciliation) that the
    /// app is no longer installed: the tokens are erased. Terminal until the
    /// customer installs again.
    Uninstalled,
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retrying => "retrying",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::InDoubt => "in_doubt",
            Self::Lost => "lost",
            Self::Uninstalled => "uninstalled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States whose refresh token is still presented: on schedule, after a
    /// backoff, or as a probe (`in_doubt`).
    pub fn is_refreshable(self) -> bool {
        !self.is_terminal()
    }

    /// States that only a reinstall leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Revoked | Self::Lost | Self::Uninstalled)
    }

    /// Every state, for tables and metrics.
    pub const ALL: [InstallState; 7] = [
        Self::Active,
        Self::Retrying,
        Self::Suspended,
        Self::InDoubt,
        Self::Revoked,
        Self::Lost,
        Self::Uninstalled,
    ];
}

/// What HighLevel returns from `/oauth/token` or `/oauth/locationToken`.
///
/// Read tolerantly: a 200 may carry a freshly rotated refresh token, and
/// throwing that answer away because one metadata field has an unexpected
/// shape would lose the grant. Only the access token is required; the
/// refresh token is checked by the callers that need it; a missing or odd
/// expiry is replaced by a short one (refreshed soon, never lost); every
/// other field is optional, unknown values kept as text where they are
/// scalars and dropped with a warning otherwise. Unknown fields are ignored.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: u64,
    pub scope: Option<String>,
    pub user_type: Option<UserType>,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub user_id: Option<String>,
    pub plan_id: Option<String>,
    pub is_bulk_installation: Option<bool>,
    pub approved_locations: Option<Vec<String>>,
    pub install_to_future_locations: Option<bool>,
    pub approve_all_locations: Option<bool>,
    /// Fields that were present with a value of an unexpected shape and were
    /// dropped (names only, never values).
    pub odd_fields: Vec<&'static str>,
}

/// Assumed lifetime of an access token whose answer carried no readable
/// expiry: short, so the grant is refreshed again soon instead of trusted for a day.
pub const ASSUMED_EXPIRES_IN: u64 = 3_600;

/// HighLevel's access tokens live a day; a longer `expires_in` is clamped
/// to it (and reported as odd) before any arithmetic.
pub const MAX_EXPIRES_IN: u64 = 86_400;

impl TokenGrant {
    /// Reads a token answer. Fails only without an access token.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, &'static str> {
        use serde_json::Value;
        let obj = v.as_object().ok_or("the answer is not a JSON object")?;
        let mut odd = Vec::new();
        let secret = |k: &str| match obj.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(SecretString::new(s.clone())),
            _ => None,
        };
        let access_token = secret("access_token").ok_or("the answer carries no access_token")?;
        let refresh_token = secret("refresh_token");
        let expires_in = match obj.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|&e| e > 0)
        .map(|e| {
            // An absurd expiry would overflow `now + expires_in` (wrapping
            // in release builds) or keep a dead token for years.
            if e > MAX_EXPIRES_IN {
                odd.push("expires_in");
            }
            e.min(MAX_EXPIRES_IN)
        })
        .unwrap_or_else(|| {
            odd.push("expires_in");
            ASSUMED_EXPIRES_IN
        });
        // Scalars become text (an id sent as a number is still the id).
        let mut text = |k: &'static str| match obj.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Some(_) => {
                odd.push(k);
                None
            }
        };
        let scope = text("scope");
        let user_type_text = text("userType");
        let company_id = text("companyId");
        let location_id = text("locationId");
        let user_id = text("userId");
        let plan_id = text("planId");
        let mut flag = |k: &'static str| match obj.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
            Some(_) => {
                odd.push(k);
                None
            }
        };
        let is_bulk_installation = flag("isBulkInstallation");
        let install_to_future_locations = flag("installToFutureLocations");
        let approve_all_locations = flag("approveAllLocations");
        let approved_locations = match obj.get("approvedLocations") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|i| match i {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(Value::String(s)) if !s.is_empty() => Some(vec![s.clone()]),
            Some(_) => {
                odd.push("approvedLocations");
                None
            }
        };
        let user_type = user_type_text.as_deref().and_then(|t| {
            let parsed = UserType::parse_loose(t);
            if parsed.is_none() {
                odd.push("userType");
            }
            parsed
        });
        Ok(Self {
            access_token,
            refresh_token,
            expires_in,
            scope,
            user_type,
            company_id,
            location_id,
            user_id,
            plan_id,
            is_bulk_installation,
            approved_locations,
            install_to_future_locations,
            approve_all_locations,
            odd_fields: odd,
        })
    }
}

impl<'de> Deserialize<'de> for TokenGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// Metadata HighLevel sends with a grant; readable in the table, never secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantInfo {
    pub user_type: Option<UserType>,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub user_id: Option<String>,
    pub scope: Option<String>,
    pub plan_id: Option<String>,
    pub is_bulk_installation: Option<bool>,
    pub approved_locations: Option<Vec<String>>,
    pub install_to_future_locations: Option<bool>,
    pub approve_all_locations: Option<bool>,
}

impl TokenGrant {
    pub fn info(&self) -> GrantInfo {
        GrantInfo {
            user_type: self.user_type,
            company_id: self.company_id.clone(),
            location_id: self.location_id.clone(),
            user_id: self.user_id.clone(),
            scope: self.scope.clone(),
            plan_id: self.plan_id.clone(),
            is_bulk_installation: self.is_bulk_installation,
            approved_locations: self.approved_locations.clone(),
            install_to_future_locations: self.install_to_future_locations,
            approve_all_locations: self.approve_all_locations,
        }
    }
}

/// A pair of tokens with an absolute expiry.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    now_millis() / 1000
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One install or uninstall of the app on a location or company, at its
/// event time (HighLevel's for a webhook, ours for a code exchange or mint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub at_ms: i64,
    pub uninstall: bool,
}

impl LifecycleEvent {
    /// The time of the uninstall that stands, if the newest event is one.
    /// At equal times the install wins: keeping a grant is the safe side.
    pub fn uninstalled_at(events: &[LifecycleEvent]) -> Option<i64> {
        events
            .iter()
            .max_by_key(|e| (e.at_ms, !e.uninstall))
            .filter(|e| e.uninstall)
            .map(|e| e.at_ms)
    }
}

/// Epoch seconds as RFC 3339 ("" when out of range).
pub fn rfc3339(epoch_secs: i64) -> String {
    rfc3339_ms(epoch_secs.saturating_mul(1000))
}

/// Epoch milliseconds as RFC 3339, with milliseconds when there are any.
pub fn rfc3339_ms(epoch_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(epoch_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_lifecycle_event_decides_and_an_install_wins_a_tie() {
        let ev = |at_ms, uninstall| LifecycleEvent { at_ms, uninstall };
        assert_eq!(LifecycleEvent::uninstalled_at(&[]), None);
        assert_eq!(
            LifecycleEvent::uninstalled_at(&[ev(1_000, false), ev(2_000, true)]),
            Some(2_000)
        );
        // A reinstall one millisecond after the uninstall, in the same second.
        assert_eq!(
            LifecycleEvent::uninstalled_at(&[ev(2_000, true), ev(2_001, false)]),
            None
        );
        assert_eq!(
            LifecycleEvent::uninstalled_at(&[ev(2_000, true), ev(2_000, false)]),
            None
        );
        assert_eq!(rfc3339_ms(1_796_051_568_123), "2026-11-30T15:12:48.123Z");
        assert_eq!(rfc3339(1_796_051_568), "2026-11-30T15:12:48Z");
    }

    #[test]
    fn install_keys_round_trip() {
        for id in [
            InstallId::Company("c1".into()),
            InstallId::Location("l1".into()),
            InstallId::Minted("l2".into()),
        ] {
            assert_eq!(InstallId::parse_key(&id.key()), Some(id.clone()));
        }
        assert_eq!(InstallId::parse_key("company#"), None);
        assert_eq!(InstallId::parse_key("code#x"), None);
    }

    #[test]
    fn token_response_parses_with_unknown_fields_and_redacts() {
        let body = r#"{"access_token":"eyJ.a.b","token_type":"Bearer","expires_in":86399,
            "refresh_token":"rt-1","scope":"a b","userType":"Company","companyId":"c1",
            "userId":"u1","isBulkInstallation":false,"approvedLocations":["l1"],
            "approveAllLocations":true,"refreshTokenId":"x","someNewField":{"a":1}}"#;
        let g: TokenGrant = serde_json::from_str(body).unwrap();
        assert_eq!(g.expires_in, 86399);
        assert_eq!(g.user_type, Some(UserType::Company));
        assert_eq!(
            g.approved_locations.as_deref(),
            Some(&["l1".to_string()][..])
        );
        let dbg = format!("{g:?}");
        assert!(!dbg.contains("eyJ.a.b") && !dbg.contains("rt-1"), "{dbg}");
    }

    #[test]
    fn odd_metadata_never_costs_the_pair() {
        let body = r#"{"access_token":"eyJ.a.b","refresh_token":"rt-2","expires_in":"86399",
            "userType":"company","companyId":12345,"isBulkInstallation":"false",
            "approvedLocations":"loc-1","planId":null,"scope":["a","b"],"userId":{"x":1},
            "nested":{"deep":[1,2]}}"#;
        let g: TokenGrant = serde_json::from_str(body).unwrap();
        assert_eq!(g.refresh_token.as_ref().map(|t| t.expose()), Some("rt-2"));
        assert_eq!(g.expires_in, 86_399);
        assert_eq!(g.user_type, Some(UserType::Company));
        assert_eq!(g.company_id.as_deref(), Some("12345"));
        assert_eq!(g.is_bulk_installation, Some(false));
        assert_eq!(g.approved_locations, Some(vec!["loc-1".to_string()]));
        assert_eq!(g.scope.as_deref(), Some("a b"));
        assert_eq!(g.plan_id, None);
        assert_eq!(g.user_id, None);
        assert_eq!(g.odd_fields, vec!["userId"]);
    }

    #[test]
    fn an_absurd_expiry_is_clamped_to_a_day() {
        for e in ["18446744073709551615", "1e300", "9999999999"] {
            let body = format!(r#"{{"access_token":"a","expires_in":{e}}}"#);
            let g: TokenGrant = serde_json::from_str(&body).unwrap();
            assert_eq!(g.expires_in, MAX_EXPIRES_IN, "{e}");
            assert_eq!(g.odd_fields, vec!["expires_in"], "{e}");
            // The arithmetic every caller does stays in range.
            assert!(now_secs().checked_add(g.expires_in as i64).is_some());
        }
    }

    #[test]
    fn a_missing_expiry_is_assumed_short_and_a_missing_access_token_fails() {
        let g: TokenGrant =
            serde_json::from_str(r#"{"access_token":"a","refresh_token":"r","userType":"Agency"}"#)
                .unwrap();
        assert_eq!(g.expires_in, ASSUMED_EXPIRES_IN);
        assert_eq!(g.user_type, None);
        assert_eq!(g.odd_fields, vec!["expires_in", "userType"]);
        let err = serde_json::from_str::<TokenGrant>(r#"{"refresh_token":"r"}"#).unwrap_err();
        assert!(err.to_string().contains("no access_token"), "{err}");
        assert!(serde_json::from_str::<TokenGrant>("[1]").is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            "active",
            "retrying",
            "suspended",
            "revoked",
            "in_doubt",
            "lost",
            "uninstalled",
        ] {
            assert_eq!(InstallState::parse(s).unwrap().as_str(), s);
        }
        assert!(InstallState::parse("gone").is_none());
    }
}
