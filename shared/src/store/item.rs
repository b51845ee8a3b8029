//! The item codec: attribute names, value helpers, and the update-expression
//! builder every write goes through.

use crate::schema::{PK, SK};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// Attribute names, in one place.
pub mod attr {
    pub const ACCESS_TOKEN: &str = "access_token";
    pub const REFRESH_TOKEN: &str = "refresh_token";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const USER_TYPE: &str = "user_type";
    pub const COMPANY_ID: &str = "company_id";
    pub const LOCATION_ID: &str = "location_id";
    pub const USER_ID: &str = "user_id";
    pub const SCOPE: &str = "scope";
    pub const PLAN_ID: &str = "plan_id";
    pub const IS_BULK: &str = "is_bulk_installation";
    pub const APPROVED_LOCATIONS: &str = "approved_locations";
    pub const INSTALL_TO_FUTURE: &str = "install_to_future_locations";
    pub const APPROVE_ALL: &str = "approve_all_locations";
    pub const STATE: &str = "state";
    pub const STATE_REASON: &str = "state_reason";
    pub const STATE_CHANGED_AT: &str = "state_changed_at";
    pub const VERSION: &str = "version";
    pub const LEASE_OWNER: &str = "lease_owner";
    pub const LEASE_UNTIL: &str = "lease_until_ms";
    pub const LEASE_INTENT: &str = "lease_intent";
    pub const DOUBT_SINCE: &str = "doubt_since_ms";
    pub const LINK_STATE: &str = "link_state";
    pub const LINK_AT: &str = "link_at_ms";
    pub const LINK_SOURCE: &str = "link_source";
    /// Epoch ms of the newest lifecycle event applied to a grant (install,
    /// reinstall, mint, uninstall): HighLevel's event time for a webhook,
    /// ours for a code exchange or a mint. Every lifecycle effect is ordered
    /// on it.
    pub const LIFECYCLE_AT: &str = "lifecycle_at_ms";
    /// Epoch ms of the PLAN_CHANGE event whose plan is stored.
    pub const PLAN_AT: &str = "plan_at_ms";
    pub const LINK_MISSING_SINCE: &str = "link_missing_since_ms";
    pub const FAILURES: &str = "failures";
    pub const INSTALLED_AT: &str = "installed_at";
    pub const LAST_INSTALLED_AT: &str = "last_installed_at";
    pub const INSTALL_COUNT: &str = "install_count";
    pub const REFRESH_COUNT: &str = "refresh_count";
    pub const LAST_REFRESHED_AT: &str = "last_refreshed_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const KEY_ID: &str = "key_id";
    pub const OWNER: &str = "owner";
    pub const WRITTEN_AT: &str = "written_at";
    pub const CODE_STATE: &str = "code_state";
    pub const CLAIMED_AT: &str = "claimed_at";
    pub const INSTALL_KEY: &str = "install_key";
}

/// collide with DynamoDB's reserved words.
#[derive(Default)]
pub(super) struct Update {
    pub(super) sets: Vec<String>,
    pub(super) removes: Vec<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
    /// What each attribute becomes when the item does not exist yet: lets
    /// one builder describe both the update and the equivalent new item.
    pub(super) fresh: Vec<(String, AttributeValue)>,
}

impl Update {
    pub(super) fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{}", attr.replace(['-', '.'], "_"));
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    pub(super) fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    pub(super) fn set(&mut self, attr: &str, v: AttributeValue) -> &mut Self {
        self.fresh.push((attr.to_owned(), v.clone()));
        let (n, v) = (self.name(attr), self.value(v));
        self.sets.push(format!("{n} = {v}"));
        self
    }

    pub(super) fn set_opt(&mut self, attr: &str, v: Option<AttributeValue>) -> &mut Self {
        match v {
            Some(v) => self.set(attr, v),
            None => self.remove(attr),
        }
    }

    pub(super) fn set_if_absent(&mut self, attr: &str, v: AttributeValue) -> &mut Self {
        self.fresh.push((attr.to_owned(), v.clone()));
        let (n, v) = (self.name(attr), self.value(v));
        self.sets.push(format!("{n} = if_not_exists({n}, {v})"));
        self
    }

    /// `target = if_not_exists(source, v)`: carries `source` over when it
    /// exists (read from the item before this write), `v` otherwise.
    pub(super) fn set_from_if_absent(
        &mut self,
        target: &str,
        source: &str,
        v: AttributeValue,
    ) -> &mut Self {
        self.fresh.push((target.to_owned(), v.clone()));
        let (t, src, v) = (self.name(target), self.name(source), self.value(v));
        self.sets.push(format!("{t} = if_not_exists({src}, {v})"));
        self
    }

    pub(super) fn increment(&mut self, attr: &str) -> &mut Self {
        self.fresh.push((attr.to_owned(), num(1)));
        let n = self.name(attr);
        let zero = self.value(num(0));
        let one = self.value(num(1));
        self.sets
            .push(format!("{n} = if_not_exists({n}, {zero}) + {one}"));
        self
    }

    /// Drops the lease (owner, expiry, intent) in the same write.
    pub(super) fn release_lease(&mut self) -> &mut Self {
        self.remove(attr::LEASE_OWNER)
            .remove(attr::LEASE_UNTIL)
            .remove(attr::LEASE_INTENT)
    }

    pub(super) fn remove(&mut self, attr: &str) -> &mut Self {
        let n = self.name(attr);
        self.removes.push(n);
        self
    }

    /// The item this update creates when applied to no item.
    pub(super) fn into_new_item(self, pk: &str, sk: &str) -> Item {
        let mut item = key_of(pk, sk);
        item.extend(self.fresh);
        item
    }

    pub(super) fn expression(&self) -> String {
        let mut e = String::new();
        if !self.sets.is_empty() {
            e.push_str("SET ");
            e.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            e.push_str(" REMOVE ");
            e.push_str(&self.removes.join(", "));
        }
        e
    }
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn num(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok())
}

pub(super) fn get_bool(item: &Item, name: &str) -> Option<bool> {
    item.get(name).and_then(|v| v.as_bool().ok()).copied()
}

pub(super) fn get_list(item: &Item, name: &str) -> Option<Vec<String>> {
    item.get(name)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
}

pub(super) fn key_of(pk: &str, sk: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}
