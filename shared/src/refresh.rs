//! Refreshing one install without ever burning or losing a refresh token.
//!
//! The protocol, shared by the sweep and the mint:
//! 1. Take the install's lease (conditional write: free or expired, and still
//!    due). The old item comes back with it: that is the re-read.
//! 2. If the previous holder's lease ran out mid-refresh, look in the journal
//!    for the pair it obtained. Found: adopt it. Not found: the token may have
//!    been presented already, so it is not presented again (`in_doubt`).
//! 3. Present the refresh token once. HighLevel's request timeout is shorter
//!    than the lease, so no one else can take the install while it is in flight.
//! 4. On success, write the new pair to the journal first, then commit it to
//!    the install conditioned on the version (the fencing token). Either write
//!    is retried; if the commit never lands, the journal entry is adopted later.
//! 5. On `Invalid grant`, look for a newer pair (row or journal) before
//!    declaring the grant revoked.

use crate::app_secret::AppSecret;
use crate::ghl::{GhlClient, GhlError, ReconnectTarget};
use crate::model::{InstallId, InstallState, TokenGrant, TokenPair, now_millis, now_secs};
use crate::store::{Install, LeaseOutcome, LeaseWhen, StateChange, Store, StoreError};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// How a refresh failure is handled; see [`crate::config::SweepConfig`].
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    pub lease: Duration,
    pub suspended_retry: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub reconnect_fallback: bool,
}

impl RefreshPolicy {
    /// For callers without sweep settings (the mint): conservative defaults.
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            lease,
            suspended_retry: Duration::from_secs(6 * 3600),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            reconnect_fallback: false,
        }
    }
}

/// What happened to one install.
#[derive(Debug)]
pub enum Outcome {
    Refreshed(Box<Install>),
    /// A pair an earlier holder obtained and never committed was adopted.
    Recovered(Box<Install>),
    /// Someone else refreshed it first, or it is not due.
    NotNeeded(Box<Install>),
    Locked,
    Missing,
    /// Revoked or in doubt already: left alone.
    Skipped(InstallState),
    Revoked,
    Suspended,
    Retrying {
        kind: &'static str,
        retry_at: i64,
    },
    InDoubt,
    /// The install was replaced (reinstall) while this refresh was in flight;
    /// the pair it obtained stays in the journal, superseded.
    Superseded,
    /// The pair is only in the journal: DynamoDB refused the commit. The next
    /// holder adopts it.
    Journaled,
}

impl Outcome {
    /// Stable name for logs, metrics and the sweep summary.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Refreshed(_) => "refreshed",
            Self::Recovered(_) => "recovered",
            Self::NotNeeded(_) => "not_needed",
            Self::Locked => "locked",
            Self::Missing => "missing",
            Self::Skipped(_) => "skipped",
            Self::Revoked => "revoked",
            Self::Suspended => "suspended",
            Self::Retrying { .. } => "retrying",
            Self::InDoubt => "in_doubt",
            Self::Superseded => "superseded",
            Self::Journaled => "journaled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// HighLevel rejects our client id/secret: no install is at fault and
    /// every further refresh would fail the same way.
    #[error("HighLevel rejected the app's client credentials: {0}")]
    InvalidClient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new pair could be written nowhere. Logged as an alarm; the
    /// install will be found in doubt by the next holder.
    #[error("a rotated token for {0} could not be stored anywhere")]
    Lost(String),
}

/// Shared per-run switch: once HighLevel says reconnect is gone, stop asking.
#[derive(Debug, Default)]
pub struct ReconnectSwitch {
    removed: AtomicBool,
}

impl ReconnectSwitch {
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

pub struct Refresher<'a> {
    pub store: &'a Store,
    pub ghl: &'a GhlClient,
    pub app: &'a AppSecret,
    pub policy: &'a RefreshPolicy,
    pub owner: &'a str,
    pub reconnect: &'a ReconnectSwitch,
}

/// Exponential backoff with full jitter on the upper half, so a fleet
/// recovering from the same outage does not return in lockstep.
pub fn backoff(policy: &RefreshPolicy, failures: u32, floor: Duration) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(policy.backoff_max);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    jittered.max(floor)
}

fn pair_from(grant: &TokenGrant) -> Option<TokenPair> {
    Some(TokenPair {
        access_token: grant.access_token.clone(),
        refresh_token: grant.refresh_token.clone()?,
        expires_at: now_secs() + grant.expires_in as i64,
    })
}

impl Refresher<'_> {
    /// `slot` is one of the sweep's HighLevel slots (SWEEP_CONCURRENCY), or
    /// None outside a sweep. It is held from taking the lease until HighLevel
    /// answers and let go before the journal and commit writes, so store
    /// latency does not eat into HighLevel concurrency.
    pub async fn refresh(
        &self,
        id: &InstallId,
        when: LeaseWhen,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Outcome, RefreshError> {
        let install = match self
            .store
            .acquire_lease(id, self.owner, self.policy.lease, when)
            .await?
        {
            LeaseOutcome::Missing => return Ok(Outcome::Missing),
            LeaseOutcome::Held { .. } => return Ok(Outcome::Locked),
            LeaseOutcome::NotNeeded { install } => {
                return Ok(if install.state.is_refreshable() {
                    Outcome::NotNeeded(install)
                } else {
                    Outcome::Skipped(install.state)
                });
            }
            LeaseOutcome::Acquired { install, abandoned } => {
                if abandoned {
                    return self.after_abandoned(*install).await;
                }
                *install
            }
        };
        if !install.state.is_refreshable() {
            self.store.release_lease(id, self.owner).await?;
            return Ok(Outcome::Skipped(install.state));
        }
        let result = self
            .ghl
            .refresh(self.app, &install.refresh_token, id.user_type())
            .await;
        drop(slot);
        match result {
            Ok(grant) => match pair_from(&grant) {
                Some(pair) => {
                    self.persist(&install, pair, Some(&grant), "refreshed")
                        .await
                }
                None => {
                    self.mark(
                        &install,
                        InstallState::InDoubt,
                        "HighLevel's refresh answer carried no refresh token",
                        None,
                        install.failures,
                    )
                    .await?;
                    Ok(Outcome::InDoubt)
                }
            },
            Err(err) => self.on_error(install, err).await,
        }
    }

    /// The previous holder's lease expired without a release: it may have
    /// obtained a new pair (journal) or presented the token and died.
    async fn after_abandoned(&self, install: Install) -> Result<Outcome, RefreshError> {
        if let Some(entry) = self
            .store
            .newer_journal(&install.id, install.version)
            .await?
        {
            return self.adopt(&install, entry.version, entry.pair).await;
        }
        if !install.state.is_refreshable() {
            self.store.release_lease(&install.id, self.owner).await?;
            return Ok(Outcome::Skipped(install.state));
        }
        self.mark(
            &install,
            InstallState::InDoubt,
            "a refresh was interrupted (its holder's lease expired) and left no new token; the refresh token may already be used, so it is not presented again",
            None,
            install.failures,
        )
        .await?;
        Ok(Outcome::InDoubt)
    }

    async fn adopt(
        &self,
        install: &Install,
        journal_version: u64,
        pair: crate::model::TokenPair,
    ) -> Result<Outcome, RefreshError> {
        // Journal entries are keyed by the version they become.
        let (from, to) = (install.version, journal_version.max(install.version + 1));
        if self
            .store
            .commit_pair(&install.id, from, to, &pair, None, "recovered from journal")
            .await?
        {
            let mut adopted = install.clone();
            adopted.access_token = pair.access_token;
            adopted.refresh_token = pair.refresh_token;
            adopted.expires_at = pair.expires_at;
            adopted.version = to;
            adopted.state = InstallState::Active;
            tracing::info!(install_id = %install.id, version = to, "adopted a journaled token pair");
            return Ok(Outcome::Recovered(Box::new(adopted)));
        }
        self.store.release_lease(&install.id, self.owner).await?;
        Ok(Outcome::Superseded)
    }

    /// Journal, then commit; each retried while the lease has time left.
    async fn persist(
        &self,
        install: &Install,
        pair: TokenPair,
        grant: Option<&TokenGrant>,
        reason: &str,
    ) -> Result<Outcome, RefreshError> {
        let id = &install.id;
        let lease_end = install.lease_until_ms.unwrap_or(now_millis());
        let journaled = retry_until(lease_end, || {
            self.store
                .write_journal(id, install.version + 1, &pair, self.owner)
        })
        .await;
        if let Err(e) = &journaled {
            tracing::error!(install_id = %id, error = %e, "journal write failed after a successful refresh; trying the commit directly");
        }
        let info = grant.map(TokenGrant::info);
        let committed = retry_until(lease_end, || {
            self.store.commit_pair(
                id,
                install.version,
                install.version + 1,
                &pair,
                info.as_ref(),
                reason,
            )
        })
        .await;
        match committed {
            Ok(true) => {
                let mut updated = install.clone();
                updated.access_token = pair.access_token;
                updated.refresh_token = pair.refresh_token;
                updated.expires_at = pair.expires_at;
                updated.version = install.version + 1;
                updated.state = InstallState::Active;
                Ok(Outcome::Refreshed(Box::new(updated)))
            }
            Ok(false) => {
                // The version moved: either someone adopted our journal entry, or a reinstall replaced the grant.
                let current = self.store.get(id).await?;
                match current {
                    Some(c) if c.refresh_token == pair.refresh_token => {
                        Ok(Outcome::Refreshed(Box::new(c)))
                    }
                    _ => Ok(Outcome::Superseded),
                }
            }
            Err(e) if journaled.is_ok() => {
                tracing::error!(install_id = %id, error = %e, "commit failed; the new token is safe in the journal and will be adopted");
                Ok(Outcome::Journaled)
            }
            Err(e) => {
                tracing::error!(install_id = %id, error = %e, alarm = true, "rotated token could not be stored");
                Err(RefreshError::Lost(id.to_string()))
            }
        }
    }

    async fn on_error(&self, install: Install, err: GhlError) -> Result<Outcome, RefreshError> {
        let id = &install.id;
        let now = now_secs();
        match err {
            GhlError::InvalidGrant { ref message, .. } => {
                // Someone may hold a newer token: the row (re-read) or the journal.
                if let Some(entry) = self.store.newer_journal(id, install.version).await? {
                    return self.adopt(&install, entry.version, entry.pair).await;
                }
                if let Some(current) = self.store.get(id).await?
                    && current.version > install.version
                {
                    self.store.release_lease(id, self.owner).await?;
                    return Ok(Outcome::NotNeeded(Box::new(current)));
                }
                if let Some(outcome) = self.try_reconnect(&install).await? {
                    return Ok(outcome);
                }
                let reason = format!("HighLevel: {message}; the customer must reinstall the app");
                self.mark(
                    &install,
                    InstallState::Revoked,
                    &reason,
                    None,
                    install.failures,
                )
                .await?;
                Ok(Outcome::Revoked)
            }
            GhlError::LocationNotActive { .. } => {
                let retry = now + self.policy.suspended_retry.as_secs() as i64;
                self.mark(
                    &install,
                    InstallState::Suspended,
                    "HighLevel: Location is not active; the refresh token is kept and retried",
                    Some(retry),
                    install.failures,
                )
                .await?;
                Ok(Outcome::Suspended)
            }
            GhlError::InvalidClient { message } => {
                self.store.release_lease(id, self.owner).await?;
                Err(RefreshError::InvalidClient(message))
            }
            ref e if e.is_ambiguous() => {
                let reason = format!(
                    "the refresh was sent and {e}; HighLevel may have rotated the token, so it is not presented again"
                );
                self.mark(
                    &install,
                    InstallState::InDoubt,
                    &reason,
                    None,
                    install.failures,
                )
                .await?;
                Ok(Outcome::InDoubt)
            }
            e => {
                let failures = install.failures.saturating_add(1);
                let floor = match &e {
                    GhlError::RateLimited { retry_after, .. } => *retry_after,
                    _ => Duration::ZERO,
                };
                let wait = backoff(self.policy, failures, floor);
                let retry_at = now + wait.as_secs().max(1) as i64;
                let reason = format!("HighLevel: {e}; retry #{failures} in {} s", wait.as_secs());
                self.mark(
                    &install,
                    InstallState::Retrying,
                    &reason,
                    Some(retry_at),
                    failures,
                )
                .await?;
                Ok(Outcome::Retrying {
                    kind: e.kind(),
                    retry_at,
                })
            }
        }
    }

    /// Seed 003's reconnect, when enabled and not yet known to be removed.
    async fn try_reconnect(&self, install: &Install) -> Result<Option<Outcome>, RefreshError> {
        if !self.policy.reconnect_fallback || self.reconnect.is_removed() {
            return Ok(None);
        }
        let target = match &install.id {
            InstallId::Company(c) => ReconnectTarget::Company(c),
            InstallId::Location(l) | InstallId::Minted(l) => ReconnectTarget::Location(l),
        };
        match self.ghl.reconnect(self.app, target).await {
            Ok(code) => {
                // The code is exchanged like an install's; redirect_uri is not bound for reconnect codes.
                match self
                    .ghl
                    .exchange_code(self.app, &code, install.id.user_type(), "")
                    .await
                {
                    Ok(grant) => match pair_from(&grant) {
                        Some(pair) => Ok(Some(
                            self.persist(install, pair, Some(&grant), "reconnected")
                                .await?,
                        )),
                        None => Ok(None),
                    },
                    Err(e) => {
                        tracing::warn!(install_id = %install.id, error = e.kind(), "reconnect code exchange failed");
                        Ok(None)
                    }
                }
            }
            Err(GhlError::EndpointRemoved { .. }) => {
                if !self.reconnect.removed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "HighLevel's reconnect endpoint is removed; not calling it again this run"
                    );
                }
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(install_id = %install.id, error = e.kind(), "reconnect failed");
                Ok(None)
            }
        }
    }

    async fn mark(
        &self,
        install: &Install,
        state: InstallState,
        reason: &str,
        due_at: Option<i64>,
        failures: u32,
    ) -> Result<(), RefreshError> {
        let lease_end = install.lease_until_ms.unwrap_or(now_millis());
        let change = StateChange {
            state,
            reason,
            due_at,
            failures,
        };
        let ok = retry_until(lease_end, || {
            self.store
                .record_state(&install.id, self.owner, install.version, &change)
        })
        .await?;
        if !ok {
            tracing::warn!(install_id = %install.id, state = state.as_str(), "state not recorded: the lease or version moved on");
        }
        Ok(())
    }
}

/// Retries a store write with short backoff until it succeeds or the lease
/// is about to end (then the caller's fallback takes over).
async fn retry_until<T, F, Fut>(lease_end_ms: i64, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if now_millis() + delay.as_millis() as i64 + 1_000 >= lease_end_ms {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_the_floor() {
        let p = RefreshPolicy::with_lease(Duration::from_secs(60));
        let first = backoff(&p, 1, Duration::ZERO);
        assert!(
            first >= Duration::from_secs(30) && first <= Duration::from_secs(60),
            "{first:?}"
        );
        let fifth = backoff(&p, 5, Duration::ZERO);
        assert!(
            fifth >= Duration::from_secs(480) && fifth <= Duration::from_secs(960),
            "{fifth:?}"
        );
        let capped = backoff(&p, 40, Duration::ZERO);
        assert!(capped <= Duration::from_secs(3600));
        assert_eq!(
            backoff(&p, 1, Duration::from_secs(5000)),
            Duration::from_secs(5000)
        );
    }
}
