//! The installs store on DynamoDB.
//!
//! One item per install (`sk = grant`), journal entries beside it
//! (`sk = journal#<version>`), and code claims (`pk = code#<sha256>`).
//! Tokens are sealed with [`crate::crypto`] before they leave this module and
//! opened when items are read; nothing outside sees ciphertext.
//!
//! Modules: [`item`] (attribute names, the update builder), [`lease`]
//! (install leases and mint locks, one mechanism), [`journal`], [`codes`]
//! (authorization-code claims), [`due`] (the sharded due index), [`fleet`]
//! (the sparse broken index and the state census), [`links`]. This file
//! holds the install item itself: saving a grant, reading and decoding it,
//! and the fenced writes that commit a pair or record a state.

mod codes;
mod due;
mod fleet;
mod item;
mod journal;
mod lease;
mod links;
mod missing;
mod webhooks;

pub use codes::{CodeRecord, code_hash};
pub use due::{DuePage, shard_name, shard_of};
pub use fleet::{BrokenInstall, BrokenPage};
pub use item::attr;
pub use journal::JournalEntry;
pub use lease::{LeaseOutcome, LeaseWhen, lease_token};
pub use links::{LinkState, LocationLink, UninstallWrite};

use crate::config::DuePolicy;
use crate::crypto::{CryptoError, Keyring};
use crate::iam::FunctionPolicy;
use crate::model::{GrantInfo, InstallId, InstallState, TokenPair, UserType, now_millis, now_secs};
use crate::redact::SecretString;
use crate::schema::{BROKEN_SHARD, BROKEN_SINCE, DUE_AT, DUE_SHARD, PK, SK};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use item::{Item, Update, get_bool, get_list, get_n, get_s, key_of, num, s};

pub const GRANT_SK: &str = "grant";
/// A plan kept for an install whose grant is not stored yet.
const PLAN_SK: &str = "plan";

/// A location's plan is one plan, whichever grant (its own install or the
/// minted token) holds it.
fn plan_key(id: &InstallId) -> String {
    match id {
        InstallId::Company(_) => id.key(),
        InstallId::Location(l) | InstallId::Minted(l) => InstallId::Location(l.clone()).key(),
    }
}

/// What a PLAN_CHANGE did to one grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanWrite {
    Stored,
    /// The grant's plan, or the grant itself, is from a newer event.
    Older,
    NoGrant,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {op} failed: {reason}")]
    Dynamo { op: &'static str, reason: String },
    #[error("item {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("item {key} could not be decrypted: {source}")]
    Crypto { key: String, source: CryptoError },
    /// A call the function's IAM policy does not grant: a code change added
    /// it without adding it to `shared::iam::POLICIES` and the template.
    #[error(
        "{function} may not touch {kind}# items (dynamodb:LeadingKeys: shared::iam::POLICIES, infra/template.yaml)"
    )]
    KeyNotPermitted {
        function: &'static str,
        kind: String,
    },
    #[error(
        "{function} is not granted {action} on {on} (shared::iam::POLICIES, infra/template.yaml)"
    )]
    NotPermitted {
        function: &'static str,
        action: &'static str,
        on: &'static str,
    },
}

fn dynamo<E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Dynamo {
        op,
        reason: crate::aws::error_text(&e),
    }
}

/// A stored install, tokens opened.
#[derive(Debug, Clone)]
pub struct Install {
    pub id: InstallId,
    pub info: GrantInfo,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    /// Epoch seconds.
    pub expires_at: i64,
    pub state: InstallState,
    pub state_reason: Option<String>,
    pub state_changed_at: i64,
    /// Counts token changes; every token write is conditioned on it (the fencing token).
    pub version: u64,
    /// The lease token: who holds the install, unique per taking (a retried
    /// lease write recognises its own).
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    /// Why the lease was taken: `refresh` (the holder may present the
    /// refresh token) or `maintain` (key rotation).
    pub lease_intent: Option<String>,
    /// Set when a presentation of the current refresh token had an unknown
    /// outcome (or its holder died mid-refresh): epoch ms of the first such
    /// send. Cleared by the next commit. An `Invalid grant` while it is set
    /// means the grant is `lost`, not `revoked`.
    pub doubt_since_ms: Option<i64>,
    pub due_at: Option<i64>,
    /// Epoch seconds since the install stopped being `active` (None while
    /// it is): the broken index's sort key.
    pub broken_since: Option<i64>,
    pub failures: u32,
    pub installed_at: i64,
    pub last_installed_at: i64,
    /// Epoch ms of the newest lifecycle event applied (see
    /// [`attr::LIFECYCLE_AT`]); for rows written before it existed, the
    /// install or uninstall time in whole seconds.
    pub lifecycle_at_ms: i64,
    /// Epoch ms of the event (a PLAN_CHANGE, or the token answer) that set
    /// the plan; 0 when unknown.
    pub plan_at_ms: i64,
    pub install_count: u64,
    pub refresh_count: u64,
    /// Epoch seconds of the last committed refresh; a refresh leaves
    /// `state_changed_at` alone when the install stays active.
    pub last_refreshed_at: Option<i64>,
    pub updated_at: i64,
    /// True when either token is sealed under a data key other than the
    /// current one, or in the old `v1` format (`rekey` re-seals these).
    pub stale_key: bool,
}

impl Install {
    /// The token of the lease this copy was taken with ("" when none: a
    /// fenced write naming it then matches nothing).
    pub fn lease_token(&self) -> &str {
        self.lease_owner.as_deref().unwrap_or_default()
    }
}

/// What a refresh attempt that did not commit new tokens leaves behind.
#[derive(Debug, Clone, Copy)]
pub struct StateChange<'a> {
    pub state: InstallState,
    pub reason: &'a str,
    /// When to try again; None takes the install out of the due index.
    pub due_at: Option<i64>,
    pub failures: u32,
    /// Whether the current refresh token's fate is unknown, since when (ms).
    pub doubt_since_ms: Option<i64>,
}

#[derive(Clone)]
pub struct Store {
    ddb: Client,
    table: String,
    keyring: Keyring,
    due: DuePolicy,
    /// The IAM grants of the function using this store. Every call checks
    /// them first, so a call the deployed role would refuse fails in the
    /// integration tests too. None for the operator's admin tool.
    policy: Option<&'static FunctionPolicy>,
}

impl Store {
    pub fn new(ddb: Client, table: impl Into<String>, keyring: Keyring, due: DuePolicy) -> Self {
        Self {
            ddb,
            table: table.into(),
            keyring,
            due,
            policy: None,
        }
    }

    /// Limits this store to the DynamoDB actions `policy` grants.
    pub fn restricted_to(mut self, policy: &'static FunctionPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    fn permit(
        &self,
        action: &'static str,
        granted: fn(&FunctionPolicy) -> &[&str],
        on: &'static str,
    ) -> Result<&Client, StoreError> {
        match self.policy {
            Some(p) if !granted(p).contains(&action) => Err(StoreError::NotPermitted {
                function: p.function,
                action,
                on,
            }),
            _ => Ok(&self.ddb),
        }
    }

    fn table_op(&self, action: &'static str) -> Result<&Client, StoreError> {
        self.permit(action, |p| p.dynamodb, "the installs table")
    }

    /// [`Store::table_op`] on the items of partition `pk`, which the
    /// function's `dynamodb:LeadingKeys` must admit too.
    fn item_op(&self, action: &'static str, pk: &str) -> Result<&Client, StoreError> {
        if let Some(p) = self.policy
            && !p.table_keys.is_empty()
            && !p.table_keys.iter().any(|prefix| pk.starts_with(prefix))
        {
            return Err(StoreError::KeyNotPermitted {
                function: p.function,
                kind: pk.split('#').next().unwrap_or_default().to_owned(),
            });
        }
        self.table_op(action)
    }

    fn index_op(&self, action: &'static str) -> Result<&Client, StoreError> {
        self.permit(action, |p| p.dynamodb_index, "the due index")
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn due_policy(&self) -> &DuePolicy {
        &self.due
    }

    fn set_tokens(&self, u: &mut Update, id: &InstallId, pair: &TokenPair) {
        let key = id.key();
        u.set(
            attr::ACCESS_TOKEN,
            s(self
                .keyring
                .seal(&pair.access_token, &key, GRANT_SK, attr::ACCESS_TOKEN)),
        );
        u.set(
            attr::REFRESH_TOKEN,
            s(self
                .keyring
                .seal(&pair.refresh_token, &key, GRANT_SK, attr::REFRESH_TOKEN)),
        );
        u.set(attr::KEY_ID, s(self.keyring.current_key_id()));
        u.set(attr::EXPIRES_AT, num(pair.expires_at));
    }

    fn set_info(&self, u: &mut Update, info: &GrantInfo) {
        u.set_opt(attr::USER_TYPE, info.user_type.map(|t| s(t.as_str())));
        u.set_opt(attr::COMPANY_ID, info.company_id.clone().map(s));
        u.set_opt(attr::LOCATION_ID, info.location_id.clone().map(s));
        u.set_opt(attr::USER_ID, info.user_id.clone().map(s));
        u.set_opt(attr::SCOPE, info.scope.clone().map(s));
        u.set_opt(attr::PLAN_ID, info.plan_id.clone().map(s));
        u.set_opt(
            attr::IS_BULK,
            info.is_bulk_installation.map(AttributeValue::Bool),
        );
        u.set_opt(
            attr::APPROVED_LOCATIONS,
            info.approved_locations
                .as_ref()
                .map(|l| AttributeValue::L(l.iter().cloned().map(s).collect())),
        );
        u.set_opt(
            attr::INSTALL_TO_FUTURE,
            info.install_to_future_locations.map(AttributeValue::Bool),
        );
        u.set_opt(
            attr::APPROVE_ALL,
            info.approve_all_locations.map(AttributeValue::Bool),
        );
    }

    /// Every write that sets an install's state goes through here (saving a
    /// grant, committing a pair, recording a state, uninstalling), so the
    /// broken index follows the state in the same write: an install not
    /// `active` carries the index's keys (its state as the partition, and
    /// `broken_since` kept from when it first stopped being active), an
    /// `active` one carries neither.
    ///
    /// `state_changed_at` and `state_reason` say when and why the install
    /// entered its current state, so a write that keeps the state (every
    /// refresh of an active install, a retry that fails again) keeps them.
    /// DynamoDB cannot compare the old state inside a SET, so each state
    /// keeps its own entry marks (`state_since_<state>`, `state_why_<state>`)
    /// while the install is in it: `if_not_exists` carries them over when the
    /// state is unchanged, and every other state's marks are removed in the
    /// same write. No read before the write, and no race with another writer.
    fn set_state(&self, u: &mut Update, state: InstallState, reason: &str, now: i64) {
        u.set(attr::STATE, s(state.as_str()));
        let (since, why) = state_marks(state);
        u.set_from_if_absent(attr::STATE_CHANGED_AT, &since, num(now));
        u.set_if_absent(&since, num(now));
        u.set_from_if_absent(attr::STATE_REASON, &why, s(reason));
        u.set_if_absent(&why, s(reason));
        for other in InstallState::ALL.into_iter().filter(|&o| o != state) {
            let (since, why) = state_marks(other);
            u.remove(&since).remove(&why);
        }
        u.set(attr::UPDATED_AT, num(now));
        if state == InstallState::Active {
            u.remove(BROKEN_SHARD).remove(BROKEN_SINCE);
        } else {
            u.set(BROKEN_SHARD, s(state.as_str()));
            u.set_if_absent(BROKEN_SINCE, num(now));
        }
    }

    fn update(
        &self,
        pk: &str,
        sk: &str,
        u: Update,
    ) -> Result<
        aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
        StoreError,
    > {
        Ok(self
            .item_op("dynamodb:UpdateItem", pk)?
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, sk)))
            .update_expression(u.expression())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(if u.values.is_empty() {
                None
            } else {
                Some(u.values)
            }))
    }

    fn grant_update(
        &self,
        id: &InstallId,
        pair: &TokenPair,
        info: &GrantInfo,
        reason: &str,
    ) -> Update {
        let now = now_secs();
        let mut u = Update::default();
        self.set_tokens(&mut u, id, pair);
        self.set_info(&mut u, info);
        self.set_state(&mut u, InstallState::Active, reason, now);
        self.set_due(&mut u, id, self.due_time(pair.expires_at));
        u.set(attr::FAILURES, num(0));
        u.set(attr::LAST_INSTALLED_AT, num(now));
        u.set_if_absent(attr::INSTALLED_AT, num(now));
        u.set_if_absent(attr::REFRESH_COUNT, num(0));
        u.increment(attr::INSTALL_COUNT);
        u.increment(attr::VERSION);
        // A new grant: no doubt about it, and any refresh of the old one in
        // flight can no longer commit (the version moved), so its lease goes.
        u.remove(attr::DOUBT_SINCE);
        u.release_lease();
        u
    }

    /// Writes new installs in bulk, 25 per request, exactly as
    /// [`Store::save_grant`] would create them: for seeding benchmarks and
    /// load tests, never for the functions (their policies do not grant
    /// BatchWriteItem). Overwrites without conditions.
    pub async fn put_new_grants(
        &self,
        grants: &[(InstallId, TokenPair, GrantInfo)],
    ) -> Result<(), StoreError> {
        for chunk in grants.chunks(25) {
            let mut requests: Vec<aws_sdk_dynamodb::types::WriteRequest> = chunk
                .iter()
                .map(|(id, pair, info)| {
                    let mut u = self.grant_update(id, pair, info, "seeded");
                    u.set(attr::LIFECYCLE_AT, num(now_millis()));
                    let item = u.into_new_item(&id.key(), GRANT_SK);
                    let put = aws_sdk_dynamodb::types::PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .map_err(|e| StoreError::Dynamo {
                            op: "BatchWriteItem(build)",
                            reason: e.to_string(),
                        })?;
                    Ok(aws_sdk_dynamodb::types::WriteRequest::builder()
                        .put_request(put)
                        .build())
                })
                .collect::<Result<_, StoreError>>()?;
            // DynamoDB may hand back unprocessed items under load: resend them.
            while !requests.is_empty() {
                let out = self
                    .table_op("dynamodb:BatchWriteItem")?
                    .batch_write_item()
                    .request_items(self.table.clone(), requests)
                    .send()
                    .await
                    .map_err(dynamo("BatchWriteItem(new grants)"))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    /// Stores a fresh grant from a code exchange or a mint. A reinstall
    /// replaces the tokens and keeps the install's identity: first-install
    /// time, counters, and a version that only grows (so any refresh still in
    /// flight for the old tokens cannot commit over the new ones).
    pub async fn save_grant(
        &self,
        id: &InstallId,
        pair: &TokenPair,
        info: &GrantInfo,
        reason: &str,
    ) -> Result<Install, StoreError> {
        // A PLAN_CHANGE that came before the grant left its plan aside; the
        // answer's own plan, when it has one, is HighLevel's of this moment.
        let kept;
        let (info, plan_at) = match &info.plan_id {
            Some(_) => (info, now_millis()),
            None => match self.kept_plan(id).await {
                Ok(Some((plan_id, at_ms))) => {
                    kept = GrantInfo {
                        plan_id: Some(plan_id),
                        ..info.clone()
                    };
                    (&kept, at_ms)
                }
                Ok(None) => (info, 0),
                Err(e) => {
                    // The tokens matter more than the plan: store them.
                    tracing::warn!(install_id = %id, error = %e, "kept plan not read");
                    (info, 0)
                }
            },
        };
        // A grant HighLevel just issued (a code exchange, a mint) is the
        // newest word on this install: an UNINSTALL stamped before it is
        // older and erases nothing. Our clock says when; should HighLevel's
        // run ahead (its event stamped later than this moment), the grant
        // still goes after the newest event stored, so a reinstall is never
        // read as older than the uninstall it follows.
        let write = |lifecycle_at: i64, conditioned: bool| {
            let mut u = self.grant_update(id, pair, info, reason);
            u.set(attr::LIFECYCLE_AT, num(lifecycle_at));
            match info.plan_id {
                Some(_) => u.set(attr::PLAN_AT, num(plan_at)),
                None => u.remove(attr::PLAN_AT),
            };
            let cond = conditioned.then(|| {
                let (n, v) = (u.name(attr::LIFECYCLE_AT), u.value(num(lifecycle_at)));
                format!("attribute_not_exists({n}) OR {n} < {v}")
            });
            self.update(&id.key(), GRANT_SK, u).map(|b| {
                b.set_condition_expression(cond)
                    .return_values(ReturnValue::AllNew)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
            })
        };
        let out = match write(now_millis(), true)?.send().await {
            Ok(out) => out,
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let newest = c
                        .item()
                        .and_then(|old| get_n(old, attr::LIFECYCLE_AT))
                        .unwrap_or(0);
                    // Unconditional: the tokens must be stored whatever.
                    write(newest.saturating_add(1), false)?
                        .send()
                        .await
                        .map_err(dynamo("UpdateItem(save grant)"))?
                }
                _ => return Err(dynamo("UpdateItem(save grant)")(e)),
            },
        };
        self.decode(out.attributes.unwrap_or_default())
    }

    /// Records a plan change on a stored grant, unless the grant's plan is
    /// from a newer event (`at_ms`, the event's time). A plan that came in a
    /// token answer is HighLevel's plan at that answer's time, recorded as
    /// such in `plan_at_ms`.
    pub async fn set_plan(
        &self,
        id: &InstallId,
        plan_id: &str,
        at_ms: i64,
    ) -> Result<PlanWrite, StoreError> {
        let mut u = Update::default();
        u.set(attr::PLAN_ID, s(plan_id));
        u.set(attr::PLAN_AT, num(at_ms));
        u.set(attr::UPDATED_AT, num(now_secs()));
        let pk_n = u.name(PK);
        let (plan_n, at_v) = (u.name(attr::PLAN_AT), u.value(num(at_ms)));
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(format!(
                "attribute_exists({pk_n}) AND (attribute_not_exists({plan_n}) OR {plan_n} <= {at_v})"
            ))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match res {
            Ok(_) => Ok(PlanWrite::Stored),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(if c.item().is_some() { PlanWrite::Older } else { PlanWrite::NoGrant })
                }
                _ => Err(dynamo("UpdateItem(plan)")(e)),
            },
        }
    }

    /// Keeps a plan for an install that has no grant stored yet (a
    /// PLAN_CHANGE can arrive before the OAuth callback or the first mint),
    /// ordered by event time like the grant's own plan. False when a newer
    /// plan was kept already.
    pub async fn keep_plan(
        &self,
        id: &InstallId,
        plan_id: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut u = Update::default();
        u.set(attr::PLAN_ID, s(plan_id));
        u.set(attr::PLAN_AT, num(at_ms));
        u.set(attr::UPDATED_AT, num(now_secs()));
        let (plan_n, at_v) = (u.name(attr::PLAN_AT), u.value(num(at_ms)));
        let res = self
            .update(&plan_key(id), PLAN_SK, u)?
            .condition_expression(format!(
                "attribute_not_exists({plan_n}) OR {plan_n} <= {at_v}"
            ))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("UpdateItem(kept plan)")(e)),
        }
    }

    /// The plan kept for an install before its grant existed.
    pub async fn kept_plan(&self, id: &InstallId) -> Result<Option<(String, i64)>, StoreError> {
        let out = self
            .item_op("dynamodb:GetItem", &plan_key(id))?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&plan_key(id), PLAN_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem(kept plan)"))?;
        Ok(out.item.as_ref().and_then(|i| {
            Some((
                get_s(i, attr::PLAN_ID)?.to_owned(),
                get_n(i, attr::PLAN_AT).unwrap_or(0),
            ))
        }))
    }

    /// A strongly consistent read of one install's state and times, its
    /// tokens left sealed (read as empty).
    pub async fn get_without_tokens(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        self.grant_item(id)
            .await?
            .map(|i| self.decode_without_tokens(i))
            .transpose()
    }

    async fn grant_item(&self, id: &InstallId) -> Result<Option<Item>, StoreError> {
        let out = self
            .item_op("dynamodb:GetItem", &id.key())?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&id.key(), GRANT_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem"))?;
        Ok(out.item)
    }

    /// A strongly consistent read of one install.
    pub async fn get(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        self.grant_item(id)
            .await?
            .map(|i| self.decode(i))
            .transpose()
    }

    pub fn decode(&self, item: Item) -> Result<Install, StoreError> {
        self.decode_as(item, true)
    }

    /// Everything but the tokens, which read as empty and are never opened:
    /// for the lifecycle paths (an uninstall, a plan) that erase or ignore
    /// tokens and so need no data key.
    pub(crate) fn decode_without_tokens(&self, item: Item) -> Result<Install, StoreError> {
        self.decode_as(item, false)
    }

    fn decode_as(&self, item: Item, open_tokens: bool) -> Result<Install, StoreError> {
        let pk = get_s(&item, PK).unwrap_or_default().to_owned();
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: pk.clone(),
            reason: reason.to_owned(),
        };
        let id = InstallId::parse_key(&pk).ok_or_else(|| corrupt("not an install key"))?;
        let open = |field: &str| -> Result<SecretString, StoreError> {
            let sealed = get_s(&item, field).ok_or_else(|| corrupt(&format!("{field} missing")))?;
            self.keyring
                .open(sealed, &pk, GRANT_SK, field)
                .map_err(|source| StoreError::Crypto {
                    key: pk.clone(),
                    source,
                })
        };
        let state_text = get_s(&item, attr::STATE).unwrap_or("active");
        let state = InstallState::parse(state_text).ok_or_else(|| corrupt("unknown state"))?;
        // An uninstalled grant's tokens are erased: it reads with empty ones,
        // which nothing presents (the state is terminal).
        let erased = state == InstallState::Uninstalled;
        // Stale: under an old key, or in the old format (`v1`, whose
        // associated data lacks the sort key); `rekey` re-seals either.
        let stale_key = !erased
            && [attr::ACCESS_TOKEN, attr::REFRESH_TOKEN]
                .iter()
                .any(|f| !get_s(&item, f).is_some_and(|v| self.keyring.is_current(v)));
        let token = |field: &str| {
            if erased || !open_tokens {
                Ok(SecretString::new(""))
            } else {
                open(field)
            }
        };
        Ok(Install {
            access_token: token(attr::ACCESS_TOKEN)?,
            refresh_token: token(attr::REFRESH_TOKEN)?,
            expires_at: match get_n(&item, attr::EXPIRES_AT) {
                Some(t) => t,
                None if erased => 0,
                None => return Err(corrupt("expires_at missing")),
            },
            info: GrantInfo {
                user_type: get_s(&item, attr::USER_TYPE).and_then(UserType::parse),
                company_id: get_s(&item, attr::COMPANY_ID).map(str::to_owned),
                location_id: get_s(&item, attr::LOCATION_ID).map(str::to_owned),
                user_id: get_s(&item, attr::USER_ID).map(str::to_owned),
                scope: get_s(&item, attr::SCOPE).map(str::to_owned),
                plan_id: get_s(&item, attr::PLAN_ID).map(str::to_owned),
                is_bulk_installation: get_bool(&item, attr::IS_BULK),
                approved_locations: get_list(&item, attr::APPROVED_LOCATIONS),
                install_to_future_locations: get_bool(&item, attr::INSTALL_TO_FUTURE),
                approve_all_locations: get_bool(&item, attr::APPROVE_ALL),
            },
            state,
            state_reason: get_s(&item, attr::STATE_REASON).map(str::to_owned),
            state_changed_at: get_n(&item, attr::STATE_CHANGED_AT).unwrap_or(0),
            version: get_n(&item, attr::VERSION).unwrap_or(0) as u64,
            lease_owner: get_s(&item, attr::LEASE_OWNER).map(str::to_owned),
            lease_until_ms: get_n(&item, attr::LEASE_UNTIL),
            lease_intent: get_s(&item, attr::LEASE_INTENT).map(str::to_owned),
            doubt_since_ms: get_n(&item, attr::DOUBT_SINCE),
            due_at: get_n(&item, DUE_AT),
            broken_since: get_n(&item, BROKEN_SINCE),
            failures: get_n(&item, attr::FAILURES).unwrap_or(0) as u32,
            installed_at: get_n(&item, attr::INSTALLED_AT).unwrap_or(0),
            last_installed_at: get_n(&item, attr::LAST_INSTALLED_AT).unwrap_or(0),
            plan_at_ms: get_n(&item, attr::PLAN_AT).unwrap_or(0),
            lifecycle_at_ms: get_n(&item, attr::LIFECYCLE_AT).unwrap_or_else(|| {
                let secs = if erased {
                    get_n(&item, attr::STATE_CHANGED_AT)
                } else {
                    get_n(&item, attr::LAST_INSTALLED_AT)
                };
                secs.unwrap_or(0).saturating_mul(1000)
            }),
            install_count: get_n(&item, attr::INSTALL_COUNT).unwrap_or(0) as u64,
            refresh_count: get_n(&item, attr::REFRESH_COUNT).unwrap_or(0) as u64,
            last_refreshed_at: get_n(&item, attr::LAST_REFRESHED_AT),
            updated_at: get_n(&item, attr::UPDATED_AT).unwrap_or(0),
            stale_key,
            id,
        })
    }

    // ---- code claims -------------------------------------------------

    // ---- commits and state changes ------------------------------------

    /// Commits a rotated pair as version `to` (normally `from + 1`; higher when
    /// adopting a journal entry). Conditioned on the
    /// version alone: only one refresh of the version-`from` token can have
    /// succeeded, so whoever holds it holds the newest grant, lease or not.
    /// Returns false when the version moved on (the pair stays in the journal).
    pub async fn commit_pair(
        &self,
        id: &InstallId,
        from: u64,
        to: u64,
        pair: &TokenPair,
        info: Option<&GrantInfo>,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_secs();
        let mut u = Update::default();
        self.set_tokens(&mut u, id, pair);
        if let Some(info) = info {
            // A refresh answer may repeat the grant's metadata; keep what it omits.
            for (name, value) in [
                (attr::SCOPE, &info.scope),
                (attr::PLAN_ID, &info.plan_id),
                (attr::USER_ID, &info.user_id),
            ] {
                if let Some(v) = value {
                    u.set(name, s(v.clone()));
                }
            }
            if info.plan_id.is_some() {
                u.set(attr::PLAN_AT, num(now_millis()));
            }
        }
        self.set_state(&mut u, InstallState::Active, reason, now);
        self.set_due(&mut u, id, self.due_time(pair.expires_at));
        u.set(attr::FAILURES, num(0));
        u.set(attr::LAST_REFRESHED_AT, num(now));
        u.set(attr::VERSION, num(to as i64));
        u.increment(attr::REFRESH_COUNT);
        u.remove(attr::DOUBT_SINCE);
        u.release_lease();
        self.fenced(id, u, from, None, "UpdateItem(commit pair)")
            .await
    }

    /// Applies `u` only if the install is still at `version` and, with
    /// `owner`, still leased by it. False when either moved on.
    async fn fenced(
        &self,
        id: &InstallId,
        mut u: Update,
        version: u64,
        owner: Option<&str>,
        op: &'static str,
    ) -> Result<bool, StoreError> {
        let (vn, vv) = (u.name(attr::VERSION), u.value(num(version as i64)));
        let mut cond = format!("{vn} = {vv}");
        if let Some(owner) = owner {
            let (on, ov) = (u.name(attr::LEASE_OWNER), u.value(s(owner)));
            cond.push_str(&format!(" AND {on} = {ov}"));
        }
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(cond)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo(op)(e)),
        }
    }

    /// Records a state change and releases the lease, if the lease and
    /// version are still ours. `due_at` None takes the install out of the
    /// due index. Returns false when it was not ours any more.
    pub async fn record_state(
        &self,
        id: &InstallId,
        owner: &str,
        version: u64,
        change: &StateChange<'_>,
    ) -> Result<bool, StoreError> {
        let StateChange {
            state,
            reason,
            due_at,
            failures,
            doubt_since_ms,
        } = *change;
        let now = now_secs();
        let mut u = Update::default();
        self.set_state(&mut u, state, reason, now);
        match due_at {
            Some(t) => self.set_due(&mut u, id, t),
            None => {
                u.remove(DUE_SHARD).remove(DUE_AT);
            }
        }
        u.set(attr::FAILURES, num(i64::from(failures)));
        u.set_opt(attr::DOUBT_SINCE, doubt_since_ms.map(num));
        u.release_lease();
        self.fenced(id, u, version, Some(owner), "UpdateItem(record state)")
            .await
    }

    /// Re-seals both tokens under the current data key, under our lease and
    /// version, without changing anything else.
    pub async fn reseal(&self, install: &Install) -> Result<bool, StoreError> {
        let owner = install.lease_token();
        let mut u = Update::default();
        self.set_tokens(
            &mut u,
            &install.id,
            &TokenPair {
                access_token: install.access_token.clone(),
                refresh_token: install.refresh_token.clone(),
                expires_at: install.expires_at,
            },
        );
        u.release_lease();
        self.fenced(
            &install.id,
            u,
            install.version,
            Some(owner),
            "UpdateItem(reseal)",
        )
        .await
    }

    /// Every install key, page by page (maintenance only: key rotation).
    pub async fn install_keys_page(
        &self,
        start: Option<Item>,
    ) -> Result<(Vec<InstallId>, Option<Item>), StoreError> {
        let out = self
            .table_op("dynamodb:Scan")?
            .scan()
            .table_name(&self.table)
            .filter_expression("#sk = :grant")
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":grant", s(GRANT_SK))
            .projection_expression("#pk, #sk")
            .expression_attribute_names("#pk", PK)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo("Scan(installs)"))?;
        let ids = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|i| InstallId::parse_key(get_s(i, PK)?))
            .collect();
        Ok((ids, out.last_evaluated_key))
    }
}

/// The attributes that remember when, and why, an install entered `state`.
fn state_marks(state: InstallState) -> (String, String) {
    (
        format!("state_since_{}", state.as_str()),
        format!("state_why_{}", state.as_str()),
    )
}

fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

fn ignore_condition_failure<
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
>(
    res: Result<(), E>,
    op: &'static str,
) -> Result<(), StoreError> {
    match res {
        Ok(()) => Ok(()),
        Err(e) if is_condition_failure(&e) => Ok(()),
        Err(e) => Err(dynamo(op)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("company#c1", 16), shard_of("company#c1", 16));
        for i in 0..200 {
            assert!(shard_of(&format!("company#{i}"), 7) < 7);
        }
        assert_eq!(shard_of("x", 1), 0);
        assert_eq!(shard_name(3), "003");
    }

    #[test]
    fn update_expressions_use_placeholders() {
        let mut u = Update::default();
        u.set("state", s("active"))
            .increment("version")
            .remove("lease_owner");
        let e = u.expression();
        assert_eq!(
            e,
            "SET #state = :v0, #version = if_not_exists(#version, :v1) + :v2 REMOVE #lease_owner"
        );
        assert_eq!(u.names.get("#state").map(String::as_str), Some("state"));
    }

    #[test]
    fn code_hash_is_hex_sha256() {
        let h = code_hash(&SecretString::new("abc"));
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("ba7816bf"));
    }

    fn offline_store() -> Store {
        // Points at a closed port: a call that got past the policy check
        // would fail with a DynamoDB error, not NotPermitted.
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
            .build();
        let keys = std::collections::BTreeMap::from([(
            "k1".to_owned(),
            SecretString::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        )]);
        Store::new(
            Client::from_conf(conf),
            "t",
            Keyring::from_base64("k1", &keys).unwrap(),
            DuePolicy {
                refresh_ahead: Duration::from_secs(60),
                jitter: Duration::ZERO,
                shards: 1,
            },
        )
    }

    #[tokio::test]
    async fn a_call_the_functions_policy_does_not_grant_is_refused_before_it_is_sent() {
        static NO_DELETE: FunctionPolicy = FunctionPolicy {
            function: "test-fn",
            dynamodb: &["dynamodb:PutItem", "dynamodb:UpdateItem"],
            table_keys: &["code#", "company#"],
            dynamodb_index: &[],
            secretsmanager: &[],
            events: &[],
        };
        let store = offline_store().restricted_to(&NO_DELETE);
        let err = store.release_code("abc").await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotPermitted {
                    action: "dynamodb:DeleteItem",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("test-fn is not granted dynamodb:DeleteItem")
        );
        let err = store.due_page(0, 0, 10, None).await.err().expect("refused");
        assert!(
            matches!(
                err,
                StoreError::NotPermitted {
                    on: "the due index",
                    ..
                }
            ),
            "{err}"
        );
        // A granted action on an item kind its LeadingKeys do not admit.
        let err = offline_store()
            .restricted_to(&NO_DELETE)
            .uninstall(&InstallId::Minted("l".into()), "r", 1)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::KeyNotPermitted { kind, .. } if kind == "minted"),
            "{err}"
        );
        assert!(
            err.to_string().contains("may not touch minted# items"),
            "{err}"
        );
        // A granted action goes through to DynamoDB (and fails there).
        let err = offline_store()
            .restricted_to(&NO_DELETE)
            .claim_code("abc")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Dynamo { .. }), "{err}");
    }
}
