//! Refreshing one install so that no grant HighLevel still holds is given up.
//!
//! The protocol, shared by the sweep and the mint:
//! 1. Take the install's lease (conditional write: free, expired, or our own
//!    retried write; and still due). The lease token is unique to this
//!    taking. The old item comes back with it: that is the re-read.
//! 2. If the previous holder's lease ran out mid-refresh, look in the journal
//!    for the pair it obtained and adopt it. Not found: it may have presented
//!    the token and died, so the token's fate is unknown (doubt) and it is
//!    presented again below: a probe.
//! 3. Present the refresh token. When the outcome is unknown (sent and timed
//!    out, answer cut off or unreadable, 5xx, a 200 without a refresh token),
//!    present it again at once, with short backoff, while the first send is
//!    younger than the window and the lease and deadline leave time to store
//!    the answer. HighLevel answers the same pair for the same token within
//!    30 s, and a spent token only earns `Invalid grant`: presenting again
//!    can only recover a pair, never cost one.
//! 4. On success, commit the new pair to the install conditioned on the
//!    version (the fencing token), retried. Only if the commit cannot be
//!    written is the pair written to the journal, which the next holder
//!    adopts. (See [`Refresher::persist`] for why not journal first.)
//! 5. On `Invalid grant`, look for a newer pair (journal, then row). None:
//!    `lost` when the token's fate was in doubt (HighLevel rotated it and the
//!    answer never arrived), `revoked` when its previous use was confirmed.
//! 6. Still unknown when the window closes: `in_doubt`, kept in the due index
//!    so the next holder probes it.
//! 7. A path that did not present the token never leaves its lease behind,
//!    except over an abandoned lease: that may be the only mark of a rotated pair no
//!    write could store, so it is left to expire and the next holder checks
//!    the journal and probes, and an `Invalid grant` then reads as `lost`.

use crate::app_secret::AppSecret;
use crate::config::CommonConfig;
use crate::events::{Events, StateChanged};
use crate::ghl::{GhlClient, GhlError, ReconnectTarget};
use crate::model::{InstallId, InstallState, TokenGrant, TokenPair, now_millis, now_secs};
use crate::store::{Install, LeaseOutcome, LeaseWhen, StateChange, Store, StoreError, lease_token};
use rand::Rng;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// A re-presentation is not started with less time than this left to wait
/// for its answer.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
const FIRST_REPRESENT_DELAY: Duration = Duration::from_millis(200);
const MAX_REPRESENT_DELAY: Duration = Duration::from_secs(2);

/// How a refresh is run and its failures handled; see [`crate::config`].
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    pub lease: Duration,
    pub suspended_retry: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub reconnect_fallback: bool,
    /// Re-present an unknown outcome while the first send is younger than this.
    pub represent_window: Duration,
    pub connect_timeout: Duration,
    /// The first presentation's whole-request timeout (the client's).
    pub request_timeout: Duration,
    /// Time kept for the commit and its journal fallback after an answer.
    pub write_reserve: Duration,
}

impl RefreshPolicy {
    /// The common settings; callers without sweep settings (the mint) keep
    /// the conservative defaults for the rest.
    pub fn new(common: &CommonConfig) -> Self {
        Self {
            lease: common.lease,
            suspended_retry: Duration::from_secs(6 * 3600),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            reconnect_fallback: false,
            represent_window: common.represent_window,
            connect_timeout: common.ghl.connect_timeout,
            request_timeout: common.ghl.request_timeout,
            write_reserve: common.write_reserve(),
        }
    }

    /// The least time one presentation and its writes need.
    pub fn one_refresh(&self) -> Duration {
        self.connect_timeout + self.request_timeout + self.write_reserve
    }

    /// The time a refresh needs to give an unknown outcome its whole
    /// re-presentation window from a live holder, then store the answer.
    /// The lease covers the same (checked at cold start).
    pub fn whole_refresh(&self) -> Duration {
        self.represent_window + self.one_refresh()
    }

    /// Whether a refresh may start at `now`. Only with its whole window
    /// before `deadline`: a window cut short by the deadline leaves an
    /// unknown outcome to the next run's probe, after HighLevel's 30 s have
    /// passed, when the same token only earns `Invalid grant` (`lost`).
    pub fn refresh_fits(&self, now: Instant, deadline: Option<Instant>) -> bool {
        deadline.is_none_or(|d| now + self.whole_refresh() <= d)
    }
}

/// What happened to one install.
#[derive(Debug)]
pub enum Outcome {
    Refreshed(Box<Install>),
    /// The grant came back from doubt: a journaled pair an earlier holder
    /// never committed was adopted, or a probe (or re-presentation) of a
    /// token whose outcome was unknown got a pair.
    Recovered(Box<Install>),
    /// Someone else refreshed it first, or it is not due.
    NotNeeded(Box<Install>),
    Locked,
    Missing,
    /// Revoked or lost already: left alone.
    Skipped(InstallState),
    /// Not enough time left before the deadline to present the token, give
    /// an unknown outcome its whole re-presentation window, and store the
    /// answer; nothing was changed.
    Deferred,
    Revoked,
    /// `Invalid grant` after an unknown outcome: HighLevel rotated the token
    /// and the answer never arrived.
    Lost,
    Suspended,
    Retrying {
        kind: &'static str,
        retry_at: i64,
    },
    /// The outcome is still unknown; the install waits for a probe.
    InDoubt {
        kind: &'static str,
        retry_at: i64,
    },
    /// The install was replaced (reinstall or uninstall) while this refresh
    /// was in flight; the pair it obtained belongs to the old grant.
    Superseded,
    /// The pair is only in the journal: the commit could not be written. The
    /// next holder adopts it.
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
            Self::Deferred => "deferred",
            Self::Revoked => "revoked",
            Self::Lost => "lost",
            Self::Suspended => "suspended",
            Self::Retrying { .. } => "retrying",
            Self::InDoubt { .. } => "in_doubt",
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
    /// The new pair could be written nowhere. Logged as an alarm; the next
    /// holder finds the lease abandoned and probes the old token, which
    /// HighLevel's window may still answer with the same pair.
    #[error("a rotated token for {0} could not be stored anywhere")]
    Unstored(String),
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

/// First presentations of a run and how many had an unknown outcome, counted
/// as they happen (not when the whole refresh ends), so the sweep stops
/// taking work as soon as HighLevel stops answering in time.
#[derive(Debug, Default)]
pub struct FirstAnswers {
    sent: AtomicU32,
    unknown: AtomicU32,
}

impl FirstAnswers {
    fn record(&self, unknown: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if unknown {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (first presentations answered, of which unknown).
    pub fn counts(&self) -> (u32, u32) {
        (
            self.sent.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
        )
    }
}

pub struct Refresher<'a> {
    pub store: &'a Store,
    pub ghl: &'a GhlClient,
    pub app: &'a AppSecret,
    pub policy: &'a RefreshPolicy,
    pub owner: &'a str,
    pub reconnect: &'a ReconnectSwitch,
    /// No refresh starts unless its whole window and the writes fit before
    /// this (the invocation's deadline less its reserve). None: the lease
    /// alone bounds it.
    pub deadline: Option<Instant>,
    pub first_answers: Option<&'a FirstAnswers>,
    /// Where state changes are announced.
    pub events: &'a Events,
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

/// How HighLevel answered a presentation, re-presentations included.
enum Answer {
    Pair(Box<TokenGrant>, TokenPair),
    /// A definite answer: the token was refused, or not looked at.
    Refused(GhlError),
    /// Still unknown when the window or the budget ran out.
    Unknown(GhlError),
}

/// One send's answer, sorted.
enum Settled {
    Pair(Box<TokenGrant>, TokenPair),
    Refused(GhlError),
    Unknown(GhlError),
}

fn settle(result: Result<TokenGrant, GhlError>) -> Settled {
    match result {
        Ok(grant) => match pair_from(&grant) {
            Some(pair) => Settled::Pair(Box::new(grant), pair),
            None => Settled::Unknown(GhlError::ResponseLost(
                "a 200 answer without a refresh_token".into(),
            )),
        },
        Err(e) if e.is_unknown_outcome() => Settled::Unknown(e),
        Err(e) => Settled::Refused(e),
    }
}

struct Presentation {
    answer: Answer,
    /// When the first send of this refresh left (epoch ms).
    first_sent_ms: i64,
    /// Whether any attempt had an unknown outcome.
    unknown_seen: bool,
    attempts: u32,
}

impl Refresher<'_> {
    /// `slot` is one of the sweep's HighLevel slots (SWEEP_CONCURRENCY), or
    /// None outside a sweep. It is held from taking the lease until HighLevel
    /// answers and let go before the commit, so store
    /// latency does not eat into HighLevel concurrency.
    pub async fn refresh(
        &self,
        id: &InstallId,
        when: LeaseWhen,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Outcome, RefreshError> {
        if !self.policy.refresh_fits(Instant::now(), self.deadline) {
            return Ok(Outcome::Deferred);
        }
        let token = lease_token(self.owner);
        let taken = match self
            .store
            .acquire_lease(id, &token, self.policy.lease, when)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                // The write may have landed and only its answer been lost
                // (a timeout): a lease under our token must not stay behind.
                // (Had it landed over an abandoned lease, that mark is gone:
                // rare, and keeping ours would lock every install whose
                // lease write merely failed, for a whole lease.)
                if let Err(release) = self.store.release_lease(id, &token).await {
                    tracing::warn!(install_id = %id, error = %release, "lease release after a failed lease write failed; it expires on its own");
                }
                return Err(e.into());
            }
        };
        let (install, abandoned) = match taken {
            LeaseOutcome::Missing => return Ok(Outcome::Missing),
            LeaseOutcome::Held { .. } => return Ok(Outcome::Locked),
            LeaseOutcome::NotNeeded { install } => {
                return Ok(if install.state.is_refreshable() {
                    Outcome::NotNeeded(install)
                } else {
                    Outcome::Skipped(install.state)
                });
            }
            LeaseOutcome::Acquired { install, abandoned } => (*install, abandoned),
        };
        let presented = AtomicBool::new(false);
        let result = self.holding(&install, abandoned, slot, &presented).await;
        if result.is_err() && !presented.load(Ordering::Relaxed) {
            if abandoned {
                // The abandoned lease we took over is the only mark that the
                // token's fate is unknown (its holder may have obtained a
                // pair no write could store). Giving it back would make the
                // next holder present the token in no doubt, and call the
                // `Invalid grant` a revocation. Ours, left to expire, reads
                // as abandoned in turn.
                tracing::warn!(install_id = %id, "an abandoned lease was taken and the refresh failed before presenting; left to expire, so the next holder treats it as abandoned");
            } else if let Err(e) = self.store.release(&install).await {
                // Nothing went to HighLevel: give the install back as it was.
                tracing::error!(install_id = %id, error = %e, "lease release after an error failed; it expires on its own");
            }
        }
        result
    }

    /// The last moment an answer may arrive and still be stored: the lease
    /// and the deadline, less the writes.
    fn budget_end(&self, install: &Install) -> Instant {
        let now = Instant::now();
        let lease_left = install.lease_until_ms.unwrap_or(0) - now_millis();
        let by_lease = now + Duration::from_millis(lease_left.max(0) as u64);
        let end = match self.deadline {
            Some(d) => by_lease.min(d),
            None => by_lease,
        };
        end.checked_sub(self.policy.write_reserve).unwrap_or(now)
    }

    async fn holding(
        &self,
        install: &Install,
        abandoned: bool,
        slot: Option<OwnedSemaphorePermit>,
        presented: &AtomicBool,
    ) -> Result<Outcome, RefreshError> {
        let mut doubt = install.doubt_since_ms;
        if abandoned {
            // The previous holder's lease expired without a release: it may
            // have obtained a pair (journal) or presented the token and died.
            if let Some(entry) = self
                .store
                .newer_journal(&install.id, install.version)
                .await?
            {
                return self.adopt(install, entry.version, entry.pair).await;
            }
            doubt = doubt.or(Some(now_millis()));
        }
        if !install.state.is_refreshable() {
            self.store.release(install).await?;
            return Ok(Outcome::Skipped(install.state));
        }
        presented.store(true, Ordering::Relaxed);
        let p = self.present(install).await;
        drop(slot);
        if p.unknown_seen {
            doubt = doubt.or(Some(p.first_sent_ms));
        }
        match p.answer {
            Answer::Pair(grant, pair) => {
                if doubt.is_some() {
                    tracing::info!(install_id = %install.id, attempts = p.attempts, "a refresh whose outcome was unknown got its pair");
                }
                let reason = if doubt.is_some() {
                    "recovered: the refresh token was presented again after an unknown outcome"
                } else {
                    "refreshed"
                };
                let outcome = self.persist(install, pair, Some(&grant), reason).await?;
                Ok(match outcome {
                    Outcome::Refreshed(i) if doubt.is_some() => Outcome::Recovered(i),
                    o => o,
                })
            }
            Answer::Unknown(e) => {
                let failures = install.failures.saturating_add(1);
                let wait = backoff(self.policy, failures, Duration::ZERO);
                let retry_at = now_secs() + wait.as_secs().max(1) as i64;
                let reason = format!(
                    "the refresh was sent and {e} ({} attempts in the window); the token is probed again in {} s",
                    p.attempts,
                    wait.as_secs()
                );
                self.mark(
                    install,
                    &StateChange {
                        state: InstallState::InDoubt,
                        reason: &reason,
                        due_at: Some(retry_at),
                        failures,
                        doubt_since_ms: doubt,
                    },
                )
                .await?;
                Ok(Outcome::InDoubt {
                    kind: e.kind(),
                    retry_at,
                })
            }
            Answer::Refused(e) => self.on_refused(install, e, doubt).await,
        }
    }

    /// Presents the refresh token, and again while its outcome is unknown and
    /// the window, lease and deadline allow.
    ///
    /// The first send is never abandoned: after `GHL_HTTP_TIMEOUT_MS` its
    /// outcome counts as unknown and re-presentations start, but its answer
    /// is still awaited for as long as the budget allows, beside them. A slow
    /// HighLevel that rotated the token answers the first send with the new
    /// pair (a strict HighLevel answers the re-presentations `Invalid grant`);
    /// a HighLevel that never got the first send answers a re-presentation.
    /// A pair from either ends it; a refusal waits for the other to finish.
    async fn present(&self, install: &Install) -> Presentation {
        type Sent<'f> = Pin<Box<dyn Future<Output = Result<TokenGrant, GhlError>> + Send + 'f>>;
        let send = |timeout: Duration| -> Sent<'_> {
            Box::pin(self.ghl.refresh_within(
                self.app,
                &install.refresh_token,
                install.id.user_type(),
                Some(timeout),
            ))
        };
        let first_sent_ms = now_millis();
        let window_end = Instant::now() + self.policy.represent_window;
        let budget_end = self.budget_end(install);
        let done = |answer, attempts| Presentation {
            answer,
            first_sent_ms,
            unknown_seen: true,
            attempts,
        };
        let hard = budget_end
            .saturating_duration_since(Instant::now())
            .max(self.policy.request_timeout);
        let mut first = Some(send(hard));
        let mut last_unknown = GhlError::Timeout;
        let mut refused: Option<GhlError> = None;
        // The first answer within the client's timeout decides alone.
        if let Ok(result) = tokio::time::timeout(
            self.policy.request_timeout,
            first.as_mut().expect("just set"),
        )
        .await
        {
            first = None;
            match settle(result) {
                Settled::Pair(grant, pair) => {
                    self.first_answer(false);
                    return Presentation {
                        answer: Answer::Pair(grant, pair),
                        first_sent_ms,
                        unknown_seen: false,
                        attempts: 1,
                    };
                }
                Settled::Refused(e) => {
                    self.first_answer(false);
                    return Presentation {
                        answer: Answer::Refused(e),
                        first_sent_ms,
                        unknown_seen: false,
                        attempts: 1,
                    };
                }
                Settled::Unknown(e) => last_unknown = e,
            }
        }
        self.first_answer(true);
        let mut attempts = 1;
        let mut again: Option<Sent<'_>> = None;
        let mut delay = FIRST_REPRESENT_DELAY;
        loop {
            if again.is_none() && refused.is_none() {
                let next = Instant::now() + delay;
                let left = budget_end.saturating_duration_since(next);
                if next < window_end && left >= MIN_ATTEMPT {
                    tracing::warn!(
                        install_id = %install.id,
                        attempt = attempts + 1,
                        error = last_unknown.kind(),
                        first_pending = first.is_some(),
                        "refresh outcome unknown; presenting the same token again within HighLevel's window"
                    );
                    attempts += 1;
                    let fut = send(left);
                    let pause = delay;
                    again = Some(Box::pin(async move {
                        tokio::time::sleep(pause).await;
                        fut.await
                    }));
                    delay = (delay * 2).min(MAX_REPRESENT_DELAY);
                }
            }
            if first.is_none() && again.is_none() {
                return done(
                    match refused {
                        Some(e) => Answer::Refused(e),
                        None => Answer::Unknown(last_unknown),
                    },
                    attempts,
                );
            }
            let result = tokio::select! {
                r = async { first.as_mut().expect("guarded").await }, if first.is_some() => {
                    first = None;
                    r
                }
                r = async { again.as_mut().expect("guarded").await }, if again.is_some() => {
                    again = None;
                    r
                }
            };
            match settle(result) {
                Settled::Pair(grant, pair) => return done(Answer::Pair(grant, pair), attempts),
                // A 429 or a failed connection says nothing about the token:
                // its fate is still unknown, so the window goes on.
                Settled::Refused(e) if e.is_transient() => last_unknown = e,
                // Held while the other send may still bring the pair.
                Settled::Refused(e) => refused = refused.or(Some(e)),
                Settled::Unknown(e) => last_unknown = e,
            }
        }
    }

    fn first_answer(&self, unknown: bool) {
        if let Some(f) = self.first_answers {
            f.record(unknown);
        }
    }

    async fn adopt(
        &self,
        install: &Install,
        journal_version: u64,
        pair: TokenPair,
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
            adopted.doubt_since_ms = None;
            tracing::info!(install_id = %install.id, version = to, "adopted a journaled token pair");
            self.announce(install, InstallState::Active, "recovered from journal")
                .await;
            return Ok(Outcome::Recovered(Box::new(adopted)));
        }
        self.store.release(install).await?;
        Ok(Outcome::Superseded)
    }

    /// Commit, retried; the journal only when the commit cannot be written.
    ///
    /// Writing the journal first would not shorten the time a rotated pair
    /// lives only in memory: that is one store write either way (journal or
    /// commit), and a holder killed inside it leaves the token to a probe.
    /// So the journal is the commit's fallback, not its forerunner, and a
    /// refresh costs two writes (lease, commit) instead of three.
    async fn persist(
        &self,
        install: &Install,
        pair: TokenPair,
        grant: Option<&TokenGrant>,
        reason: &str,
    ) -> Result<Outcome, RefreshError> {
        let id = &install.id;
        // A rotated pair is worth every moment the invocation has left, not
        // just the lease: the commit is fenced on the version alone, so it
        // stays safe after the lease has passed to someone else.
        let lease_end = install.lease_until_ms.unwrap_or(now_millis());
        let store_until = match self.deadline {
            Some(d) => {
                now_millis() + d.saturating_duration_since(Instant::now()).as_millis() as i64
            }
            None => lease_end,
        };
        // The write reserve is one operation for the commit and one for the
        // journal fallback: the commit's retries leave the journal its half.
        let fallback_ms = self.policy.write_reserve.as_millis() as i64 / 2;
        let info = grant.map(TokenGrant::info);
        let committed = retry_until(store_until - fallback_ms, || {
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
                self.announce(install, InstallState::Active, reason).await;
                let mut updated = install.clone();
                updated.access_token = pair.access_token;
                updated.refresh_token = pair.refresh_token;
                updated.expires_at = pair.expires_at;
                updated.version = install.version + 1;
                updated.state = InstallState::Active;
                updated.doubt_since_ms = None;
                Ok(Outcome::Refreshed(Box::new(updated)))
            }
            Ok(false) => {
                // The version moved: a retried commit of ours landed, another
                // holder committed the same pair (HighLevel's window), or a
                // reinstall or uninstall replaced the grant.
                let current = self.store.get(id).await?;
                match current {
                    Some(c) if c.refresh_token == pair.refresh_token => {
                        Ok(Outcome::Refreshed(Box::new(c)))
                    }
                    _ => {
                        self.store.release(install).await?;
                        Ok(Outcome::Superseded)
                    }
                }
            }
            Err(commit_error) => {
                tracing::error!(install_id = %id, error = %commit_error, "commit failed after a successful refresh; writing the pair to the journal");
                let journaled = retry_until(store_until, || {
                    self.store
                        .write_journal(id, install.version + 1, &pair, self.owner)
                })
                .await;
                match journaled {
                    Ok(()) => {
                        tracing::error!(install_id = %id, "the new token is safe in the journal and will be adopted by the next holder");
                        Ok(Outcome::Journaled)
                    }
                    Err(e) => {
                        tracing::error!(install_id = %id, error = %e, alarm = true, "rotated token could not be stored; the next holder probes the old one");
                        Err(RefreshError::Unstored(id.to_string()))
                    }
                }
            }
        }
    }

    /// A definite answer other than a pair. `doubt` is set when this token's
    /// fate was unknown at some point (now or in an earlier run).
    async fn on_refused(
        &self,
        install: &Install,
        err: GhlError,
        doubt: Option<i64>,
    ) -> Result<Outcome, RefreshError> {
        let id = &install.id;
        let now = now_secs();
        match err {
            GhlError::InvalidGrant { ref message, .. } => {
                // Someone may hold a newer token: the journal, or the row (re-read).
                if let Some(entry) = self.store.newer_journal(id, install.version).await? {
                    return self.adopt(install, entry.version, entry.pair).await;
                }
                if let Some(current) = self.store.get(id).await?
                    && current.version > install.version
                {
                    self.store.release(install).await?;
                    return Ok(Outcome::NotNeeded(Box::new(current)));
                }
                if let Some(outcome) = self.try_reconnect(install).await? {
                    return Ok(outcome);
                }
                let (state, reason, outcome) = if doubt.is_some() {
                    (
                        InstallState::Lost,
                        format!(
                            "HighLevel: {message}, after an earlier presentation of this token had an unknown outcome: HighLevel rotated it and the answer never arrived; the customer must reinstall"
                        ),
                        Outcome::Lost,
                    )
                } else {
                    (
                        InstallState::Revoked,
                        format!(
                            "HighLevel: {message}; the grant was revoked (uninstalled or refused); the customer must reinstall the app"
                        ),
                        Outcome::Revoked,
                    )
                };
                self.mark(
                    install,
                    &StateChange {
                        state,
                        reason: &reason,
                        due_at: None,
                        failures: install.failures,
                        doubt_since_ms: doubt,
                    },
                )
                .await?;
                Ok(outcome)
            }
            GhlError::LocationNotActive { .. } => {
                let retry = now + self.policy.suspended_retry.as_secs() as i64;
                self.mark(
                    install,
                    &StateChange {
                        state: InstallState::Suspended,
                        reason: "HighLevel: Location is not active; the refresh token is kept and retried",
                        due_at: Some(retry),
                        failures: install.failures,
                        doubt_since_ms: doubt,
                    },
                )
                .await?;
                Ok(Outcome::Suspended)
            }
            GhlError::InvalidClient { message } => {
                if doubt != install.doubt_since_ms {
                    // An earlier attempt's outcome is unknown: keep that on record.
                    let retry_at = now + self.policy.backoff_base.as_secs() as i64;
                    self.mark(
                        install,
                        &StateChange {
                            state: InstallState::InDoubt,
                            reason: "a refresh had an unknown outcome, then HighLevel rejected the app's client credentials",
                            due_at: Some(retry_at),
                            failures: install.failures,
                            doubt_since_ms: doubt,
                        },
                    )
                    .await?;
                } else {
                    self.store.release(install).await?;
                }
                Err(RefreshError::InvalidClient(message))
            }
            e => {
                let failures = install.failures.saturating_add(1);
                let floor = match &e {
                    GhlError::RateLimited { retry_after, .. } => *retry_after,
                    _ => Duration::ZERO,
                };
                let wait = backoff(self.policy, failures, floor);
                let retry_at = now + wait.as_secs().max(1) as i64;
                let (state, reason) = if doubt.is_some() {
                    (
                        InstallState::InDoubt,
                        format!(
                            "HighLevel: {e} after an unknown outcome; the token is probed again in {} s",
                            wait.as_secs()
                        ),
                    )
                } else {
                    (
                        InstallState::Retrying,
                        format!("HighLevel: {e}; retry #{failures} in {} s", wait.as_secs()),
                    )
                };
                self.mark(
                    install,
                    &StateChange {
                        state,
                        reason: &reason,
                        due_at: Some(retry_at),
                        failures,
                        doubt_since_ms: doubt,
                    },
                )
                .await?;
                Ok(if doubt.is_some() {
                    Outcome::InDoubt {
                        kind: e.kind(),
                        retry_at,
                    }
                } else {
                    Outcome::Retrying {
                        kind: e.kind(),
                        retry_at,
                    }
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

    /// Records a state change under our lease and version, retried while the
    /// lease lasts.
    async fn mark(&self, install: &Install, change: &StateChange<'_>) -> Result<(), RefreshError> {
        let lease_end = install.lease_until_ms.unwrap_or(now_millis());
        let ok = retry_until(lease_end, || {
            self.store
                .record_state(&install.id, install.lease_token(), install.version, change)
        })
        .await?;
        if ok {
            self.announce(install, change.state, change.reason).await;
        } else {
            tracing::warn!(install_id = %install.id, state = change.state.as_str(), "state not recorded: the lease or version moved on");
        }
        Ok(())
    }

    /// A state change, to EventBridge (nothing when the state is unchanged).
    async fn announce(&self, install: &Install, to: InstallState, reason: &str) {
        self.events
            .changed(StateChanged::new(
                &install.id,
                install.info.company_id.as_deref(),
                Some(install.state),
                to,
                reason,
            ))
            .await;
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

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            lease: Duration::from_secs(90),
            suspended_retry: Duration::from_secs(6 * 3600),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            reconnect_fallback: false,
            represent_window: Duration::from_secs(25),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            write_reserve: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_refresh_starts_only_with_its_whole_window_before_the_deadline() {
        let p = policy();
        let now = Instant::now();
        assert_eq!(p.whole_refresh(), Duration::from_secs(48));
        // Room for one presentation and its writes (23 s), not the window.
        assert!(!p.refresh_fits(now, Some(now + Duration::from_secs(30))));
        assert!(!p.refresh_fits(now, Some(now + Duration::from_millis(47_999))));
        assert!(p.refresh_fits(now, Some(now + Duration::from_secs(48))));
        assert!(
            p.refresh_fits(now, None),
            "no deadline: the lease bounds it"
        );
        let no_window = RefreshPolicy {
            represent_window: Duration::ZERO,
            ..p
        };
        assert!(no_window.refresh_fits(now, Some(now + Duration::from_secs(23))));
    }

    #[test]
    fn backoff_grows_caps_and_honours_the_floor() {
        let p = policy();
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
