//! A HighLevel OAuth simulator: a real HTTP server that enforces HighLevel's
//! rules (single-use refresh tokens above all), injects faults on demand,
//! and keeps a ledger of every refresh token it issued and how often each
//! was presented. Tests, the chaos run, the benchmark and `dev/up.sh` use it
//! in place of HighLevel.

// The validation helpers return the ready-made error response as their `Err`;
// it is built once per rejected request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

pub mod courier;
mod webhook;

pub const API_VERSION: &str = "2021-07-28";

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub client_id: String,
    pub client_secret: String,
    pub app_id: String,
    pub version_id: String,
    pub access_token_ttl_secs: u64,
    pub code_ttl_secs: u64,
    /// HighLevel's changelog: calls within a 30-second window with the same
    /// client_id, client_secret and refresh_token return the same refresh
    /// token. A refresh token rotated less than this many seconds ago is
    /// answered with the very body its rotation produced (a grace replay).
    /// 0 (the default) means strict single use.
    pub refresh_grace_secs: u64,
    /// `GET /oauth/installedLocations` ignores `skip` (a misbehaving server).
    pub ignore_skip: bool,
    /// `GET /oauth/installedLocations` answers 200 with this wrong body.
    pub listing_fault: Option<ListingFault>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            app_id: "sim-app-id".into(),
            version_id: "sim-version-id".into(),
            access_token_ttl_secs: 86_399,
            code_ttl_secs: 600,
            refresh_grace_secs: 0,
            ignore_skip: false,
            listing_fault: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserType {
    Company,
    Location,
}

impl UserType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Company => "Company",
            Self::Location => "Location",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentTarget {
    pub user_type: UserType,
    pub company_id: String,
    pub location_id: Option<String>,
    pub deny: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedGrant {
    pub user_type: UserType,
    pub company_id: String,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub access_token_ttl_secs: Option<u64>,
}

/// Standing faults, each rolled per API request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    pub latency_ms: u64,
    /// Each request's latency is drawn uniformly from `latency_ms` ±
    /// this, as a real server's varies: the mean stays `latency_ms`.
    pub latency_jitter_ms: u64,
    pub error_5xx_rate: f64,
    pub rate_limit_rate: f64,
    pub drop_rate: f64,
    /// Process the request (a refresh rotates), then answer 503.
    pub error_5xx_after_rotate_rate: f64,
    /// Process the request, then answer 200 with odd metadata values (see [`Fault::OddMetadata`]).
    pub odd_metadata_rate: f64,
}

/// One-shot faults, consumed in order by the next API requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Fault {
    ServerError {
        status: u16,
    },
    RateLimited,
    /// Process the request fully (a refresh rotates), then cut the connection.
    Drop,
    Latency {
        ms: u64,
    },
    InvalidClient,
    /// Process the request fully (a refresh rotates), then answer this 5xx
    /// status with a NestJS-style body `{statusCode, message}`.
    ServerErrorAfterRotate {
        status: u16,
    },
    /// Process the request fully, then answer 200 with the real body but odd
    /// metadata: `userType` lower-case, `companyId` a number,
    /// `isBulkInstallation` a string, `approvedLocations` a plain string,
    /// `planId` null, `scope` an array, and an unknown nested field.
    /// `access_token`, `refresh_token` and `expires_in` are untouched.
    /// A non-2xx answer passes through unchanged.
    OddMetadata,
    /// Process the request fully, then answer with `Content-Type:
    /// application/json` and the body cut in the middle (invalid JSON).
    /// The status is the processed one (200 when processing succeeded).
    Garbled,
    /// Process the request fully, then answer 200 with the real body minus
    /// `refresh_token`. A non-2xx answer passes through unchanged.
    NoRefreshToken,
    /// Do not process; answer 400 in the RFC 6749 shape
    /// `{"error":"invalid_grant","error_description":"refresh token is invalid"}`.
    RfcInvalidGrant,
}

/// The 200s `GET /oauth/installedLocations` has been seen to give (or could,
/// after a field rename at HighLevel) that are not a listing. Standing until
/// cleared, on every page; the grant and query checks still apply first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ListingFault {
    /// The page without its `locations` field.
    NoLocations,
    /// The page without its `count` field.
    NoCount,
    /// `count` as a string (`"105"`).
    CountAsString,
    /// `count` off by `delta` from the real number (negative: smaller; not
    /// below 0). The pages themselves are right.
    CountOffBy { delta: i64 },
    /// `{"locations": [], "count": 0}` whatever is installed.
    Empty,
    /// `{"traceId": "…"}` and nothing else.
    TraceIdOnly,
    /// A NestJS error envelope `{statusCode: 400, message, traceId}`.
    ErrorEnvelope,
    /// Every item carries `id` instead of `_id`.
    ItemsWithoutId,
}

impl ListingFault {
    /// The body of a page whose real items are `page` and real total `count`.
    fn body(self, page: Vec<&Value>, count: usize) -> Value {
        match self {
            Self::NoLocations => json!({"count": count, "installToFutureLocations": false}),
            Self::NoCount => json!({"locations": page, "installToFutureLocations": false}),
            Self::CountAsString => json!({"locations": page, "count": count.to_string()}),
            Self::CountOffBy { delta } => {
                let wrong = (count as i64).saturating_add(delta).max(0);
                json!({"locations": page, "count": wrong, "installToFutureLocations": false})
            }
            Self::Empty => json!({"locations": [], "count": 0, "installToFutureLocations": false}),
            Self::TraceIdOnly => json!({"traceId": trace_id()}),
            Self::ErrorEnvelope => json!({
                "statusCode": 400,
                "message": "Invalid parameter: version",
                "traceId": trace_id(),
            }),
            Self::ItemsWithoutId => {
                let items: Vec<Value> = page
                    .into_iter()
                    .map(|item| {
                        let mut item = item.clone();
                        if let Some(o) = item.as_object_mut()
                            && let Some(id) = o.remove("_id")
                        {
                            o.insert("id".into(), id);
                        }
                        item
                    })
                    .collect();
                json!({"locations": items, "count": count, "installToFutureLocations": false})
            }
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenEntry {
    pub refresh_token: String,
    pub grant_id: String,
    pub user_type: UserType,
    pub company_id: String,
    pub location_id: Option<String>,
    pub live: bool,
    /// Presentations the token service decided on (rotated, or rejected as used/revoked).
    pub presented: u32,
    /// Presentations answered `Location is not active`, which do not consume the token.
    pub presented_while_inactive: u32,
    pub issued_at_ms: u64,
    /// The refresh token this one's rotation issued (None while not rotated,
    /// or when it was rejected/revoked without rotating).
    #[serde(default)]
    pub successor: Option<String>,
    /// When this token was rotated by a successful refresh.
    #[serde(default)]
    pub rotated_at_ms: Option<u64>,
    /// Whether the grant this token belongs to was revoked.
    #[serde(default)]
    pub grant_revoked: bool,
}

fn short_fp(s: &str) -> String {
    // Not cryptographic: only to tell entries apart in test output without showing them.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field(
                "refresh_token",
                &format_args!("fp:{}", short_fp(&self.refresh_token)),
            )
            .field("grant_id", &self.grant_id)
            .field("user_type", &self.user_type)
            .field("company_id", &self.company_id)
            .field("location_id", &self.location_id)
            .field("live", &self.live)
            .field("presented", &self.presented)
            .field("presented_while_inactive", &self.presented_while_inactive)
            .field(
                "successor",
                &self
                    .successor
                    .as_deref()
                    .map(|s| format!("fp:{}", short_fp(s))),
            )
            .field("rotated_at_ms", &self.rotated_at_ms)
            .field("grant_revoked", &self.grant_revoked)
            .finish()
    }
}

/// One webhook as HighLevel would deliver it to the app's default webhook
/// URL. The simulator only queues these ([`Sim::take_webhooks`],
/// `GET /_sim/webhooks`); whoever takes them hands them on.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The exact raw JSON body as sent.
    pub body: String,
    /// `x-ghl-signature`: base64 Ed25519 signature over `body`'s bytes
    /// (key: [`Sim::webhook_public_key`]).
    pub signature: String,
    /// `x-wh-signature`: base64 RSA-SHA256 (PKCS#1 v1.5) signature over
    /// `body`'s bytes, the legacy scheme HighLevel retired in 2026 (key:
    /// [`Sim::webhook_rsa_public_key`]).
    pub rsa_signature: String,
    /// `INSTALL`, `UNINSTALL` or `PLAN_CHANGE`.
    pub kind: String,
    pub webhook_id: String,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("kind", &self.kind)
            .field("webhook_id", &self.webhook_id)
            .finish_non_exhaustive()
    }
}

/// One grant's chain of refresh tokens, as the ledger sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chain {
    pub grant_id: String,
    pub user_type: UserType,
    pub company_id: String,
    pub location_id: Option<String>,
    pub revoked: bool,
    /// The last refresh token issued for this grant.
    pub newest_refresh_token: String,
    pub newest_live: bool,
    pub newest_presented: u32,
    /// Refresh tokens issued in this chain.
    pub issued: u32,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("grant_id", &self.grant_id)
            .field("user_type", &self.user_type)
            .field("company_id", &self.company_id)
            .field("location_id", &self.location_id)
            .field("revoked", &self.revoked)
            .field(
                "newest_refresh_token",
                &format_args!("fp:{}", short_fp(&self.newest_refresh_token)),
            )
            .field("newest_live", &self.newest_live)
            .field("newest_presented", &self.newest_presented)
            .field("issued", &self.issued)
            .finish()
    }
}

/// `grant-12` → 12, for ordering grants by age.
fn grant_number(grant_id: &str) -> u64 {
    grant_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub tokens: Vec<TokenEntry>,
}

impl Ledger {
    pub fn presented_twice(&self) -> usize {
        self.tokens.iter().filter(|t| t.presented >= 2).count()
    }

    pub fn is_live(&self, refresh_token: &str) -> bool {
        self.tokens
            .iter()
            .any(|t| t.live && t.refresh_token == refresh_token)
    }

    pub fn live_count(&self) -> usize {
        self.tokens.iter().filter(|t| t.live).count()
    }

    /// One chain per grant, oldest grant first.
    pub fn chains(&self) -> Vec<Chain> {
        let mut order: Vec<&str> = Vec::new();
        let mut by_grant: HashMap<&str, Chain> = HashMap::new();
        for t in &self.tokens {
            match by_grant.get_mut(t.grant_id.as_str()) {
                Some(c) => {
                    c.newest_refresh_token = t.refresh_token.clone();
                    c.newest_live = t.live;
                    c.newest_presented = t.presented;
                    c.issued += 1;
                    c.revoked |= t.grant_revoked;
                }
                None => {
                    order.push(&t.grant_id);
                    by_grant.insert(
                        &t.grant_id,
                        Chain {
                            grant_id: t.grant_id.clone(),
                            user_type: t.user_type,
                            company_id: t.company_id.clone(),
                            location_id: t.location_id.clone(),
                            revoked: t.grant_revoked,
                            newest_refresh_token: t.refresh_token.clone(),
                            newest_live: t.live,
                            newest_presented: t.presented,
                            issued: 1,
                        },
                    );
                }
            }
        }
        let mut chains: Vec<Chain> = order
            .into_iter()
            .filter_map(|g| by_grant.remove(g))
            .collect();
        // Stable: grants with the same number (never, in practice) keep issue order.
        chains.sort_by_key(|c| grant_number(&c.grant_id));
        chains
    }

    /// The chain the given refresh token belongs to.
    pub fn chain_of(&self, refresh_token: &str) -> Option<Chain> {
        let grant = &self
            .tokens
            .iter()
            .find(|t| t.refresh_token == refresh_token)?
            .grant_id;
        self.chains().into_iter().find(|c| &c.grant_id == grant)
    }

    /// The newest chain for an install: for a Location, the newest Location
    /// grant with that location id; for a Company, the newest Company grant
    /// of that company id. (A Location asked for without a location id is
    /// matched on the company id.)
    pub fn newest_chain_for(
        &self,
        user_type: UserType,
        company_id: &str,
        location_id: Option<&str>,
    ) -> Option<Chain> {
        self.chains()
            .into_iter()
            .filter(|c| {
                c.user_type == user_type
                    && match (user_type, location_id) {
                        (UserType::Location, Some(l)) => c.location_id.as_deref() == Some(l),
                        _ => c.company_id == company_id,
                    }
            })
            .max_by_key(|c| grant_number(&c.grant_id))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub code_exchanges: u64,
    pub refreshes: u64,
    pub refresh_rejections: u64,
    pub location_mints: HashMap<String, u64>,
    pub installed_locations_calls: u64,
    pub faults_injected: u64,
    pub unknown_refresh_tokens_presented: u64,
    /// Presentations of a rotated token within the grace window, answered
    /// with the rotation's own body.
    #[serde(default)]
    pub grace_replays: u64,
    /// Presentations of a token whose successor had already been presented
    /// itself: the client used the newer token and still sent an older one.
    #[serde(default)]
    pub stale_presentations: u64,
    /// Successful `DELETE /marketplace/app/{appId}/installations` calls.
    #[serde(default)]
    pub app_uninstalls: u64,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    user_type: UserType,
    company_id: String,
    location_id: Option<String>,
    scope: String,
    /// The installing user, as the INSTALL webhook named them.
    user_id: String,
    expires_at_ms: u64,
    used: bool,
}

struct Grant {
    user_type: UserType,
    company_id: String,
    location_id: Option<String>,
    scope: String,
    user_id: String,
    revoked: bool,
}

struct TokenRec {
    grant_id: String,
    live: bool,
    presented: u32,
    presented_while_inactive: u32,
    issued_at_ms: u64,
    /// Set by a successful rotation: the token it issued, when, and the
    /// exact body it answered (replayed within the grace window).
    successor: Option<String>,
    rotated_at_ms: Option<u64>,
    rotation_body: Option<Value>,
}

struct Access {
    grant_id: String,
    expires_at_ms: u64,
}

struct LocationInfo {
    name: String,
    installed_at_ms: u64,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Code>,
    grants: HashMap<String, Grant>,
    tokens: HashMap<String, TokenRec>,
    issue_order: Vec<String>,
    /// Every access token issued, in order (revoked ones included).
    access_issued: Vec<String>,
    access: HashMap<String, Access>,
    /// Access tokens of grants an app uninstall revoked, with their expiry:
    /// see [`uninstall_app`].
    uninstalled_access: HashMap<String, u64>,
    locations: BTreeMap<String, BTreeMap<String, LocationInfo>>,
    inactive: HashSet<String>,
    counters: Counters,
    next_grant: u64,
}

struct Shared {
    cfg: Mutex<SimConfig>,
    inner: Mutex<Inner>,
    faults: Mutex<(Faults, VecDeque<Fault>)>,
    signer: webhook::Signer,
    webhooks: Mutex<Vec<Delivery>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that matters to a test double.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn trace_id() -> String {
    format!("sim-{}", random_hex(8))
}

fn webhook_id() -> String {
    format!("wh-{}", random_hex(16))
}

fn company_name(company_id: &str) -> String {
    format!("Simulated agency {company_id}")
}

/// A running simulator. Dropping it stops the server.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Sim {
    pub async fn start(cfg: SimConfig) -> std::io::Result<Sim> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<Sim> {
        let shared = Arc::new(Shared {
            cfg: Mutex::new(cfg),
            inner: Mutex::new(Inner::default()),
            faults: Mutex::new((Faults::default(), VecDeque::new())),
            signer: webhook::Signer::new()?,
            webhooks: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Sim {
            addr,
            shared,
            shutdown: Some(tx),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server now.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn consent_url(&self, redirect_uri: &str, target: &ConsentTarget) -> String {
        let cfg = lock(&self.shared.cfg);
        let mut q: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", cfg.client_id.clone()),
            ("redirect_uri", redirect_uri.into()),
            (
                "scope",
                "oauth.readonly oauth.write contacts.readonly".into(),
            ),
            ("sim_user_type", target.user_type.as_str().into()),
            ("sim_company_id", target.company_id.clone()),
        ];
        if let Some(l) = &target.location_id {
            q.push(("sim_location_id", l.clone()));
        }
        if target.deny {
            q.push(("sim_deny", "1".into()));
        }
        let query = serde_urlencoded::to_string(&q).unwrap_or_default();
        format!("{}/v2/oauth/chooselocation?{query}", self.base_url())
    }

    pub fn set_faults(&self, f: Faults) {
        lock(&self.shared.faults).0 = f;
    }

    pub fn push_fault(&self, f: Fault) {
        lock(&self.shared.faults).1.push_back(f);
    }

    pub fn ledger(&self) -> Ledger {
        self.shared.ledger()
    }

    pub fn seed_grant(&self, g: SeedGrant) -> Value {
        self.shared.seed(g)
    }

    pub fn add_locations(&self, company_id: &str, locations: &[(&str, &str)]) {
        let mut inner = lock(&self.shared.inner);
        let entry = inner.locations.entry(company_id.to_owned()).or_default();
        for (id, name) in locations {
            entry.entry((*id).to_owned()).or_insert(LocationInfo {
                name: (*name).to_owned(),
                installed_at_ms: now_ms(),
            });
        }
    }

    pub fn set_location_active(&self, location_id: &str, active: bool) {
        let mut inner = lock(&self.shared.inner);
        if active {
            inner.inactive.remove(location_id);
        } else {
            inner.inactive.insert(location_id.to_owned());
        }
    }

    pub fn revoke(&self, user_type: UserType, id: &str) {
        self.shared.revoke(user_type, id);
    }

    /// Sets the refresh grace window (see [`SimConfig::refresh_grace_secs`]); 0 = strict.
    pub fn set_refresh_grace_secs(&self, secs: u64) {
        lock(&self.shared.cfg).refresh_grace_secs = secs;
    }

    pub fn set_client_secret(&self, secret: &str) {
        lock(&self.shared.cfg).client_secret = secret.to_owned();
    }

    /// Makes `GET /oauth/installedLocations` ignore `skip` (every page is
    /// the first): clients must not loop on it.
    pub fn set_ignore_skip(&self, ignore: bool) {
        lock(&self.shared.cfg).ignore_skip = ignore;
    }

    /// Makes every `GET /oauth/installedLocations` answer 200 with a body
    /// that is not a listing (see [`ListingFault`]); None restores it.
    pub fn set_listing_fault(&self, fault: Option<ListingFault>) {
        lock(&self.shared.cfg).listing_fault = fault;
    }

    /// Removes a location from the company's installed locations without
    /// any webhook (an UNINSTALL whose delivery was lost).
    pub fn remove_location_silently(&self, company_id: &str, location_id: &str) {
        if let Some(m) = lock(&self.shared.inner).locations.get_mut(company_id) {
            m.remove(location_id);
        }
    }

    pub fn counters(&self) -> Counters {
        lock(&self.shared.inner).counters.clone()
    }

    /// Every access token the simulator issued (revoked and expired ones
    /// included), for tests asserting none is ever printed or logged.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        lock(&self.shared.inner).access_issued.clone()
    }

    /// The Marketplace app id (`SimConfig::app_id`).
    pub fn app_id(&self) -> String {
        lock(&self.shared.cfg).app_id.clone()
    }

    /// The Ed25519 public key that verifies `x-ghl-signature`, as SPKI DER in
    /// base64: the form of HighLevel's published key (`MCowBQYDK2VwAyEA…`).
    /// A fresh key per simulator.
    pub fn webhook_public_key(&self) -> String {
        self.shared.signer.public_key()
    }

    /// [`Sim::webhook_public_key`] as a PEM `PUBLIC KEY` block.
    pub fn webhook_public_key_pem(&self) -> String {
        self.shared.signer.public_key_pem()
    }

    /// The RSA public key that verifies the legacy `x-wh-signature`, as SPKI
    /// DER in base64 (a fixed, test-only key).
    pub fn webhook_rsa_public_key(&self) -> String {
        self.shared.signer.rsa_public_key()
    }

    /// The base64 Ed25519 signature over `body`, for tests crafting odd bodies.
    pub fn sign(&self, body: &[u8]) -> String {
        self.shared.signer.sign(body)
    }

    /// A delivery of a crafted event (any `timestamp`, type or fields),
    /// signed as HighLevel signs its own: for late, reordered and retried
    /// deliveries whose original timestamp has aged.
    pub fn delivery_of(&self, event: &Value) -> Delivery {
        let text = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
        self.shared
            .delivery(&text("type"), text("webhookId"), event)
    }

    /// The base64 RSA-SHA256 (PKCS#1 v1.5) signature over `body`.
    pub fn rsa_sign(&self, body: &[u8]) -> String {
        self.shared.signer.rsa_sign(body)
    }

    /// Drains the queued webhooks, oldest first.
    pub fn take_webhooks(&self) -> Vec<Delivery> {
        std::mem::take(&mut *lock(&self.shared.webhooks))
    }

    /// A bulk install: adds `n` locations (`{company_id}-bulk-{i}`, numbered
    /// on from any earlier bulk install of the company, from 1) and queues one
    /// INSTALL (installType `Location`) per location. Returns the location ids.
    pub fn bulk_install(&self, company_id: &str, n: usize) -> Vec<String> {
        self.shared.bulk_install(company_id, n)
    }

    /// Uninstalls the app: revokes the grants as [`Sim::revoke`] does and
    /// queues an UNINSTALL for the company or location. For a company it also
    /// removes the company's locations from `/oauth/installedLocations`.
    pub fn uninstall(&self, user_type: UserType, id: &str) {
        self.shared.uninstall(user_type, id);
    }

    /// Queues a PLAN_CHANGE for the company or location.
    pub fn plan_change(&self, user_type: UserType, id: &str, plan_id: &str) {
        self.shared.plan_change(user_type, id, plan_id);
    }
}

impl Shared {
    fn ledger(&self) -> Ledger {
        let inner = lock(&self.inner);
        let tokens = inner
            .issue_order
            .iter()
            .filter_map(|t| {
                let rec = inner.tokens.get(t)?;
                let g = inner.grants.get(&rec.grant_id)?;
                Some(TokenEntry {
                    successor: rec.successor.clone(),
                    rotated_at_ms: rec.rotated_at_ms,
                    grant_revoked: g.revoked,
                    refresh_token: t.clone(),
                    grant_id: rec.grant_id.clone(),
                    user_type: g.user_type,
                    company_id: g.company_id.clone(),
                    location_id: g.location_id.clone(),
                    live: rec.live,
                    presented: rec.presented,
                    presented_while_inactive: rec.presented_while_inactive,
                    issued_at_ms: rec.issued_at_ms,
                })
            })
            .collect();
        Ledger { tokens }
    }

    fn seed(&self, g: SeedGrant) -> Value {
        let cfg = lock(&self.cfg).clone();
        let mut inner = lock(&self.inner);
        let grant_id = inner.new_grant(
            g.user_type,
            &g.company_id,
            g.location_id.as_deref(),
            "oauth.readonly oauth.write contacts.readonly",
        );
        let ttl = g.access_token_ttl_secs.unwrap_or(cfg.access_token_ttl_secs);
        inner.token_response(&cfg, &grant_id, ttl)
    }

    fn revoke(&self, user_type: UserType, id: &str) {
        let mut inner = lock(&self.inner);
        let ids: Vec<String> = inner
            .grants
            .iter()
            .filter(|(_, g)| {
                g.user_type == user_type
                    && match user_type {
                        UserType::Company => g.company_id == id,
                        UserType::Location => g.location_id.as_deref() == Some(id),
                    }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for gid in &ids {
            if let Some(g) = inner.grants.get_mut(gid) {
                g.revoked = true;
            }
        }
        for rec in inner.tokens.values_mut() {
            if ids.contains(&rec.grant_id) {
                rec.live = false;
            }
        }
        inner.access.retain(|_, a| !ids.contains(&a.grant_id));
    }

    /// Serialises, signs and returns one webhook (not yet queued).
    fn delivery(&self, kind: &str, webhook_id: String, body: &impl Serialize) -> Delivery {
        // Serialising these plain structs of strings cannot fail.
        let body = serde_json::to_string(body).unwrap_or_default();
        Delivery {
            signature: self.signer.sign(body.as_bytes()),
            rsa_signature: self.signer.rsa_sign(body.as_bytes()),
            kind: kind.to_owned(),
            webhook_id,
            body,
        }
    }

    fn enqueue(&self, deliveries: Vec<Delivery>) {
        lock(&self.webhooks).extend(deliveries);
    }

    /// An INSTALL: installType `Location` when `location_id` is given.
    fn install_delivery(
        &self,
        cfg: &SimConfig,
        company_id: &str,
        location_id: Option<&str>,
        user_id: &str,
    ) -> Delivery {
        let (timestamp, webhook_id) = (webhook::iso8601_ms(now_ms()), webhook_id());
        let company_name = company_name(company_id);
        let body = webhook::Install {
            kind: "INSTALL",
            app_id: &cfg.app_id,
            version_id: &cfg.version_id,
            install_type: if location_id.is_some() {
                "Location"
            } else {
                "Company"
            },
            location_id,
            company_id,
            user_id,
            company_name: &company_name,
            plan_id: "sim-plan",
            trial: webhook::Empty {},
            is_whitelabel_company: false,
            timestamp: &timestamp,
            webhook_id: &webhook_id,
        };
        self.delivery("INSTALL", webhook_id.clone(), &body)
    }

    /// An UNINSTALL, or a PLAN_CHANGE when `plan_id` is given.
    fn targeted_delivery(&self, user_type: UserType, id: &str, plan_id: Option<&str>) -> Delivery {
        let app_id = lock(&self.cfg).app_id.clone();
        let (timestamp, webhook_id) = (webhook::iso8601_ms(now_ms()), webhook_id());
        let kind = if plan_id.is_some() {
            "PLAN_CHANGE"
        } else {
            "UNINSTALL"
        };
        let body = webhook::Targeted {
            kind,
            app_id: &app_id,
            location_id: (user_type == UserType::Location).then_some(id),
            company_id: (user_type == UserType::Company).then_some(id),
            plan_id,
            timestamp: &timestamp,
            webhook_id: &webhook_id,
        };
        self.delivery(kind, webhook_id.clone(), &body)
    }

    fn bulk_install(&self, company_id: &str, n: usize) -> Vec<String> {
        let cfg = lock(&self.cfg).clone();
        let prefix = format!("{company_id}-bulk-");
        let ids: Vec<String> = {
            let mut inner = lock(&self.inner);
            let entry = inner.locations.entry(company_id.to_owned()).or_default();
            let last = entry
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix)?.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            let now = now_ms();
            (last + 1..=last + n)
                .map(|i| {
                    let id = format!("{prefix}{i}");
                    entry.insert(
                        id.clone(),
                        LocationInfo {
                            name: format!("Bulk location {i}"),
                            installed_at_ms: now,
                        },
                    );
                    id
                })
                .collect()
        };
        let user_id = format!("user-{}", random_hex(4));
        let deliveries = ids
            .iter()
            .map(|l| self.install_delivery(&cfg, company_id, Some(l), &user_id))
            .collect();
        self.enqueue(deliveries);
        ids
    }

    fn uninstall(&self, user_type: UserType, id: &str) {
        let access_before: Vec<(String, String, u64)> = lock(&self.inner)
            .access
            .iter()
            .map(|(t, a)| (t.clone(), a.grant_id.clone(), a.expires_at_ms))
            .collect();
        self.uninstall_grants(user_type, id);
        let mut inner = lock(&self.inner);
        for (token, grant_id, expires_at_ms) in access_before {
            if inner.grants.get(&grant_id).is_some_and(|g| g.revoked) {
                inner.uninstalled_access.insert(token, expires_at_ms);
            }
        }
        drop(inner);
        let d = self.targeted_delivery(user_type, id, None);
        self.enqueue(vec![d]);
    }

    fn uninstall_grants(&self, user_type: UserType, id: &str) {
        self.revoke(user_type, id);
        match user_type {
            // An agency uninstall removes the app from every sub-account too:
            // the location grants of the company (its own and minted) die with it.
            UserType::Company => {
                let locations: Vec<String> = {
                    let mut inner = lock(&self.inner);
                    let mut locs: Vec<String> = inner
                        .grants
                        .values()
                        .filter(|g| g.user_type == UserType::Location && g.company_id == id)
                        .filter_map(|g| g.location_id.clone())
                        .collect();
                    locs.extend(
                        inner
                            .locations
                            .remove(id)
                            .map(|m| m.into_keys().collect::<Vec<_>>())
                            .unwrap_or_default(),
                    );
                    locs
                };
                for loc in locations {
                    self.revoke(UserType::Location, &loc);
                }
            }
            UserType::Location => {
                let mut inner = lock(&self.inner);
                for locs in inner.locations.values_mut() {
                    locs.remove(id);
                }
            }
        }
    }

    fn plan_change(&self, user_type: UserType, id: &str, plan_id: &str) {
        let d = self.targeted_delivery(user_type, id, Some(plan_id));
        self.enqueue(vec![d]);
    }

    /// Decides the fault for one API request: a queued one first, else the standing ones.
    fn decide(&self) -> (u64, Option<Fault>) {
        let mut f = lock(&self.faults);
        let mut rng = rand::rng();
        let jitter = f.0.latency_jitter_ms.min(f.0.latency_ms);
        let standing_latency = if jitter > 0 {
            rng.random_range(f.0.latency_ms - jitter..=f.0.latency_ms + jitter)
        } else {
            f.0.latency_ms
        };
        if let Some(q) = f.1.pop_front() {
            return match q {
                Fault::Latency { ms } => (ms, None),
                other => (standing_latency, Some(other)),
            };
        }
        let roll: f64 = rng.random();
        let (e, r, d) = (f.0.error_5xx_rate, f.0.rate_limit_rate, f.0.drop_rate);
        let (ea, o) = (f.0.error_5xx_after_rotate_rate, f.0.odd_metadata_rate);
        let fault = if roll < e {
            Some(Fault::ServerError { status: 503 })
        } else if roll < e + r {
            Some(Fault::RateLimited)
        } else if roll < e + r + d {
            Some(Fault::Drop)
        } else if roll < e + r + d + ea {
            Some(Fault::ServerErrorAfterRotate { status: 503 })
        } else if roll < e + r + d + ea + o {
            Some(Fault::OddMetadata)
        } else {
            None
        };
        (standing_latency, fault)
    }
}

impl Inner {
    fn new_grant(
        &mut self,
        user_type: UserType,
        company_id: &str,
        location_id: Option<&str>,
        scope: &str,
    ) -> String {
        self.next_grant += 1;
        let id = format!("grant-{}", self.next_grant);
        self.grants.insert(
            id.clone(),
            Grant {
                user_type,
                company_id: company_id.to_owned(),
                location_id: location_id.map(str::to_owned),
                scope: scope.to_owned(),
                user_id: format!("user-{}", random_hex(4)),
                revoked: false,
            },
        );
        id
    }

    fn issue(&mut self, grant_id: &str, ttl_secs: u64) -> (String, String) {
        let access = format!(
            "eyJ{}.{}.{}",
            random_hex(12),
            random_hex(24),
            random_hex(16)
        );
        let refresh = format!("rt-{}", random_hex(24));
        let now = now_ms();
        self.access.insert(
            access.clone(),
            Access {
                grant_id: grant_id.to_owned(),
                expires_at_ms: now + ttl_secs * 1000,
            },
        );
        self.tokens.insert(
            refresh.clone(),
            TokenRec {
                grant_id: grant_id.to_owned(),
                live: true,
                presented: 0,
                presented_while_inactive: 0,
                issued_at_ms: now,
                successor: None,
                rotated_at_ms: None,
                rotation_body: None,
            },
        );
        self.issue_order.push(refresh.clone());
        self.access_issued.push(access.clone());
        (access, refresh)
    }

    fn token_response(&mut self, cfg: &SimConfig, grant_id: &str, ttl: u64) -> Value {
        let (access, refresh) = self.issue(grant_id, ttl);
        let g = &self.grants[grant_id];
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "refresh_token": refresh,
            "scope": g.scope,
            "userType": g.user_type.as_str(),
            "companyId": g.company_id,
            "userId": g.user_id,
            "planId": "sim-plan",
            "isBulkInstallation": false,
            "refreshTokenId": format!("rtid-{}", random_hex(6)),
            "simExtraField": {"note": "clients must ignore unknown fields"},
        });
        match g.user_type {
            UserType::Location => {
                body["locationId"] = json!(g.location_id);
                body["approvedLocations"] = json!([g.location_id]);
            }
            UserType::Company => {
                let locs: Vec<&String> = self
                    .locations
                    .get(&g.company_id)
                    .map(|m| m.keys().collect())
                    .unwrap_or_default();
                body["approvedLocations"] = json!(locs);
                body["installToFutureLocations"] = json!(false);
                body["approveAllLocations"] = json!(false);
            }
        }
        let _ = cfg;
        body
    }
}

// ---- HTTP ---------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/oauth/chooselocation", get(consent))
        .route("/oauth/token", post(token))
        .route("/oauth/locationToken", post(location_token))
        .route("/oauth/installedLocations", get(installed_locations))
        .route("/oauth/reconnect", post(reconnect))
        .route(
            "/marketplace/app/{app_id}/installations",
            axum::routing::delete(uninstall_app),
        )
        .route("/_sim/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/_sim/ledger", get(ctl_ledger))
        .route("/_sim/counters", get(ctl_counters))
        .route("/_sim/faults", post(ctl_faults))
        .route("/_sim/faults/queue", post(ctl_queue))
        .route("/_sim/seed", post(ctl_seed))
        .route("/_sim/locations", post(ctl_locations))
        .route("/_sim/locations/{id}/active", post(ctl_active))
        .route("/_sim/revoke", post(ctl_revoke))
        .route("/_sim/client-secret", post(ctl_secret))
        .route("/_sim/config", get(ctl_config_get).post(ctl_config))
        .route("/_sim/webhooks", get(ctl_webhooks))
        .route("/_sim/webhook-key", get(ctl_webhook_key))
        .route("/_sim/uninstall", post(ctl_uninstall))
        .route("/_sim/bulk-install", post(ctl_bulk_install))
        .route("/_sim/plan-change", post(ctl_plan_change))
        .with_state(shared)
}

use axum::Json;

fn rate_headers(resp: &mut Response, remaining: u64) {
    let h = resp.headers_mut();
    h.insert(
        "x-ratelimit-limit-daily",
        HeaderValue::from_static("200000"),
    );
    h.insert(
        "x-ratelimit-daily-remaining",
        HeaderValue::from_static("199000"),
    );
    h.insert(
        "x-ratelimit-interval-milliseconds",
        HeaderValue::from_static("10000"),
    );
    h.insert("x-ratelimit-max", HeaderValue::from_static("100"));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

fn api_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    rate_headers(&mut r, 99);
    r
}

fn error(status: StatusCode, message: impl Into<Value>) -> Response {
    let mut body = json!({"statusCode": status.as_u16(), "message": message.into()});
    if status == StatusCode::UNAUTHORIZED {
        body["error"] = json!("Unauthorized");
    } else {
        body["traceId"] = json!(trace_id());
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            body["error"] = json!("Unprocessable Entity");
        }
    }
    api_json(status, body)
}

/// A body that fails at once: the client gets the head, then a broken connection.
struct Broken;

impl http_body::Body for Broken {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other(
            "simulated dropped response",
        ))))
    }
}

fn dropped() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(Broken))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn server_error(s: StatusCode) -> Response {
    api_json(
        s,
        json!({"statusCode": s.as_u16(), "message": s.canonical_reason().unwrap_or("Server Error")}),
    )
}

/// Rewrites a successful JSON answer; anything else passes through unchanged.
async fn rewrite_json(resp: Response, f: impl FnOnce(Value) -> Value) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => serde_json::to_vec(&f(v)).unwrap_or_else(|_| bytes.to_vec()),
        Err(_) => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// The odd-but-parseable metadata values of [`Fault::OddMetadata`].
fn odd_metadata(mut v: Value) -> Value {
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    if let Some(Value::String(t)) = o.get("userType") {
        let lower = t.to_lowercase();
        o.insert("userType".into(), json!(lower));
    }
    if let Some(c) = o.get("companyId") {
        let n = c
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(12345);
        o.insert("companyId".into(), json!(n));
    }
    if let Some(b) = o.get("isBulkInstallation") {
        let s = match b {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        o.insert("isBulkInstallation".into(), json!(s));
    }
    if let Some(Value::Array(locs)) = o.get("approvedLocations") {
        let joined = locs
            .iter()
            .map(|l| {
                l.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| l.to_string())
            })
            .collect::<Vec<_>>()
            .join(",");
        o.insert("approvedLocations".into(), json!(joined));
    }
    if let Some(Value::String(scope)) = o.get("scope") {
        let parts: Vec<&str> = scope.split_whitespace().collect();
        let arr = json!(parts);
        o.insert("scope".into(), arr);
    }
    o.insert("planId".into(), Value::Null);
    o.insert(
        "simOddNested".into(),
        json!({"level1": {"level2": [1, "two", {"three": null}], "flag": true}}),
    );
    v
}

/// Answers the processed status with the body cut in the middle (invalid JSON).
async fn garbled(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let cut = if bytes.len() >= 2 {
        bytes.slice(..bytes.len() / 2)
    } else {
        Bytes::from_static(b"{")
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(cut))
}

/// Runs an API request through the fault gate, then processes it in its own
/// task so a client that gives up cannot cancel it (as on a real server).
async fn gated<F>(shared: Arc<Shared>, process: F) -> Response
where
    F: FnOnce(&Shared) -> Response + Send + 'static,
{
    let (latency, fault) = shared.decide();
    let task = tokio::spawn(async move {
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if fault.is_some() {
            lock(&shared.inner).counters.faults_injected += 1;
        }
        match fault {
            Some(Fault::ServerError { status }) => {
                let s = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                server_error(s)
            }
            Some(Fault::ServerErrorAfterRotate { status }) => {
                let _ = process(&shared);
                let s = StatusCode::from_u16(status)
                    .ok()
                    .filter(StatusCode::is_server_error)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                server_error(s)
            }
            Some(Fault::OddMetadata) => rewrite_json(process(&shared), odd_metadata).await,
            Some(Fault::NoRefreshToken) => {
                rewrite_json(process(&shared), |mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("refresh_token");
                    }
                    v
                })
                .await
            }
            Some(Fault::Garbled) => garbled(process(&shared)).await,
            Some(Fault::RfcInvalidGrant) => api_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": "refresh token is invalid"}),
            ),
            Some(Fault::RateLimited) => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"statusCode": 429, "message": "Too Many Requests"})),
                )
                    .into_response();
                rate_headers(&mut r, 0);
                r
            }
            Some(Fault::InvalidClient) => {
                error(StatusCode::UNAUTHORIZED, "Invalid client credentials")
            }
            Some(Fault::Drop) => {
                let _ = process(&shared);
                dropped()
            }
            Some(Fault::Latency { .. }) | None => process(&shared),
        }
    });
    task.await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn html(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!doctype html><title>HighLevel simulator</title><p>{text}</p>"),
    )
        .into_response()
}

async fn consent(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cfg = lock(&shared.cfg).clone();
    if q.get("client_id") != Some(&cfg.client_id) {
        return html(StatusCode::BAD_REQUEST, "Unknown client_id");
    }
    let Some(redirect_uri) = q.get("redirect_uri").filter(|r| !r.is_empty()) else {
        return html(StatusCode::BAD_REQUEST, "redirect_uri is required");
    };
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    if q.get("sim_deny").map(String::as_str) == Some("1") {
        let to = format!(
            "{redirect_uri}{sep}error=access_denied&error_description=The+user+denied+access"
        );
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    let user_type = match q.get("sim_user_type").map(String::as_str) {
        Some("Location") => UserType::Location,
        _ => UserType::Company,
    };
    let company_id = q
        .get("sim_company_id")
        .cloned()
        .unwrap_or_else(|| "sim-company".into());
    let location_id = q.get("sim_location_id").cloned();
    if user_type == UserType::Location && location_id.is_none() {
        return html(
            StatusCode::BAD_REQUEST,
            "sim_location_id is required for a Location install",
        );
    }
    let code = random_hex(20);
    let user_id = format!("user-{}", random_hex(4));
    let mut inner = lock(&shared.inner);
    if let Some(l) = &location_id {
        inner
            .locations
            .entry(company_id.clone())
            .or_default()
            .entry(l.clone())
            .or_insert(LocationInfo {
                name: l.clone(),
                installed_at_ms: now_ms(),
            });
    }
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: cfg.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            user_type,
            company_id: company_id.clone(),
            location_id: location_id.clone(),
            scope: q.get("scope").cloned().unwrap_or_default(),
            user_id: user_id.clone(),
            expires_at_ms: now_ms() + cfg.code_ttl_secs * 1000,
            used: false,
        },
    );
    drop(inner);
    // HighLevel sends INSTALL on consent, and it may arrive before the OAuth
    // callback has exchanged the code.
    let d = shared.install_delivery(&cfg, &company_id, location_id.as_deref(), &user_id);
    shared.enqueue(vec![d]);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("{redirect_uri}{sep}code={code}"))],
    )
        .into_response()
}

fn form(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!(["body must be application/x-www-form-urlencoded"]),
        ));
    }
    serde_urlencoded::from_bytes(body).map_err(|_| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!(["body is not a valid form"]),
        )
    })
}

fn require(f: &HashMap<String, String>, fields: &[&str]) -> Result<(), Response> {
    let missing: Vec<String> = fields
        .iter()
        .filter(|k| f.get(**k).is_none_or(|v| v.is_empty()))
        .map(|k| format!("{k} should not be empty"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(error(StatusCode::UNPROCESSABLE_ENTITY, json!(missing)))
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let f = match form(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    gated(shared, move |s| token_process(s, &f)).await
}

fn token_process(s: &Shared, f: &HashMap<String, String>) -> Response {
    if let Err(r) = require(f, &["client_id", "client_secret", "grant_type"]) {
        return r;
    }
    let cfg = lock(&s.cfg).clone();
    if f["client_id"] != cfg.client_id || f["client_secret"] != cfg.client_secret {
        return error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    let mut inner = lock(&s.inner);
    match f["grant_type"].as_str() {
        "authorization_code" => {
            if let Err(r) = require(f, &["code"]) {
                return r;
            }
            let now = now_ms();
            let redirect = f.get("redirect_uri").cloned().unwrap_or_default();
            let Some(code) = inner.codes.get_mut(&f["code"]) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid grant: authorization code is invalid",
                );
            };
            let valid = !code.used
                && code.expires_at_ms > now
                && code.client_id == cfg.client_id
                && code.redirect_uri == redirect;
            code.used = true;
            if !valid {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid grant: authorization code is invalid",
                );
            }
            let (ut, c, l, scope, user_id) = (
                code.user_type,
                code.company_id.clone(),
                code.location_id.clone(),
                code.scope.clone(),
                code.user_id.clone(),
            );
            let gid = inner.new_grant(ut, &c, l.as_deref(), &scope);
            if let Some(g) = inner.grants.get_mut(&gid) {
                g.user_id = user_id;
            }
            inner.counters.code_exchanges += 1;
            api_json(
                StatusCode::OK,
                inner.token_response(&cfg, &gid, cfg.access_token_ttl_secs),
            )
        }
        "refresh_token" => {
            if let Err(r) = require(f, &["refresh_token"]) {
                return r;
            }
            let rt = &f["refresh_token"];
            let Some(rec) = inner.tokens.get(rt) else {
                inner.counters.unknown_refresh_tokens_presented += 1;
                inner.counters.refresh_rejections += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid grant: refresh token is invalid",
                );
            };
            let gid = rec.grant_id.clone();
            let live = rec.live;
            // The client had used the newer token and still sends this one.
            let stale = rec
                .successor
                .as_ref()
                .and_then(|s| inner.tokens.get(s))
                .is_some_and(|s| s.presented + s.presented_while_inactive > 0);
            let replay = rec
                .rotation_body
                .as_ref()
                .zip(rec.rotated_at_ms)
                .filter(|(_, at)| {
                    now_ms().saturating_sub(*at) < cfg.refresh_grace_secs.saturating_mul(1000)
                })
                .map(|(b, _)| b.clone());
            let grant = &inner.grants[&gid];
            let revoked = grant.revoked;
            let inactive = grant.user_type == UserType::Location
                && grant
                    .location_id
                    .as_ref()
                    .is_some_and(|l| inner.inactive.contains(l));
            if live && inactive {
                if let Some(r) = inner.tokens.get_mut(rt) {
                    r.presented_while_inactive += 1;
                }
                return error(StatusCode::BAD_REQUEST, "Location is not active");
            }
            if let Some(r) = inner.tokens.get_mut(rt) {
                r.presented += 1;
                r.live = false;
            }
            if stale {
                inner.counters.stale_presentations += 1;
            }
            if !live {
                // A revoked grant never replays; a rotated token replays its
                // rotation's answer within the grace window.
                if let Some(body) = replay.filter(|_| !revoked) {
                    inner.counters.grace_replays += 1;
                    return api_json(StatusCode::OK, body);
                }
                inner.counters.refresh_rejections += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid grant: refresh token is invalid",
                );
            }
            inner.counters.refreshes += 1;
            let body = inner.token_response(&cfg, &gid, cfg.access_token_ttl_secs);
            let successor = body["refresh_token"].as_str().map(str::to_owned);
            if let Some(r) = inner.tokens.get_mut(rt) {
                r.successor = successor;
                r.rotated_at_ms = Some(now_ms());
                r.rotation_body = Some(body.clone());
            }
            api_json(StatusCode::OK, body)
        }
        _ => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!(["grant_type must be one of authorization_code, refresh_token"]),
        ),
    }
}

/// The Company grant behind a bearer token, or the 401 HighLevel gives.
fn company_bearer(inner: &Inner, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "Invalid JWT");
    let a = inner.access.get(token).ok_or_else(unauthorized)?;
    if a.expires_at_ms <= now_ms() {
        return Err(unauthorized());
    }
    let g = inner.grants.get(&a.grant_id).ok_or_else(unauthorized)?;
    if g.revoked || g.user_type != UserType::Company {
        return Err(unauthorized());
    }
    Ok(a.grant_id.clone())
}

/// What every company-token endpoint checks first, in HighLevel's order:
/// the bearer token, the `Version` header, then the required parameters.
/// Returns the grant id behind the bearer.
fn company_call(
    inner: &Inner,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    fields: &[&str],
) -> Result<String, Response> {
    let gid = company_bearer(inner, headers)?;
    check_version(headers)?;
    require(params, fields)?;
    Ok(gid)
}

fn check_version(headers: &HeaderMap) -> Result<(), Response> {
    match headers.get("version").and_then(|v| v.to_str().ok()) {
        Some(API_VERSION) => Ok(()),
        _ => Err(error(StatusCode::BAD_REQUEST, "Invalid parameter: Version")),
    }
}

async fn location_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = match form(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    gated(shared, move |s| {
        let cfg = lock(&s.cfg).clone();
        let mut inner = lock(&s.inner);
        let gid = match company_call(&inner, &headers, &f, &["companyId", "locationId"]) {
            Ok(g) => g,
            Err(r) => return r,
        };
        let (company, loc) = (f["companyId"].clone(), f["locationId"].clone());
        if inner.grants[&gid].company_id != company {
            return error(StatusCode::BAD_REQUEST, "Invalid parameter: companyId");
        }
        if !inner
            .locations
            .get(&company)
            .is_some_and(|m| m.contains_key(&loc))
        {
            return error(
                StatusCode::BAD_REQUEST,
                "Location not found or app not installed for this location",
            );
        }
        if inner.inactive.contains(&loc) {
            return error(StatusCode::BAD_REQUEST, "Location is not active");
        }
        let scope = inner.grants[&gid].scope.clone();
        let new = inner.new_grant(UserType::Location, &company, Some(&loc), &scope);
        *inner
            .counters
            .location_mints
            .entry(loc.clone())
            .or_default() += 1;
        let mut body = inner.token_response(&cfg, &new, cfg.access_token_ttl_secs);
        body["appId"] = json!(cfg.app_id);
        body["versionId"] = json!(cfg.version_id);
        body["traceId"] = json!(trace_id());
        api_json(StatusCode::OK, body)
    })
    .await
}

async fn installed_locations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    gated(shared, move |s| {
        let cfg = lock(&s.cfg).clone();
        let mut inner = lock(&s.inner);
        let gid = match company_call(&inner, &headers, &q, &["companyId", "appId"]) {
            Ok(g) => g,
            Err(r) => return r,
        };
        if q["appId"] != cfg.app_id {
            return error(StatusCode::BAD_REQUEST, "Invalid parameter: appId");
        }
        let company = &q["companyId"];
        if &inner.grants[&gid].company_id != company {
            return error(StatusCode::BAD_REQUEST, "Invalid parameter: companyId");
        }
        let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
        let (skip, limit) = (num("skip", 0), num("limit", 20).clamp(1, 100));
        // A server that ignores `skip` answers the first page every time.
        let skip = if cfg.ignore_skip { 0 } else { skip };
        let all: Vec<Value> = inner
            .locations
            .get(company)
            .map(|m| {
                m.iter()
                    .filter(|(id, info)| {
                        q.get("query").is_none_or(|n| info.name.contains(n.as_str()))
                            && q.get("locationId").is_none_or(|l| l == *id)
                    })
                    .map(|(id, info)| {
                        json!({"_id": id, "name": info.name, "address": "1 Simulated Way", "isInstalled": true,
                               "versionId": cfg.version_id, "installedAt": info.installed_at_ms.to_string()})
                    })
                    .collect()
            })
            .unwrap_or_default();
        inner.counters.installed_locations_calls += 1;
        let page: Vec<&Value> = all.iter().skip(skip).take(limit).collect();
        let body = match cfg.listing_fault {
            Some(f) => {
                inner.counters.faults_injected += 1;
                f.body(page, all.len())
            }
            None => json!({"locations": page, "count": all.len(), "installToFutureLocations": false}),
        };
        api_json(StatusCode::OK, body)
    })
    .await
}

/// The grant behind a bearer token of either type, or the 401 HighLevel gives.
fn any_bearer(inner: &Inner, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "Invalid JWT");
    let a = inner.access.get(token).ok_or_else(unauthorized)?;
    if a.expires_at_ms <= now_ms() {
        return Err(unauthorized());
    }
    let g = inner.grants.get(&a.grant_id).ok_or_else(unauthorized)?;
    if g.revoked {
        return Err(unauthorized());
    }
    Ok(a.grant_id.clone())
}

/// `DELETE /marketplace/app/{appId}/installations`: the developer
/// uninstalls the app. A Company token may name its company (the app leaves
/// the agency and every sub-account) or one of its locations; a Location
/// token only its own location. `reason` is required. The effect is
/// [`Sim::uninstall`]'s: grants revoked, locations removed, UNINSTALL queued.
///
/// An access token of a grant that an uninstall revoked (a JWT still
/// within its lifetime) is answered 404 "App is not installed …", not 401:
/// the simulator's model of HighLevel checking the signed token, then
/// finding no installation. Any other refused token gets the 401.
/// (Undocumented at HighLevel; a 401 there means the same to a caller:
/// nothing is known to be uninstalled.)
async fn uninstall_app(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    gated(shared, move |s| {
        let own_app_id = lock(&s.cfg).app_id.clone();
        let target = {
            let inner = lock(&s.inner);
            let gid = match any_bearer(&inner, &headers) {
                Ok(g) => g,
                Err(r) => {
                    let token = headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or_default();
                    let gone = inner
                        .uninstalled_access
                        .get(token)
                        .is_some_and(|exp| *exp > now_ms());
                    if gone && check_version(&headers).is_ok() && app_id == own_app_id {
                        return error(
                            StatusCode::NOT_FOUND,
                            "App is not installed for this companyId or locationId",
                        );
                    }
                    return r;
                }
            };
            if let Err(r) = check_version(&headers) {
                return r;
            }
            if app_id != own_app_id {
                return error(StatusCode::BAD_REQUEST, "Invalid parameter: appId");
            }
            let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&body) else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!(["body must be a JSON object"]),
                );
            };
            let text = |k: &str| b.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
            if text("reason").is_none() {
                return error(StatusCode::BAD_REQUEST, json!(["reason should not be empty"]));
            }
            let g = &inner.grants[&gid];
            match (text("companyId"), text("locationId"), g.user_type) {
                (Some(c), None, UserType::Company) if c == g.company_id => {
                    (UserType::Company, c.to_owned())
                }
                (None, Some(l), UserType::Company)
                    if inner
                        .locations
                        .get(&g.company_id)
                        .is_some_and(|m| m.contains_key(l)) =>
                {
                    (UserType::Location, l.to_owned())
                }
                (None, Some(l), UserType::Location) if g.location_id.as_deref() == Some(l) => {
                    (UserType::Location, l.to_owned())
                }
                (None, None, _) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        json!(["companyId or locationId should not be empty"]),
                    );
                }
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "Invalid parameter: the token does not belong to that companyId or locationId",
                    );
                }
            }
        };
        s.uninstall(target.0, &target.1);
        lock(&s.inner).counters.app_uninstalls += 1;
        api_json(StatusCode::OK, json!({"success": true}))
    })
    .await
}

async fn reconnect(State(shared): State<Arc<Shared>>) -> Response {
    gated(shared, |_| {
        api_json(
            StatusCode::BAD_REQUEST,
            json!({"message": "API endpoint has been removed", "error": "Bad Request", "statusCode": 400}),
        )
    })
    .await
}

// ---- control ------------------------------------------------------------

async fn ctl_ledger(State(s): State<Arc<Shared>>) -> Json<Value> {
    let l = s.ledger();
    Json(
        json!({"tokens": l.tokens, "chains": l.chains(), "presentedTwice": l.presented_twice(), "liveCount": l.live_count()}),
    )
}

async fn ctl_counters(State(s): State<Arc<Shared>>) -> Json<Counters> {
    Json(lock(&s.inner).counters.clone())
}

async fn ctl_faults(State(s): State<Arc<Shared>>, Json(f): Json<Faults>) -> StatusCode {
    lock(&s.faults).0 = f;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(t) => vec![t],
            Self::Many(v) => v,
        }
    }
}

async fn ctl_queue(State(s): State<Arc<Shared>>, Json(f): Json<OneOrMany<Fault>>) -> StatusCode {
    lock(&s.faults).1.extend(f.into_vec());
    StatusCode::NO_CONTENT
}

async fn ctl_seed(
    State(s): State<Arc<Shared>>,
    Json(g): Json<OneOrMany<SeedGrant>>,
) -> Json<Vec<Value>> {
    Json(g.into_vec().into_iter().map(|g| s.seed(g)).collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocationsBody {
    company_id: String,
    locations: Vec<LocationBody>,
}

#[derive(Deserialize)]
struct LocationBody {
    id: String,
    name: String,
}

async fn ctl_locations(State(s): State<Arc<Shared>>, Json(b): Json<LocationsBody>) -> StatusCode {
    let mut inner = lock(&s.inner);
    let entry = inner.locations.entry(b.company_id).or_default();
    for l in b.locations {
        entry.entry(l.id).or_insert(LocationInfo {
            name: l.name,
            installed_at_ms: now_ms(),
        });
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ActiveBody {
    active: bool,
}

async fn ctl_active(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(b): Json<ActiveBody>,
) -> StatusCode {
    let mut inner = lock(&s.inner);
    if b.active {
        inner.inactive.remove(&id);
    } else {
        inner.inactive.insert(id);
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeBody {
    user_type: UserType,
    id: String,
}

async fn ctl_revoke(State(s): State<Arc<Shared>>, Json(b): Json<RevokeBody>) -> StatusCode {
    s.revoke(b.user_type, &b.id);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretBody {
    client_secret: String,
}

async fn ctl_secret(State(s): State<Arc<Shared>>, Json(b): Json<SecretBody>) -> StatusCode {
    lock(&s.cfg).client_secret = b.client_secret;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    #[serde(default)]
    refresh_grace_secs: Option<u64>,
    #[serde(default)]
    ignore_skip: Option<bool>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "present")]
    listing_fault: Option<Option<ListingFault>>,
}

/// Tells a field given as `null` (Some(None)) from one left out (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

async fn ctl_config(State(s): State<Arc<Shared>>, Json(b): Json<ConfigBody>) -> StatusCode {
    let mut cfg = lock(&s.cfg);
    if let Some(n) = b.refresh_grace_secs {
        cfg.refresh_grace_secs = n;
    }
    if let Some(ignore) = b.ignore_skip {
        cfg.ignore_skip = ignore;
    }
    if let Some(fault) = b.listing_fault {
        cfg.listing_fault = fault;
    }
    StatusCode::NO_CONTENT
}

async fn ctl_config_get(State(s): State<Arc<Shared>>) -> Json<Value> {
    let cfg = lock(&s.cfg);
    Json(json!({
        "refreshGraceSecs": cfg.refresh_grace_secs,
        "ignoreSkip": cfg.ignore_skip,
        "listingFault": cfg.listing_fault,
    }))
}

/// Drains the queued webhooks, oldest first.
async fn ctl_webhooks(State(s): State<Arc<Shared>>) -> Json<Vec<Delivery>> {
    Json(std::mem::take(&mut *lock(&s.webhooks)))
}

async fn ctl_webhook_key(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "publicKey": s.signer.public_key(),
        "publicKeyPem": s.signer.public_key_pem(),
        "rsaPublicKey": s.signer.rsa_public_key(),
    }))
}

async fn ctl_uninstall(State(s): State<Arc<Shared>>, Json(b): Json<RevokeBody>) -> StatusCode {
    s.uninstall(b.user_type, &b.id);
    StatusCode::NO_CONTENT
}

/// At most this many locations per `POST /_sim/bulk-install`.
const MAX_BULK_INSTALL: usize = 10_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkInstallBody {
    company_id: String,
    count: usize,
}

async fn ctl_bulk_install(
    State(s): State<Arc<Shared>>,
    Json(b): Json<BulkInstallBody>,
) -> Response {
    if b.count > MAX_BULK_INSTALL {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": format!("count must be at most {MAX_BULK_INSTALL}")})),
        )
            .into_response();
    }
    // Signing is CPU work: keep it off the async worker.
    let ids = tokio::task::spawn_blocking(move || s.bulk_install(&b.company_id, b.count)).await;
    match ids {
        Ok(ids) => Json(json!({"locationIds": ids})).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanChangeBody {
    user_type: UserType,
    id: String,
    plan_id: String,
}

async fn ctl_plan_change(
    State(s): State<Arc<Shared>>,
    Json(b): Json<PlanChangeBody>,
) -> StatusCode {
    s.plan_change(b.user_type, &b.id, &b.plan_id);
    StatusCode::NO_CONTENT
}
