//! `installs-admin broken`: every install that is not `active`, the longest
//! broken first, with its state, the reason, since when, and what the
//! operator should do next.
//!
//! Served by the sparse broken index (`broken-index`), which holds exactly
//! the installs not `active`, one partition per state: a Query per state,
//! however many active installs the table holds. The states that need an
//! operator come first ([`ORDER`]), `uninstalled` (nothing to do, and only
//! ever growing) last.

use super::{AdminError, Report, age, table, when, when_ago};
use crate::model::{InstallId, InstallState, now_secs};
use crate::store::{BrokenInstall, Store};
use serde::Serialize;

/// Installs read per Query page.
const PAGE: i32 = 100;
/// The order states are listed in: those that need someone first.
pub const ORDER: [InstallState; 6] = [
    InstallState::Lost,
    InstallState::Revoked,
    InstallState::InDoubt,
    InstallState::Suspended,
    InstallState::Retrying,
    InstallState::Uninstalled,
];
/// Listed by default; `--limit` changes it.
pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokenRow {
    pub install_id: String,
    pub state: String,
    pub reason: Option<String>,
    /// Epoch seconds of the last state change (`state_changed_at`).
    pub since: Option<i64>,
    /// Epoch seconds since it stopped being `active`.
    pub broken_since: i64,
    /// When the sweep tries it again (retrying, suspended, in_doubt).
    pub next_attempt_at: Option<i64>,
    pub doubt_since_ms: Option<i64>,
    pub failures: u32,
    pub company_id: Option<String>,
    pub location_id: Option<String>,
    pub next_step: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Broken {
    pub installs: Vec<BrokenRow>,
    pub count: usize,
    /// False when `limit` stopped the listing before the index's end.
    pub complete: bool,
    pub state_filter: Option<String>,
    pub at: i64,
}

/// What an operator does about an install in `state`.
pub fn next_step(state: &str, id: &InstallId, next_attempt_at: Option<i64>) -> String {
    let key = id.key();
    let retry = next_attempt_at
        .map(|t| format!(" (next attempt {})", when(t)))
        .unwrap_or_default();
    let reinstall = match id {
        InstallId::Minted(_) => format!(
            "the sweep mints it again from its company's grant; if that grant is broken too, send the customer `installs-admin link` to reinstall (`installs-admin show {key}`)"
        ),
        _ => "the customer must reinstall: send them the link from `installs-admin link`".into(),
    };
    match InstallState::parse(state) {
        Some(InstallState::Retrying) => format!(
            "wait: the sweep retries with backoff{retry}; if it keeps failing, check HighLevel's status and rate limits"
        ),
        Some(InstallState::Suspended) => format!(
            "the location is inactive at HighLevel; the token is kept and retried{retry}; it recovers once the customer's location is active again"
        ),
        Some(InstallState::InDoubt) => {
            format!("wait for the sweep's probe{retry}, or run `installs-admin probe {key}`")
        }
        Some(InstallState::Lost | InstallState::Revoked) => reinstall,
        Some(InstallState::Uninstalled) => {
            "nothing: the app was uninstalled; a reinstall makes it active again".into()
        }
        Some(InstallState::Active) => "nothing: it is active".into(),
        None => format!("unknown state: inspect it with `installs-admin show {key}`"),
    }
}

fn row(b: BrokenInstall) -> BrokenRow {
    // Only the states the sweep still presents have a next attempt.
    let next_attempt_at = InstallState::parse(&b.state)
        .filter(|s| s.is_refreshable())
        .and(b.due_at);
    BrokenRow {
        install_id: b.id.key(),
        next_step: next_step(&b.state, &b.id, next_attempt_at),
        state: b.state,
        reason: b.reason,
        since: b.state_changed_at,
        broken_since: b.broken_since,
        next_attempt_at,
        doubt_since_ms: b.doubt_since_ms,
        failures: b.failures,
        company_id: b.company_id,
        location_id: b.location_id,
    }
}

/// At most `limit` installs from the broken index, state by state in
/// [`ORDER`] (or only `state`), the longest broken first within each.
pub async fn broken(
    store: &Store,
    state: Option<InstallState>,
    limit: usize,
) -> Result<Broken, AdminError> {
    let at = now_secs();
    let states: Vec<InstallState> = match state {
        Some(s) => vec![s],
        None => ORDER.to_vec(),
    };
    let mut installs = Vec::new();
    let mut complete = true;
    'states: for (i, state) in states.iter().enumerate() {
        let mut start = None;
        loop {
            if installs.len() == limit {
                complete = !any_left(store, &states[i..], start).await?;
                break 'states;
            }
            let page = store.broken_page(*state, PAGE, start).await?;
            let mut rest = page.installs.into_iter();
            for b in rest.by_ref() {
                installs.push(row(b));
                if installs.len() == limit {
                    break;
                }
            }
            if rest.next().is_some() {
                complete = false;
                break 'states;
            }
            start = page.next;
            if start.is_none() {
                break;
            }
        }
    }
    Ok(Broken {
        count: installs.len(),
        installs,
        complete,
        state_filter: state.map(|s| s.as_str().to_owned()),
        at,
    })
}

type PageKey = Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>;

/// Whether any install is left: in `states[0]` from `start`, or in the others.
async fn any_left(
    store: &Store,
    states: &[InstallState],
    mut start: PageKey,
) -> Result<bool, AdminError> {
    for state in states {
        if !store
            .broken_page(*state, 1, start.take())
            .await?
            .installs
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Report for Broken {
    fn human(&self) -> String {
        if self.installs.is_empty() {
            return match &self.state_filter {
                Some(s) => format!("no install is {s}\n"),
                None => "every install is active\n".into(),
            };
        }
        let rows: Vec<Vec<String>> = self
            .installs
            .iter()
            .map(|r| {
                vec![
                    r.install_id.clone(),
                    r.state.clone(),
                    age(self.at - r.broken_since),
                    r.next_step.clone(),
                ]
            })
            .collect();
        let mut out = table(&["install", "state", "broken for", "next step"], &rows);
        out.push_str("\nreasons:\n");
        for r in &self.installs {
            out.push_str(&format!(
                "  {} ({} since {}): {}\n",
                r.install_id,
                r.state,
                r.since
                    .map(|s| when_ago(s, self.at))
                    .unwrap_or_else(|| "?".into()),
                r.reason.as_deref().unwrap_or("(no reason recorded)")
            ));
        }
        out.push_str(&format!(
            "\n{} install{} not active{}\n",
            self.count,
            if self.count == 1 { "" } else { "s" },
            if self.complete {
                String::new()
            } else {
                " (more not shown: raise --limit)".into()
            }
        ));
        out
    }
}

/// What `index-broken` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Indexed {
    /// Installs not active and missing from the broken index, found.
    pub found: u64,
    /// Of those, put into the index (the rest changed state meanwhile).
    pub indexed: u64,
}

/// Puts installs that stopped being active before the broken index existed
/// into it (a Scan; run once after deploying the index; safe to repeat).
pub async fn index_broken(store: &Store) -> Result<Indexed, AdminError> {
    let mut out = Indexed::default();
    let mut start = None;
    loop {
        let (found, indexed, next) = store.backfill_broken_page(start).await?;
        out.found += found;
        out.indexed += indexed;
        start = next;
        if start.is_none() {
            return Ok(out);
        }
    }
}

impl Report for Indexed {
    fn human(&self) -> String {
        format!(
            "{} install{} not active were missing from broken-index; {} indexed\n",
            self.found,
            if self.found == 1 { "" } else { "s" },
            self.indexed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_next_step() {
        let id = InstallId::Company("c".into());
        for s in InstallState::ALL {
            assert!(!next_step(s.as_str(), &id, None).is_empty());
        }
        assert!(next_step("in_doubt", &id, None).contains("installs-admin probe company#c"));
        assert!(next_step("lost", &id, None).contains("installs-admin link"));
        assert!(next_step("revoked", &id, None).contains("installs-admin link"));
        assert!(next_step("suspended", &id, None).contains("inactive at HighLevel"));
        assert!(next_step("retrying", &id, Some(0)).contains("1970-01-01T00:00:00Z"));
        assert!(next_step("uninstalled", &id, None).starts_with("nothing"));
        assert!(next_step("lost", &InstallId::Minted("l".into()), None).contains("mints it again"));
    }
}
