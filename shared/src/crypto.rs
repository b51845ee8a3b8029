//! Tokens at rest: AES-256-GCM under a data key from Secrets Manager.
//!
//! Each ciphertext names its format and the key that sealed it
//! (`v2:<key id>:<base64>`), so keys can rotate while old items stay
//! readable. The associated data is the item's partition key, its sort key
//! and the field name: a ciphertext copied to another install, from the
//! access-token field to the refresh-token field, or between an install's
//! grant row and its refresh journal, fails to open.
//!
//! `v1` ciphertexts (associated data without the sort key) are still opened,
//! so items written before `v2` stay readable; they count as stale, and
//! `installs-admin rekey` re-seals them as `v2`. New values are always `v2`.

use crate::redact::SecretString;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::BTreeMap;
use std::fmt;

/// What `seal` writes: the sort key is bound.
const FORMAT: &str = "v2";
/// Read only: the associated data binds the partition key and field alone.
const FORMAT_V1: &str = "v1";
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

/// One key of a keyring in a secret (data keys, hand-off keys): its id
/// checked and its base64 decoded. Errors name the key id, never the key.
pub(crate) fn decode_named_key(id: &str, b64: &SecretString) -> Result<Vec<u8>, String> {
    if !valid_key_id(id) {
        return Err(format!("key id {id:?} must be 1-64 of A-Z a-z 0-9 - _ ."));
    }
    B64.decode(b64.expose().trim())
        .map_err(|_| format!("key {id:?} is not base64"))
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
            let bytes = decode_named_key(id, b64).map_err(CryptoError::BadKeyring)?;
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

    /// Seals `plaintext` for field `field` of the item (`item_key`,
    /// `sort_key`), as `v2` under the current key.
    pub fn seal(
        &self,
        plaintext: &SecretString,
        item_key: &str,
        sort_key: &str,
        field: &str,
    ) -> String {
        self.seal_as(FORMAT, plaintext, &aad(item_key, sort_key, field))
    }

    /// The pre-`v2` format, for tests that build items as older releases
    /// wrote them (to check they still open and that `rekey` upgrades
    /// them). Nothing in the functions calls it.
    #[doc(hidden)]
    pub fn seal_legacy_v1(&self, plaintext: &SecretString, item_key: &str, field: &str) -> String {
        self.seal_as(FORMAT_V1, plaintext, &aad_v1(item_key, field))
    }

    fn seal_as(&self, format: &str, plaintext: &SecretString, aad: &str) -> String {
        let cipher = self
            .keys
            .get(&self.current)
            .expect("sealing needs a data key; Keyring::none() has none");
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
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
        format!("{format}:{}:{}", self.current, B64.encode(blob))
    }

    /// Opens a `v2` ciphertext sealed for exactly this item and field, or a
    /// `v1` one sealed for this partition key and field.
    pub fn open(
        &self,
        sealed: &str,
        item_key: &str,
        sort_key: &str,
        field: &str,
    ) -> Result<SecretString, CryptoError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(format), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed("expected v2:<key id>:<base64>"));
        };
        let aad = match format {
            FORMAT => aad(item_key, sort_key, field),
            FORMAT_V1 => aad_v1(item_key, field),
            _ => return Err(CryptoError::Malformed("unknown format version")),
        };
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
        matches!(parts.next(), Some(FORMAT | FORMAT_V1))
            .then(|| parts.next())
            .flatten()
    }

    /// Whether a ciphertext is what `seal` would write now: the current
    /// format under the current key. Anything else is stale and re-sealed
    /// by `rekey`.
    pub fn is_current(&self, sealed: &str) -> bool {
        let mut parts = sealed.splitn(3, ':');
        parts.next() == Some(FORMAT) && parts.next() == Some(self.current.as_str())
    }
}

fn aad(item_key: &str, sort_key: &str, field: &str) -> String {
    format!("{item_key}\u{1f}{sort_key}\u{1f}{field}")
}

fn aad_v1(item_key: &str, field: &str) -> String {
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
            "grant",
            "refresh_token",
        );
        assert!(s.starts_with("v2:k1:"));
        assert!(r.is_current(&s));
        assert!(!s.contains("refresh-abc"));
        let back = r.open(&s, "company#c1", "grant", "refresh_token").unwrap();
        assert_eq!(back.expose(), "refresh-abc");
        // Nonces are fresh: sealing twice differs.
        assert_ne!(
            s,
            r.seal(
                &SecretString::new("refresh-abc"),
                "company#c1",
                "grant",
                "refresh_token"
            )
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let a = ring("k1", &[("k1", 1)]);
        let b = ring("k1", &[("k1", 2)]);
        let s = a.seal(
            &SecretString::new("t"),
            "company#c1",
            "grant",
            "access_token",
        );
        assert_eq!(
            b.open(&s, "company#c1", "grant", "access_token"),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn ciphertext_moved_between_items_or_fields_is_rejected() {
        let r = ring("k1", &[("k1", 1)]);
        let s = r.seal(
            &SecretString::new("t"),
            "company#c1",
            "grant",
            "refresh_token",
        );
        assert_eq!(
            r.open(&s, "company#c2", "grant", "refresh_token"),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            r.open(&s, "company#c1", "grant", "access_token"),
            Err(CryptoError::Authentication)
        );
    }

    /// A journal ciphertext is not valid in the grant row, nor back.
    #[test]
    fn ciphertext_moved_between_rows_of_one_install_is_rejected() {
        let r = ring("k1", &[("k1", 1)]);
        let journal = "journal#00000000000000000007";
        let s = r.seal(
            &SecretString::new("t"),
            "company#c1",
            journal,
            "refresh_token",
        );
        assert_eq!(
            r.open(&s, "company#c1", "grant", "refresh_token"),
            Err(CryptoError::Authentication)
        );
        let g = r.seal(
            &SecretString::new("t"),
            "company#c1",
            "grant",
            "refresh_token",
        );
        assert_eq!(
            r.open(&g, "company#c1", journal, "refresh_token"),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            r.open(&s, "company#c1", journal, "refresh_token")
                .unwrap()
                .expose(),
            "t"
        );
    }

    /// Items written before `v2` still open (whatever row they are read
    /// from: v1 never bound it), still bind the install and field, and
    /// count as stale so that `rekey` re-seals them.
    #[test]
    fn old_format_still_opens_and_is_stale() {
        let r = ring("k1", &[("k1", 1)]);
        let v1 = r.seal_legacy_v1(&SecretString::new("old"), "company#c1", "refresh_token");
        assert!(v1.starts_with("v1:k1:"));
        assert_eq!(Keyring::key_id_of(&v1), Some("k1"));
        assert!(!r.is_current(&v1), "v1 is stale under the current key");
        assert_eq!(
            r.open(&v1, "company#c1", "grant", "refresh_token")
                .unwrap()
                .expose(),
            "old"
        );
        assert_eq!(
            r.open(&v1, "company#c2", "grant", "refresh_token"),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            r.open(&v1, "company#c1", "grant", "access_token"),
            Err(CryptoError::Authentication)
        );
        // A v1 body relabelled v2 (or the reverse) fails: the formats'
        // associated data differ.
        let relabelled = v1.replacen("v1:", "v2:", 1);
        assert_eq!(
            r.open(&relabelled, "company#c1", "grant", "refresh_token"),
            Err(CryptoError::Authentication)
        );
        let rotated = ring("k2", &[("k1", 1), ("k2", 2)]);
        let v2_old_key = r.seal(
            &SecretString::new("t"),
            "company#c1",
            "grant",
            "refresh_token",
        );
        assert!(!rotated.is_current(&v2_old_key), "an old key is stale too");
    }

    #[test]
    fn old_key_still_decrypts_after_rotation() {
        let old = ring("k1", &[("k1", 1)]);
        let sealed_old = old.seal(
            &SecretString::new("old"),
            "location#l1",
            "grant",
            "refresh_token",
        );
        let rotated = ring("k2", &[("k1", 1), ("k2", 2)]);
        assert_eq!(
            rotated
                .open(&sealed_old, "location#l1", "grant", "refresh_token")
                .unwrap()
                .expose(),
            "old"
        );
        let sealed_new = rotated.seal(
            &SecretString::new("new"),
            "location#l1",
            "grant",
            "refresh_token",
        );
        assert_eq!(Keyring::key_id_of(&sealed_new), Some("k2"));
        // A ring that dropped k2 names the missing key instead of failing obscurely.
        assert_eq!(
            old.open(&sealed_new, "location#l1", "grant", "refresh_token"),
            Err(CryptoError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn malformed_and_bad_keys() {
        let r = ring("k1", &[("k1", 1)]);
        assert!(matches!(
            r.open("nope", "a", "grant", "b"),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            r.open("v1:k1:!!!", "a", "grant", "b"),
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
