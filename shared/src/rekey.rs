//! Data-key rotation: re-seals every install's tokens under the app
//! secret's current data key.
//!
//! Safe while sweeps and mints run: each install is re-sealed under the same
//! lease they use, conditioned on its version, so a refresh that commits in
//! between wins and the re-seal is simply retried (the refresh already sealed
//! under the current key). Resumable: installs already under the current key
//! are skipped, so a second run picks up where an interrupted one stopped.

use crate::model::{InstallId, now_millis};
use crate::store::{LeaseOutcome, LeaseWhen, Store, StoreError, lease_token};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RekeySummary {
    pub examined: u64,
    pub resealed: u64,
    pub already_current: u64,
    /// Gone between listing and reading (deleted, or a TTL'd item).
    pub missing: u64,
    /// Still under an old key after every attempt: held by a refresh the
    /// whole time, or left by a holder that died mid-refresh (the sweep
    /// settles those first). A later run picks them up.
    pub left: Vec<String>,
}

impl RekeySummary {
    pub fn complete(&self) -> bool {
        self.left.is_empty()
    }
}

pub struct Rekeyer<'a> {
    pub store: &'a Store,
    pub owner: &'a str,
    /// The lease it takes per install; a re-seal is one write, so seconds.
    pub lease: Duration,
    /// Attempts per install before it is left for a later run.
    pub attempts: u32,
    /// Longest wait between attempts on a held install.
    pub max_wait: Duration,
}

enum Outcome {
    Resealed,
    Current,
    Missing,
    Busy,
}

impl Rekeyer<'_> {
    /// Re-seals every install. `progress` is called after each page with the
    /// running summary.
    pub async fn run(
        &self,
        mut progress: impl FnMut(&RekeySummary),
    ) -> Result<RekeySummary, StoreError> {
        let mut summary = RekeySummary::default();
        let mut start = None;
        loop {
            let (ids, next) = self.store.install_keys_page(start).await?;
            for id in ids {
                summary.examined += 1;
                match self.one(&id).await? {
                    Outcome::Resealed => summary.resealed += 1,
                    Outcome::Current => summary.already_current += 1,
                    Outcome::Missing => summary.missing += 1,
                    Outcome::Busy => summary.left.push(id.key()),
                }
            }
            progress(&summary);
            start = next;
            if start.is_none() {
                return Ok(summary);
            }
        }
    }

    async fn one(&self, id: &InstallId) -> Result<Outcome, StoreError> {
        for attempt in 0..self.attempts.max(1) {
            // A plain read first: most installs either need no work or are free.
            let Some(current) = self.store.get(id).await? else {
                return Ok(Outcome::Missing);
            };
            if !current.stale_key {
                return Ok(Outcome::Current);
            }
            let wait_until = match self
                .store
                .acquire_lease(id, &lease_token(self.owner), self.lease, LeaseWhen::Always)
                .await?
            {
                LeaseOutcome::Acquired { install, .. } => {
                    if !install.stale_key {
                        self.store.release(&install).await?;
                        return Ok(Outcome::Current);
                    }
                    if self.store.reseal(&install).await? {
                        tracing::info!(install_id = %id, outcome = "resealed", "install re-sealed under the current data key");
                        return Ok(Outcome::Resealed);
                    }
                    // Our lease ran out and a refresh moved the version on: read again.
                    now_millis()
                }
                LeaseOutcome::Held { until_ms, .. } => until_ms,
                // A refresh holder's lease expired without release: the sweep
                // settles it (journal, then a probe) before anyone else may touch it.
                LeaseOutcome::NotNeeded { .. } => now_millis() + 1_000,
                LeaseOutcome::Missing => return Ok(Outcome::Missing),
            };
            if attempt + 1 < self.attempts {
                let wait =
                    Duration::from_millis((wait_until - now_millis()).clamp(50, i64::MAX) as u64);
                tokio::time::sleep(wait.min(self.max_wait)).await;
            }
        }
        tracing::warn!(install_id = %id, outcome = "left", "install still under an old data key; run again later");
        Ok(Outcome::Busy)
    }
}
