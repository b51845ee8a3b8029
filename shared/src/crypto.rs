//! Tokens at rest: AES-256-GCM under a data key from Secrets Manager.
//!
//! Each ciphertext names the key that sealed it (`v1:<key id>:<base64>`), so
//! keys can rotate while old items stay readable. The associated data is the
//! item's key plus the field name: a ciphertext copied to another install, or
//! from the access-token field to the refresh-token field, fails to open.

use crate::redact::SecretString;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::BTreeMap;
use std::fmt;

const FORMAT: &str = "v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is sealed with data key {0:?}, which the app secret does not hold")]
    UnknownKey(String),
    #[error("ciphertext is malformed: {0}")]
    Malformed(&'static str),
    #[error("ciphertext failed authentication (wrong key, tampered, or moved from another item)")]
    Authentication,
    #[error("data keys: {0}")]
    BadKeyring(String),
}

/// The data keys, by id, and which one seals new values.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl Keyring {
    /// A keyring with no key at all, for a function that must never hold
    /// the data keys (marketplace-webhook erases tokens without opening
    /// them, and is not allowed to read the app secret). Opening anything
    /// fails as an unknown key; sealing is a bug and panics, so a code path
    /// that would need a key shows up in that function's tests.
    pub fn none() -> Self {
        Self {
            current: String::new(),
            keys: BTreeMap::new(),
        }
    }

    /// `keys` maps key ids to base64 of 32 random bytes.
    pub fn from_base64(
        current: &str,
        keys: &BTreeMap<String, SecretString>,
    ) -> Result<Self, CryptoError> {
        let mut ring = BTreeMap::new();
        for (id, b64) in keys {
            if !valid_key_id(id) {
                return Err(CryptoError::BadKeyring(format!(
                    "key id {id:?} must be 1-64 of A-Z a-z 0-9 - _ ."
                )));
            }
            let bytes = B64
                .decode(b64.expose().trim())
                .map_err(|_| CryptoError::BadKeyring(format!("key {id:?} is not base64")))?;
            if bytes.len() != 32 {
                return Err(CryptoError::BadKeyring(format!(
                    "key {id:?} is {} bytes; AES-256 needs 32",
                    bytes.len()
                )));
            }
            ring.insert(
                id.clone(),
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            );
        }
        if !ring.contains_key(current) {
            return Err(CryptoError::BadKeyring(format!(
                "current key {current:?} is not among the keys"
            )));
        }
        Ok(Self {
            current: current.to_owned(),
            keys: ring,
        })
    }

    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    pub fn seal(&self, plaintext: &SecretString, item_key: &str, field: &str) -> String {
        let cipher = self
            .keys
            .get(&self.current)
            .expect("sealing needs a data key; Keyring::none() has none");
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = aad(item_key, field);
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{FORMAT}:{}:{}", self.current, B64.encode(blob))
    }

    pub fn open(
        &self,
        sealed: &str,
        item_key: &str,
        field: &str,
    ) -> Result<SecretString, CryptoError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(format), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed("expected v1:<key id>:<base64>"));
        };
        if format != FORMAT {
            return Err(CryptoError::Malformed("unknown format version"));
        }
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = B64
            .decode(body)
            .map_err(|_| CryptoError::Malformed("body is not base64"))?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let aad = aad(item_key, field);
        let pt = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Authentication)?;
        String::from_utf8(pt)
            .map(SecretString::new)
            .map_err(|_| CryptoError::Malformed("plaintext is not UTF-8"))
    }

    /// The key id a ciphertext was sealed with, without opening it.
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        let mut parts = sealed.splitn(3, ':');
        (parts.next() == Some(FORMAT))
            .then(|| parts.next())
            .flatten()
    }
}

fn aad(item_key: &str, field: &str) -> String {
    format!("{item_key}\u{1f}{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::new(B64.encode([byte; 32]))
    }

    fn ring(current: &str, ids: &[(&str, u8)]) -> Keyring {
        let keys = ids
            .iter()
            .map(|(id, b)| (id.to_string(), key(*b)))
            .collect();
        Keyring::from_base64(current, &keys).unwrap()
    }

    #[test]
    fn round_trip() {
        let r = ring("k1", &[("k1", 1)]);
        let s = r.seal(
            &SecretString::new("refresh-abc"),
            "company#c1",
            "refresh_token",
        );
        assert!(s.starts_with("v1:k1:"));
        assert!(!s.contains("refresh-abc"));
        let back = r.open(&s, "company#c1", "refresh_token").unwrap();
        assert_eq!(back.expose(), "refresh-abc");
        // Nonces are fresh: sealing twice differs.
        assert_ne!(
            s,
            r.seal(
                &SecretString::new("refresh-abc"),
                "company#c1",
                "refresh_token"
            )
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let a = ring("k1", &[("k1", 1)]);
        let b = ring("k1", &[("k1", 2)]);
        let s = a.seal(&SecretString::new("t"), "company#c1", "access_token");
        assert_eq!(
            b.open(&s, "company#c1", "access_token"),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn ciphertext_moved_between_items_or_fields_is_rejected() {
        let r = ring("k1", &[("k1", 1)]);
        let s = r.seal(&SecretString::new("t"), "company#c1", "refresh_token");
        assert_eq!(
            r.open(&s, "company#c2", "refresh_token"),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            r.open(&s, "company#c1", "access_token"),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn old_key_still_decrypts_after_rotation() {
        let old = ring("k1", &[("k1", 1)]);
        let sealed_old = old.seal(&SecretString::new("old"), "location#l1", "refresh_token");
        let rotated = ring("k2", &[("k1", 1), ("k2", 2)]);
        assert_eq!(
            rotated
                .open(&sealed_old, "location#l1", "refresh_token")
                .unwrap()
                .expose(),
            "old"
        );
        let sealed_new = rotated.seal(&SecretString::new("new"), "location#l1", "refresh_token");
        assert_eq!(Keyring::key_id_of(&sealed_new), Some("k2"));
        // A ring that dropped k2 names the missing key instead of failing obscurely.
        assert_eq!(
            old.open(&sealed_new, "location#l1", "refresh_token"),
            Err(CryptoError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn malformed_and_bad_keys() {
        let r = ring("k1", &[("k1", 1)]);
        assert!(matches!(
            r.open("nope", "a", "b"),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            r.open("v1:k1:!!!", "a", "b"),
            Err(CryptoError::Malformed(_))
        ));
        let short: BTreeMap<String, SecretString> =
            [("k1".to_string(), SecretString::new(B64.encode([0u8; 16])))].into();
        assert!(matches!(
            Keyring::from_base64("k1", &short),
            Err(CryptoError::BadKeyring(_))
        ));
        let keys: BTreeMap<String, SecretString> = [("k1".to_string(), key(1))].into();
        assert!(matches!(
            Keyring::from_base64("k9", &keys),
            Err(CryptoError::BadKeyring(_))
        ));
        assert!(!format!("{r:?}").contains("AAAA"));
    }
}
