//! The installs store on DynamoDB.
//!
//! One item per install (`sk = grant`), journal entries beside it
//! (`sk = journal#<version>`), and code claims (`pk = code#<sha256>`).
//! Tokens are sealed with [`crate::crypto`] before they leave this module and
//! opened when items are read; nothing outside sees ciphertext.

use crate::config::DuePolicy;
use crate::crypto::{CryptoError, Keyring};
use crate::iam::FunctionPolicy;
use crate::model::{GrantInfo, InstallId, InstallState, TokenPair, UserType, now_millis, now_secs};
use crate::redact::SecretString;
use crate::schema::{DUE_AT, DUE_INDEX, DUE_SHARD, PK, SK, TTL};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

type Item = HashMap<String, AttributeValue>;

pub const GRANT_SK: &str = "grant";
const JOURNAL_PREFIX: &str = "journal#";
const CODE_SK: &str = "code";
/// Journal entries outlive any sweep that could need them by far.
const JOURNAL_TTL_SECS: i64 = 30 * 86_400;
const CODE_TTL_SECS: i64 = 86_400;

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
    /// Set when a presentation of the current refresh token had an unknown
    /// outcome (or its holder died mid-refresh): epoch ms of the first such
    /// send. Cleared by the next commit. An `Invalid grant` while it is set
    /// means the grant is `lost`, not `revoked`.
    pub doubt_since_ms: Option<i64>,
    pub due_at: Option<i64>,
    pub failures: u32,
    pub installed_at: i64,
    pub last_installed_at: i64,
    pub install_count: u64,
    pub refresh_count: u64,
    pub updated_at: i64,
    /// True when either token is sealed under a data key other than the
    /// current one (key rotation re-seals these).
    pub stale_key: bool,
}

impl Install {
    /// The token of the lease this copy was taken with ("" when none: a
    /// fenced write naming it then matches nothing).
    pub fn lease_token(&self) -> &str {
        self.lease_owner.as_deref().unwrap_or_default()
    }
}

/// A journal entry: a rotated pair made durable before it is committed.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub version: u64,
    pub pair: TokenPair,
    pub owner: String,
}

/// What a code claim records, so a repeated callback shows the same page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRecord {
    Pending { claimed_at_ms: i64 },
    Done { install: InstallId },
}

/// Which condition a lease must satisfy besides being free.
#[derive(Debug, Clone, Copy)]
pub enum LeaseWhen {
    /// The sweep: only if still due (another sweep may have just refreshed it).
    DueBy(i64),
    /// The mint: only if the access token expires before this time.
    ExpiresBefore(i64),
    /// Maintenance (key rotation): whenever it is free.
    Always,
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

#[derive(Debug)]
pub enum LeaseOutcome {
    /// Taken. `abandoned` is true when the previous holder's lease ran out
    /// without a release: it may have presented the refresh token.
    Acquired {
        install: Box<Install>,
        abandoned: bool,
    },
    Held {
        owner: String,
        until_ms: i64,
    },
    /// The condition did not hold: not due any more, or not refreshable.
    NotNeeded {
        install: Box<Install>,
    },
    Missing,
}

/// A page of the due index.
pub struct DuePage {
    pub ids: Vec<(InstallId, i64)>,
    pub next: Option<Item>,
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

/// Builds update expressions with placeholders, so attribute names never
/// collide with DynamoDB's reserved words.
#[derive(Default)]
struct Update {
    sets: Vec<String>,
    removes: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    /// What each attribute becomes when the item does not exist yet: lets
    /// one builder describe both the update and the equivalent new item.
    fresh: Vec<(String, AttributeValue)>,
}

impl Update {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{}", attr.replace(['-', '.'], "_"));
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    fn set(&mut self, attr: &str, v: AttributeValue) -> &mut Self {
        self.fresh.push((attr.to_owned(), v.clone()));
        let (n, v) = (self.name(attr), self.value(v));
        self.sets.push(format!("{n} = {v}"));
        self
    }

    fn set_opt(&mut self, attr: &str, v: Option<AttributeValue>) -> &mut Self {
        match v {
            Some(v) => self.set(attr, v),
            None => self.remove(attr),
        }
    }

    fn set_if_absent(&mut self, attr: &str, v: AttributeValue) -> &mut Self {
        self.fresh.push((attr.to_owned(), v.clone()));
        let (n, v) = (self.name(attr), self.value(v));
        self.sets.push(format!("{n} = if_not_exists({n}, {v})"));
        self
    }

    fn increment(&mut self, attr: &str) -> &mut Self {
        self.fresh.push((attr.to_owned(), num(1)));
        let n = self.name(attr);
        let zero = self.value(num(0));
        let one = self.value(num(1));
        self.sets
            .push(format!("{n} = if_not_exists({n}, {zero}) + {one}"));
        self
    }

    /// Drops the lease (owner, expiry, intent) in the same write.
    fn release_lease(&mut self) -> &mut Self {
        self.remove(attr::LEASE_OWNER)
            .remove(attr::LEASE_UNTIL)
            .remove(attr::LEASE_INTENT)
    }

    fn remove(&mut self, attr: &str) -> &mut Self {
        let n = self.name(attr);
        self.removes.push(n);
        self
    }

    /// The item this update creates when applied to no item.
    fn into_new_item(self, pk: &str, sk: &str) -> Item {
        let mut item = key_of(pk, sk);
        item.extend(self.fresh);
        item
    }

    fn expression(&self) -> String {
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

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn num(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok())
}

fn get_bool(item: &Item, name: &str) -> Option<bool> {
    item.get(name).and_then(|v| v.as_bool().ok()).copied()
}

fn get_list(item: &Item, name: &str) -> Option<Vec<String>> {
    item.get(name)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
}

/// Stable across processes and releases (unlike `std::hash`), so every
/// writer puts an install in the same shard.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    let d = Sha256::digest(key.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % shards.max(1)
}

pub fn shard_name(shard: u32) -> String {
    format!("{shard:03}")
}

pub fn code_hash(code: &SecretString) -> String {
    let d = Sha256::digest(code.expose().as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A lease token: the holder's name and a nonce unique to one taking.
pub fn lease_token(owner: &str) -> String {
    let nonce: u64 = rand::rng().random();
    format!("{owner}/{nonce:016x}")
}

fn key_of(pk: &str, sk: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
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

    /// When a token expiring at `expires_at` should be refreshed: the
    /// refresh-ahead window plus a random share of the jitter earlier.
    pub fn due_time(&self, expires_at: i64) -> i64 {
        let jitter = self.due.jitter.as_secs() as i64;
        let spread = if jitter > 0 {
            rand::rng().random_range(0..=jitter)
        } else {
            0
        };
        expires_at - self.due.refresh_ahead.as_secs() as i64 - spread
    }

    fn set_due(&self, u: &mut Update, id: &InstallId, due_at: i64) {
        u.set(
            DUE_SHARD,
            s(shard_name(shard_of(&id.key(), self.due.shards))),
        );
        u.set(DUE_AT, num(due_at));
    }

    fn set_tokens(&self, u: &mut Update, id: &InstallId, pair: &TokenPair) {
        let key = id.key();
        u.set(
            attr::ACCESS_TOKEN,
            s(self
                .keyring
                .seal(&pair.access_token, &key, attr::ACCESS_TOKEN)),
        );
        u.set(
            attr::REFRESH_TOKEN,
            s(self
                .keyring
                .seal(&pair.refresh_token, &key, attr::REFRESH_TOKEN)),
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

    fn set_state(&self, u: &mut Update, state: InstallState, reason: &str, now: i64) {
        u.set(attr::STATE, s(state.as_str()));
        u.set(attr::STATE_REASON, s(reason));
        u.set(attr::STATE_CHANGED_AT, num(now));
        u.set(attr::UPDATED_AT, num(now));
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
            .table_op("dynamodb:UpdateItem")?
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
                    let item = self
                        .grant_update(id, pair, info, "seeded")
                        .into_new_item(&id.key(), GRANT_SK);
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
        let u = self.grant_update(id, pair, info, reason);
        let out = self
            .update(&id.key(), GRANT_SK, u)?
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(dynamo("UpdateItem(save grant)"))?;
        self.decode(out.attributes.unwrap_or_default())
    }

    /// A strongly consistent read of one install.
    pub async fn get(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        let out = self
            .table_op("dynamodb:GetItem")?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&id.key(), GRANT_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem"))?;
        out.item.map(|i| self.decode(i)).transpose()
    }

    pub fn decode(&self, item: Item) -> Result<Install, StoreError> {
        let pk = get_s(&item, PK).unwrap_or_default().to_owned();
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: pk.clone(),
            reason: reason.to_owned(),
        };
        let id = InstallId::parse_key(&pk).ok_or_else(|| corrupt("not an install key"))?;
        let open = |field: &str| -> Result<SecretString, StoreError> {
            let sealed = get_s(&item, field).ok_or_else(|| corrupt(&format!("{field} missing")))?;
            self.keyring
                .open(sealed, &pk, field)
                .map_err(|source| StoreError::Crypto {
                    key: pk.clone(),
                    source,
                })
        };
        let current = self.keyring.current_key_id();
        let stale_key = [attr::ACCESS_TOKEN, attr::REFRESH_TOKEN]
            .iter()
            .any(|f| get_s(&item, f).and_then(Keyring::key_id_of) != Some(current));
        let state_text = get_s(&item, attr::STATE).unwrap_or("active");
        let state = InstallState::parse(state_text).ok_or_else(|| corrupt("unknown state"))?;
        Ok(Install {
            access_token: open(attr::ACCESS_TOKEN)?,
            refresh_token: open(attr::REFRESH_TOKEN)?,
            expires_at: get_n(&item, attr::EXPIRES_AT)
                .ok_or_else(|| corrupt("expires_at missing"))?,
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
            doubt_since_ms: get_n(&item, attr::DOUBT_SINCE),
            due_at: get_n(&item, DUE_AT),
            failures: get_n(&item, attr::FAILURES).unwrap_or(0) as u32,
            installed_at: get_n(&item, attr::INSTALLED_AT).unwrap_or(0),
            last_installed_at: get_n(&item, attr::LAST_INSTALLED_AT).unwrap_or(0),
            install_count: get_n(&item, attr::INSTALL_COUNT).unwrap_or(0) as u64,
            refresh_count: get_n(&item, attr::REFRESH_COUNT).unwrap_or(0) as u64,
            updated_at: get_n(&item, attr::UPDATED_AT).unwrap_or(0),
            stale_key,
            id,
        })
    }

    // ---- code claims -------------------------------------------------

    /// Claims an authorization code so it is exchanged at most once. Returns
    /// `None` when this caller won the claim, or what the earlier caller recorded.
    pub async fn claim_code(&self, hash: &str) -> Result<Option<CodeRecord>, StoreError> {
        let now_ms = now_millis();
        let pk = format!("code#{hash}");
        let mut item = key_of(&pk, CODE_SK);
        item.insert(attr::CODE_STATE.into(), s("pending"));
        item.insert(attr::CLAIMED_AT.into(), num(now_ms));
        item.insert(TTL.into(), num(now_ms / 1000 + CODE_TTL_SECS));
        let res = self
            .table_op("dynamodb:PutItem")?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    match c.item() {
                        Some(old) => Ok(Some(decode_code(old))),
                        None => Ok(self.get_code(hash).await?),
                    }
                }
                _ => Err(dynamo("PutItem(claim code)")(e)),
            },
        }
    }

    pub async fn get_code(&self, hash: &str) -> Result<Option<CodeRecord>, StoreError> {
        let out = self
            .table_op("dynamodb:GetItem")?
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&format!("code#{hash}"), CODE_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem(code)"))?;
        Ok(out.item.as_ref().map(decode_code))
    }

    pub async fn finish_code(&self, hash: &str, record: &CodeRecord) -> Result<(), StoreError> {
        let mut u = Update::default();
        match record {
            CodeRecord::Pending { .. } => return Ok(()),
            CodeRecord::Done { install } => {
                u.set(attr::CODE_STATE, s("done"));
                u.set(attr::INSTALL_KEY, s(install.key()));
            }
        }
        self.update(&format!("code#{hash}"), CODE_SK, u)?
            .send()
            .await
            .map_err(dynamo("UpdateItem(finish code)"))?;
        Ok(())
    }

    /// Gives a claim back when the exchange failed in a way a retry can fix.
    pub async fn release_code(&self, hash: &str) -> Result<(), StoreError> {
        self.table_op("dynamodb:DeleteItem")?
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&format!("code#{hash}"), CODE_SK)))
            .send()
            .await
            .map_err(dynamo("DeleteItem(code)"))?;
        Ok(())
    }

    // ---- leases ------------------------------------------------------

    /// Takes the lease on an install: a lease token (from [`lease_token`]:
    /// the holder's name plus a nonce unique to this taking), an expiry, and
    /// (through the version already on the item) a fencing token. The
    /// returned install is the authoritative state at the moment of taking,
    /// with `lease_owner` set to the token every later fenced write names.
    ///
    /// The condition also admits the same token, so when the SDK retries a
    /// write whose answer was lost, the retry finds its own lease and takes
    /// it again instead of mistaking it for someone else's.
    pub async fn acquire_lease(
        &self,
        id: &InstallId,
        token: &str,
        lease: Duration,
        when: LeaseWhen,
    ) -> Result<LeaseOutcome, StoreError> {
        let now_ms = now_millis();
        let until = now_ms + lease.as_millis() as i64;
        let mut u = Update::default();
        u.set(attr::LEASE_OWNER, s(token));
        u.set(attr::LEASE_UNTIL, num(until));
        // Only a holder that meant to present the refresh token can leave it in doubt.
        let intent = if matches!(when, LeaseWhen::Always) {
            "maintain"
        } else {
            "refresh"
        };
        u.set(attr::LEASE_INTENT, s(intent));
        let lease_n = u.name(attr::LEASE_UNTIL);
        let owner_n = u.name(attr::LEASE_OWNER);
        let now_v = u.value(num(now_ms));
        let me_v = u.value(s(token));
        let pk_n = u.name(PK);
        let mut cond = format!(
            "attribute_exists({pk_n}) AND (attribute_not_exists({lease_n}) OR {lease_n} < {now_v} OR {owner_n} = {me_v})"
        );
        match when {
            LeaseWhen::DueBy(t) => {
                let (n, v) = (u.name(DUE_AT), u.value(num(t)));
                cond.push_str(&format!(" AND {n} <= {v}"));
            }
            LeaseWhen::ExpiresBefore(t) => {
                let (n, v) = (u.name(attr::EXPIRES_AT), u.value(num(t)));
                let st = u.name(attr::STATE);
                let states: Vec<String> = InstallState::ALL
                    .into_iter()
                    .filter(|st| st.is_refreshable())
                    .map(|st| u.value(s(st.as_str())))
                    .collect();
                cond.push_str(&format!(" AND {n} < {v} AND {st} IN ({})", states.join(", ")));
            }
            LeaseWhen::Always => {
                // Never over a refresh holder's expired lease: it may have
                // presented the refresh token, and only the refresh path
                // (journal, then a probe) may clear that.
                let (i, m) = (u.name(attr::LEASE_INTENT), u.value(s("maintain")));
                cond.push_str(&format!(
                    " AND (attribute_not_exists({owner_n}) OR {i} = {m} OR {owner_n} = {me_v})"
                ));
            }
        }
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(cond)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                let previous = get_s(&old, attr::LEASE_OWNER);
                let abandoned = previous.is_some_and(|p| p != token)
                    && get_s(&old, attr::LEASE_INTENT) != Some("maintain");
                let mut install = match self.decode(old) {
                    Ok(i) => i,
                    Err(e) => {
                        // Nothing was presented: the lease must not outlive this error.
                        if let Err(release) = self.release_lease(id, token).await {
                            tracing::error!(install_id = %id, error = %release, "lease release after an unreadable item failed");
                        }
                        return Err(e);
                    }
                };
                install.lease_owner = Some(token.to_owned());
                install.lease_until_ms = Some(until);
                Ok(LeaseOutcome::Acquired {
                    install: Box::new(install),
                    abandoned,
                })
            }
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let Some(old) = c.item() else {
                        return Ok(LeaseOutcome::Missing);
                    };
                    if let (Some(holder), Some(until)) = (get_s(old, attr::LEASE_OWNER), get_n(old, attr::LEASE_UNTIL))
                        && until >= now_ms
                    {
                        return Ok(LeaseOutcome::Held {
                            owner: holder.to_owned(),
                            until_ms: until,
                        });
                    }
                    Ok(LeaseOutcome::NotNeeded {
                        install: Box::new(self.decode(old.clone())?),
                    })
                }
                _ => Err(dynamo("UpdateItem(acquire lease)")(e)),
            },
        }
    }

    /// Gives back the lease `install` was taken with.
    pub async fn release(&self, install: &Install) -> Result<(), StoreError> {
        self.release_lease(&install.id, install.lease_token()).await
    }

    /// Gives the lease back without other changes. A no-op if it is no
    /// longer ours.
    pub async fn release_lease(&self, id: &InstallId, owner: &str) -> Result<(), StoreError> {
        let mut u = Update::default();
        u.release_lease();
        let (n, v) = (u.name(attr::LEASE_OWNER), u.value(s(owner)));
        let res = self
            .update(&id.key(), GRANT_SK, u)?
            .condition_expression(format!("{n} = {v}"))
            .send()
            .await;
        ignore_condition_failure(res.map(|_| ()), "UpdateItem(release lease)")
    }

    // ---- journal -----------------------------------------------------

    /// Makes a rotated pair durable before anything else happens. Keyed by the
    /// version it will become; only one refresh of a token can succeed, so at
    /// most one pair exists per version and a retried put is harmless.
    pub async fn write_journal(
        &self,
        id: &InstallId,
        version: u64,
        pair: &TokenPair,
        owner: &str,
    ) -> Result<(), StoreError> {
        let key = id.key();
        let now = now_secs();
        let mut item = key_of(&key, &format!("{JOURNAL_PREFIX}{version:020}"));
        item.insert(
            attr::ACCESS_TOKEN.into(),
            s(self
                .keyring
                .seal(&pair.access_token, &key, attr::ACCESS_TOKEN)),
        );
        item.insert(
            attr::REFRESH_TOKEN.into(),
            s(self
                .keyring
                .seal(&pair.refresh_token, &key, attr::REFRESH_TOKEN)),
        );
        item.insert(attr::KEY_ID.into(), s(self.keyring.current_key_id()));
        item.insert(attr::EXPIRES_AT.into(), num(pair.expires_at));
        item.insert(attr::VERSION.into(), num(version as i64));
        item.insert(attr::OWNER.into(), s(owner));
        item.insert(attr::WRITTEN_AT.into(), num(now));
        item.insert(TTL.into(), num(now + JOURNAL_TTL_SECS));
        self.table_op("dynamodb:PutItem")?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(dynamo("PutItem(journal)"))?;
        Ok(())
    }

    /// The newest journal entry above `version`, if any: a pair some holder
    /// obtained but did not commit.
    pub async fn newer_journal(
        &self,
        id: &InstallId,
        version: u64,
    ) -> Result<Option<JournalEntry>, StoreError> {
        let key = id.key();
        let out = self
            .table_op("dynamodb:Query")?
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(&key))
            .expression_attribute_values(":lo", s(format!("{JOURNAL_PREFIX}{:020}", version + 1)))
            .expression_attribute_values(":hi", s(format!("{JOURNAL_PREFIX}{}", "9".repeat(20))))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("Query(journal)"))?;
        let Some(item) = out.items.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let open = |field: &str| -> Result<SecretString, StoreError> {
            let sealed = get_s(&item, field).ok_or_else(|| StoreError::Corrupt {
                key: key.clone(),
                reason: format!("journal {field} missing"),
            })?;
            self.keyring
                .open(sealed, &key, field)
                .map_err(|source| StoreError::Crypto {
                    key: key.clone(),
                    source,
                })
        };
        Ok(Some(JournalEntry {
            version: get_n(&item, attr::VERSION).unwrap_or(0) as u64,
            pair: TokenPair {
                access_token: open(attr::ACCESS_TOKEN)?,
                refresh_token: open(attr::REFRESH_TOKEN)?,
                expires_at: get_n(&item, attr::EXPIRES_AT).unwrap_or(0),
            },
            owner: get_s(&item, attr::OWNER).unwrap_or_default().to_owned(),
        }))
    }

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

    // ---- short locks ------------------------------------------------------

    /// A short mutual-exclusion lock on a name (single flight for mints).
    /// Free when absent or expired; released by [`Store::unlock`].
    pub async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now_ms = now_millis();
        let mut item = key_of(&format!("lock#{name}"), "lock");
        item.insert(attr::LEASE_OWNER.into(), s(owner));
        item.insert(
            attr::LEASE_UNTIL.into(),
            num(now_ms + ttl.as_millis() as i64),
        );
        item.insert(TTL.into(), num(now_ms / 1000 + ttl.as_secs() as i64 + 3600));
        let res = self
            .table_op("dynamodb:PutItem")?
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #until < :now")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#until", attr::LEASE_UNTIL)
            .expression_attribute_values(":now", num(now_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("PutItem(lock)")(e)),
        }
    }

    pub async fn unlock(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let res = self
            .table_op("dynamodb:DeleteItem")?
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&format!("lock#{name}"), "lock")))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", attr::LEASE_OWNER)
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        ignore_condition_failure(res.map(|_| ()), "DeleteItem(lock)")
    }

    // ---- due index ------------------------------------------------------

    /// One page of installs in `shard` due at or before `now`, oldest first.
    pub async fn due_page(
        &self,
        shard: u32,
        now: i64,
        limit: i32,
        start: Option<Item>,
    ) -> Result<DuePage, StoreError> {
        let out = self
            .index_op("dynamodb:Query")?
            .query()
            .table_name(&self.table)
            .index_name(DUE_INDEX)
            .key_condition_expression("#shard = :shard AND #due <= :now")
            .expression_attribute_names("#shard", DUE_SHARD)
            .expression_attribute_names("#due", DUE_AT)
            .expression_attribute_values(":shard", s(shard_name(shard)))
            .expression_attribute_values(":now", num(now))
            .scan_index_forward(true)
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(dynamo("Query(due index)"))?;
        let ids = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|i| {
                let id = InstallId::parse_key(get_s(i, PK)?)?;
                Some((id, get_n(i, DUE_AT)?))
            })
            .collect();
        Ok(DuePage {
            ids,
            next: out.last_evaluated_key,
        })
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

fn decode_code(item: &Item) -> CodeRecord {
    match get_s(item, attr::CODE_STATE) {
        Some("done") => match get_s(item, attr::INSTALL_KEY).and_then(InstallId::parse_key) {
            Some(install) => CodeRecord::Done { install },
            // Unreadable: treat as long abandoned.
            None => CodeRecord::Pending { claimed_at_ms: 0 },
        },
        _ => CodeRecord::Pending {
            claimed_at_ms: get_n(item, attr::CLAIMED_AT).unwrap_or(0),
        },
    }
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
            dynamodb_index: &[],
            secretsmanager: &[],
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
        // A granted action goes through to DynamoDB (and fails there).
        let err = offline_store()
            .restricted_to(&NO_DELETE)
            .claim_code("abc")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Dynamo { .. }), "{err}");
    }
}
