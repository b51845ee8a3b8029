//! The fleet by state, for the operator: the broken index (every install
//! that is not `active`, one Query however large the table) and a census of
//! every state (a Scan, for occasional use).
//!
//! The broken index is sparse: [`Store::set_state`] gives an install its
//! keys (`broken_shard`: the state; `broken_since`) in the same write that
//! sets a state other than `active`, and removes them in the write that
//! makes it `active` again, so it holds exactly the installs an operator may
//! have to act on, one partition per state.
//! No function queries it: a store limited to a function's IAM policy is
//! refused before sending (grant it in `shared::iam` and the template first).

use super::item::{Item, Update, attr, get_n, get_s, num, s};
use super::{GRANT_SK, Store, StoreError, dynamo, ignore_condition_failure};
use crate::iam::FunctionPolicy;
use crate::model::{InstallId, InstallState};
use crate::schema::{BROKEN_INDEX, BROKEN_SHARD, BROKEN_SINCE, DUE_AT, PK, SK};
use std::collections::BTreeMap;

/// One install of the broken index, as projected there (no table read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenInstall {
    pub id: InstallId,
    /// The stored state text (normally one of [`InstallState`]'s names).
    pub state: String,
    pub reason: Option<String>,
    /// Epoch seconds of the last state write.
    pub state_changed_at: Option<i64>,
    /// Epoch seconds since it stopped being `active`.
    pub broken_since: i64,
    pub doubt_since_ms: Option<i64>,
    pub due_at: Option<i64>,
    pub failures: u32,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
}

/// A page of the broken index, oldest breakage first.
pub struct BrokenPage {
    pub installs: Vec<BrokenInstall>,
    pub next: Option<Item>,
}

/// No function's policy grants the broken index (none queries it).
fn nothing_granted(_: &FunctionPolicy) -> &[&str] {
    &[]
}

impl Store {
    /// One page of the broken index's partition of `state`: the installs in
    /// that state, the longest broken first. One Query; no table read.
    pub async fn broken_page(
        &self,
        state: InstallState,
        limit: i32,
        start: Option<Item>,
    ) -> Result<BrokenPage, StoreError> {
        let out = self
            .permit("dynamodb:Query", nothing_granted, "the broken index")?
            .query()
            .table_name(&self.table)
            .index_name(BROKEN_INDEX)
            .key_condition_expression("#shard = :shard")
            .expression_attribute_names("#shard", BROKEN_SHARD)
            .expression_attribute_values(":shard", s(state.as_str()))
            .scan_index_forward(true)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo("Query(broken index)"))?;
        let installs = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(decode_broken)
            .collect();
        Ok(BrokenPage {
            installs,
            next: out.last_evaluated_key,
        })
    }

    /// How many installs are in each state, by reading every install's
    /// `state` alone (a Scan projecting one attribute: it still reads the
    /// whole table, so it is for an operator now and then, never for a
    /// function). States are counted by their stored name; a missing one
    /// is `active`, as [`Store::decode`] reads it.
    pub async fn state_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        let mut start = None;
        loop {
            let out = self
                .table_op("dynamodb:Scan")?
                .scan()
                .table_name(&self.table)
                .filter_expression("#sk = :grant")
                .projection_expression("#state")
                .expression_attribute_names("#sk", SK)
                .expression_attribute_names("#state", attr::STATE)
                .expression_attribute_values(":grant", s(GRANT_SK))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(dynamo("Scan(state census)"))?;
            for item in out.items.unwrap_or_default() {
                let state = get_s(&item, attr::STATE).unwrap_or(InstallState::Active.as_str());
                *counts.entry(state.to_owned()).or_insert(0) += 1;
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(counts);
            }
        }
    }

    /// Gives the broken index's keys to installs that are not `active` and
    /// lack them (written before the index existed), one Scan page at a
    /// time: the partition is their state, `broken_since` their
    /// `state_changed_at`. Each write is
    /// conditioned on the state it read, so an install that became `active`
    /// meanwhile is left alone. Returns (installs examined, indexed, next page).
    pub async fn backfill_broken_page(
        &self,
        start: Option<Item>,
    ) -> Result<(u64, u64, Option<Item>), StoreError> {
        let out = self
            .table_op("dynamodb:Scan")?
            .scan()
            .table_name(&self.table)
            .filter_expression(
                "#sk = :grant AND attribute_exists(#state) AND #state <> :active AND attribute_not_exists(#shard)",
            )
            .projection_expression("#pk, #state, #changed")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_names("#shard", BROKEN_SHARD)
            .expression_attribute_names("#changed", attr::STATE_CHANGED_AT)
            .expression_attribute_values(":grant", s(GRANT_SK))
            .expression_attribute_values(":active", s(InstallState::Active.as_str()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo("Scan(broken backfill)"))?;
        let mut indexed = 0;
        let items = out.items.unwrap_or_default();
        for item in &items {
            let (Some(pk), Some(state)) = (get_s(item, PK), get_s(item, attr::STATE)) else {
                continue;
            };
            let since = get_n(item, attr::STATE_CHANGED_AT).unwrap_or(0);
            let mut u = Update::default();
            u.set(BROKEN_SHARD, s(state));
            u.set(BROKEN_SINCE, num(since));
            let (st_n, st_v) = (u.name(attr::STATE), u.value(s(state)));
            let shard_n = u.name(BROKEN_SHARD);
            let res = self
                .update(pk, GRANT_SK, u)?
                .condition_expression(format!(
                    "{st_n} = {st_v} AND attribute_not_exists({shard_n})"
                ))
                .send()
                .await;
            let landed = res.is_ok();
            ignore_condition_failure(res.map(|_| ()), "UpdateItem(broken backfill)")?;
            indexed += u64::from(landed);
        }
        Ok((items.len() as u64, indexed, out.last_evaluated_key))
    }
}

fn decode_broken(item: &Item) -> Option<BrokenInstall> {
    Some(BrokenInstall {
        id: InstallId::parse_key(get_s(item, PK)?)?,
        state: get_s(item, attr::STATE).unwrap_or("unknown").to_owned(),
        reason: get_s(item, attr::STATE_REASON).map(str::to_owned),
        state_changed_at: get_n(item, attr::STATE_CHANGED_AT),
        broken_since: get_n(item, BROKEN_SINCE)?,
        doubt_since_ms: get_n(item, attr::DOUBT_SINCE),
        due_at: get_n(item, DUE_AT),
        failures: get_n(item, attr::FAILURES).unwrap_or(0) as u32,
        company_id: get_s(item, attr::COMPANY_ID).map(str::to_owned),
        location_id: get_s(item, attr::LOCATION_ID).map(str::to_owned),
    })
}
