//! Leases: who may act on an item, and until when. One mechanism serves the
//! installs (a refresh, or maintenance such as re-sealing) and the short
//! single-flight locks of the mint: a lease item carries a lease token (the
//! holder's name and a nonce unique to one taking) and an expiry, and is
//! taken by a conditional write that succeeds when it is free, expired, or
//! already ours (a write the SDK retried after its answer was lost finds its
//! own lease, not someone else's). It is given back by a write conditioned on
//! the same token.

use super::item::{Update, attr, get_n, get_s, num, s};
use super::{
    GRANT_SK, Install, Store, StoreError, dynamo, ignore_condition_failure, is_condition_failure,
};
use crate::model::{InstallId, InstallState, now_millis};
use crate::schema::{DUE_AT, PK, TTL};
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use rand::Rng;
use std::time::Duration;

/// Which condition a lease must satisfy besides being free.
#[derive(Debug, Clone, Copy)]
pub enum LeaseWhen {
    /// The sweep: only if still due (another sweep may have just refreshed it).
    DueBy(i64),
    /// The mint: only if the access token expires before this time, or the
    /// grant is in doubt (its probe is due whatever the expiry).
    ExpiresBefore(i64),
    /// Maintenance (key rotation): whenever it is free.
    Always,
    /// An operator's forced refresh or probe (`installs-admin refresh`,
    /// `probe`): whenever it is free, expired or ours, with refresh intent,
    /// whatever its due time or expiry, as long as its state is one whose
    /// token is still presented (never a terminal one).
    Force,
}

#[derive(Debug)]
pub enum LeaseOutcome {
    /// Taken. `abandoned` is true when the previous holder's lease ran out
    /// without a release: it may have presented the refresh token.
    Acquired {
        install: Box<Install>,
        abandoned: bool,
    },
    Held {
        owner: String,
        until_ms: i64,
    },
    /// The condition did not hold: not due any more, or not refreshable.
    NotNeeded {
        install: Box<Install>,
    },
    Missing,
}

/// A lease token: the holder's name and a nonce unique to one taking.
pub fn lease_token(owner: &str) -> String {
    let nonce: u64 = rand::rng().random();
    format!("{owner}/{nonce:016x}")
}

/// The condition under which a lease may be taken: free (no expiry), expired,
/// or held under `token` already. The names and values go into `u`.
fn free_expired_or_ours(u: &mut Update, token: &str, now_ms: i64) -> String {
    let until = u.name(attr::LEASE_UNTIL);
    let owner = u.name(attr::LEASE_OWNER);
    let now = u.value(num(now_ms));
    let me = u.value(s(token));
    format!("(attribute_not_exists({until}) OR {until} < {now} OR {owner} = {me})")
}

impl Store {
    // ---- leases ------------------------------------------------------

    /// Takes the lease on an install: a lease token (from [`lease_token`]:
    /// the holder's name plus a nonce unique to this taking), an expiry, and
    /// (through the version already on the item) a fencing token. The
    /// returned install is the authoritative state at the moment of taking,
    /// with `lease_owner` set to the token every later fenced write names.
    ///
    /// The condition also admits the same token, so when the SDK retries a
    /// write whose answer was lost, the retry finds its own lease and takes
    /// it again instead of mistaking it for someone else's.
    pub async fn acquire_lease(
        &self,
        id: &InstallId,
        token: &str,
        lease: Duration,
        when: LeaseWhen,
    ) -> Result<LeaseOutcome, StoreError> {
        let now_ms = now_millis();
        let until = now_ms + lease.as_millis() as i64;
        let mut u = Update::default();
        u.set(attr::LEASE_OWNER, s(token));
        u.set(attr::LEASE_UNTIL, num(until));
        // Only a holder that meant to present the refresh token can leave it in doubt.
        let intent = if matches!(when, LeaseWhen::Always) {
            "maintain"
        } else {
            "refresh"
        };
        u.set(attr::LEASE_INTENT, s(intent));
        let pk_n = u.name(PK);
        let free = free_expired_or_ours(&mut u, token, now_ms);
        let mut cond = format!("attribute_exists({pk_n}) AND {free}");
        match when {
            LeaseWhen::DueBy(t) => {
                let (n, v) = (u.name(DUE_AT), u.value(num(t)));
                cond.push_str(&format!(" AND {n} <= {v}"));
            }
            LeaseWhen::ExpiresBefore(t) => {
                let (n, v) = (u.name(attr::EXPIRES_AT), u.value(num(t)));
                let st = u.name(attr::STATE);
                let states: Vec<String> = InstallState::ALL
                    .into_iter()
                    .filter(|st| st.is_refreshable())
                    .map(|st| u.value(s(st.as_str())))
                    .collect();
                let doubt = u.value(s(InstallState::InDoubt.as_str()));
                cond.push_str(&format!(
                    " AND (({n} < {v} AND {st} IN ({})) OR {st} = {doubt})",
                    states.join(", ")
                ));
            }
            LeaseWhen::Force => {
                let st = u.name(attr::STATE);
                let states: Vec<String> = InstallState::ALL
                    .into_iter()
                    .filter(|st| st.is_refreshable())
                    .map(|st| u.value(s(st.as_str())))
                    .collect();
                cond.push_str(&format!(" AND {st} IN ({})", states.join(", ")));
            }
            LeaseWhen::Always => {
                // Never over a refresh holder's expired lease: it may have
                // presented the refresh token, and only the refresh path
                // (journal, then a probe) may clear that.
                let (o, i, m) = (
                    u.name(attr::LEASE_OWNER),
                    u.name(attr::LEASE_INTENT),
                    u.value(s("maintain")),
                );
                let me = u.value(s(token));
                cond.push_str(&format!(
                    " AND (attribute_not_exists({o}) OR {i} = {m} OR {o} = {me})"
                ));
            }
        }
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(cond)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                let previous = get_s(&old, attr::LEASE_OWNER);
                let abandoned = previous.is_some_and(|p| p != token)
                    && get_s(&old, attr::LEASE_INTENT) != Some("maintain");
                let mut install = match self.decode(old) {
                    Ok(i) => i,
                    Err(e) => {
                        // Nothing was presented: the lease must not outlive
                        // this error, unless it replaced an abandoned one,
                        // whose doubt only a lease left to expire keeps.
                        if !abandoned
                            && let Err(release) = self.release_lease(id, token).await
                        {
                            tracing::error!(install_id = %id, error = %release, "lease release after an unreadable item failed");
                        }
                        return Err(e);
                    }
                };
                install.lease_owner = Some(token.to_owned());
                install.lease_until_ms = Some(until);
                install.lease_intent = Some(intent.to_owned());
                Ok(LeaseOutcome::Acquired {
                    install: Box::new(install),
                    abandoned,
                })
            }
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let Some(old) = c.item() else {
                        return Ok(LeaseOutcome::Missing);
                    };
                    if let (Some(holder), Some(until)) = (get_s(old, attr::LEASE_OWNER), get_n(old, attr::LEASE_UNTIL))
                        && until >= now_ms
                    {
                        return Ok(LeaseOutcome::Held {
                            owner: holder.to_owned(),
                            until_ms: until,
                        });
                    }
                    Ok(LeaseOutcome::NotNeeded {
                        install: Box::new(self.decode(old.clone())?),
                    })
                }
                _ => Err(dynamo("UpdateItem(acquire lease)")(e)),
            },
        }
    }

    /// Gives back the lease `install` was taken with.
    pub async fn release(&self, install: &Install) -> Result<(), StoreError> {
        self.release_lease(&install.id, install.lease_token()).await
    }

    /// Gives the lease back without other changes. A no-op if it is no
    /// longer ours.
    pub async fn release_lease(&self, id: &InstallId, token: &str) -> Result<(), StoreError> {
        self.release_item(&id.key(), GRANT_SK, token, "UpdateItem(release lease)")
            .await
    }

    // ---- short locks ------------------------------------------------------

    /// A short single-flight lock on a name (one mint per location at a
    /// time), under the same rule as an install lease: taken when free,
    /// expired, or already held under `token`; given back by [`Store::unlock`]
    /// naming the same token.
    pub async fn try_lock(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now_ms = now_millis();
        let mut u = Update::default();
        u.set(attr::LEASE_OWNER, s(token));
        u.set(attr::LEASE_UNTIL, num(now_ms + ttl.as_millis() as i64));
        // DynamoDB deletes a lock its holder never gave back, an hour later.
        u.set(TTL, num(now_ms / 1000 + ttl.as_secs() as i64 + 3600));
        let free = free_expired_or_ours(&mut u, token, now_ms);
        let res = self
            .update(&lock_key(name), LOCK_SK, u)?
            .condition_expression(free)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("UpdateItem(lock)")(e)),
        }
    }

    /// Gives a lock back (if it is still ours) by clearing its lease, the
    /// same write as giving an install back: the item stays until its TTL,
    /// and every function that may lock may also unlock (no DeleteItem).
    pub async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        self.release_item(&lock_key(name), LOCK_SK, token, "UpdateItem(unlock)")
            .await
    }

    async fn release_item(
        &self,
        pk: &str,
        sk: &str,
        token: &str,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let mut u = Update::default();
        u.release_lease();
        let (n, v) = (u.name(attr::LEASE_OWNER), u.value(s(token)));
        let res = self
            .update(pk, sk, u)?
            .condition_expression(format!("{n} = {v}"))
            .send()
            .await;
        ignore_condition_failure(res.map(|_| ()), op)
    }
}

const LOCK_SK: &str = "lock";

fn lock_key(name: &str) -> String {
    format!("lock#{name}")
}
