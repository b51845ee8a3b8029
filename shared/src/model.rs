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
    /// `Invalid grant` with no newer token anywhere: the customer must reinstall.
    Revoked,
    /// A refresh was sent and no answer came back: HighLevel may have rotated
    /// the token. It is never presented again automatically, because a second
    /// presentation of a rotated token is exactly what burns grants.
    InDoubt,
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retrying => "retrying",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::InDoubt => "in_doubt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Active,
            Self::Retrying,
            Self::Suspended,
            Self::Revoked,
            Self::InDoubt,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// States the sweep keeps refreshing.
    pub fn is_refreshable(self) -> bool {
        matches!(self, Self::Active | Self::Retrying | Self::Suspended)
    }
}

/// What HighLevel returns from `/oauth/token` or `/oauth/locationToken`.
/// Unknown fields are ignored: HighLevel adds fields over time.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenGrant {
    #[serde(rename = "access_token")]
    pub access_token: SecretString,
    #[serde(rename = "refresh_token", default)]
    pub refresh_token: Option<SecretString>,
    #[serde(rename = "expires_in")]
    pub expires_in: u64,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub user_type: Option<UserType>,
    #[serde(default)]
    pub company_id: Option<String>,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub plan_id: Option<String>,
    #[serde(default)]
    pub is_bulk_installation: Option<bool>,
    #[serde(default)]
    pub approved_locations: Option<Vec<String>>,
    #[serde(default)]
    pub install_to_future_locations: Option<bool>,
    #[serde(default)]
    pub approve_all_locations: Option<bool>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn states_round_trip() {
        for s in ["active", "retrying", "suspended", "revoked", "in_doubt"] {
            assert_eq!(InstallState::parse(s).unwrap().as_str(), s);
        }
        assert!(InstallState::parse("gone").is_none());
    }
}
