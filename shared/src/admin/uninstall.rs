//! `installs-admin uninstall ID --reason TEXT`: the developer uninstalls the
//! app from a company (and so from all its sub-accounts) or a location.
//!
//! HighLevel first: `DELETE /marketplace/app/{appId}/installations` with the
//! install's own access token (refreshed first, under the protocol, when it
//! has little life left). Then the same local effect as the UNINSTALL
//! webhook HighLevel sends afterwards ([`crate::webhook::uninstall`]): the
//! grants concerned become `uninstalled`, their tokens are erased, the
//! locations unlinked. The webhook, when it arrives, changes nothing more.
//!
//! When HighLevel answers that the app is not installed there (uninstalled
//! already, its UNINSTALL webhook missed), the same local effect is applied,
//! and the output says so. A path that erases tokens must be sure, not
//! hopeful: only an answer that says so explicitly counts
//! ([`says_not_installed`]); a refused token (401: expired, revoked, or
//! without `oauth.write`), a 5xx or a lost answer erases nothing.

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
    /// HighLevel's answer: `uninstalled` (by this call) or `not_installed`
    /// (it said the app was not installed there any more).
    pub highlevel: &'static str,
    /// HighLevel's words, when it said the app was not installed.
    pub highlevel_message: Option<String>,
    pub at: i64,
}

/// Whether HighLevel's answer to the uninstall call says, in so many words,
/// that the app is not installed on the target: a 4xx other than 401 and
/// 429 whose message says "not installed" or "already uninstalled", or
/// a 404 saying the installation is not found. A bare 404 (a wrong path or
/// host answers that too, e.g. "Cannot DELETE …/installations") or a
/// refused token says nothing about the install.
pub fn says_not_installed(e: &GhlError) -> bool {
    let GhlError::Rejected {
        status, message, ..
    } = e
    else {
        return false;
    };
    if !(400..500).contains(status) || matches!(status, 401 | 429) {
        return false;
    }
    let m = message.to_ascii_lowercase();
    m.contains("not installed")
        || m.contains("already uninstalled")
        || (*status == 404
            && [
                "installation not found",
                "no installation",
                "installation does not exist",
            ]
            .iter()
            .any(|p| m.contains(p)))
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
    let not_installed = match svc
        .ghl
        .uninstall_app(&install.access_token, &app_id, target, &reason)
        .await
    {
        Ok(()) => None,
        Err(e) if says_not_installed(&e) => {
            // Its words go into the stored reason and the output; clipped.
            let said = match &e {
                GhlError::Rejected { message, .. } => message.chars().take(200).collect(),
                other => other.to_string(),
            };
            tracing::warn!(install_id = %id, error = e.kind(), "HighLevel says the app is not installed there; applying the uninstall here");
            Some(said)
        }
        Err(e) => {
            let what = match &e {
                GhlError::Unauthorized { .. } => {
                    " (the access token was refused: expired or revoked, or without the oauth.write scope; that does not say the app is uninstalled)"
                }
                e if e.is_unknown_outcome() => {
                    " (the answer was lost: HighLevel may have uninstalled it; run again, or wait for the UNINSTALL webhook)"
                }
                _ => "",
            };
            return Err(AdminError::Failed(format!(
                "HighLevel did not uninstall {id}: {e}{what}; nothing was changed here"
            )));
        }
    };
    let stored_reason = match &not_installed {
        None => format!("uninstalled by the operator: {reason}"),
        Some(said) => format!(
            "uninstalled at HighLevel already (HighLevel answered the operator's uninstall: {said}): {reason}"
        ),
    };
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
    tracing::info!(install_id = %id, target, grants, locations, not_installed = not_installed.is_some(), "operator uninstall");
    Ok(Uninstalled {
        install_id: id.key(),
        target,
        reason,
        grants,
        locations,
        refreshed_first,
        highlevel: if not_installed.is_some() {
            "not_installed"
        } else {
            "uninstalled"
        },
        highlevel_message: not_installed,
        at: now_secs(),
    })
}

impl Report for Uninstalled {
    fn human(&self) -> String {
        let at_highlevel = match &self.highlevel_message {
            None => format!("HighLevel uninstalled the app from {}", self.target),
            Some(said) => format!(
                "HighLevel says the app is not installed there any more ({said}); recorded the uninstall of {} here",
                self.target
            ),
        };
        format!(
            "{}: {}{}\n  here: {} grant{} uninstalled (tokens erased), {} location{} unlinked\n  reason: {}\n",
            self.install_id,
            at_highlevel,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, message: &str) -> GhlError {
        GhlError::Rejected {
            status,
            message: message.into(),
            trace_id: None,
        }
    }

    #[test]
    fn only_an_explicit_not_installed_answer_counts() {
        for yes in [
            rejected(404, "App is not installed for this companyId or locationId"),
            rejected(400, "The app is already uninstalled"),
            rejected(422, "app not installed on location"),
            rejected(404, "Installation not found"),
            rejected(403, "The app is not installed on this location"),
        ] {
            assert!(says_not_installed(&yes), "{yes:?}");
        }
        for no in [
            rejected(404, "Not Found"),
            rejected(404, "Cannot DELETE /marketplace/app/a/installations"),
            rejected(400, "Invalid parameter: appId"),
            rejected(403, "The token does not have access to this location"),
            rejected(429, "not installed"),
            rejected(500, "not installed"),
            GhlError::Unauthorized {
                message: "Invalid JWT".into(),
                trace_id: None,
            },
            GhlError::Unauthorized {
                message: "app not installed".into(),
                trace_id: None,
            },
            GhlError::Unavailable {
                status: 503,
                message: "not installed".into(),
                trace_id: None,
            },
            GhlError::Timeout,
        ] {
            assert!(!says_not_installed(&no), "{no:?}");
        }
    }
}
