//! Webhook ids already applied, so a redelivery is answered as a duplicate.
//! A record lives twice the accepted age of an event's timestamp, past which
//! the timestamp alone refuses the delivery.

use super::item::{key_of, num, s};
use super::{Store, StoreError, dynamo, is_condition_failure};
use crate::model::now_millis;
use crate::schema::{PK, TTL};
use std::time::Duration;

const WEBHOOK_SK: &str = "webhook";

fn webhook_key(id: &str) -> String {
    format!("webhook#{id}")
}

impl Store {
    /// Whether a webhook id was processed already (a consistent read).
    pub async fn webhook_seen(&self, id: &str) -> Result<bool, StoreError> {
        let out = self
            .item_op("dynamodb:GetItem", &webhook_key(id))?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&webhook_key(id), WEBHOOK_SK)))
            .consistent_read(true)
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(dynamo("GetItem(webhook)"))?;
        Ok(out.item.is_some())
    }

    /// Records a processed webhook id for `keep` (conditional: a concurrent
    /// delivery of the same id records it once). True when this call did.
    pub async fn record_webhook(&self, id: &str, keep: Duration) -> Result<bool, StoreError> {
        let now_ms = now_millis();
        let mut item = key_of(&webhook_key(id), WEBHOOK_SK);
        item.insert("processed_at_ms".into(), num(now_ms));
        item.insert(TTL.into(), num(now_ms / 1000 + keep.as_secs() as i64));
        item.insert("webhook_id".into(), s(id));
        let res = self
            .item_op("dynamodb:PutItem", &webhook_key(id))?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("PutItem(webhook)")(e)),
        }
    }
}
