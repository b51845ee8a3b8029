//! The app's credentials and data keys, from one Secrets Manager secret.
//!
//! Secret JSON: `{"client_id", "client_secret", "app_id"?, "data_keys": {"<id>": "<base64 of 32 bytes>"}, "current_data_key": "<id>", "handoff_keys"?: {"<id>": "<base64 of 32+ bytes>"}, "current_handoff_key"?: "<id>", "mint_callers"?}`
//! (`mint_callers`: see [`crate::callers`]; `handoff_keys`: see [`crate::handoff`]).
//! Parsing never echoes a value: serde's messages quote the offending input,
//! so fields are read by hand and errors name only the field.

use crate::callers::CallerPolicy;
use crate::crypto::Keyring;
use crate::handoff::HandoffKeys;
use crate::redact::SecretString;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("app secret {secret_id:?} could not be read from Secrets Manager: {reason}")]
    Fetch { secret_id: String, reason: String },
    #[error("app secret is not a JSON object with string fields")]
    NotJson,
    #[error("app secret field {field:?} is missing or not {expected}")]
    Field {
        field: &'static str,
        expected: &'static str,
    },
    #[error("app secret field \"mint_callers\" is unusable: {0}")]
    Callers(String),
    #[error("app secret data keys are unusable: {0}")]
    Keyring(#[from] crate::crypto::CryptoError),
    #[error("app secret field \"handoff_keys\" is unusable: {0}")]
    Handoff(String),
    #[error(
        "app secret field \"handoff_keys\" is missing, and SUCCESS_REDIRECT_URL is set: the hand-off redirect must be signed; expected \"handoff_keys\": {{\"<id>\": \"<base64 of 32 random bytes>\"}} and \"current_handoff_key\": \"<id>\" (installs-admin bootstrap creates them), or unset SUCCESS_REDIRECT_URL"
    )]
    HandoffKeyMissing,
}

/// Which data keys a process keeps from the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeys {
    /// Every listed key: for whoever opens tokens sealed under an old key.
    All,
    /// The current key alone: for a process that only seals new tokens
    /// (oauth-callback), so a compromise of it exposes no old key.
    CurrentOnly,
}

/// The app's identity at HighLevel and the keys that seal tokens at rest.
#[derive(Debug, Clone)]
pub struct AppSecret {
    pub client_id: String,
    pub client_secret: SecretString,
    /// The marketplace app id, for `/oauth/installedLocations`.
    pub app_id: Option<String>,
    pub keyring: Keyring,
    /// Who may take tokens through the mint's IAM Function URL; None: any
    /// caller the URL's IAM authorisation admits.
    pub mint_callers: Option<CallerPolicy>,
    /// Signs the `SUCCESS_REDIRECT_URL` hand-off; None: no key in the secret.
    pub handoff: Option<HandoffKeys>,
}

impl AppSecret {
    pub fn parse(json: &str) -> Result<Self, SecretError> {
        Self::parse_with(json, DataKeys::All)
    }

    pub fn parse_with(json: &str, scope: DataKeys) -> Result<Self, SecretError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|_| SecretError::NotJson)?;
        let obj = value.as_object().ok_or(SecretError::NotJson)?;
        let string = |field: &'static str| -> Result<String, SecretError> {
            obj.get(field)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(SecretError::Field {
                    field,
                    expected: "a non-empty string",
                })
        };
        let client_id = string("client_id")?;
        let client_secret = SecretString::new(string("client_secret")?);
        let app_id = match obj.get("app_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some(string("app_id")?),
        };
        let keys_field = obj
            .get("data_keys")
            .and_then(|v| v.as_object())
            .filter(|m| !m.is_empty())
            .ok_or(SecretError::Field {
                field: "data_keys",
                expected: "an object of key id to base64 32-byte key",
            })?;
        let mut keys = BTreeMap::new();
        let current = string("current_data_key")?;
        for (id, v) in keys_field {
            if scope == DataKeys::CurrentOnly && *id != current {
                // Never decoded: only the JSON text, dropped on return,
                // held it.
                continue;
            }
            let b64 = v.as_str().ok_or(SecretError::Field {
                field: "data_keys",
                expected: "an object whose values are base64 strings",
            })?;
            keys.insert(id.clone(), SecretString::new(b64));
        }
        let keyring = Keyring::from_base64(&current, &keys)?;
        let mint_callers = match obj.get("mint_callers") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(CallerPolicy::parse(v).map_err(SecretError::Callers)?),
        };
        let handoff = match (obj.get("handoff_keys"), obj.get("current_handoff_key")) {
            (None | Some(serde_json::Value::Null), None | Some(serde_json::Value::Null)) => None,
            (keys, _) => {
                let keys = keys
                    .and_then(|v| v.as_object())
                    .filter(|m| !m.is_empty())
                    .ok_or(SecretError::Field {
                        field: "handoff_keys",
                        expected: "an object of key id to base64 of 32 random bytes",
                    })?;
                let mut map = BTreeMap::new();
                for (id, v) in keys {
                    let b64 = v.as_str().ok_or(SecretError::Field {
                        field: "handoff_keys",
                        expected: "an object whose values are base64 strings",
                    })?;
                    map.insert(id.clone(), SecretString::new(b64));
                }
                let current = string("current_handoff_key")?;
                Some(HandoffKeys::from_base64(&current, &map).map_err(SecretError::Handoff)?)
            }
        };
        Ok(Self {
            client_id,
            client_secret,
            app_id,
            keyring,
            mint_callers,
            handoff,
        })
    }

    /// The hand-off keys when `SUCCESS_REDIRECT_URL` is set (`redirect`):
    /// refused at cold start when the secret holds none, since an unsigned
    /// hand-off lets anyone type another customer's ids into the owner's page.
    pub fn handoff_for_redirect(
        &self,
        redirect: bool,
    ) -> Result<Option<&HandoffKeys>, SecretError> {
        match (redirect, &self.handoff) {
            (false, _) => Ok(None),
            (true, Some(keys)) => Ok(Some(keys)),
            (true, None) => Err(SecretError::HandoffKeyMissing),
        }
    }

    /// Fetched once per execution environment, at cold start.
    pub async fn load(
        client: &aws_sdk_secretsmanager::Client,
        secret_id: &str,
        scope: DataKeys,
    ) -> Result<Self, SecretError> {
        let out = client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| SecretError::Fetch {
                secret_id: secret_id.to_owned(),
                reason: crate::aws::error_text(&e),
            })?;
        let text = out.secret_string().ok_or_else(|| SecretError::Fetch {
            secret_id: secret_id.to_owned(),
            reason: "the secret has no string value yet (put the JSON in with put-secret-value)"
                .into(),
        })?;
        Self::parse_with(text, scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn parses_and_redacts() {
        let json = format!(
            r#"{{"client_id":"cid","client_secret":"s3cr3t-value","app_id":"app1","data_keys":{{"k1":"{KEY}"}},"current_data_key":"k1","extra":1}}"#
        );
        let s = AppSecret::parse(&json).unwrap();
        assert_eq!(s.client_id, "cid");
        assert_eq!(s.app_id.as_deref(), Some("app1"));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains(KEY), "{dbg}");
    }

    #[test]
    fn handoff_keys_parse_and_are_required_only_for_a_redirect() {
        let base = format!(
            r#""client_id":"c","client_secret":"s3cr3t-value","data_keys":{{"k1":"{KEY}"}},"current_data_key":"k1""#
        );
        let without = AppSecret::parse(&format!("{{{base}}}")).unwrap();
        assert!(without.handoff.is_none());
        assert!(without.handoff_for_redirect(false).unwrap().is_none());
        let err = without.handoff_for_redirect(true).unwrap_err().to_string();
        assert!(
            err.contains("handoff_keys")
                && err.contains("SUCCESS_REDIRECT_URL")
                && err.contains("expected"),
            "{err}"
        );
        let with = AppSecret::parse(&format!(
            r#"{{{base},"handoff_keys":{{"h1":"{KEY}"}},"current_handoff_key":"h1"}}"#
        ))
        .unwrap();
        assert_eq!(
            with.handoff_for_redirect(true)
                .unwrap()
                .unwrap()
                .current_key_id(),
            "h1"
        );
        assert!(!format!("{with:?}").contains(KEY));
        for (extra, expect) in [
            (r#""current_handoff_key":"h1""#.to_owned(), "handoff_keys"),
            (
                format!(r#""handoff_keys":{{"h1":"{KEY}"}}"#),
                "current_handoff_key",
            ),
            (
                r#""handoff_keys":{"h1":"c2hvcnQ="},"current_handoff_key":"h1""#.to_owned(),
                "5 bytes",
            ),
            (
                format!(r#""handoff_keys":{{"h1":"{KEY}"}},"current_handoff_key":"h9""#),
                "h9",
            ),
        ] {
            let err = AppSecret::parse(&format!("{{{base},{extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{extra}: {err}");
            assert!(!err.contains(KEY) && !err.contains("c2hvcnQ"), "{err}");
        }
    }

    #[test]
    fn current_only_keeps_no_old_data_key() {
        const OLD: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let json = format!(
            r#"{{"client_id":"c","client_secret":"s","data_keys":{{"k0":"{OLD}","k1":"{KEY}"}},"current_data_key":"k1"}}"#
        );
        let all = AppSecret::parse(&json).unwrap();
        let sealed = crate::crypto::Keyring::from_base64(
            "k0",
            &[("k0".to_string(), SecretString::new(OLD))].into(),
        )
        .unwrap()
        .seal(
            &SecretString::new("t"),
            "company#c",
            "grant",
            "refresh_token",
        );
        assert!(
            all.keyring
                .open(&sealed, "company#c", "grant", "refresh_token")
                .is_ok()
        );
        let current = AppSecret::parse_with(&json, DataKeys::CurrentOnly).unwrap();
        assert_eq!(current.keyring.current_key_id(), "k1");
        assert!(matches!(
            current.keyring.open(&sealed, "company#c", "grant", "refresh_token"),
            Err(crate::crypto::CryptoError::UnknownKey(k)) if k == "k0"
        ));
        assert!(!format!("{current:?}").contains("k0"));
    }

    #[test]
    fn errors_name_the_field_not_the_value() {
        let cases = [
            ("not json", "not a JSON object"),
            (r#"{"client_secret":"s3cr3t-value"}"#, "client_id"),
            (
                r#"{"client_id":"c","client_secret":12345}"#,
                "client_secret",
            ),
            (
                r#"{"client_id":"c","client_secret":"s3cr3t-value"}"#,
                "data_keys",
            ),
            (
                r#"{"client_id":"c","client_secret":"s3cr3t-value","data_keys":{"k1":"s3cr3t-value"},"current_data_key":"k1"}"#,
                "not base64",
            ),
        ];
        for (json, expect) in cases {
            let err = AppSecret::parse(json).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err}");
            assert!(!err.contains("s3cr3t") && !err.contains("12345"), "{err}");
        }
    }
}
