//! Links that reconciliation found missing from HighLevel's listing of a
//! company's installed locations. A mark, not an uninstall: one listing is
//! never enough to erase a grant (a 200 can be a partial or wrong answer),
//! so reconciliation erases only on a later complete listing, at least the
//! grace period after the mark, that still misses the location. A mark is
//! kept on the company-side link item only, which is what `links_of` reads.
//!
//! `set_link` leaves the mark alone; a mark older than the link's latest
//! event (`at_ms`) is stale (the location was installed again since) and
//! reconciliation treats it as absent.

use super::item::{Update, attr, num, s};
use super::links::{LOCATION_SK_PREFIX, LinkState};
use super::{Store, StoreError, dynamo, is_condition_failure};
use crate::model::InstallId;
use crate::schema::PK;

impl Store {
    /// Marks an installed link missing since `at_ms`, unless it carries a
    /// current mark already (the first sighting is what the grace period
    /// runs from). False when nothing was written: a current mark, no
    /// such link, or the link is no longer installed.
    pub async fn mark_link_missing(
        &self,
        company_id: &str,
        location_id: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut u = Update::default();
        u.set(attr::LINK_MISSING_SINCE, num(at_ms));
        let (pk_n, state_n, at_n, missing_n) = (
            u.name(PK),
            u.name(attr::LINK_STATE),
            u.name(attr::LINK_AT),
            u.name(attr::LINK_MISSING_SINCE),
        );
        let installed_v = u.value(s(LinkState::Installed.as_str()));
        let res = self
            .update(
                &InstallId::Company(company_id.to_owned()).key(),
                &format!("{LOCATION_SK_PREFIX}{location_id}"),
                u,
            )?
            .condition_expression(format!(
                "attribute_exists({pk_n}) AND {state_n} = {installed_v} AND (attribute_not_exists({missing_n}) OR {missing_n} < {at_n})"
            ))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("UpdateItem(mark link missing)")(e)),
        }
    }

    /// Clears a link's missing mark (HighLevel lists the location again).
    /// False when it carried none.
    pub async fn clear_link_missing(
        &self,
        company_id: &str,
        location_id: &str,
    ) -> Result<bool, StoreError> {
        let mut u = Update::default();
        u.remove(attr::LINK_MISSING_SINCE);
        let missing_n = u.name(attr::LINK_MISSING_SINCE);
        let res = self
            .update(
                &InstallId::Company(company_id.to_owned()).key(),
                &format!("{LOCATION_SK_PREFIX}{location_id}"),
                u,
            )?
            .condition_expression(format!("attribute_exists({missing_n})"))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("UpdateItem(clear link missing)")(e)),
        }
    }
}
