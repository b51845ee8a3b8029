//! The location-token mint: a usable location access token on demand, for
//! the app owner's other services.
//!
//! Sources, in order: a stored minted token with enough life left; the
//! location's own install (refreshed first if needed); a fresh
//! `POST /oauth/locationToken` from the company install (refreshed first if
//! near expiry). Every refresh goes through [`crate::refresh`], so mints and
//! sweeps never race on a refresh token. Concurrent mints for one location
//! make one HighLevel call: a short lock item elects the minter, the others
//! wait for its stored result.
//!
//! `companyToken` serves the company grant's own access token (refreshed
//! first under the same protocol when it has too little life left).

use crate::events::StateChanged;
use crate::ghl::{GhlError, InstalledLocation};
use crate::model::{
    GrantInfo, InstallId, InstallState, LifecycleEvent, TokenPair, UserType, now_millis, now_secs,
    rfc3339, rfc3339_ms,
};
use crate::redact::SecretString;
use crate::refresh::{Outcome, ReconnectSwitch, RefreshError, RefreshPolicy, Refresher};
use crate::services::Services;
use crate::store::{Install, LeaseWhen, LinkState, LocationLink, StoreError, lease_token};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};

pub const MAX_ID_LEN: usize = 64;
pub const DEFAULT_MIN_VALIDITY: u64 = 300;
/// A token never lives longer than a day; asking for more cannot be served.
pub const MAX_MIN_VALIDITY: u64 = 82_800;
/// How long a caller waits for another caller's mint or refresh.
const SINGLE_FLIGHT_WAIT: Duration = Duration::from_secs(8);
const SINGLE_FLIGHT_POLL: Duration = Duration::from_millis(100);
/// A company token is refreshed before minting when it has less than this left.
const COMPANY_MIN_VALIDITY: i64 = 600;
/// `listInstalledLocations` stops after this many pages (10,000 locations).
const MAX_LOCATION_PAGES: u32 = 100;
/// Between pages: well under HighLevel's 100 requests / 10 s per company.
const LOCATION_PAGE_PACE: Duration = Duration::from_millis(150);

/// A grant is served only to a request that names its company or none.
/// Every path that serves a stored grant checks it, the single-flight ones
/// too: a concurrent request for another company must not be handed the
/// token another request's mint stored.
fn company_matches(loc: &str, asked: Option<&str>, i: &Install) -> Result<(), MintError> {
    match (asked, i.info.company_id.as_deref()) {
        (Some(asked), Some(stored)) if asked != stored => Err(MintError::InvalidRequest(format!(
            "location {loc} belongs to company {stored}, not {asked}"
        ))),
        _ => Ok(()),
    }
}

/// Errors with the stable `errorType` names Step Functions can match.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The verified caller of the IAM entrance is outside the caller policy.
    #[error("{0}")]
    CallerNotAllowed(String),
    #[error("{0}")]
    InstallNotFound(String),
    #[error("{0}")]
    NeedsReauthorization(String),
    #[error("{0}")]
    LocationNotInstalled(String),
    /// HighLevel told us the app was uninstalled (webhook or
    /// reconciliation); its tokens are erased.
    #[error("{0}")]
    AppUninstalled(String),
    #[error("HighLevel rate limit reached; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("internal error: {0}; retry later")]
    Internal(String),
}

impl MintError {
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "InvalidRequest",
            Self::CallerNotAllowed(_) => "CallerNotAllowed",
            Self::InstallNotFound(_) => "InstallNotFound",
            Self::NeedsReauthorization(_) => "NeedsReauthorization",
            Self::LocationNotInstalled(_) => "LocationNotInstalled",
            Self::AppUninstalled(_) => "AppUninstalled",
            Self::RateLimited { .. } => "RateLimited",
            Self::UpstreamUnavailable(_) => "UpstreamUnavailable",
            Self::Internal(_) => "Internal",
        }
    }
}

impl From<StoreError> for MintError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<RefreshError> for MintError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::InvalidClient(m) => Self::UpstreamUnavailable(format!(
                "HighLevel rejected the app's client credentials ({m}); the app owner must fix the app secret"
            )),
            other => Self::Internal(other.to_string()),
        }
    }
}

fn from_ghl(e: GhlError, what: &str) -> MintError {
    match e {
        GhlError::RateLimited { retry_after, .. } => MintError::RateLimited {
            retry_after_secs: retry_after.as_secs().max(1),
        },
        GhlError::Unauthorized { message, .. } => MintError::NeedsReauthorization(format!(
            "HighLevel refused the company token while {what} ({message}); the agency must reinstall the app"
        )),
        other => MintError::UpstreamUnavailable(format!(
            "HighLevel failed while {what}: {other}; retry with backoff"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    pub location_id: String,
    pub company_id: Option<String>,
    pub min_validity_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Mint(MintRequest),
    ListInstalledLocations {
        company_id: String,
    },
    /// The agency's own access token, for HighLevel's company-level
    /// endpoints (sub-account search and creation, SaaS, snapshots).
    CompanyToken {
        company_id: String,
        min_validity_secs: u64,
    },
}

fn id_field(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<String>, MintError> {
    match obj.get(field) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(MintError::InvalidRequest(format!("{field} is required"))),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(MintError::InvalidRequest(format!("{field} is empty")));
            }
            if s.len() > MAX_ID_LEN {
                return Err(MintError::InvalidRequest(format!(
                    "{field} is {} characters long; HighLevel ids are at most {MAX_ID_LEN}",
                    s.len()
                )));
            }
            if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(MintError::InvalidRequest(format!(
                    "{field} may contain only letters, digits, - and _"
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(other) => Err(MintError::InvalidRequest(format!(
            "{field} must be a string, not {}",
            json_type(other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates a request before anything else happens.
pub fn parse_request(event: &Value) -> Result<Request, MintError> {
    let obj = event.as_object().ok_or_else(|| {
        MintError::InvalidRequest(format!(
            "the request must be a JSON object, not {}",
            json_type(event)
        ))
    })?;
    match obj.get("action") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if a == "mint" => {}
        Some(Value::String(a)) if a == "listInstalledLocations" => {
            let company_id = id_field(obj, "companyId", true)?.unwrap_or_default();
            return Ok(Request::ListInstalledLocations { company_id });
        }
        Some(Value::String(a)) if a == "companyToken" => {
            let company_id = id_field(obj, "companyId", true)?.unwrap_or_default();
            return Ok(Request::CompanyToken {
                company_id,
                min_validity_secs: min_validity(obj)?,
            });
        }
        Some(Value::String(a)) => {
            return Err(MintError::InvalidRequest(format!(
                "unknown action {:?}; expected \"mint\" (the default), \"companyToken\" or \"listInstalledLocations\"",
                a.chars().take(40).collect::<String>()
            )));
        }
        Some(other) => {
            return Err(MintError::InvalidRequest(format!(
                "action must be a string, not {}",
                json_type(other)
            )));
        }
    }
    let location_id = id_field(obj, "locationId", true)?.unwrap_or_default();
    let company_id = id_field(obj, "companyId", false)?;
    let min_validity_secs = min_validity(obj)?;
    Ok(Request::Mint(MintRequest {
        location_id,
        company_id,
        min_validity_secs,
    }))
}

fn min_validity(obj: &serde_json::Map<String, Value>) -> Result<u64, MintError> {
    match obj.get("minValiditySeconds") {
        None | Some(Value::Null) => Ok(DEFAULT_MIN_VALIDITY),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= MAX_MIN_VALIDITY => Ok(v),
            _ => Err(MintError::InvalidRequest(format!(
                "minValiditySeconds must be a whole number from 0 to {MAX_MIN_VALIDITY}"
            ))),
        },
        Some(other) => Err(MintError::InvalidRequest(format!(
            "minValiditySeconds must be a number, not {}",
            json_type(other)
        ))),
    }
}

/// The answer. `access_token` is the only token; never a refresh token.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MintResponse {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    pub token_type: &'static str,
    pub expires_at: String,
    pub expires_in: i64,
    pub scope: Option<String>,
    pub location_id: String,
    pub company_id: Option<String>,
    pub user_type: &'static str,
    pub source: &'static str,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

impl MintResponse {
    fn from_install(i: &Install, location_id: &str, source: &'static str) -> Self {
        Self {
            access_token: i.access_token.clone(),
            token_type: "Bearer",
            expires_at: rfc3339(i.expires_at),
            expires_in: (i.expires_at - now_secs()).max(0),
            scope: i.info.scope.clone(),
            location_id: location_id.to_owned(),
            company_id: i.info.company_id.clone(),
            user_type: "Location",
            source,
        }
    }
}

/// The answer to `companyToken`: the agency's access token, never its
/// refresh token.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompanyTokenResponse {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    pub token_type: &'static str,
    pub expires_at: String,
    pub expires_in: i64,
    pub scope: Option<String>,
    pub company_id: String,
    pub user_type: &'static str,
    /// `company-install` (the stored grant as it was) or `refreshed`
    /// (refreshed first under the protocol).
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocations {
    pub company_id: String,
    pub count: u64,
    /// False when the listing cannot be trusted to be the whole list (a
    /// bound stopped it, or an answer was malformed or disagreed with its
    /// `count`; see `ghl::ListingGap`).
    pub complete: bool,
    pub locations: Vec<InstalledLocation>,
}

pub struct Minter<'a> {
    pub svc: &'a Services,
    pub policy: &'a RefreshPolicy,
    pub owner: &'a str,
    pub app_id: Option<&'a str>,
    /// The invocation's deadline less a reserve: no refresh token is
    /// presented, and no location token minted, without time to store the answer.
    pub deadline: Option<Instant>,
}

fn usable(i: &Install, min_validity: u64) -> bool {
    matches!(
        i.state,
        InstallState::Active | InstallState::Retrying | InstallState::Suspended
    ) && i.expires_at - now_secs() > min_validity as i64
}

impl Minter<'_> {
    fn refresher<'b>(&'b self, switch: &'b ReconnectSwitch) -> Refresher<'b> {
        Refresher {
            store: &self.svc.store,
            ghl: &self.svc.ghl,
            app: &self.svc.app,
            policy: self.policy,
            owner: self.owner,
            reconnect: switch,
            deadline: self.deadline,
            first_answers: None,
            events: &self.svc.events,
        }
    }

    /// Returns a grant with more than `min_validity` left, refreshing it under
    /// the shared protocol when needed (the flag says it was refreshed
    /// here). `None` when it cannot be made usable (revoked, lost, missing).
    async fn fresh_grant(
        &self,
        id: &InstallId,
        min_validity: u64,
    ) -> Result<Option<(Install, bool)>, MintError> {
        let switch = ReconnectSwitch::default();
        let started = Instant::now();
        loop {
            let Some(current) = self.svc.store.get(id).await? else {
                return Ok(None);
            };
            if usable(&current, min_validity) {
                return Ok(Some((current, false)));
            }
            if !current.state.is_refreshable() {
                return Ok(None);
            }
            let threshold = now_secs() + min_validity as i64 + 1;
            match self
                .refresher(&switch)
                .refresh(id, LeaseWhen::ExpiresBefore(threshold), None)
                .await?
            {
                Outcome::Refreshed(i) | Outcome::Recovered(i) if usable(&i, min_validity) => {
                    return Ok(Some((*i, true)));
                }
                Outcome::NotNeeded(i) if usable(&i, min_validity) => {
                    return Ok(Some((*i, false)));
                }
                Outcome::Deferred => {
                    return Err(MintError::UpstreamUnavailable(format!(
                        "too little time is left in this invocation to refresh {id} and store the answer safely; retry"
                    )));
                }
                Outcome::InDoubt { kind, .. } => {
                    return Err(MintError::UpstreamUnavailable(format!(
                        "HighLevel did not answer the refresh of {id} ({kind}); the token is presented again shortly; retry with backoff"
                    )));
                }
                Outcome::Locked
                | Outcome::NotNeeded(_)
                | Outcome::Superseded
                | Outcome::Journaled => {
                    // Someone else is refreshing it: wait for their result.
                    if started.elapsed() > SINGLE_FLIGHT_WAIT {
                        return Err(MintError::UpstreamUnavailable(format!(
                            "{id} is being refreshed by another worker; retry shortly"
                        )));
                    }
                    tokio::time::sleep(SINGLE_FLIGHT_POLL).await;
                }
                Outcome::Retrying { kind, retry_at } => {
                    return Err(if kind == "rate_limited" {
                        MintError::RateLimited {
                            retry_after_secs: (retry_at - now_secs()).max(1) as u64,
                        }
                    } else {
                        MintError::UpstreamUnavailable(format!(
                            "HighLevel failed to refresh {id} ({kind}); retry with backoff"
                        ))
                    });
                }
                Outcome::Suspended => {
                    return Err(MintError::UpstreamUnavailable(
                        "HighLevel says the location is not active; retry in a few hours".into(),
                    ));
                }
                Outcome::Revoked
                | Outcome::Lost
                | Outcome::Missing
                | Outcome::Skipped(_)
                | Outcome::Refreshed(_)
                | Outcome::Recovered(_) => {
                    return Ok(None);
                }
            }
        }
    }

    pub async fn mint(&self, req: &MintRequest) -> Result<MintResponse, MintError> {
        let loc = &req.location_id;
        let minted_id = InstallId::Minted(loc.clone());
        let min = req.min_validity_secs;
        let cached = self.svc.store.get(&minted_id).await?;
        if let Some(cached) = &cached
            && usable(cached, min)
        {
            self.check_company(req, cached)?;
            return Ok(MintResponse::from_install(cached, loc, "cache"));
        }
        // Past the cache: an uninstall HighLevel told us about is answered
        // as such, never papered over with a stale or freshly minted token.
        let link = self.svc.store.link_of(loc).await?;
        if let Some(at_ms) = self
            .uninstalled_at(loc, req, link.as_ref(), cached.as_ref())
            .await?
        {
            return Err(MintError::AppUninstalled(format!(
                "the app was uninstalled from location {loc} (at {}); it must be installed again before tokens can be served",
                rfc3339_ms(at_ms)
            )));
        }
        if let Some((own, _)) = self
            .fresh_grant(&InstallId::Location(loc.clone()), min)
            .await?
        {
            self.check_company(req, &own)?;
            return Ok(MintResponse::from_install(&own, loc, "location-install"));
        }
        // A minted grant is a refreshable grant too: keep its chain alive if we can.
        if let Some((minted, refreshed)) = self.fresh_grant(&minted_id, min).await? {
            self.check_company(req, &minted)?;
            let source = if refreshed { "refreshed" } else { "cache" };
            return Ok(MintResponse::from_install(&minted, loc, source));
        }
        let linked = link.map(|l| l.company_id).filter(|c| !c.is_empty());
        let company_id = match (&req.company_id, linked) {
            (Some(c), _) => c.clone(),
            (None, Some(c)) => c,
            (None, None) => self.known_company(loc).await?.ok_or_else(|| {
                MintError::InstallNotFound(format!(
                    "no install is stored for location {loc} and the request names no companyId; pass companyId"
                ))
            })?,
        };
        self.mint_from_company(loc, &company_id, req.company_id.as_deref(), min)
            .await
    }

    /// When the app was uninstalled from `loc`, if the newest lifecycle
    /// event on record for it is an uninstall: its link, its own grant, its
    /// minted grant, and its company's grant (an agency that installed again
    /// after a location's uninstall may have it back there; HighLevel then
    /// answers the mint). Event times only, never processing times, so an
    /// uninstall and a reinstall a millisecond apart are told apart.
    async fn uninstalled_at(
        &self,
        loc: &str,
        req: &MintRequest,
        link: Option<&LocationLink>,
        minted: Option<&Install>,
    ) -> Result<Option<i64>, MintError> {
        let link_uninstalled = link.is_some_and(|l| l.state == LinkState::Uninstalled);
        let minted_uninstalled = minted.is_some_and(|m| m.state == InstallState::Uninstalled);
        if !link_uninstalled && !minted_uninstalled {
            return Ok(None);
        }
        let mut events: Vec<LifecycleEvent> = Vec::new();
        events.extend(link.map(|l| LifecycleEvent {
            at_ms: l.at_ms,
            uninstall: l.state == LinkState::Uninstalled,
        }));
        let company = req
            .company_id
            .clone()
            .or_else(|| link.map(|l| l.company_id.clone()))
            .filter(|c| !c.is_empty());
        let mut grants: Vec<Install> = minted.cloned().into_iter().collect();
        for id in std::iter::once(InstallId::Location(loc.to_owned()))
            .chain(company.map(InstallId::Company))
        {
            grants.extend(self.svc.store.get(&id).await?);
        }
        events.extend(grants.iter().map(|g| LifecycleEvent {
            at_ms: g.lifecycle_at_ms,
            uninstall: g.state == InstallState::Uninstalled,
        }));
        Ok(LifecycleEvent::uninstalled_at(&events))
    }

    /// A request naming a company must match the stored grant's company.
    fn check_company(&self, req: &MintRequest, i: &Install) -> Result<(), MintError> {
        company_matches(&req.location_id, req.company_id.as_deref(), i)
    }

    async fn known_company(&self, loc: &str) -> Result<Option<String>, MintError> {
        for id in [
            InstallId::Minted(loc.into()),
            InstallId::Location(loc.into()),
        ] {
            if let Some(i) = self.svc.store.get(&id).await?
                && let Some(c) = i.info.company_id
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The stored company grant, if it can mint at all: present and not
    /// terminal. Checked before anything is written.
    async fn stored_company(&self, company_id: &str) -> Result<Install, MintError> {
        let id = InstallId::Company(company_id.to_owned());
        let stored = self.svc.store.get(&id).await?.ok_or_else(|| {
            MintError::InstallNotFound(format!(
                "company {company_id} has not installed the app (no agency install is stored); install it from the marketplace"
            ))
        })?;
        if stored.state == InstallState::Uninstalled {
            return Err(MintError::AppUninstalled(format!(
                "company {company_id} uninstalled the app (at {}); it must be installed again before tokens can be minted",
                rfc3339_ms(stored.lifecycle_at_ms)
            )));
        }
        if !stored.state.is_refreshable() {
            return Err(MintError::NeedsReauthorization(format!(
                "the agency grant for company {company_id} is {} ({}); the agency must reinstall the app",
                stored.state.as_str(),
                stored
                    .state_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            )));
        }
        Ok(stored)
    }

    /// The company's grant with a usable access token, refreshed first
    /// under the protocol when near expiry (reconciliation lists with it).
    pub async fn company_token(&self, company_id: &str) -> Result<Install, MintError> {
        self.company_grant(company_id).await
    }

    async fn company_grant(&self, company_id: &str) -> Result<Install, MintError> {
        let stored = self.stored_company(company_id).await?;
        self.fresh_grant(&stored.id, COMPANY_MIN_VALIDITY as u64)
            .await?
            .map(|(grant, _)| grant)
            .ok_or_else(|| {
                MintError::NeedsReauthorization(format!(
                    "the agency grant for company {company_id} could not be refreshed; the agency must reinstall the app"
                ))
            })
    }

    /// The `companyToken` action: the company grant with more than
    /// `min_validity` seconds left, refreshed first under the protocol (one
    /// refresher per grant; concurrent callers wait for its result, as
    /// location mints do).
    pub async fn serve_company_token(
        &self,
        company_id: &str,
        min_validity: u64,
    ) -> Result<CompanyTokenResponse, MintError> {
        let stored = self.stored_company(company_id).await?;
        let Some((grant, refreshed)) = self.fresh_grant(&stored.id, min_validity).await? else {
            // The refresh ended the grant (or an uninstall landed meanwhile):
            // name what is stored now.
            let now = self.stored_company(company_id).await?;
            if now.state == InstallState::Active && now.expires_at > now_secs() {
                // Refreshed, and still short: HighLevel's tokens live less
                // than was asked, and asking again would only refresh again.
                return Err(MintError::InvalidRequest(format!(
                    "HighLevel's company tokens for {company_id} live {} s, less than the minValiditySeconds asked ({min_validity}); ask for less",
                    now.expires_at - now_secs()
                )));
            }
            return Err(MintError::NeedsReauthorization(format!(
                "the agency grant for company {company_id} could not be refreshed; the agency must reinstall the app"
            )));
        };
        Ok(CompanyTokenResponse {
            access_token: grant.access_token.clone(),
            token_type: "Bearer",
            expires_at: rfc3339(grant.expires_at),
            expires_in: (grant.expires_at - now_secs()).max(0),
            scope: grant.info.scope.clone(),
            company_id: company_id.to_owned(),
            user_type: "Company",
            source: if refreshed {
                "refreshed"
            } else {
                "company-install"
            },
        })
    }

    /// A token nobody stores is a chain nobody keeps alive: neither a
    /// refresh token is presented nor a location token minted without time
    /// left to store the answer. `need` is one call and its writes, or a
    /// whole refresh (window included) when the company grant must be
    /// refreshed first.
    fn time_to_store(&self, what: &str, need: Duration) -> Result<(), MintError> {
        if self.deadline.is_some_and(|d| Instant::now() + need > d) {
            return Err(MintError::UpstreamUnavailable(format!(
                "too little time is left in this invocation to {what} and store the answer safely; retry"
            )));
        }
        Ok(())
    }

    async fn mint_from_company(
        &self,
        loc: &str,
        company_id: &str,
        asked: Option<&str>,
        min: u64,
    ) -> Result<MintResponse, MintError> {
        // Refused before the lock is taken: a request that cannot mint
        // leaves the table as it was.
        let company = self.stored_company(company_id).await?;
        let need = if usable(&company, COMPANY_MIN_VALIDITY as u64) {
            self.policy.one_refresh()
        } else {
            self.policy.whole_refresh()
        };
        self.time_to_store(&format!("mint a token for location {loc}"), need)?;
        let minted_id = InstallId::Minted(loc.to_owned());
        let started = Instant::now();
        let lock = format!("mint#{loc}");
        let token = lease_token(self.owner);
        loop {
            if self
                .svc
                .store
                .try_lock(&lock, &token, self.policy.lease)
                .await?
            {
                // Re-read under the lock: a minter that released it just
                // before we took it has stored a token; one HighLevel call
                // per burst, always.
                let result = match self.svc.store.get(&minted_id).await {
                    Ok(Some(i)) if usable(&i, min) => company_matches(loc, asked, &i)
                        .map(|()| MintResponse::from_install(&i, loc, "cache")),
                    Ok(_) => self.mint_locked(loc, company_id).await,
                    Err(e) => Err(e.into()),
                };
                // The answer stands whether or not the lock could be given
                // back: it expires on its own.
                if let Err(e) = self.svc.store.unlock(&lock, &token).await {
                    tracing::warn!(location_id = loc, error = %e, "mint lock not released; it expires on its own");
                }
                return result;
            }
            // Another invocation is minting this location: wait for its token.
            tokio::time::sleep(SINGLE_FLIGHT_POLL).await;
            if let Some(i) = self.svc.store.get(&minted_id).await?
                && usable(&i, min)
            {
                company_matches(loc, asked, &i)?;
                return Ok(MintResponse::from_install(&i, loc, "cache"));
            }
            if started.elapsed() > SINGLE_FLIGHT_WAIT {
                return Err(MintError::UpstreamUnavailable(format!(
                    "another worker is minting a token for location {loc}; retry shortly"
                )));
            }
        }
    }

    async fn mint_locked(&self, loc: &str, company_id: &str) -> Result<MintResponse, MintError> {
        let company = self.company_grant(company_id).await?;
        self.time_to_store(
            &format!("mint a token for location {loc}"),
            self.policy.one_refresh(),
        )?;
        let grant = self
            .svc
            .ghl
            .location_token(&company.access_token, company_id, loc)
            .await
            .map_err(|e| match e {
                GhlError::Rejected { status: 400 | 403 | 404, message, .. } => MintError::LocationNotInstalled(format!(
                    "HighLevel will not mint a token for location {loc} under company {company_id} ({message}); the app must be installed on that location"
                )),
                GhlError::LocationNotActive { .. } => MintError::UpstreamUnavailable(format!(
                    "HighLevel says location {loc} is not active; retry in a few hours"
                )),
                other => from_ghl(other, "minting a location token"),
            })?;
        let refresh_token = grant.refresh_token.clone().ok_or_else(|| {
            MintError::UpstreamUnavailable(
                "HighLevel's location token carried no refresh token".into(),
            )
        })?;
        let pair = TokenPair {
            access_token: grant.access_token.clone(),
            refresh_token,
            expires_at: now_secs() + grant.expires_in as i64,
        };
        let info = GrantInfo {
            user_type: Some(UserType::Location),
            company_id: Some(company_id.to_owned()),
            location_id: Some(loc.to_owned()),
            ..grant.info()
        };
        let minted_id = InstallId::Minted(loc.to_owned());
        let before = self.svc.store.get(&minted_id).await?.map(|i| i.state);
        let stored = self
            .svc
            .store
            .save_grant(&minted_id, &pair, &info, "minted from the company grant")
            .await?;
        self.svc
            .events
            .changed(StateChanged::new(
                &minted_id,
                Some(company_id),
                before,
                InstallState::Active,
                "minted from the company grant",
            ))
            .await;
        // HighLevel just proved the app is on this location: link it, so a
        // company uninstall reaches this grant and a caller may leave out
        // companyId. The token is served either way.
        let link = LocationLink {
            company_id: company_id.to_owned(),
            location_id: loc.to_owned(),
            state: LinkState::Installed,
            at_ms: now_millis(),
            source: "mint".into(),
            missing_since_ms: None,
        };
        if let Err(e) = self.svc.store.set_link(&link).await {
            tracing::warn!(location_id = loc, company_id, error = %e, "location link not recorded");
        }
        Ok(MintResponse::from_install(&stored, loc, "minted"))
    }

    /// A stored minted grant that ended lost or revoked while its company
    /// grant still works is minted again, so the location heals without
    /// waiting for a caller. True when a new grant was stored.
    pub async fn remint(&self, loc: &str) -> bool {
        let company_id = match self.svc.store.get(&InstallId::Minted(loc.to_owned())).await {
            Ok(Some(i)) => match i.info.company_id {
                Some(c) => c,
                None => return false,
            },
            _ => return false,
        };
        match self
            .mint_from_company(loc, &company_id, Some(&company_id), DEFAULT_MIN_VALIDITY)
            .await
        {
            Ok(_) => {
                tracing::info!(install_id = %InstallId::Minted(loc.to_owned()), company_id, "minted location grant healed from its company grant");
                true
            }
            Err(e) => {
                tracing::warn!(install_id = %InstallId::Minted(loc.to_owned()), company_id, error = e.error_type(), reason = %e, "minted location grant could not be minted again");
                false
            }
        }
    }

    pub async fn installed_locations(
        &self,
        company_id: &str,
    ) -> Result<InstalledLocations, MintError> {
        let app_id = self
            .app_id
            .or(self.svc.app.app_id.as_deref())
            .ok_or_else(|| {
                MintError::Internal("no app id: set app_id in the app secret or GHL_APP_ID".into())
            })?;
        let company = self.company_grant(company_id).await?;
        let all = self
            .svc
            .ghl
            .all_installed_locations(
                &company.access_token,
                company_id,
                app_id,
                MAX_LOCATION_PAGES,
                LOCATION_PAGE_PACE,
            )
            .await
            .map_err(|e| from_ghl(e, "listing installed locations"))?;
        if let Some(gap) = &all.gap {
            tracing::warn!(company_id, reason = %gap, "installed locations listed incompletely");
        }
        Ok(InstalledLocations {
            company_id: company_id.to_owned(),
            count: all.count.max(all.locations.len() as u64),
            complete: all.complete(),
            locations: all.locations,
        })
    }
}

/// The sweep's entry to [`Minter::remint`].
pub async fn heal_minted(
    svc: &Services,
    loc: &str,
    policy: &RefreshPolicy,
    owner: &str,
    deadline: Option<Instant>,
) -> bool {
    Minter {
        svc,
        policy,
        owner,
        app_id: None,
        deadline,
    }
    .remint(loc)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_valid_requests() {
        assert_eq!(
            parse_request(
                &json!({"locationId": "loc_1", "companyId": "c-1", "minValiditySeconds": 60})
            )
            .unwrap(),
            Request::Mint(MintRequest {
                location_id: "loc_1".into(),
                company_id: Some("c-1".into()),
                min_validity_secs: 60
            })
        );
        assert_eq!(
            parse_request(&json!({"locationId": "l"})).unwrap(),
            Request::Mint(MintRequest {
                location_id: "l".into(),
                company_id: None,
                min_validity_secs: DEFAULT_MIN_VALIDITY
            })
        );
        assert_eq!(
            parse_request(&json!({"action": "listInstalledLocations", "companyId": "c"})).unwrap(),
            Request::ListInstalledLocations {
                company_id: "c".into()
            }
        );
        assert_eq!(
            parse_request(
                &json!({"action": "companyToken", "companyId": "c", "minValiditySeconds": 900})
            )
            .unwrap(),
            Request::CompanyToken {
                company_id: "c".into(),
                min_validity_secs: 900
            }
        );
        assert_eq!(
            parse_request(&json!({"action": "companyToken", "companyId": "c"})).unwrap(),
            Request::CompanyToken {
                company_id: "c".into(),
                min_validity_secs: DEFAULT_MIN_VALIDITY
            }
        );
    }

    #[test]
    fn rejects_bad_requests_with_a_reason() {
        let cases = [
            (json!([]), "JSON object"),
            (json!({}), "locationId is required"),
            (json!({"locationId": ""}), "locationId is empty"),
            (json!({"locationId": 42}), "must be a string, not a number"),
            (json!({"locationId": "x".repeat(10_240)}), "at most 64"),
            (json!({"locationId": "a/b"}), "only letters"),
            (
                json!({"locationId": "l", "minValiditySeconds": "soon"}),
                "must be a number",
            ),
            (
                json!({"locationId": "l", "minValiditySeconds": -1}),
                "whole number",
            ),
            (
                json!({"locationId": "l", "minValiditySeconds": 100_000}),
                "whole number",
            ),
            (json!({"action": "deleteEverything"}), "unknown action"),
            (
                json!({"action": "listInstalledLocations"}),
                "companyId is required",
            ),
            (json!({"action": "companyToken"}), "companyId is required"),
            (
                json!({"action": "companyToken", "companyId": "c/d"}),
                "only letters",
            ),
            (
                json!({"action": "companyToken", "companyId": "c", "minValiditySeconds": 90_000}),
                "whole number",
            ),
            (
                json!({"action": "companyToken", "companyId": "c", "minValiditySeconds": true}),
                "must be a number, not a boolean",
            ),
        ];
        for (input, expect) in cases {
            let err = parse_request(&input).unwrap_err();
            assert_eq!(err.error_type(), "InvalidRequest");
            assert!(err.to_string().contains(expect), "{input}: {err}");
            assert!(
                err.to_string().len() < 300,
                "error echoes the oversized input"
            );
        }
    }

    #[test]
    fn response_serialises_camel_case_without_refresh_token() {
        let r = MintResponse {
            access_token: SecretString::new("at"),
            token_type: "Bearer",
            expires_at: rfc3339(1_795_420_800),
            expires_in: 100,
            scope: Some("a b".into()),
            location_id: "l".into(),
            company_id: Some("c".into()),
            user_type: "Location",
            source: "minted",
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["accessToken"], "at");
        assert_eq!(v["expiresAt"], "2026-11-23T08:00:00Z");
        assert!(v.get("refreshToken").is_none());
    }
}
