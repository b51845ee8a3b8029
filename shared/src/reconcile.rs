//! Reconciliation: repairs what missed webhooks left wrong. HighLevel pauses
//! delivery to a failing URL and bulk installs flood it, so once a day every
//! active company's installed locations are listed
//! (`GET /oauth/installedLocations`, bounded and paced) and compared with the
//! links we hold:
//! - a location HighLevel lists that we do not know (a missed INSTALL) is
//!   linked at once, and a listed location loses any missing mark;
//! - a location we hold as installed that a *complete* listing misses is
//!   only marked missing; it is uninstalled (grants erased) by a later
//!   complete listing, at least the grace period after the mark, that still
//!   misses it, and at most `RECONCILE_MAX_REMOVALS_PERCENT` of a company's
//!   installed links go in one run.
//!
//! Erasing is irreversible and HighLevel's 200s are not always listings (a
//! renamed field, a gateway's error body, a `count` that lies, a server
//! ignoring `skip`): a listing that is not provably whole, or that is empty
//! while links are installed, removes nothing and is reported incomplete.

use crate::config::SweepConfig;
use crate::mint::Minter;
use crate::model::{InstallId, now_millis};
use crate::refresh::RefreshPolicy;
use crate::services::Services;
use crate::store::{LinkState, LocationLink};
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Entries of [`ReconcileSummary::problems`] at most: the counts stay
/// exact, the list only names the first companies.
const MAX_PROBLEMS: usize = 50;

/// One reconciliation run, serialised as the function's result.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileSummary {
    pub companies: u64,
    pub pages: u64,
    pub listed: u64,
    /// Locations HighLevel lists that we did not hold (missed INSTALL).
    pub added: u64,
    /// Links a complete listing missed for the first time: marked, kept.
    pub marked: u64,
    /// Missing marks cleared because HighLevel lists the location again.
    pub cleared: u64,
    /// Locations uninstalled (missed UNINSTALL): missing from two complete
    /// listings at least the grace period apart.
    pub removed: u64,
    /// Removals held back by `RECONCILE_MAX_REMOVALS_PERCENT`: still
    /// marked, tried again next run.
    pub capped: u64,
    /// Companies whose listing could not be trusted to be whole: nothing
    /// was marked or removed for them.
    pub incomplete: u64,
    /// Companies that could not be listed (their grant, HighLevel, storage).
    pub failed: u64,
    /// The first incomplete or failed companies, with why.
    pub problems: Vec<Problem>,
    /// True when the deadline stopped the run before every company.
    pub stopped: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub company_id: String,
    /// `incomplete` or `failed`.
    pub outcome: &'static str,
    pub reason: String,
}

impl ReconcileSummary {
    fn problem(&mut self, company_id: &str, outcome: &'static str, reason: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                company_id: company_id.to_owned(),
                outcome,
                reason,
            });
        }
    }

    fn emit_metrics(&self) {
        for (metric, value) in [
            ("ReconcileAdded", self.added),
            ("ReconcileMarked", self.marked),
            ("ReconcileRemoved", self.removed),
            ("ReconcileCapped", self.capped),
            ("ReconcileIncomplete", self.incomplete),
            ("ReconcileFailed", self.failed),
        ] {
            crate::metrics::count(metric, value);
        }
    }
}

/// Reconciles every company with an active grant.
pub async fn run(
    svc: &Services,
    cfg: &SweepConfig,
    deadline: Instant,
    owner: &str,
) -> ReconcileSummary {
    let started = Instant::now();
    let mut summary = ReconcileSummary::default();
    run_companies(svc, cfg, deadline, owner, &mut summary).await;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.emit_metrics();
    summary
}

async fn run_companies(
    svc: &Services,
    cfg: &SweepConfig,
    deadline: Instant,
    owner: &str,
    summary: &mut ReconcileSummary,
) {
    let policy = RefreshPolicy {
        suspended_retry: cfg.suspended_retry,
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        ..RefreshPolicy::new(&cfg.common)
    };
    let work_deadline = deadline.checked_sub(cfg.deadline_reserve);
    let Some(app_id) = svc.app.app_id.clone() else {
        tracing::error!(
            alarm = true,
            "reconciliation needs app_id in the app secret; nothing done"
        );
        summary.failed = 1;
        return;
    };
    let companies = match active_companies(svc).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reconciliation could not list companies");
            summary.failed = 1;
            return;
        }
    };
    let minter = Minter {
        svc,
        policy: &policy,
        owner,
        app_id: Some(&app_id),
        deadline: work_deadline,
    };
    for company in companies {
        // One company needs a whole refresh (its re-presentation window
        // included) at worst, and a few paced pages.
        if work_deadline
            .is_none_or(|d| Instant::now() + policy.whole_refresh() + Duration::from_secs(5) > d)
        {
            summary.stopped = true;
            break;
        }
        summary.companies += 1;
        match reconcile_company(svc, cfg, &minter, &company, &app_id, summary).await {
            Ok(Listing::Whole) => {}
            Ok(Listing::Incomplete(reason)) => {
                summary.incomplete += 1;
                tracing::warn!(company_id = %company, reason = %reason, "installed locations listed incompletely; nothing marked or removed for this company");
                summary.problem(&company, "incomplete", reason);
            }
            Err(e) => {
                summary.failed += 1;
                tracing::warn!(install_id = %InstallId::Company(company.clone()), reason = %e, "company not reconciled");
                summary.problem(&company, "failed", e);
            }
        }
    }
}

/// Every company grant in the due index (refreshable ones: active,
/// retrying, suspended, in doubt), shard by shard.
async fn active_companies(svc: &Services) -> Result<Vec<String>, crate::store::StoreError> {
    let mut out = Vec::new();
    for shard in 0..svc.store.due_policy().shards {
        let mut start = None;
        loop {
            let page = svc.store.due_page(shard, i64::MAX, 500, start).await?;
            out.extend(page.ids.into_iter().filter_map(|(id, _)| match id {
                InstallId::Company(c) => Some(c),
                _ => None,
            }));
            start = page.next;
            if start.is_none() {
                break;
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a company's listing could be acted on.
enum Listing {
    Whole,
    Incomplete(String),
}

/// Removals allowed for a company holding `installed` links. At least one
/// when the percentage is above 0: a removal already needs two agreeing
/// complete, non-empty listings a grace period apart, and without the
/// floor a company of fewer than 100 / percent locations (most of them)
/// would never have a missed UNINSTALL repaired.
fn removal_cap(installed: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (installed * percent as usize / 100).max(1)
}

async fn reconcile_company(
    svc: &Services,
    cfg: &SweepConfig,
    minter: &Minter<'_>,
    company: &str,
    app_id: &str,
    summary: &mut ReconcileSummary,
) -> Result<Listing, String> {
    let grant = minter
        .company_token(company)
        .await
        .map_err(|e| e.to_string())?;
    // What the listing says, it says as of when it was asked: an install,
    // a mint or an UNINSTALL stamped after that is newer and wins over it.
    let listed_at = now_millis();
    let all = svc
        .ghl
        .all_installed_locations(
            &grant.access_token,
            company,
            app_id,
            cfg.reconcile_max_pages,
            cfg.reconcile_page_pace,
        )
        .await
        .map_err(|e| e.to_string())?;
    summary.pages += u64::from(all.pages);
    summary.listed += all.locations.len() as u64;
    let listed: HashSet<String> = all.locations.iter().map(|l| l.id.clone()).collect();
    let links = svc
        .store
        .links_of(company)
        .await
        .map_err(|e| e.to_string())?;
    let now = now_millis();
    let grace_ms = cfg.reconcile_grace.as_millis() as i64;
    let settled = |link: &LocationLink| now - link.at_ms >= grace_ms;
    let installed: Vec<&LocationLink> = links
        .iter()
        .filter(|l| l.state == LinkState::Installed)
        .collect();
    let held: HashSet<&str> = installed.iter().map(|l| l.location_id.as_str()).collect();
    // What a listing names is there, even when the listing is not whole:
    // link it, and drop any missing mark.
    for loc in &listed {
        if held.contains(loc.as_str()) {
            continue;
        }
        // Unknown, or uninstalled long enough ago that HighLevel's listing
        // is not just lagging the UNINSTALL: an INSTALL we never got.
        let known = links.iter().find(|l| &l.location_id == loc);
        if known.is_some_and(|l| !settled(l)) {
            continue;
        }
        svc.store
            .set_link(&LocationLink {
                company_id: company.to_owned(),
                location_id: loc.clone(),
                state: LinkState::Installed,
                at_ms: listed_at,
                source: "reconcile".into(),
                missing_since_ms: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        summary.added += 1;
        tracing::info!(company_id = company, location_id = %loc, outcome = "added", "reconciled");
    }
    for link in &installed {
        if link.missing_since_ms.is_some() && listed.contains(&link.location_id) {
            let cleared = svc
                .store
                .clear_link_missing(company, &link.location_id)
                .await
                .map_err(|e| e.to_string())?;
            summary.cleared += u64::from(cleared);
            tracing::info!(company_id = company, location_id = %link.location_id, outcome = "listed again", "reconciled");
        }
    }
    if let Some(gap) = &all.gap {
        return Ok(Listing::Incomplete(gap.to_string()));
    }
    if listed.is_empty() && !installed.is_empty() {
        // Indistinguishable from an answer that lost its items; a company
        // whose every location went needs the UNINSTALL webhook or the
        // operator's uninstall.
        return Ok(Listing::Incomplete(format!(
            "HighLevel listed no location while {} are linked as installed",
            installed.len()
        )));
    }
    let mut due: Vec<(i64, &str)> = Vec::new();
    for link in &installed {
        if listed.contains(&link.location_id) || !settled(link) {
            continue;
        }
        // A mark older than the link's latest event predates a reinstall.
        match link.missing_since_ms.filter(|m| *m >= link.at_ms) {
            None => {
                let marked = svc
                    .store
                    .mark_link_missing(company, &link.location_id, now)
                    .await
                    .map_err(|e| e.to_string())?;
                summary.marked += u64::from(marked);
                tracing::info!(company_id = company, location_id = %link.location_id, outcome = "marked missing", "reconciled");
            }
            Some(since) if now - since >= grace_ms => due.push((since, &link.location_id)),
            Some(_) => {}
        }
    }
    due.sort_unstable();
    let cap = removal_cap(installed.len(), cfg.reconcile_max_removals_percent);
    let held_back = due.len().saturating_sub(cap);
    for (since, loc) in due.into_iter().take(cap) {
        let applied = crate::webhook::uninstall(
            svc,
            Some(company),
            Some(loc),
            "HighLevel no longer lists the app on this location (reconciliation: two complete listings at least the grace period apart; a missed UNINSTALL); its tokens are erased",
            listed_at,
            "reconcile",
        )
        .await
        .map_err(|e| e.to_string())?;
        if let crate::webhook::Applied::Older { newer_at_ms, .. } = applied {
            // Installed again (or minted) since the listing was asked.
            tracing::info!(company_id = company, location_id = %loc, newer_at_ms, outcome = "kept", "reconciled: a newer install stands");
            continue;
        }
        summary.removed += 1;
        tracing::warn!(company_id = company, location_id = %loc, missing_since_ms = since, outcome = "removed", "reconciled: location uninstalled, its tokens erased");
    }
    if held_back > 0 {
        summary.capped += held_back as u64;
        tracing::warn!(
            company_id = company,
            capped = held_back,
            cap,
            installed = installed.len(),
            "reconciliation held back removals over RECONCILE_MAX_REMOVALS_PERCENT; they stay marked missing"
        );
    }
    Ok(Listing::Whole)
}

#[cfg(test)]
mod tests {
    use super::removal_cap;

    #[test]
    fn the_removal_cap_is_a_share_with_a_floor_of_one() {
        assert_eq!(removal_cap(105, 10), 10);
        assert_eq!(removal_cap(9, 10), 1);
        assert_eq!(removal_cap(1, 10), 1);
        assert_eq!(removal_cap(105, 0), 0);
        assert_eq!(removal_cap(1, 0), 0);
        assert_eq!(removal_cap(105, 100), 105);
    }
}
