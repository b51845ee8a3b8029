//! The app's credentials and data keys, from one Secrets Manager secret.
//!
//! Secret JSON: `{"client_id", "client_secret", "app_id"?, "data_keys": {"<id>": "<base64 of 32 bytes>"}, "current_data_key": "<id>", "mint_callers"?}`
//! (`mint_callers`: see [`crate::callers`]).
//! Parsing never echoes a value: serde's messages quote the offending input,
//! so fields are read by hand and errors name only the field.

use crate::callers::CallerPolicy;
use crate::crypto::Keyring;
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
}

impl AppSecret {
    pub fn parse(json: &str) -> Result<Self, SecretError> {
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
        for (id, v) in keys_field {
            let b64 = v.as_str().ok_or(SecretError::Field {
                field: "data_keys",
                expected: "an object whose values are base64 strings",
            })?;
            keys.insert(id.clone(), SecretString::new(b64));
        }
        let current = string("current_data_key")?;
        let keyring = Keyring::from_base64(&current, &keys)?;
        let mint_callers = match obj.get("mint_callers") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(CallerPolicy::parse(v).map_err(SecretError::Callers)?),
        };
        Ok(Self {
            client_id,
            client_secret,
            app_id,
            keyring,
            mint_callers,
        })
    }

    /// Fetched once per execution environment, at cold start.
    pub async fn load(
        client: &aws_sdk_secretsmanager::Client,
        secret_id: &str,
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
        Self::parse(text)
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
