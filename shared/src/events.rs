//! State-change events: every change of an install's state is published to
//! EventBridge, so the app owner's other services can react to a grant
//! breaking (or coming back) without reading logs.
//!
//! One `detail-type`, [`DETAIL_TYPE`], from source [`SOURCE`], on the bus
//! named by `EVENT_BUS_NAME` (default: the account's default bus; the stack
//! sets its own bus, whose policy admits only the four function roles). The
//! detail is [`StateChanged`]: ids, from, to, reason, time. Never a token.
//! Publishing is best effort: the state is already stored when the event is
//! sent, and a failure to publish is logged, never a failed refresh.

use crate::model::{InstallId, InstallState, now_secs};
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;

pub const SOURCE: &str = "ghl-oauth";
pub const DETAIL_TYPE: &str = "GHL Install State Changed";

/// The event's `detail`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateChanged {
    /// The table key, e.g. `company#abc`.
    pub install_id: String,
    /// `company`, `location` or `minted` (a location token minted from its
    /// company's grant).
    pub kind: &'static str,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    /// None for a first install.
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

impl StateChanged {
    pub fn new(
        id: &InstallId,
        company_id: Option<&str>,
        from: Option<InstallState>,
        to: InstallState,
        reason: &str,
    ) -> Self {
        let (kind, location_id) = match id {
            InstallId::Company(_) => ("company", None),
            InstallId::Location(l) => ("location", Some(l.clone())),
            InstallId::Minted(l) => ("minted", Some(l.clone())),
        };
        let company_id = company_id.map(str::to_owned).or_else(|| match id {
            InstallId::Company(c) => Some(c.clone()),
            _ => None,
        });
        Self {
            install_id: id.key(),
            kind,
            company_id,
            location_id,
            from: from.map(InstallState::as_str),
            to: to.as_str(),
            reason: reason.chars().take(500).collect(),
            at: crate::model::rfc3339(now_secs()),
        }
    }
}

/// The publisher every function holds (cheap to clone).
#[derive(Clone)]
pub struct Events {
    client: Option<Client>,
    bus: String,
}

impl Events {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self {
            client: Some(client),
            bus: bus.into(),
        }
    }

    /// A publisher that sends nothing (tools and tests that do not need it).
    pub fn disabled() -> Self {
        Self {
            client: None,
            bus: String::new(),
        }
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// Publishes a change when the state really changed; logs, never fails.
    pub async fn changed(&self, change: StateChanged) {
        if change.from == Some(change.to) {
            return;
        }
        let Some(client) = &self.client else { return };
        let detail = match serde_json::to_string(&change) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "state-change event not serialisable");
                return;
            }
        };
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(detail)
            .event_bus_name(&self.bus)
            .resources(change.install_id.clone())
            .build();
        match client.put_events().entries(entry).send().await {
            Ok(out) if out.failed_entry_count() == 0 => {}
            Ok(out) => {
                let code = out
                    .entries()
                    .first()
                    .and_then(|e| e.error_code())
                    .unwrap_or("unknown");
                tracing::error!(install_id = %change.install_id, error = code, "state-change event refused by EventBridge");
            }
            Err(e) => {
                tracing::error!(install_id = %change.install_id, error = %crate::aws::error_text(&e), "state-change event not published");
            }
        }
    }
}
