//! Reconciliation: repairs what missed webhooks left wrong. HighLevel pauses
//! delivery to a failing URL and bulk installs flood it, so once a day every
//! active company's installed locations are listed
//! (`GET /oauth/installedLocations`, bounded and paced) and compared with the
//! links we hold:
//! - a location HighLevel lists that we do not know (a missed INSTALL) is
//!   linked;
//! - a location we hold as installed that HighLevel no longer lists (a missed
//!   UNINSTALL) is uninstalled, its grants erased, but only when the listing
//!   was complete and our link is older than the grace period (HighLevel's
//!   list may lag an install by a little).

use crate::config::SweepConfig;
use crate::mint::Minter;
use crate::model::{InstallId, now_millis};
use crate::refresh::RefreshPolicy;
use crate::services::Services;
use crate::store::{LinkState, LocationLink};
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One reconciliation run, serialised as the function's result.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileSummary {
    pub companies: u64,
    pub pages: u64,
    pub listed: u64,
    /// Locations HighLevel lists that we did not hold (missed INSTALL).
    pub added: u64,
    /// Locations we held that HighLevel no longer lists (missed UNINSTALL).
    pub removed: u64,
    /// Companies whose listing stopped at a bound: nothing was removed for them.
    pub incomplete: u64,
    /// Companies that could not be listed (their grant, HighLevel, storage).
    pub failed: u64,
    /// True when the deadline stopped the run before every company.
    pub stopped: bool,
    pub duration_ms: u64,
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
        return summary;
    };
    let companies = match active_companies(svc).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reconciliation could not list companies");
            summary.failed = 1;
            return summary;
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
        // One company needs a refresh at worst and a few paced pages.
        if work_deadline
            .is_none_or(|d| Instant::now() + policy.one_refresh() + Duration::from_secs(5) > d)
        {
            summary.stopped = true;
            break;
        }
        summary.companies += 1;
        match reconcile_company(svc, cfg, &minter, &company, &app_id, &mut summary).await {
            Ok(()) => {}
            Err(e) => {
                summary.failed += 1;
                tracing::warn!(install_id = %InstallId::Company(company.clone()), reason = %e, "company not reconciled");
            }
        }
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    crate::metrics::count("ReconcileAdded", summary.added);
    crate::metrics::count("ReconcileRemoved", summary.removed);
    summary
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

async fn reconcile_company(
    svc: &Services,
    cfg: &SweepConfig,
    minter: &Minter<'_>,
    company: &str,
    app_id: &str,
    summary: &mut ReconcileSummary,
) -> Result<(), String> {
    let grant = minter
        .company_token(company)
        .await
        .map_err(|e| e.to_string())?;
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
    let settled = |link: &LocationLink| now - link.at_ms >= cfg.reconcile_grace.as_millis() as i64;
    let held: HashSet<&str> = links
        .iter()
        .filter(|l| l.state == LinkState::Installed)
        .map(|l| l.location_id.as_str())
        .collect();
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
                at_ms: now,
                source: "reconcile".into(),
            })
            .await
            .map_err(|e| e.to_string())?;
        summary.added += 1;
        tracing::info!(company_id = company, location_id = %loc, outcome = "added", "reconciled");
    }
    if !all.complete {
        summary.incomplete += 1;
        return Ok(());
    }
    for link in links.iter().filter(|l| l.state == LinkState::Installed) {
        if listed.contains(&link.location_id) || !settled(link) {
            continue;
        }
        crate::webhook::uninstall(
            svc,
            Some(company),
            Some(&link.location_id),
            "HighLevel no longer lists the app on this location (reconciliation: a missed UNINSTALL); its tokens are erased",
            now,
            "reconcile",
        )
        .await
        .map_err(|e| e.to_string())?;
        summary.removed += 1;
        tracing::info!(company_id = company, location_id = %link.location_id, outcome = "removed", "reconciled");
    }
    Ok(())
}
