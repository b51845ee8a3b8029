//! `installs-admin status`: how many installs are in each state, and the
//! install that has waited longest for its refresh.
//!
//! The counts come from a Scan that projects `state` alone: it reads the
//! whole table (cost grows with it), so it is for an operator now and then.
//! `broken` is the instant listing of what needs attention. The oldest due
//! install is the head of each due-index shard (one item per shard).

use super::{AdminError, Report, age, table, when};
use crate::model::{InstallState, now_secs};
use crate::store::Store;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub table: String,
    pub total: u64,
    /// Every state of [`InstallState::ALL`] (zeros included), then any
    /// other stored state name.
    pub states: BTreeMap<String, u64>,
    pub oldest_due: Option<OldestDue>,
    /// Epoch seconds the counts were taken at.
    pub at: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OldestDue {
    pub install_id: String,
    pub due_at: i64,
    pub age_secs: i64,
}

pub async fn status(store: &Store) -> Result<Status, AdminError> {
    let at = now_secs();
    let mut states: BTreeMap<String, u64> = InstallState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (state, n) in store.state_counts().await? {
        *states.entry(state).or_insert(0) += n;
    }
    let oldest_due = store.oldest_due(at).await?.map(|(id, due_at)| OldestDue {
        install_id: id.key(),
        due_at,
        age_secs: at - due_at,
    });
    Ok(Status {
        table: store.table().to_owned(),
        total: states.values().sum(),
        states,
        oldest_due,
        at,
    })
}

impl Report for Status {
    fn human(&self) -> String {
        // The states in their documented order, then any unknown ones.
        let known: Vec<&str> = InstallState::ALL.iter().map(|s| s.as_str()).collect();
        let mut rows: Vec<Vec<String>> = known
            .iter()
            .map(|s| {
                vec![
                    (*s).to_owned(),
                    self.states.get(*s).copied().unwrap_or(0).to_string(),
                ]
            })
            .collect();
        rows.extend(
            self.states
                .iter()
                .filter(|(s, _)| !known.contains(&s.as_str()))
                .map(|(s, n)| vec![format!("{s} (unknown state)"), n.to_string()]),
        );
        rows.push(vec!["total".into(), self.total.to_string()]);
        let mut out = format!("installs in {} at {}\n\n", self.table, when(self.at));
        out.push_str(&table(&["state", "installs"], &rows));
        out.push('\n');
        match &self.oldest_due {
            Some(o) => out.push_str(&format!(
                "oldest due: {}, due since {} ({} waiting)\n",
                o.install_id,
                when(o.due_at),
                age(o.age_secs)
            )),
            None => out.push_str("oldest due: none (nothing is waiting for a refresh)\n"),
        }
        let broken = self.total - self.states.get("active").copied().unwrap_or(0);
        if broken > 0 {
            out.push_str(&format!(
                "{broken} not active: `installs-admin broken` lists them with the next step\n"
            ));
        }
        out
    }
}
