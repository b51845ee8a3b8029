//! The due index: which installs need a refresh, sharded so no partition
//! is hot.

use super::item::{Item, Update, get_n, get_s, num, s};
use super::{Store, StoreError, dynamo};
use crate::model::InstallId;
use crate::schema::{DUE_AT, DUE_INDEX, DUE_SHARD, PK};
use rand::Rng;
use sha2::{Digest, Sha256};

/// A page of the due index.
pub struct DuePage {
    pub ids: Vec<(InstallId, i64)>,
    pub next: Option<Item>,
}

/// Stable across processes and releases (unlike `std::hash`), so every
/// writer puts an install in the same shard.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    let d = Sha256::digest(key.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % shards.max(1)
}

pub fn shard_name(shard: u32) -> String {
    format!("{shard:03}")
}

impl Store {
    /// When a token expiring at `expires_at` should be refreshed: the
    /// refresh-ahead window plus a random share of the jitter earlier.
    pub fn due_time(&self, expires_at: i64) -> i64 {
        let jitter = self.due.jitter.as_secs() as i64;
        let spread = if jitter > 0 {
            rand::rng().random_range(0..=jitter)
        } else {
            0
        };
        expires_at - self.due.refresh_ahead.as_secs() as i64 - spread
    }

    pub(super) fn set_due(&self, u: &mut Update, id: &InstallId, due_at: i64) {
        u.set(
            DUE_SHARD,
            s(shard_name(shard_of(&id.key(), self.due.shards))),
        );
        u.set(DUE_AT, num(due_at));
    }

    // ---- due index ------------------------------------------------------

    /// One page of installs in `shard` due at or before `now`, oldest first.
    pub async fn due_page(
        &self,
        shard: u32,
        now: i64,
        limit: i32,
        start: Option<Item>,
    ) -> Result<DuePage, StoreError> {
        let out = self
            .index_op("dynamodb:Query")?
            .query()
            .table_name(&self.table)
            .index_name(DUE_INDEX)
            .key_condition_expression("#shard = :shard AND #due <= :now")
            .expression_attribute_names("#shard", DUE_SHARD)
            .expression_attribute_names("#due", DUE_AT)
            .expression_attribute_values(":shard", s(shard_name(shard)))
            .expression_attribute_values(":now", num(now))
            .scan_index_forward(true)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo("Query(due index)"))?;
        let ids = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|i| {
                let id = InstallId::parse_key(get_s(i, PK)?)?;
                Some((id, get_n(i, DUE_AT)?))
            })
            .collect();
        Ok(DuePage {
            ids,
            next: out.last_evaluated_key,
        })
    }

    /// The install that has been due longest (at or before `now`), with its
    /// due time: the head of each shard, one item each.
    pub async fn oldest_due(&self, now: i64) -> Result<Option<(InstallId, i64)>, StoreError> {
        let mut oldest: Option<(InstallId, i64)> = None;
        for shard in 0..self.due.shards.max(1) {
            let page = self.due_page(shard, now, 1, None).await?;
            if let Some((id, due)) = page.ids.into_iter().next()
                && oldest.as_ref().is_none_or(|(_, o)| due < *o)
            {
                oldest = Some((id, due));
            }
        }
        Ok(oldest)
    }
}
