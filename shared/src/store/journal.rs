//! The journal: where a rotated pair goes when its commit cannot be written,
//! for the next holder to adopt.

use super::item::{attr, get_n, get_s, key_of, num, s};
use super::{Store, StoreError, dynamo};
use crate::model::{InstallId, TokenPair, now_secs};
use crate::redact::SecretString;
use crate::schema::{PK, SK, TTL};

const JOURNAL_PREFIX: &str = "journal#";
/// Journal entries outlive any sweep that could need them by far.
const JOURNAL_TTL_SECS: i64 = 30 * 86_400;

/// A journal entry: a rotated pair whose commit could not be written.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub version: u64,
    pub pair: TokenPair,
    pub owner: String,
}

impl Store {
    /// Makes a rotated pair durable when its commit failed. Keyed by the
    /// version it will become; only one refresh of a token can succeed, so at
    /// most one pair exists per version and a retried put is harmless.
    pub async fn write_journal(
        &self,
        id: &InstallId,
        version: u64,
        pair: &TokenPair,
        owner: &str,
    ) -> Result<(), StoreError> {
        let key = id.key();
        let now = now_secs();
        let sk = format!("{JOURNAL_PREFIX}{version:020}");
        let mut item = key_of(&key, &sk);
        item.insert(
            attr::ACCESS_TOKEN.into(),
            s(self
                .keyring
                .seal(&pair.access_token, &key, &sk, attr::ACCESS_TOKEN)),
        );
        item.insert(
            attr::REFRESH_TOKEN.into(),
            s(self
                .keyring
                .seal(&pair.refresh_token, &key, &sk, attr::REFRESH_TOKEN)),
        );
        item.insert(attr::KEY_ID.into(), s(self.keyring.current_key_id()));
        item.insert(attr::EXPIRES_AT.into(), num(pair.expires_at));
        item.insert(attr::VERSION.into(), num(version as i64));
        item.insert(attr::OWNER.into(), s(owner));
        item.insert(attr::WRITTEN_AT.into(), num(now));
        item.insert(TTL.into(), num(now + JOURNAL_TTL_SECS));
        self.item_op("dynamodb:PutItem", &id.key())?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(dynamo("PutItem(journal)"))?;
        Ok(())
    }

    /// The newest journal entry above `version`, if any: a pair some holder
    /// obtained but did not commit.
    pub async fn newer_journal(
        &self,
        id: &InstallId,
        version: u64,
    ) -> Result<Option<JournalEntry>, StoreError> {
        let key = id.key();
        let out = self
            .item_op("dynamodb:Query", &key)?
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(&key))
            .expression_attribute_values(":lo", s(format!("{JOURNAL_PREFIX}{:020}", version + 1)))
            .expression_attribute_values(":hi", s(format!("{JOURNAL_PREFIX}{}", "9".repeat(20))))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("Query(journal)"))?;
        let Some(item) = out.items.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        if !item.contains_key(attr::ACCESS_TOKEN) && !item.contains_key(attr::REFRESH_TOKEN) {
            // Erased when the app was uninstalled: nothing to adopt.
            return Ok(None);
        }
        // The entry's own sort key: a v2 ciphertext opens only in the row
        // it was sealed for.
        let sk = get_s(&item, SK).unwrap_or_default().to_owned();
        let open = |field: &str| -> Result<SecretString, StoreError> {
            let sealed = get_s(&item, field).ok_or_else(|| StoreError::Corrupt {
                key: key.clone(),
                reason: format!("journal {field} missing"),
            })?;
            self.keyring
                .open(sealed, &key, &sk, field)
                .map_err(|source| StoreError::Crypto {
                    key: key.clone(),
                    source,
                })
        };
        Ok(Some(JournalEntry {
            version: get_n(&item, attr::VERSION).unwrap_or(0) as u64,
            pair: TokenPair {
                access_token: open(attr::ACCESS_TOKEN)?,
                refresh_token: open(attr::REFRESH_TOKEN)?,
                expires_at: get_n(&item, attr::EXPIRES_AT).unwrap_or(0),
            },
            owner: get_s(&item, attr::OWNER).unwrap_or_default().to_owned(),
        }))
    }
}
