//! `installs-admin show ID`: one install, every field but its tokens (shown
//! as fingerprints), its lease, doubt and due time, and where the app is
//! installed for it (the location links).

use super::broken::next_step;
use super::{AdminError, Report, when, when_ago};
use crate::model::{InstallId, now_millis, now_secs};
use crate::redact::SecretString;
use crate::store::{Install, LocationLink, Store};
use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub owner: String,
    pub until_ms: Option<i64>,
    pub intent: Option<String>,
    /// Ran out without being given back: its holder died (a refresh holder
    /// may have presented the token; the next holder settles it).
    pub expired: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    pub company_id: String,
    pub location_id: String,
    pub state: String,
    pub at_ms: i64,
    pub source: String,
}

impl From<LocationLink> for LinkView {
    fn from(l: LocationLink) -> Self {
        Self {
            company_id: l.company_id,
            location_id: l.location_id,
            state: l.state.as_str().to_owned(),
            at_ms: l.at_ms,
            source: l.source,
        }
    }
}

/// An install as an operator sees it. No token: fingerprints only.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    pub install_id: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub state_changed_at: i64,
    pub broken_since: Option<i64>,
    pub next_step: String,
    pub user_type: Option<String>,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub user_id: Option<String>,
    pub scope: Option<String>,
    pub plan_id: Option<String>,
    pub is_bulk_installation: Option<bool>,
    pub approved_locations: Option<Vec<String>>,
    pub install_to_future_locations: Option<bool>,
    pub approve_all_locations: Option<bool>,
    /// `sha256:<12 hex>` of the access token, or `erased`.
    pub access_token: String,
    /// `sha256:<12 hex>` of the refresh token, or `erased`.
    pub refresh_token: String,
    /// True when a token is sealed under a data key other than the current one.
    pub stale_key: bool,
    pub expires_at: i64,
    pub due_at: Option<i64>,
    pub lease: Option<Lease>,
    pub doubt_since_ms: Option<i64>,
    pub failures: u32,
    pub version: u64,
    pub installed_at: i64,
    pub last_installed_at: i64,
    pub install_count: u64,
    pub refresh_count: u64,
    /// Epoch seconds of the last committed refresh (None: never refreshed).
    pub last_refreshed_at: Option<i64>,
    pub updated_at: i64,
    /// For a company: every location linked to it. For a location: its link.
    pub links: Vec<LinkView>,
    pub at: i64,
}

fn fingerprint(token: &SecretString) -> String {
    if token.is_empty() {
        "erased".into()
    } else {
        format!("sha256:{}", token.fingerprint())
    }
}

/// The install's view, without reading anything else.
pub fn view(i: &Install, links: Vec<LinkView>) -> Shown {
    let now_ms = now_millis();
    let next_attempt = i.state.is_refreshable().then_some(i.due_at).flatten();
    Shown {
        install_id: i.id.key(),
        state: i.state.as_str().to_owned(),
        state_reason: i.state_reason.clone(),
        state_changed_at: i.state_changed_at,
        broken_since: i.broken_since,
        next_step: next_step(i.state.as_str(), &i.id, next_attempt),
        user_type: i.info.user_type.map(|t| t.as_str().to_owned()),
        company_id: i.info.company_id.clone(),
        location_id: i.info.location_id.clone(),
        user_id: i.info.user_id.clone(),
        scope: i.info.scope.clone(),
        plan_id: i.info.plan_id.clone(),
        is_bulk_installation: i.info.is_bulk_installation,
        approved_locations: i.info.approved_locations.clone(),
        install_to_future_locations: i.info.install_to_future_locations,
        approve_all_locations: i.info.approve_all_locations,
        access_token: fingerprint(&i.access_token),
        refresh_token: fingerprint(&i.refresh_token),
        stale_key: i.stale_key,
        expires_at: i.expires_at,
        due_at: i.due_at,
        lease: i.lease_owner.as_ref().map(|owner| Lease {
            owner: owner.clone(),
            until_ms: i.lease_until_ms,
            intent: i.lease_intent.clone(),
            expired: i.lease_until_ms.is_some_and(|u| u < now_ms),
        }),
        doubt_since_ms: i.doubt_since_ms,
        failures: i.failures,
        version: i.version,
        installed_at: i.installed_at,
        last_installed_at: i.last_installed_at,
        install_count: i.install_count,
        refresh_count: i.refresh_count,
        last_refreshed_at: i.last_refreshed_at,
        updated_at: i.updated_at,
        links,
        at: now_secs(),
    }
}

/// Reads the install (consistently) and its links. A missing install is a failure.
pub async fn show(store: &Store, id: &InstallId) -> Result<Shown, AdminError> {
    let install = read(store, id).await?;
    let links: Vec<LinkView> = match id {
        InstallId::Company(c) => store
            .links_of(c)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
        InstallId::Location(l) | InstallId::Minted(l) => store
            .link_of(l)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    };
    Ok(view(&install, links))
}

/// The stored install, or a failure naming it and the table.
pub async fn read(store: &Store, id: &InstallId) -> Result<Install, AdminError> {
    store.get(id).await?.ok_or_else(|| {
        AdminError::Failed(format!(
            "no install {id} in table {} (ids are case-sensitive; `installs-admin broken` lists the broken ones, `installs-admin list` every one)",
            store.table()
        ))
    })
}

impl Report for Shown {
    fn human(&self) -> String {
        let now = self.at;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let flag = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        let ms = |v: Option<i64>| v.map(|m| when_ago(m.div_euclid(1000), now));
        let mut lines: Vec<(&str, String)> = vec![
            ("install", self.install_id.clone()),
            ("state", self.state.clone()),
            ("reason", opt(&self.state_reason)),
            ("state changed", when_ago(self.state_changed_at, now)),
        ];
        if let Some(b) = self.broken_since {
            lines.push(("not active since", when_ago(b, now)));
        }
        lines.extend([
            ("next step", self.next_step.clone()),
            ("user type", opt(&self.user_type)),
            ("company", opt(&self.company_id)),
            ("location", opt(&self.location_id)),
            ("user", opt(&self.user_id)),
            ("scope", opt(&self.scope)),
            ("plan", opt(&self.plan_id)),
            ("bulk installation", flag(self.is_bulk_installation)),
            (
                "approved locations",
                match self.approved_locations.as_deref() {
                    None => "-".into(),
                    Some([]) => "none".into(),
                    Some(l) => format!("{} ({})", l.len(), l.join(", ")),
                },
            ),
            (
                "install to future locations",
                flag(self.install_to_future_locations),
            ),
            ("approve all locations", flag(self.approve_all_locations)),
            ("access token", self.access_token.clone()),
            ("refresh token", self.refresh_token.clone()),
            (
                "data key",
                if self.stale_key {
                    "an old key (run `installs-admin rekey`)".into()
                } else {
                    "current".into()
                },
            ),
            (
                "access token expires",
                if self.expires_at > 0 {
                    when_ago(self.expires_at, now)
                } else {
                    "-".into()
                },
            ),
            (
                "due",
                self.due_at
                    .map(|d| when_ago(d, now))
                    .unwrap_or_else(|| "not in the due index (never refreshed again)".into()),
            ),
            (
                "lease",
                match &self.lease {
                    None => "free".into(),
                    Some(l) => format!(
                        "{} by {}, {} {}",
                        l.intent.as_deref().unwrap_or("held"),
                        l.owner,
                        if l.expired { "expired" } else { "until" },
                        ms(l.until_ms).unwrap_or_else(|| "?".into())
                    ),
                },
            ),
            (
                "doubt",
                ms(self.doubt_since_ms)
                    .map(|d| format!("a presentation's outcome unknown since {d}"))
                    .unwrap_or_else(|| "none".into()),
            ),
            ("failures", self.failures.to_string()),
            ("version", self.version.to_string()),
            ("installed", when_ago(self.installed_at, now)),
            ("last installed", when_ago(self.last_installed_at, now)),
            ("installs", self.install_count.to_string()),
            ("refreshes", self.refresh_count.to_string()),
            (
                "last refreshed",
                self.last_refreshed_at
                    .map_or_else(|| "never".into(), |t| when_ago(t, now)),
            ),
            ("updated", when_ago(self.updated_at, now)),
        ]);
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out: String = lines
            .iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect();
        if self.links.is_empty() {
            out.push_str(&format!("{:<width$}  none\n", "links"));
        } else {
            out.push_str(&format!("links ({}):\n", self.links.len()));
            for l in &self.links {
                out.push_str(&format!(
                    "  company {} location {}: {} ({}, {})\n",
                    l.company_id,
                    l.location_id,
                    l.state,
                    l.source,
                    when(l.at_ms.div_euclid(1000))
                ));
            }
        }
        out
    }
}
