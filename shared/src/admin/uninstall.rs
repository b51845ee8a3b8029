//! `installs-admin uninstall ID --reason TEXT`: the developer uninstalls the
//! app from a company (and so from all its sub-accounts) or a location.
//!
//! HighLevel first: `DELETE /marketplace/app/{appId}/installations` with the
//! install's own access token (refreshed first, under the protocol, when it
//! has little life left). Then the same local effect as the UNINSTALL
//! webhook HighLevel sends afterwards ([`crate::webhook::uninstall`]): the
//! grants concerned become `uninstalled`, their tokens are erased, the
//! locations unlinked. The webhook, when it arrives, changes nothing more.

use super::show::read;
use super::{AdminError, Report};
use crate::ghl::{GhlError, UninstallTarget};
use crate::model::{InstallId, InstallState, now_millis, now_secs};
use crate::refresh::RefreshPolicy;
use crate::services::Services;
use crate::webhook::Applied;
use serde::Serialize;

/// Longest reason sent to HighLevel.
pub const MAX_REASON: usize = 500;
/// An access token with less life than this is refreshed before the call.
const MIN_TOKEN_LIFE_SECS: i64 = 300;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uninstalled {
    pub install_id: String,
    /// What HighLevel uninstalled the app from: `company#…` or `location#…`.
    pub target: String,
    pub reason: String,
    /// Grants marked `uninstalled` here (tokens erased).
    pub grants: usize,
    /// Locations unlinked here.
    pub locations: usize,
    /// Whether the access token was refreshed first.
    pub refreshed_first: bool,
    pub at: i64,
}

/// Checks the reason as typed: required, one line, at most [`MAX_REASON`].
pub fn check_reason(reason: &str) -> Result<String, AdminError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(AdminError::Usage(
            "--reason is empty; HighLevel requires a reason when the developer uninstalls".into(),
        ));
    }
    if r.len() > MAX_REASON {
        return Err(AdminError::Usage(format!(
            "--reason is {} bytes long; at most {MAX_REASON}",
            r.len()
        )));
    }
    if r.chars().any(char::is_control) {
        return Err(AdminError::Usage(
            "--reason contains control characters (keep it to one line)".into(),
        ));
    }
    Ok(r.to_owned())
}

pub async fn uninstall(
    svc: &Services,
    policy: &RefreshPolicy,
    id: &InstallId,
    reason: &str,
    app_id: Option<&str>,
    owner: &str,
) -> Result<Uninstalled, AdminError> {
    let reason = check_reason(reason)?;
    let app_id = app_id
        .or(svc.app.app_id.as_deref())
        .ok_or_else(|| {
            AdminError::Usage(
                "no marketplace app id: set app_id in the app secret, or GHL_APP_ID".into(),
            )
        })?
        .to_owned();
    let mut install = read(&svc.store, id).await?;
    match install.state {
        InstallState::Uninstalled => {
            return Err(AdminError::Failed(format!(
                "{id} is already uninstalled (its tokens are erased); nothing was done"
            )));
        }
        InstallState::Lost | InstallState::Revoked => {
            return Err(AdminError::Failed(format!(
                "{id} is {}: HighLevel no longer accepts its tokens, so the uninstall call cannot be made with them; nothing was done. The customer can uninstall the app in HighLevel (the UNINSTALL webhook then records it)",
                install.state.as_str()
            )));
        }
        _ => {}
    }
    let mut refreshed_first = false;
    if install.expires_at < now_secs() + MIN_TOKEN_LIFE_SECS {
        let forced = super::refresh::refresh(svc, policy, id, owner).await?;
        if !matches!(forced.outcome, "refreshed" | "recovered") {
            return Err(AdminError::Failed(format!(
                "{id}'s access token expires too soon and refreshing it ended {}: {}; nothing was uninstalled",
                forced.outcome, forced.detail
            )));
        }
        refreshed_first = true;
        install = read(&svc.store, id).await?;
    }
    let target = match id {
        InstallId::Company(c) => UninstallTarget::Company(c),
        InstallId::Location(l) | InstallId::Minted(l) => UninstallTarget::Location(l),
    };
    svc.ghl
        .uninstall_app(&install.access_token, &app_id, target, &reason)
        .await
        .map_err(|e| {
            let what = match &e {
                GhlError::Unauthorized { .. } => {
                    " (the access token was refused: already uninstalled at HighLevel, or a scope without oauth.write)"
                }
                e if e.is_unknown_outcome() => {
                    " (the answer was lost: HighLevel may have uninstalled it; run again, or wait for the UNINSTALL webhook)"
                }
                _ => "",
            };
            AdminError::Failed(format!(
                "HighLevel did not uninstall {id}: {e}{what}; nothing was changed here"
            ))
        })?;
    let stored_reason = format!("uninstalled by the operator: {reason}");
    let (company, location) = match id {
        InstallId::Company(c) => (Some(c.clone()), None),
        InstallId::Location(l) | InstallId::Minted(l) => {
            (install.info.company_id.clone(), Some(l.clone()))
        }
    };
    let applied = crate::webhook::uninstall(
        svc,
        company.as_deref(),
        location.as_deref(),
        &stored_reason,
        now_millis(),
        "admin",
    )
    .await
    .map_err(|e| {
        AdminError::Failed(format!(
            "HighLevel uninstalled {id}, but recording it here failed: {e}; the UNINSTALL webhook (or running this again) records it"
        ))
    })?;
    let (target, grants, locations) = match applied {
        Applied::Uninstalled {
            target,
            grants,
            locations,
            ..
        } => (target, grants, locations),
        other => (format!("{other:?}"), 0, 0),
    };
    tracing::info!(install_id = %id, target, grants, locations, "operator uninstall");
    Ok(Uninstalled {
        install_id: id.key(),
        target,
        reason,
        grants,
        locations,
        refreshed_first,
        at: now_secs(),
    })
}

impl Report for Uninstalled {
    fn human(&self) -> String {
        format!(
            "{}: HighLevel uninstalled the app from {}{}\n  here: {} grant{} uninstalled (tokens erased), {} location{} unlinked\n  reason: {}\n",
            self.install_id,
            self.target,
            if self.refreshed_first {
                " (access token refreshed first)"
            } else {
                ""
            },
            self.grants,
            if self.grants == 1 { "" } else { "s" },
            self.locations,
            if self.locations == 1 { "" } else { "s" },
            self.reason
        )
    }
}
