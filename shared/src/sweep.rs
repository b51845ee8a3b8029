//! The refresh sweep: stream due installs from the sharded due index and
//! refresh them with bounded concurrency until the work or the time runs out.
//!
//! Pages are streamed through a bounded channel, so memory stays flat however
//! many installs are due. Work stops being taken when the remaining
//! invocation time cannot cover one more refresh (its whole re-presentation
//! window included) plus its writes, when the
//! fleet breaker trips, or when HighLevel rejects the app's credentials;
//! whatever is left stays due for the next run.

use crate::config::SweepConfig;
use crate::model::{InstallId, now_secs};
use crate::refresh::{
    FirstAnswers, Outcome, ReconnectSwitch, RefreshError, RefreshPolicy, Refresher,
};
use crate::services::Services;
use crate::store::LeaseWhen;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

const PAGE_SIZE: i32 = 200;

/// What one run did. Serialised as the function's result.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepSummary {
    pub examined: u64,
    pub refreshed: u64,
    /// Back from doubt: a journaled pair adopted, or a probe or
    /// re-presentation of a token whose outcome was unknown answered.
    pub recovered: u64,
    pub revoked: u64,
    /// `Invalid grant` after an unknown outcome: HighLevel rotated the token
    /// and its answer never arrived.
    pub lost: u64,
    pub suspended: u64,
    pub retrying: u64,
    /// Outcome still unknown after the window: waiting for a probe.
    pub in_doubt: u64,
    pub superseded: u64,
    pub journaled: u64,
    /// A rotated pair that could be written nowhere (alarm).
    pub unstored: u64,
    /// Minted location grants that ended lost or revoked and were minted
    /// again from their company's grant.
    pub reminted: u64,
    pub store_errors: u64,
    pub skipped_locked: u64,
    pub skipped_not_due: u64,
    /// Read from the index but not attempted because the run stopped.
    pub still_due: u64,
    /// False when the run stopped before reaching the end of the due index.
    pub complete: bool,
    /// `deadline`, `breaker:<class>` or `invalid_client` when the run stopped early.
    pub stopped: Option<String>,
    /// Seconds the oldest due install had been waiting when the run began.
    pub oldest_due_age_secs: i64,
    pub duration_ms: u64,
}

/// The fleet breaker: a large share of one run failing the same way is a
/// HighLevel (or our) problem, not thousands of customers at once.
struct Breaker {
    min_attempts: u32,
    ratio: f64,
    attempts: u32,
    by_class: BTreeMap<&'static str, u32>,
}

impl Breaker {
    /// Records an outcome; returns the class that tripped it, if any.
    fn record(&mut self, outcome: &str) -> Option<&'static str> {
        let class: &'static str = match outcome {
            "refreshed" | "recovered" => {
                self.attempts += 1;
                return None;
            }
            "revoked" => "revoked",
            "lost" => "lost",
            "in_doubt" => "unknown",
            "retrying" => "transient",
            "suspended" => "suspended",
            _ => return None,
        };
        self.attempts += 1;
        let n = self.by_class.entry(class).or_insert(0);
        *n += 1;
        (self.attempts >= self.min_attempts
            && f64::from(*n) / f64::from(self.attempts) >= self.ratio)
            .then_some(class)
    }
}

/// Runs one sweep. `deadline` is when the invocation must have answered.
pub async fn run(
    svc: Arc<Services>,
    cfg: &SweepConfig,
    deadline: Instant,
    owner: &str,
) -> SweepSummary {
    let started = Instant::now();
    let now = now_secs();
    let policy = Arc::new(RefreshPolicy {
        suspended_retry: cfg.suspended_retry,
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        reconnect_fallback: cfg.reconnect_fallback,
        ..RefreshPolicy::new(&cfg.common)
    });
    // A refresh is started only with time for its whole re-presentation
    // window and its writes: an unknown outcome is then presented again
    // for as long as HighLevel's window allows, by this live holder.
    let needed = policy.whole_refresh() + cfg.deadline_reserve;
    let work_deadline = deadline.checked_sub(cfg.deadline_reserve);
    let first_answers = Arc::new(FirstAnswers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let oldest_due = Arc::new(AtomicI64::new(i64::MAX));
    let (tx, mut rx) = mpsc::channel::<InstallId>(cfg.concurrency * 2);
    let mut producers = JoinSet::new();
    for shard in 0..cfg.common.due.shards {
        let (svc, tx, stop, oldest) = (svc.clone(), tx.clone(), stop.clone(), oldest_due.clone());
        producers.spawn(async move {
            let mut start = None;
            let mut first = true;
            loop {
                let page = match svc.store.due_page(shard, now, PAGE_SIZE, start).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(shard, error = %e, "due index query failed");
                        return false;
                    }
                };
                if first && let Some((_, due)) = page.ids.first() {
                    oldest.fetch_min(*due, Ordering::Relaxed);
                }
                first = false;
                for (id, _) in page.ids {
                    if stop.load(Ordering::Relaxed) || tx.send(id).await.is_err() {
                        return false;
                    }
                }
                match page.next {
                    Some(next) => start = Some(next),
                    None => return true,
                }
            }
        });
    }
    drop(tx);

    let mut summary = SweepSummary::default();
    let mut breaker = Breaker {
        min_attempts: cfg.breaker_min_attempts,
        ratio: cfg.breaker_ratio,
        attempts: 0,
        by_class: BTreeMap::new(),
    };
    let reconnect = Arc::new(ReconnectSwitch::default());
    let owner: Arc<str> = Arc::from(owner);
    let mut workers: JoinSet<(InstallId, Result<Outcome, RefreshError>, bool)> = JoinSet::new();
    // HighLevel slots (SWEEP_CONCURRENCY) are handed out here, in due order,
    // before a task exists: no task ever waits for a slot only to be turned
    // away, and a run with one slot calls HighLevel strictly in due order.
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    loop {
        // Twice the HighLevel slots in tasks: while some wait on HighLevel,
        // others write their results.
        while workers.len() >= cfg.concurrency * 2 {
            if let Some(done) = workers.join_next().await {
                tally(&mut summary, &mut breaker, &stop, done);
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        while let Some(done) = workers.try_join_next() {
            tally(&mut summary, &mut breaker, &stop, done);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(class) = early_trip(cfg, &first_answers)
            && summary.stopped.is_none()
        {
            tracing::error!(
                alarm = true,
                class,
                "fleet breaker tripped: HighLevel leaves most first presentations unanswered; stopping the run (those in flight are presented again within the window)"
            );
            summary.stopped = Some(format!("breaker:{class}"));
            stop.store(true, Ordering::Relaxed);
            crate::metrics::count("SweepBreakerTripped", 1);
            break;
        }
        let Some(id) = rx.recv().await else { break };
        // Checked after the id arrives: the page query it waited for counts.
        if deadline.saturating_duration_since(Instant::now()) < needed {
            summary.still_due += 1;
            summary.stopped.get_or_insert_with(|| "deadline".into());
            stop.store(true, Ordering::Relaxed);
            break;
        }
        summary.examined += 1;
        let (svc, policy, owner, reconnect, first) = (
            svc.clone(),
            policy.clone(),
            owner.clone(),
            reconnect.clone(),
            first_answers.clone(),
        );
        workers.spawn(async move {
            let r = Refresher {
                store: &svc.store,
                ghl: &svc.ghl,
                app: &svc.app,
                policy: &policy,
                owner: &owner,
                reconnect: &reconnect,
                deadline: work_deadline,
                first_answers: Some(&first),
                events: &svc.events,
            };
            let result = r.refresh(&id, LeaseWhen::DueBy(now), Some(slot)).await;
            let reminted = match (&id, &result) {
                (InstallId::Minted(loc), Ok(Outcome::Lost | Outcome::Revoked)) => {
                    crate::mint::heal_minted(&svc, loc, &policy, &owner, work_deadline).await
                }
                _ => false,
            };
            (id, result, reminted)
        });
    }
    while let Some(done) = workers.join_next().await {
        tally(&mut summary, &mut breaker, &stop, done);
    }
    // Whatever the producers had already read is still due; count it and let them go.
    rx.close();
    while rx.recv().await.is_some() {
        summary.still_due += 1;
    }
    let mut complete = true;
    while let Some(r) = producers.join_next().await {
        complete &= r.unwrap_or(false);
    }
    summary.complete = complete && summary.stopped.is_none();
    let oldest = oldest_due.load(Ordering::Relaxed);
    summary.oldest_due_age_secs = if oldest == i64::MAX {
        0
    } else {
        (now - oldest).max(0)
    };
    summary.duration_ms = started.elapsed().as_millis() as u64;
    emit_metrics(&summary);
    summary
}

fn tally(
    summary: &mut SweepSummary,
    breaker: &mut Breaker,
    stop: &AtomicBool,
    joined: Result<(InstallId, Result<Outcome, RefreshError>, bool), tokio::task::JoinError>,
) {
    let (id, result, reminted) = match joined {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "refresh task failed");
            summary.store_errors += 1;
            return;
        }
    };
    let outcome = match result {
        Ok(o) => o,
        Err(RefreshError::InvalidClient(message)) => {
            tracing::error!(install_id = %id, alarm = true, error = "invalid_client", %message, "HighLevel rejects the app's client credentials; stopping the run, no install marked");
            summary.stopped = Some("invalid_client".into());
            stop.store(true, Ordering::Relaxed);
            crate::metrics::count("SweepInvalidClient", 1);
            return;
        }
        Err(RefreshError::Unstored(_)) => {
            summary.unstored += 1;
            return;
        }
        Err(RefreshError::Store(e)) => {
            tracing::error!(install_id = %id, error = %e, "store error");
            summary.store_errors += 1;
            return;
        }
    };
    let name = outcome.name();
    match &outcome {
        Outcome::Refreshed(i) | Outcome::Recovered(i) => {
            tracing::info!(install_id = %id, outcome = name, expires_at = i.expires_at, version = i.version, "refresh outcome");
        }
        Outcome::Retrying { kind, retry_at } | Outcome::InDoubt { kind, retry_at } => {
            tracing::warn!(install_id = %id, outcome = name, error = kind, retry_at, "refresh outcome");
        }
        Outcome::Lost => {
            tracing::error!(install_id = %id, outcome = name, alarm = true, reminted, "refresh outcome");
        }
        Outcome::Revoked => {
            tracing::warn!(install_id = %id, outcome = name, reminted, "refresh outcome");
        }
        Outcome::Suspended | Outcome::Superseded | Outcome::Journaled => {
            tracing::warn!(install_id = %id, outcome = name, "refresh outcome");
        }
        _ => tracing::info!(install_id = %id, outcome = name, "refresh outcome"),
    }
    if reminted {
        summary.reminted += 1;
    }
    let counter = match outcome {
        Outcome::Refreshed(_) => &mut summary.refreshed,
        Outcome::Recovered(_) => &mut summary.recovered,
        Outcome::NotNeeded(_) | Outcome::Skipped(_) | Outcome::Missing => {
            &mut summary.skipped_not_due
        }
        Outcome::Deferred => &mut summary.still_due,
        Outcome::Locked => &mut summary.skipped_locked,
        Outcome::Revoked => &mut summary.revoked,
        Outcome::Lost => &mut summary.lost,
        Outcome::Suspended => &mut summary.suspended,
        Outcome::Retrying { .. } => &mut summary.retrying,
        Outcome::InDoubt { .. } => &mut summary.in_doubt,
        Outcome::Superseded => &mut summary.superseded,
        Outcome::Journaled => &mut summary.journaled,
    };
    *counter += 1;
    if let Some(class) = breaker.record(name)
        && summary.stopped.is_none()
    {
        tracing::error!(
            alarm = true,
            class,
            attempts = breaker.attempts,
            "fleet breaker tripped: too many installs failing the same way; stopping the run"
        );
        summary.stopped = Some(format!("breaker:{class}"));
        stop.store(true, Ordering::Relaxed);
        crate::metrics::count("SweepBreakerTripped", 1);
    }
}

/// The early breaker: most first presentations of this run came back with
/// an unknown outcome (HighLevel slow or failing). Checked before each new
/// install is taken, so at most the refreshes already in flight are affected.
fn early_trip(cfg: &SweepConfig, first: &FirstAnswers) -> Option<&'static str> {
    let (sent, unknown) = first.counts();
    (unknown >= cfg.breaker_min_attempts
        && f64::from(unknown) / f64::from(sent.max(1)) >= cfg.breaker_ratio)
        .then_some("unknown")
}

fn emit_metrics(s: &SweepSummary) {
    for (name, v) in [
        ("SweepRefreshed", s.refreshed),
        ("SweepRecovered", s.recovered),
        ("SweepRevoked", s.revoked),
        ("SweepLost", s.lost),
        ("SweepSuspended", s.suspended),
        ("SweepRetrying", s.retrying),
        ("SweepInDoubt", s.in_doubt),
        ("SweepUnstored", s.unstored),
        ("SweepReminted", s.reminted),
    ] {
        crate::metrics::count(name, v);
    }
    crate::metrics::seconds("OldestDueAgeSeconds", s.oldest_due_age_secs as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_trips_on_a_dominant_failure_class_only_after_the_minimum() {
        let mut b = Breaker {
            min_attempts: 10,
            ratio: 0.5,
            attempts: 0,
            by_class: BTreeMap::new(),
        };
        for _ in 0..4 {
            assert_eq!(b.record("revoked"), None);
        }
        for _ in 0..5 {
            assert_eq!(b.record("refreshed"), None);
        }
        assert_eq!(b.record("locked"), None, "non-attempts do not count");
        assert_eq!(b.record("revoked"), Some("revoked"), "5 of 10 revoked");
    }

    #[test]
    fn mixed_failures_do_not_trip() {
        let mut b = Breaker {
            min_attempts: 4,
            ratio: 0.6,
            attempts: 0,
            by_class: BTreeMap::new(),
        };
        for o in [
            "revoked",
            "retrying",
            "in_doubt",
            "suspended",
            "refreshed",
            "revoked",
        ] {
            assert_eq!(b.record(o), None);
        }
    }
}
