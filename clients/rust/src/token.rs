//! What the mint answers, as types that keep the token out of logs.

use serde::Deserialize;
use std::fmt;
use std::time::{Duration, Instant};

/// A bearer token. Debug and Display print `[redacted]`, so a token inside
/// a logged struct or error stays out of the log; [`SecretToken::expose`]
/// is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token, for the `Authorization: Bearer …` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken([redacted])")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whose token it is: the two kinds the mint serves, and the cache's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Location,
    Company,
}

/// An access token from the mint (a location's or an agency's).
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: SecretToken,
    /// `Bearer`.
    pub token_type: String,
    /// When HighLevel will stop accepting it (RFC 3339, the mint's clock).
    pub expires_at: String,
    pub scope: Option<String>,
    pub company_id: Option<String>,
    /// Set for location tokens.
    pub location_id: Option<String>,
    /// `Location` or `Company`.
    pub user_type: String,
    /// Where the mint took it from (`cache`, `minted`, `refreshed`, …) when
    /// this client fetched it; a token served from the client's cache keeps it.
    pub source: String,
    /// This process's clock for `expires_at`: the mint's `expiresIn` counted
    /// from when the invoke was sent, so a skewed clock cannot stretch it.
    pub(crate) valid_until: Instant,
}

impl AccessToken {
    /// What is left of its life, by this process's clock.
    pub fn expires_in(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// `Bearer <token>`, for the `Authorization` header.
    pub fn authorization(&self) -> String {
        format!("{} {}", self.token_type, self.token.expose())
    }

    pub(crate) fn fresh_for(&self, min_validity: Duration) -> bool {
        self.expires_in() > min_validity
    }
}

/// The mint's token answer as sent (camelCase).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenAnswer {
    access_token: String,
    #[serde(default = "bearer")]
    token_type: String,
    expires_at: String,
    expires_in: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    company_id: Option<String>,
    #[serde(default)]
    location_id: Option<String>,
    user_type: String,
    #[serde(default)]
    source: String,
}

fn bearer() -> String {
    "Bearer".into()
}

impl TokenAnswer {
    pub(crate) fn into_token(self, sent_at: Instant) -> AccessToken {
        AccessToken {
            token: SecretToken(self.access_token),
            token_type: self.token_type,
            expires_at: self.expires_at,
            scope: self.scope,
            company_id: self.company_id,
            location_id: self.location_id,
            user_type: self.user_type,
            source: self.source,
            valid_until: sent_at + Duration::from_secs(self.expires_in),
        }
    }
}

/// The locations where an agency app is installed
/// (`listInstalledLocations`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocations {
    pub company_id: String,
    pub count: u64,
    /// False when the listing cannot be trusted to be the whole list.
    pub complete: bool,
    pub locations: Vec<InstalledLocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocation {
    pub location_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_prints() {
        let t = TokenAnswer {
            access_token: "tok-secret-123".into(),
            token_type: "Bearer".into(),
            expires_at: "2026-11-23T08:00:00Z".into(),
            expires_in: 100,
            scope: None,
            company_id: Some("c".into()),
            location_id: Some("l".into()),
            user_type: "Location".into(),
            source: "minted".into(),
        }
        .into_token(Instant::now());
        for shown in [
            format!("{t:?}"),
            format!("{}", t.token),
            format!("{:?}", t.token),
        ] {
            assert!(!shown.contains("tok-secret-123"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
        assert_eq!(t.token.expose(), "tok-secret-123");
        assert_eq!(t.authorization(), "Bearer tok-secret-123");
        assert!(t.expires_in() <= Duration::from_secs(100));
        assert!(t.fresh_for(Duration::from_secs(90)));
        assert!(!t.fresh_for(Duration::from_secs(100)));
    }
}
