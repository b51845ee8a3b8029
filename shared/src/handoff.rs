//! The signed hand-off: when `SUCCESS_REDIRECT_URL` is set, the callback's
//! 302 carries the install's ids with an HMAC-SHA256 signature, so the
//! owner's page can trust `companyId`/`locationId` instead of taking them
//! from a URL anyone can type.
//!
//! Parameters added to the query: `userType`, `companyId`, `locationId`
//! (when present), `installedAt` and `exp` (epoch seconds), `kid` (the key
//! id) and `sig` (lowercase hex of HMAC-SHA256). The signed string is these
//! seven lines joined by `\n`, an absent id as an empty line:
//!
//! ```text
//! ghl-handoff-v1
//! <userType>
//! <companyId>
//! <locationId>
//! <installedAt>
//! <exp>
//! <kid>
//! ```
//!
//! The key is the base64-decoded `handoff_keys[kid]` of the app secret.
//! Keys rotate like the data keys: `current_handoff_key` signs, a verifier
//! accepts any key id it holds. Newline-separated fields are unambiguous
//! only while no value holds a control character, so nothing with one is
//! signed (HighLevel's ids are alphanumeric).

use crate::redact::SecretString;
use ring::hmac;
use std::collections::BTreeMap;
use std::fmt;

/// The first line of the signed string: names the scheme, so a signature
/// made for anything else with the same key never verifies here.
pub const CANONICAL_PREFIX: &str = "ghl-handoff-v1";
/// The least key length accepted: HMAC-SHA256's own output size.
pub const MIN_KEY_BYTES: usize = 32;

/// The hand-off keys by id, and which one signs.
#[derive(Clone)]
pub struct HandoffKeys {
    current: String,
    keys: BTreeMap<String, hmac::Key>,
}

impl fmt::Debug for HandoffKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffKeys")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a hand-off vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub user_type: String,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    /// Epoch seconds of this install (the latest, for a reinstall).
    pub installed_at: i64,
    /// Epoch seconds after which the hand-off is refused.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoffError {
    #[error("hand-off parameter {0} is missing or malformed")]
    Param(&'static str),
    #[error("hand-off is signed with key {0:?}, which is not held")]
    UnknownKey(String),
    #[error("hand-off signature does not match")]
    BadSignature,
    #[error("hand-off expired")]
    Expired,
    #[error("hand-off value holds a control character; it is not signed")]
    Unsignable,
}

/// The string the signature covers (see the module documentation).
pub fn canonical(h: &Handoff, kid: &str) -> String {
    [
        CANONICAL_PREFIX,
        &h.user_type,
        h.company_id.as_deref().unwrap_or(""),
        h.location_id.as_deref().unwrap_or(""),
        &h.installed_at.to_string(),
        &h.exp.to_string(),
        kid,
    ]
    .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl HandoffKeys {
    /// `keys` maps key ids to base64 of at least 32 random bytes. Errors
    /// name the key id, never the key.
    pub fn from_base64(
        current: &str,
        keys: &BTreeMap<String, SecretString>,
    ) -> Result<Self, String> {
        let mut ring = BTreeMap::new();
        for (id, b64) in keys {
            let bytes = crate::crypto::decode_named_key(id, b64)?;
            if bytes.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "key {id:?} is {} bytes; at least {MIN_KEY_BYTES} are needed",
                    bytes.len()
                ));
            }
            ring.insert(id.clone(), hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        if !ring.contains_key(current) {
            return Err(format!("current key {current:?} is not among the keys"));
        }
        Ok(Self {
            current: current.to_owned(),
            keys: ring,
        })
    }

    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// The query parameters to add, in order: the ids, the times, `kid`,
    /// `sig`. Refused when a value holds a control character, which would
    /// make the newline-separated signed string ambiguous.
    pub fn sign(&self, h: &Handoff) -> Result<Vec<(&'static str, String)>, HandoffError> {
        let values = [
            Some(&h.user_type),
            h.company_id.as_ref(),
            h.location_id.as_ref(),
        ];
        if values
            .iter()
            .flatten()
            .any(|v| v.chars().any(char::is_control))
        {
            return Err(HandoffError::Unsignable);
        }
        let key = &self.keys[&self.current];
        let sig = hmac::sign(key, canonical(h, &self.current).as_bytes());
        let mut params = vec![("userType", h.user_type.clone())];
        if let Some(c) = &h.company_id {
            params.push(("companyId", c.clone()));
        }
        if let Some(l) = &h.location_id {
            params.push(("locationId", l.clone()));
        }
        params.extend([
            ("installedAt", h.installed_at.to_string()),
            ("exp", h.exp.to_string()),
            ("kid", self.current.clone()),
            ("sig", hex(sig.as_ref())),
        ]);
        Ok(params)
    }

    /// What an owner's page does, in Rust: checks the signature (in
    /// constant time, under whichever listed key `kid` names) and the
    /// expiry. `query` is the decoded query pairs of the redirect.
    pub fn verify(
        &self,
        query: &[(String, String)],
        now_secs: i64,
    ) -> Result<Handoff, HandoffError> {
        let get = |name: &'static str| {
            let mut found = query.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
            match (found.next(), found.next()) {
                (v, None) => Ok(v.cloned()),
                // Two values: which one the page reads is the page's choice.
                _ => Err(HandoffError::Param(name)),
            }
        };
        let need = |name: &'static str| get(name)?.ok_or(HandoffError::Param(name));
        let number = |name: &'static str| {
            need(name)?
                .parse::<i64>()
                .map_err(|_| HandoffError::Param(name))
        };
        let kid = need("kid")?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| HandoffError::UnknownKey(kid.clone()))?;
        let sig = unhex(&need("sig")?).ok_or(HandoffError::Param("sig"))?;
        let h = Handoff {
            user_type: need("userType")?,
            company_id: get("companyId")?,
            location_id: get("locationId")?,
            installed_at: number("installedAt")?,
            exp: number("exp")?,
        };
        hmac::verify(key, canonical(&h, &kid).as_bytes(), &sig)
            .map_err(|_| HandoffError::BadSignature)?;
        if now_secs > h.exp {
            return Err(HandoffError::Expired);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    fn keys(current: &str, ids: &[(&str, u8)]) -> HandoffKeys {
        let map = ids
            .iter()
            .map(|(id, b)| (id.to_string(), SecretString::new(B64.encode([*b; 32]))))
            .collect();
        HandoffKeys::from_base64(current, &map).unwrap()
    }

    fn handoff() -> Handoff {
        Handoff {
            user_type: "Location".into(),
            company_id: Some("co-1".into()),
            location_id: Some("loc-1".into()),
            installed_at: 1_700_000_000,
            exp: 1_700_000_300,
        }
    }

    fn query(params: &[(&'static str, String)]) -> Vec<(String, String)> {
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn signs_verifies_and_refuses_tampering_and_expiry() {
        let k = keys("h1", &[("h1", 1)]);
        let q = query(&k.sign(&handoff()).unwrap());
        assert_eq!(k.verify(&q, 1_700_000_100), Ok(handoff()));
        assert_eq!(k.verify(&q, 1_700_000_301), Err(HandoffError::Expired));
        for (name, value) in [
            ("companyId", "co-2"),
            ("locationId", "loc-2"),
            ("userType", "Company"),
            ("installedAt", "1700000001"),
            ("exp", "1800000000"),
        ] {
            let mut t = q.clone();
            t.iter_mut().find(|(k, _)| k == name).unwrap().1 = value.into();
            assert_eq!(
                k.verify(&t, 1_700_000_100),
                Err(HandoffError::BadSignature),
                "{name}"
            );
        }
        // Dropping the location turns a location hand-off into a company one: refused.
        let dropped: Vec<_> = q
            .iter()
            .filter(|(k, _)| k != "locationId")
            .cloned()
            .collect();
        assert_eq!(
            k.verify(&dropped, 1_700_000_100),
            Err(HandoffError::BadSignature)
        );
        let mut twice = q.clone();
        twice.push(("companyId".into(), "co-2".into()));
        assert_eq!(
            k.verify(&twice, 1_700_000_100),
            Err(HandoffError::Param("companyId"))
        );
    }

    #[test]
    fn rotation_keeps_old_hand_offs_verifiable() {
        let old = keys("h1", &[("h1", 1)]);
        let q = query(&old.sign(&handoff()).unwrap());
        let rotated = keys("h2", &[("h1", 1), ("h2", 2)]);
        assert!(rotated.verify(&q, 1_700_000_000).is_ok());
        let q2 = query(&rotated.sign(&handoff()).unwrap());
        assert!(q2.contains(&("kid".into(), "h2".into())));
        assert_eq!(
            old.verify(&q2, 1_700_000_000),
            Err(HandoffError::UnknownKey("h2".into()))
        );
        // The key id is signed: relabelling an h1 signature as h2 fails.
        let mut relabelled = q.clone();
        relabelled.iter_mut().find(|(k, _)| k == "kid").unwrap().1 = "h2".into();
        assert_eq!(
            rotated.verify(&relabelled, 1_700_000_000),
            Err(HandoffError::BadSignature)
        );
    }

    #[test]
    fn control_characters_are_not_signed_and_short_keys_refused() {
        let k = keys("h1", &[("h1", 1)]);
        let bad = Handoff {
            company_id: Some("co\n1".into()),
            ..handoff()
        };
        assert_eq!(k.sign(&bad), Err(HandoffError::Unsignable));
        let short: BTreeMap<String, SecretString> =
            [("h1".to_string(), SecretString::new(B64.encode([7u8; 16])))].into();
        let err = HandoffKeys::from_base64("h1", &short).unwrap_err();
        assert!(
            err.contains("16 bytes") && !err.contains(&B64.encode([7u8; 16])),
            "{err}"
        );
        assert!(!format!("{k:?}").contains("AQEB"));
    }
}
