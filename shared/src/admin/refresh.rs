//! `installs-admin refresh ID` and `probe ID`: one refresh now, under the
//! same protocol as the sweep and the mint ([`crate::refresh::Refresher`]:
//! lease, journal, re-presentation within the window, fenced commit), with
//! a lease taken whatever the install's due time or expiry
//! ([`LeaseWhen::Force`]). A sweep or mint holding the install makes it
//! answer `locked`, never a second presentation.
//!
//! `probe` is the same call, allowed only for an `in_doubt` install: it
//! presents the token whose outcome is unknown once more, which either
//! recovers the grant or confirms it lost.

use super::broken::next_step;
use super::show::read;
use super::{AdminError, Report, when, when_ago};
use crate::model::{InstallId, InstallState, now_millis, now_secs};
use crate::refresh::{Outcome, ReconnectSwitch, RefreshError, RefreshPolicy, Refresher};
use crate::services::Services;
use crate::store::LeaseWhen;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Refresh,
    Probe,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forced {
    pub install_id: String,
    pub command: Kind,
    /// [`Outcome::name`]: `refreshed`, `recovered`, `locked`, `lost`, …
    pub outcome: &'static str,
    pub detail: String,
    /// The install afterwards.
    pub state: String,
    pub state_reason: Option<String>,
    pub expires_at: Option<i64>,
    pub at: i64,
}

/// Forces a refresh of a refreshable install.
pub async fn refresh(
    svc: &Services,
    policy: &RefreshPolicy,
    id: &InstallId,
    owner: &str,
) -> Result<Forced, AdminError> {
    let before = read(&svc.store, id).await?;
    if before.state.is_terminal() {
        return Err(AdminError::Failed(format!(
            "{id} is {}: its refresh token is never presented again, so a refresh cannot help. Next step: {}",
            before.state.as_str(),
            next_step(before.state.as_str(), id, None)
        )));
    }
    run(svc, policy, id, owner, Kind::Refresh).await
}

/// Probes an `in_doubt` install; refuses any other.
pub async fn probe(
    svc: &Services,
    policy: &RefreshPolicy,
    id: &InstallId,
    owner: &str,
) -> Result<Forced, AdminError> {
    let before = read(&svc.store, id).await?;
    if before.state != InstallState::InDoubt {
        let hint = if before.state.is_refreshable() {
            format!("`installs-admin refresh {id}` forces a refresh")
        } else {
            format!("next step: {}", next_step(before.state.as_str(), id, None))
        };
        return Err(AdminError::Failed(format!(
            "{id} is {}, not in_doubt: a probe only presents the token of an install whose last refresh had an unknown outcome; nothing was done ({hint})",
            before.state.as_str()
        )));
    }
    run(svc, policy, id, owner, Kind::Probe).await
}

async fn run(
    svc: &Services,
    policy: &RefreshPolicy,
    id: &InstallId,
    owner: &str,
    kind: Kind,
) -> Result<Forced, AdminError> {
    let switch = ReconnectSwitch::default();
    let refresher = Refresher {
        store: &svc.store,
        ghl: &svc.ghl,
        app: &svc.app,
        policy,
        owner,
        reconnect: &switch,
        deadline: None,
        first_answers: None,
        events: &svc.events,
    };
    let outcome = refresher
        .refresh(id, LeaseWhen::Force, None)
        .await
        .map_err(|e| match e {
            RefreshError::InvalidClient(m) => AdminError::Failed(format!(
                "HighLevel rejected the app's client credentials ({m}); nothing was marked. Compare the app secret with the marketplace app's client keys"
            )),
            other => AdminError::Failed(format!("{id}: {other}")),
        })?;
    let after = svc.store.get(id).await?;
    let now = now_secs();
    let state_now = after
        .as_ref()
        .map(|i| i.state.as_str())
        .unwrap_or("missing");
    let detail = match &outcome {
        Outcome::Refreshed(i) => format!(
            "a new pair is stored; the access token expires {}",
            when_ago(i.expires_at, now)
        ),
        Outcome::Recovered(i) => format!(
            "the grant came back from doubt and is active; the access token expires {}",
            when_ago(i.expires_at, now)
        ),
        Outcome::NotNeeded(_) => "another holder refreshed it first; nothing was presented".into(),
        Outcome::Locked => match after.as_ref().and_then(|i| i.lease_owner.clone().zip(i.lease_until_ms)) {
            Some((holder, until)) => format!(
                "held by {holder} until {} (a sweep or mint is refreshing it); nothing was presented: run again after",
                when(until.div_euclid(1000))
            ),
            None => "held by another refresh a moment ago; nothing was presented: run again".into(),
        },
        Outcome::Missing => "the install is gone".into(),
        Outcome::Skipped(s) => format!(
            "{} installs are never presented; next step: {}",
            s.as_str(),
            next_step(s.as_str(), id, None)
        ),
        Outcome::Deferred => "too little time to refresh and store the answer; nothing was presented".into(),
        Outcome::Superseded => {
            "a reinstall replaced the grant while this refresh ran; the new grant stands".into()
        }
        Outcome::Journaled => {
            "the new pair is stored in the journal only (the commit failed); the next holder adopts it".into()
        }
        Outcome::Revoked | Outcome::Lost | Outcome::Suspended | Outcome::Retrying { .. } | Outcome::InDoubt { .. } => {
            let next = after.as_ref().map(|i| {
                let next_attempt = i.state.is_refreshable().then_some(i.due_at).flatten();
                next_step(i.state.as_str(), id, next_attempt)
            });
            format!(
                "now {state_now}; next step: {}",
                next.unwrap_or_else(|| "-".into())
            )
        }
    };
    tracing::info!(install_id = %id, command = ?kind, outcome = outcome.name(), at_ms = now_millis(), "operator refresh");
    Ok(Forced {
        install_id: id.key(),
        command: kind,
        outcome: outcome.name(),
        detail,
        state: state_now.to_owned(),
        state_reason: after.as_ref().and_then(|i| i.state_reason.clone()),
        expires_at: after.as_ref().map(|i| i.expires_at).filter(|e| *e > 0),
        at: now,
    })
}

impl Report for Forced {
    fn human(&self) -> String {
        let mut out = format!("{}: {}\n  {}\n", self.install_id, self.outcome, self.detail);
        out.push_str(&format!("  state: {}", self.state));
        if let Some(r) = &self.state_reason {
            out.push_str(&format!(" ({r})"));
        }
        out.push('\n');
        out
    }

    fn ok(&self) -> bool {
        matches!(self.outcome, "refreshed" | "recovered")
    }
}
