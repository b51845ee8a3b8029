//! Authorization-code claims: a code is exchanged at most once. A claim is
//! not a lease: it is never taken over, because the code is single-use and
//! a second exchange could only fail; an abandoned claim is reported as such.

use super::item::{Item, Update, attr, get_n, get_s, key_of, num, s};
use super::{Store, StoreError, dynamo};
use crate::model::{InstallId, now_millis};
use crate::redact::SecretString;
use crate::schema::{PK, TTL};
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use sha2::{Digest, Sha256};

const CODE_SK: &str = "code";
const CODE_TTL_SECS: i64 = 86_400;

/// What a code claim records, so a repeated callback shows the same page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRecord {
    Pending { claimed_at_ms: i64 },
    Done { install: InstallId },
}

pub fn code_hash(code: &SecretString) -> String {
    let d = Sha256::digest(code.expose().as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Claims an authorization code so it is exchanged at most once. Returns
    /// `None` when this caller won the claim, or what the earlier caller recorded.
    pub async fn claim_code(&self, hash: &str) -> Result<Option<CodeRecord>, StoreError> {
        let now_ms = now_millis();
        let pk = format!("code#{hash}");
        // A nonce of this claim: when the SDK retries a put whose answer was
        // lost, the retry finds its own claim and wins, instead of waiting on
        // itself as if another request held the code.
        let token = super::lease_token("claim");
        let mut item = key_of(&pk, CODE_SK);
        item.insert(attr::CODE_STATE.into(), s("pending"));
        item.insert(attr::CLAIMED_AT.into(), num(now_ms));
        item.insert(attr::LEASE_OWNER.into(), s(&token));
        item.insert(TTL.into(), num(now_ms / 1000 + CODE_TTL_SECS));
        let res = self
            .item_op("dynamodb:PutItem", &pk)?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #owner = :me")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#owner", attr::LEASE_OWNER)
            .expression_attribute_values(":me", s(&token))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    match c.item() {
                        Some(old) => Ok(Some(decode_code(old))),
                        None => Ok(self.get_code(hash).await?),
                    }
                }
                _ => Err(dynamo("PutItem(claim code)")(e)),
            },
        }
    }

    pub async fn get_code(&self, hash: &str) -> Result<Option<CodeRecord>, StoreError> {
        let out = self
            .item_op("dynamodb:GetItem", &format!("code#{hash}"))?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&format!("code#{hash}"), CODE_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem(code)"))?;
        Ok(out.item.as_ref().map(decode_code))
    }

    pub async fn finish_code(&self, hash: &str, record: &CodeRecord) -> Result<(), StoreError> {
        let mut u = Update::default();
        match record {
            CodeRecord::Pending { .. } => return Ok(()),
            CodeRecord::Done { install } => {
                u.set(attr::CODE_STATE, s("done"));
                u.set(attr::INSTALL_KEY, s(install.key()));
            }
        }
        self.update(&format!("code#{hash}"), CODE_SK, u)?
            .send()
            .await
            .map_err(dynamo("UpdateItem(finish code)"))?;
        Ok(())
    }

    /// Gives a claim back when the exchange failed in a way a retry can fix.
    pub async fn release_code(&self, hash: &str) -> Result<(), StoreError> {
        self.item_op("dynamodb:DeleteItem", &format!("code#{hash}"))?
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&format!("code#{hash}"), CODE_SK)))
            .send()
            .await
            .map_err(dynamo("DeleteItem(code)"))?;
        Ok(())
    }
}

fn decode_code(item: &Item) -> CodeRecord {
    match get_s(item, attr::CODE_STATE) {
        Some("done") => match get_s(item, attr::INSTALL_KEY).and_then(InstallId::parse_key) {
            Some(install) => CodeRecord::Done { install },
            // Unreadable: treat as long abandoned.
            None => CodeRecord::Pending { claimed_at_ms: 0 },
        },
        _ => CodeRecord::Pending {
            claimed_at_ms: get_n(item, attr::CLAIMED_AT).unwrap_or(0),
        },
    }
}
