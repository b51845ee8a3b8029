//! Where the app is installed, as HighLevel told us (INSTALL and UNINSTALL
//! webhooks, a company install's approved locations, reconciliation): one
//! link per (company, location), and the erasing of a grant when the app is
//! uninstalled.
//!
//! A link is written twice: under the company (`pk = company#<id>`,
//! `sk = location#<id>`), so a company's locations are one Query, and under
//! the location (`pk = location#<id>`, `sk = company`), so the mint finds a
//! location's company in one read. Each write carries the event's time and
//! is conditioned on it: a late or redelivered event never overwrites a newer
//! one.

use super::item::{Item, Update, attr, get_n, get_s, num, s};
use super::{GRANT_SK, Store, StoreError, dynamo, is_condition_failure};
use crate::model::{InstallId, InstallState, now_secs};
use crate::schema::{DUE_AT, DUE_SHARD, PK, SK};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};

const COMPANY_SK: &str = "company";
pub(super) const LOCATION_SK_PREFIX: &str = "location#";
const JOURNAL_SK_PREFIX: &str = "journal#";
/// Link writes in flight at once (a bulk install names hundreds of locations).
const LINK_WRITES_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Installed,
    Uninstalled,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::Uninstalled => "uninstalled",
        }
    }
}

/// What an uninstall did to one grant.
#[derive(Debug)]
pub enum UninstallWrite {
    /// Marked `uninstalled` and erased; `before` is the grant as it was.
    Applied {
        before: Box<super::Install>,
    },
    /// This event had been applied already (a redelivery); the journal was
    /// erased again in case that failed the first time.
    AlreadyApplied,
    /// A newer lifecycle event stands (at `at_ms`): nothing was erased.
    Newer {
        at_ms: i64,
    },
    NoGrant,
}

/// The app on one location of one company.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationLink {
    pub company_id: String,
    pub location_id: String,
    pub state: LinkState,
    /// When HighLevel said so (the event's time, epoch ms).
    pub at_ms: i64,
    /// Who told us: `webhook`, `callback`, `reconcile`.
    pub source: String,
    /// Since when reconciliation has found it missing from HighLevel's
    /// listing (epoch ms; see `store::missing`).
    pub missing_since_ms: Option<i64>,
}

fn decode_link(item: &Item) -> Option<LocationLink> {
    Some(LocationLink {
        company_id: get_s(item, attr::COMPANY_ID).unwrap_or_default().to_owned(),
        location_id: get_s(item, attr::LOCATION_ID)?.to_owned(),
        state: match get_s(item, attr::LINK_STATE)? {
            "uninstalled" => LinkState::Uninstalled,
            _ => LinkState::Installed,
        },
        at_ms: get_n(item, attr::LINK_AT).unwrap_or(0),
        source: get_s(item, attr::LINK_SOURCE)
            .unwrap_or_default()
            .to_owned(),
        missing_since_ms: get_n(item, attr::LINK_MISSING_SINCE),
    })
}

impl Store {
    /// Records a link as of `link.at_ms`, under the company and under the
    /// location. False when the location already holds a newer event (the
    /// location side decides: it is the one the mint and the uninstall
    /// read). At equal times an install wins over an uninstall: keeping a
    /// grant is the safe side of a tie.
    pub async fn set_link(&self, link: &LocationLink) -> Result<bool, StoreError> {
        let company_pk = InstallId::Company(link.company_id.clone()).key();
        let location_pk = InstallId::Location(link.location_id.clone()).key();
        let location_sk = format!("{LOCATION_SK_PREFIX}{}", link.location_id);
        let mut newer = true;
        let mut sides = vec![(location_pk.as_str(), COMPANY_SK)];
        let location_side = sides[0];
        // An UNINSTALL of a location we never linked names no company: the
        // location side alone records it.
        if !link.company_id.is_empty() {
            sides.push((company_pk.as_str(), location_sk.as_str()));
        }
        for (pk, sk) in sides {
            let mut u = Update::default();
            u.set(attr::COMPANY_ID, s(&link.company_id));
            u.set(attr::LOCATION_ID, s(&link.location_id));
            u.set(attr::LINK_STATE, s(link.state.as_str()));
            u.set(attr::LINK_SOURCE, s(&link.source));
            u.set(attr::UPDATED_AT, num(now_secs()));
            u.set(attr::LINK_AT, num(link.at_ms));
            let (at_n, at_v) = (u.name(attr::LINK_AT), u.value(num(link.at_ms)));
            let cond = match link.state {
                LinkState::Installed => {
                    format!("attribute_not_exists({at_n}) OR {at_n} <= {at_v}")
                }
                // The same UNINSTALL again (a retry) applies again, so its
                // effects that failed the first time are completed.
                LinkState::Uninstalled => {
                    let (state_n, state_v) =
                        (u.name(attr::LINK_STATE), u.value(s(link.state.as_str())));
                    format!(
                        "attribute_not_exists({at_n}) OR {at_n} < {at_v} OR ({at_n} = {at_v} AND {state_n} = {state_v})"
                    )
                }
            };
            let res = self
                .update(pk, sk, u)?
                .condition_expression(cond)
                .send()
                .await;
            match res {
                Ok(_) => {}
                Err(e) if is_condition_failure(&e) => {
                    if (pk, sk) == location_side {
                        newer = false;
                    }
                }
                Err(e) => return Err(dynamo("UpdateItem(link)")(e)),
            }
        }
        Ok(newer)
    }

    /// Links many locations of one company (a bulk install), a bounded
    /// number of writes at a time.
    pub async fn link_locations(
        &self,
        company_id: &str,
        location_ids: &[String],
        at_ms: i64,
        source: &str,
    ) -> Result<usize, StoreError> {
        let mut written = 0;
        for chunk in location_ids.chunks(LINK_WRITES_IN_FLIGHT) {
            let mut set = tokio::task::JoinSet::new();
            for loc in chunk {
                let (store, link) = (
                    self.clone(),
                    LocationLink {
                        company_id: company_id.to_owned(),
                        location_id: loc.clone(),
                        state: LinkState::Installed,
                        at_ms,
                        source: source.to_owned(),
                        missing_since_ms: None,
                    },
                );
                set.spawn(async move { store.set_link(&link).await });
            }
            while let Some(r) = set.join_next().await {
                let newer = r.map_err(|e| StoreError::Dynamo {
                    op: "UpdateItem(link)",
                    reason: format!("link task failed: {e}"),
                })??;
                written += usize::from(newer);
            }
        }
        Ok(written)
    }

    /// The location's link, read from the location side: which company
    /// installed the app there, and whether it still has it.
    pub async fn link_of(&self, location_id: &str) -> Result<Option<LocationLink>, StoreError> {
        let out = self
            .item_op(
                "dynamodb:GetItem",
                &InstallId::Location(location_id.to_owned()).key(),
            )?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(super::item::key_of(
                &InstallId::Location(location_id.to_owned()).key(),
                COMPANY_SK,
            )))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem(link)"))?;
        Ok(out.item.as_ref().and_then(decode_link))
    }

    /// Every location linked to a company.
    pub async fn links_of(&self, company_id: &str) -> Result<Vec<LocationLink>, StoreError> {
        let pk = InstallId::Company(company_id.to_owned()).key();
        let items = self
            .items_with_prefix(&pk, LOCATION_SK_PREFIX, false, "Query(links)")
            .await?;
        Ok(items.iter().filter_map(decode_link).collect())
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`,
    /// page by page (only the keys when `keys_only`).
    async fn items_with_prefix(
        &self,
        pk: &str,
        prefix: &str,
        keys_only: bool,
        op: &'static str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .item_op("dynamodb:Query", pk)?
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start);
            if keys_only {
                query = query.projection_expression("#pk, #sk");
            }
            let out = query.send().await.map_err(dynamo(op))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// Marks a grant `uninstalled` as of `at_ms` (the event's time) and
    /// erases its tokens, from the row and from its journal entries, unless
    /// a newer lifecycle event was applied to it (a reinstall, a mint, a
    /// later uninstall): a late UNINSTALL never wipes a newer install. At
    /// equal times the install wins. The version moves on, so a refresh in
    /// flight can commit nothing over it.
    pub async fn uninstall(
        &self,
        id: &InstallId,
        reason: &str,
        at_ms: i64,
    ) -> Result<UninstallWrite, StoreError> {
        let now = now_secs();
        let mut u = Update::default();
        self.set_state(&mut u, InstallState::Uninstalled, reason, now);
        for erased in [
            attr::ACCESS_TOKEN,
            attr::REFRESH_TOKEN,
            attr::KEY_ID,
            attr::DOUBT_SINCE,
            DUE_SHARD,
            DUE_AT,
        ] {
            u.remove(erased);
        }
        u.set(attr::LIFECYCLE_AT, num(at_ms));
        u.release_lease();
        u.increment(attr::VERSION);
        let pk_n = u.name(PK);
        let (life_n, at_v) = (u.name(attr::LIFECYCLE_AT), u.value(num(at_ms)));
        // Rows from before lifecycle_at_ms existed: their install time, in
        // whole seconds.
        let (installed_n, secs_v) = (
            u.name(attr::LAST_INSTALLED_AT),
            u.value(num(at_ms.div_euclid(1000))),
        );
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(format!(
                "attribute_exists({pk_n}) AND ({life_n} < {at_v} OR (attribute_not_exists({life_n}) \
                 AND (attribute_not_exists({installed_n}) OR {installed_n} < {secs_v})))"
            ))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let outcome = match res {
            Ok(out) => UninstallWrite::Applied {
                before: Box::new(self.decode_without_tokens(out.attributes.unwrap_or_default())?),
            },
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => match c.item() {
                    None => return Ok(UninstallWrite::NoGrant),
                    Some(old) => {
                        let old = self.decode_without_tokens(old.clone())?;
                        if old.state == InstallState::Uninstalled && old.lifecycle_at_ms == at_ms {
                            // This very event, applied before (a retry):
                            // finish what may have failed after it.
                            UninstallWrite::AlreadyApplied
                        } else {
                            return Ok(UninstallWrite::Newer {
                                at_ms: old.lifecycle_at_ms,
                            });
                        }
                    }
                },
                _ => return Err(dynamo("UpdateItem(uninstall)")(e)),
            },
        };
        self.erase_journal(id).await?;
        Ok(outcome)
    }

    /// Removes the tokens from every journal entry of an install (the
    /// entries stay until their TTL, empty).
    async fn erase_journal(&self, id: &InstallId) -> Result<(), StoreError> {
        let entries = self
            .items_with_prefix(
                &id.key(),
                JOURNAL_SK_PREFIX,
                true,
                "Query(journal to erase)",
            )
            .await?;
        for item in entries {
            let Some(sk) = get_s(&item, SK) else { continue };
            let mut u = Update::default();
            u.remove(attr::ACCESS_TOKEN).remove(attr::REFRESH_TOKEN);
            self.update(&id.key(), sk, u)?
                .send()
                .await
                .map_err(dynamo("UpdateItem(erase journal)"))?;
        }
        Ok(())
    }
}
