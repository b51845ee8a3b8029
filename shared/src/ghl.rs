//! The HighLevel OAuth client.
//!
//! Every failure becomes a typed [`GhlError`] that keeps HighLevel's message
//! and `traceId`. The split that matters most is whether a refresh token may
//! have been consumed: [`GhlError::is_unknown_outcome`] is true when the
//! request left this process and no usable answer came back (including a
//! 5xx, which HighLevel may send after rotating).

use crate::app_secret::AppSecret;
use crate::config::GhlConfig;
use crate::model::{TokenGrant, UserType};
use crate::redact::SecretString;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The API version HighLevel requires on the agency endpoints.
pub const API_VERSION: &str = "2021-07-28";
const USER_AGENT: &str = concat!("ghl-oauth-lambda/", env!("CARGO_PKG_VERSION"));
const MAX_MESSAGE: usize = 300;
/// The largest answer read from HighLevel. A token answer is about 2 KiB and
/// a page of installed locations well under 100 KiB; anything bigger is not
/// HighLevel's answer and is not buffered.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GhlError {
    /// The code or refresh token is invalid, expired or already used.
    #[error("HighLevel rejected the grant: {message} (traceId {trace_id:?})")]
    InvalidGrant {
        message: String,
        trace_id: Option<String>,
    },
    /// Temporary: the same refresh token works again once the location is active.
    #[error("HighLevel says the location is not active (traceId {trace_id:?})")]
    LocationNotActive { trace_id: Option<String> },
    /// Our client id or secret: nothing to do with any one install.
    #[error("HighLevel rejected the app's client credentials: {message}")]
    InvalidClient { message: String },
    /// The bearer token was refused.
    #[error("HighLevel refused the access token: {message} (traceId {trace_id:?})")]
    Unauthorized {
        message: String,
        trace_id: Option<String>,
    },
    #[error("HighLevel rejected the request with {status}: {message} (traceId {trace_id:?})")]
    Rejected {
        status: u16,
        message: String,
        trace_id: Option<String>,
    },
    #[error("HighLevel rate limit reached; retry in {} ms", retry_after.as_millis())]
    RateLimited {
        retry_after: Duration,
        daily_exhausted: bool,
    },
    #[error("HighLevel is unavailable ({status}): {message}")]
    Unavailable {
        status: u16,
        message: String,
        trace_id: Option<String>,
    },
    /// The request never left: safe to retry.
    #[error("could not connect to HighLevel: {0}")]
    Unreachable(String),
    /// Sent, and no answer in time.
    #[error("HighLevel did not answer within the request timeout")]
    Timeout,
    /// Sent, and the answer was cut off or unreadable.
    #[error("HighLevel's answer was lost: {0}")]
    ResponseLost(String),
    #[error("HighLevel has removed this endpoint: {message}")]
    EndpointRemoved { message: String },
}

impl GhlError {
    /// The request may have been processed and its answer lost: a timeout
    /// after sending, a broken or unreadable answer, or a 5xx (HighLevel may
    /// answer 5xx after rotating). For a refresh this means the token's fate
    /// is unknown, and presenting it again is the only way to learn it.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::ResponseLost(_) | Self::Unavailable { .. }
        )
    }

    /// Worth trying again later with the same inputs.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Unavailable { .. } | Self::Unreachable(_)
        )
    }

    /// A stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidGrant { .. } => "invalid_grant",
            Self::LocationNotActive { .. } => "location_not_active",
            Self::InvalidClient { .. } => "invalid_client",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Rejected { .. } => "rejected",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
            Self::ResponseLost(_) => "response_lost",
            Self::EndpointRemoved { .. } => "endpoint_removed",
        }
    }
}

/// A page of `GET /oauth/installedLocations`, read strictly (see
/// [`InstalledLocationsPage::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledLocationsPage {
    /// The items that carried an `_id`.
    pub locations: Vec<InstalledLocation>,
    pub count: u64,
    pub install_to_future_locations: Option<bool>,
    /// Items with no usable `_id`: the page is not a listing we can trust.
    pub without_id: usize,
}

/// Why a 200 from `GET /oauth/installedLocations` is not a page of the
/// listing. Names fields and JSON types, never values.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PageDefect {
    #[error("the body is not a JSON object")]
    NotAnObject,
    /// A gateway's or an error's body answered with a 200.
    #[error("an error-shaped body with a 200 (fields: {0})")]
    ErrorShaped(String),
    #[error("no `{0}` field")]
    Missing(&'static str),
    #[error("`{field}` is {found}, not {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a negative or fractional number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Fields of the error envelopes HighLevel and gateways send.
const ERROR_FIELDS: [&str; 5] = [
    "statusCode",
    "message",
    "error",
    "error_description",
    "traceId",
];

impl InstalledLocationsPage {
    /// Reads a page without defaults: an absence read as "no locations" or
    /// "count 0" would look like a complete, empty listing, and
    /// reconciliation acts on absences. `locations` must be an array and
    /// `count` a non-negative integer; a body made only of error fields, or
    /// carrying a non-2xx `statusCode`, is an error whatever its HTTP
    /// status. Optional metadata of an odd type is dropped, never fatal.
    pub fn parse(body: &serde_json::Value) -> Result<Self, PageDefect> {
        let obj = body.as_object().ok_or(PageDefect::NotAnObject)?;
        let error_status = obj
            .get("statusCode")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|c| !(200..300).contains(&c));
        let only_error_fields = obj.keys().all(|k| ERROR_FIELDS.contains(&k.as_str()));
        if error_status || only_error_fields {
            let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(PageDefect::ErrorShaped(if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }));
        }
        let items = match obj.get("locations") {
            None => return Err(PageDefect::Missing("locations")),
            Some(serde_json::Value::Array(items)) => items,
            Some(other) => {
                return Err(PageDefect::WrongType {
                    field: "locations",
                    expected: "an array",
                    found: json_type(other),
                });
            }
        };
        let count = match obj.get("count") {
            None => return Err(PageDefect::Missing("count")),
            Some(v) => v.as_u64().ok_or(PageDefect::WrongType {
                field: "count",
                expected: "a non-negative integer",
                found: json_type(v),
            })?,
        };
        let mut locations = Vec::with_capacity(items.len());
        let mut without_id = 0;
        for item in items {
            match InstalledLocation::from_item(item) {
                Some(l) => locations.push(l),
                None => without_id += 1,
            }
        }
        Ok(Self {
            locations,
            count,
            install_to_future_locations: obj
                .get("installToFutureLocations")
                .and_then(serde_json::Value::as_bool),
            without_id,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocation {
    #[serde(rename = "locationId")]
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_installed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<String>,
}

impl InstalledLocation {
    /// None when the item has no non-empty string `_id`.
    fn from_item(item: &serde_json::Value) -> Option<Self> {
        let text = |k: &str| item.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let id = text("_id").filter(|id| !id.is_empty())?;
        Some(Self {
            id,
            name: text("name"),
            address: text("address"),
            is_installed: item.get("isInstalled").and_then(serde_json::Value::as_bool),
            version_id: text("versionId"),
            installed_at: text("installedAt"),
        })
    }
}

/// Locations per page of `GET /oauth/installedLocations`.
pub const LOCATIONS_PAGE: u64 = 100;

/// Why a listing cannot be trusted to be the whole list (and so must not
/// be used to conclude that a location is gone).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ListingGap {
    #[error("the page cap ({pages} pages) was reached")]
    PageCap { pages: u32 },
    #[error("the page at skip {skip} repeated ids already seen (skip ignored?)")]
    RepeatedPage { skip: u64 },
    #[error("the page at skip {skip} is unusable: {defect}")]
    Malformed { skip: u64, defect: PageDefect },
    #[error("the page at skip {skip} has {n} item(s) without `_id`")]
    ItemsWithoutId { skip: u64, n: usize },
    #[error("`count` changed from {from} to {to} while paging")]
    CountChanged { from: u64, to: u64 },
    #[error("`count` says {count} but {listed} distinct locations were listed")]
    CountMismatch { count: u64, listed: u64 },
    #[error("`count` says {count} but the page past it (skip {skip}) listed new ids")]
    PastTheEnd { count: u64, skip: u64 },
}

/// The whole bounded listing of a company's installed locations.
#[derive(Debug, Clone, Default)]
pub struct AllInstalled {
    pub locations: Vec<InstalledLocation>,
    /// HighLevel's `count` (of the last usable page).
    pub count: u64,
    pub pages: u32,
    /// Why the listing is not known to be the whole list; None when it is.
    pub gap: Option<ListingGap>,
}

impl AllInstalled {
    /// Every page parsed, `count` agreed with what was paged, and a page
    /// past the end added nothing.
    pub fn complete(&self) -> bool {
        self.gap.is_none()
    }
}

/// Who a reconnect is for (seed 003).
pub enum ReconnectTarget<'a> {
    Company(&'a str),
    Location(&'a str),
}

/// What `DELETE /marketplace/app/{appId}/installations` removes the app
/// from: a company (and with it every sub-account; a Company token) or one
/// location (a Location token).
#[derive(Debug, Clone, Copy)]
pub enum UninstallTarget<'a> {
    Company(&'a str),
    Location(&'a str),
}

#[derive(Clone)]
pub struct GhlClient {
    http: reqwest::Client,
    base: String,
}

/// Both error shapes HighLevel uses: NestJS (`statusCode`, `message` string or
/// array, `error`, `traceId`) and RFC 6749 (`error`, `error_description`).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default, rename = "traceId")]
    trace_id: Option<String>,
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl ErrorBody {
    fn message(&self) -> String {
        let text = match &self.message {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => match (&self.error, &self.error_description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => String::new(),
            },
        };
        clip(text)
    }
}

/// Which endpoint answered: a 401 means different things on each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    Bearer,
    Reconnect,
}

fn classify(endpoint: Endpoint, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GhlError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let mut message = parsed.message();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no message").to_owned();
    }
    let trace_id = parsed.trace_id.clone();
    let code = status.as_u16();
    let lower = message.to_ascii_lowercase();
    let rfc_error = parsed.error.as_deref().unwrap_or_default();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return rate_limited(headers);
    }
    if status.is_server_error() {
        return GhlError::Unavailable {
            status: code,
            message,
            trace_id,
        };
    }
    if endpoint == Endpoint::Reconnect && lower.contains("endpoint has been removed") {
        return GhlError::EndpointRemoved { message };
    }
    if rfc_error == "invalid_client"
        || (status == StatusCode::UNAUTHORIZED && endpoint != Endpoint::Bearer)
    {
        return GhlError::InvalidClient { message };
    }
    if status == StatusCode::UNAUTHORIZED {
        return GhlError::Unauthorized { message, trace_id };
    }
    if lower.contains("location is not active") {
        return GhlError::LocationNotActive { trace_id };
    }
    if lower.starts_with("invalid grant") || rfc_error == "invalid_grant" {
        return GhlError::InvalidGrant { message, trace_id };
    }
    GhlError::Rejected {
        status: code,
        message,
        trace_id,
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The longest wait a rate-limit answer may ask for.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// HighLevel documents no `Retry-After`: wait the interval, or until the
/// daily window resets when the daily budget is spent.
fn rate_limited(headers: &HeaderMap) -> GhlError {
    let daily_exhausted = header_u64(headers, "x-ratelimit-daily-remaining") == Some(0);
    // Header values are HighLevel's (or a proxy's) to choose: clamped to a
    // day before anyone adds them to a clock.
    let retry_after = if daily_exhausted {
        let now = crate::model::now_secs();
        Duration::from_secs((86_400 - now.rem_euclid(86_400)) as u64)
    } else if let Some(secs) = header_u64(headers, "retry-after") {
        Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS))
    } else {
        Duration::from_millis(
            header_u64(headers, "x-ratelimit-interval-milliseconds")
                .unwrap_or(10_000)
                .min(MAX_RETRY_AFTER_SECS * 1000),
        )
    };
    GhlError::RateLimited {
        retry_after,
        daily_exhausted,
    }
}

fn transport(err: reqwest::Error) -> GhlError {
    let err = err.without_url();
    if err.is_connect() {
        GhlError::Unreachable(clip(error_chain(&err)))
    } else if err.is_timeout() {
        GhlError::Timeout
    } else {
        GhlError::ResponseLost(clip(error_chain(&err)))
    }
}

/// Reads an answer's body, at most [`MAX_BODY_BYTES`].
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, GhlError> {
    let too_big = || {
        GhlError::ResponseLost(format!(
            "the answer is larger than {MAX_BODY_BYTES} bytes; not read"
        ))
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Names (never values) of the fields a token answer carried in an
/// unexpected shape; the answer itself was kept.
fn warn_odd(grant: &TokenGrant, op: &'static str) {
    if !grant.odd_fields.is_empty() {
        tracing::warn!(
            op,
            fields = ?grant.odd_fields,
            "HighLevel's token answer had fields of an unexpected shape; they were dropped and the tokens kept"
        );
    }
}

impl GhlClient {
    pub fn new(cfg: &GhlConfig) -> Result<Self, GhlError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                GhlError::Unreachable(format!("HTTP client set-up failed: {}", error_chain(&e)))
            })?;
        Ok(Self {
            http,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
        })
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: Endpoint,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, GhlError> {
        let started = Instant::now();
        let result = async {
            let resp = req
                .header("Accept", "application/json")
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_capped(resp).await?;
            if !status.is_success() {
                return Err(classify(endpoint, status, &headers, &body));
            }
            // A 200 we cannot read may still have rotated a token: its
            // outcome is unknown. (Error texts name the position, never values.)
            serde_json::from_slice(&body).map_err(|e| {
                GhlError::ResponseLost(format!(
                    "{status} with an unusable body ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })
        }
        .await;
        let ms = started.elapsed().as_millis() as u64;
        crate::metrics::ghl_call(op, ms, result.as_ref().err().map(GhlError::kind));
        result
    }

    /// `POST /oauth/token` with `grant_type=authorization_code`.
    pub async fn exchange_code(
        &self,
        app: &AppSecret,
        code: &SecretString,
        user_type: UserType,
        redirect_uri: &str,
    ) -> Result<TokenGrant, GhlError> {
        let form = [
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose()),
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("user_type", user_type.as_str()),
            ("redirect_uri", redirect_uri),
        ];
        let req = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .form(&form);
        let grant: TokenGrant = self.send(Endpoint::Token, "exchange_code", req).await?;
        warn_odd(&grant, "exchange_code");
        Ok(grant)
    }

    /// `POST /oauth/token` with `grant_type=refresh_token`. The token is
    /// consumed by HighLevel whenever this returns Ok, and possibly when it
    /// returns an error whose outcome is unknown.
    pub async fn refresh(
        &self,
        app: &AppSecret,
        refresh_token: &SecretString,
        user_type: UserType,
    ) -> Result<TokenGrant, GhlError> {
        self.refresh_within(app, refresh_token, user_type, None)
            .await
    }

    /// The same, with a whole-request timeout other than the client's (a
    /// re-presentation waits as long as its budget allows).
    pub async fn refresh_within(
        &self,
        app: &AppSecret,
        refresh_token: &SecretString,
        user_type: UserType,
        timeout: Option<Duration>,
    ) -> Result<TokenGrant, GhlError> {
        let form = [
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("user_type", user_type.as_str()),
        ];
        let mut req = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .form(&form);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let grant: TokenGrant = self.send(Endpoint::Token, "refresh", req).await?;
        warn_odd(&grant, "refresh");
        Ok(grant)
    }

    /// `POST /oauth/locationToken`: a location token from a company token.
    pub async fn location_token(
        &self,
        company_token: &SecretString,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenGrant, GhlError> {
        let req = self
            .http
            .post(format!("{}/oauth/locationToken", self.base))
            .bearer_auth(company_token.expose())
            .header("Version", API_VERSION)
            .form(&[("companyId", company_id), ("locationId", location_id)]);
        let grant: TokenGrant = self.send(Endpoint::Bearer, "location_token", req).await?;
        warn_odd(&grant, "location_token");
        Ok(grant)
    }

    /// One page of `GET /oauth/installedLocations`.
    pub async fn installed_locations(
        &self,
        company_token: &SecretString,
        company_id: &str,
        app_id: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Result<InstalledLocationsPage, PageDefect>, GhlError> {
        let req = self
            .http
            .get(format!("{}/oauth/installedLocations", self.base))
            .bearer_auth(company_token.expose())
            .header("Version", API_VERSION)
            .query(&[
                ("companyId", company_id),
                ("appId", app_id),
                ("isInstalled", "true"),
                ("skip", &skip.to_string()),
                ("limit", &limit.to_string()),
            ]);
        let body: serde_json::Value = self
            .send(Endpoint::Bearer, "installed_locations", req)
            .await?;
        Ok(InstalledLocationsPage::parse(&body))
    }

    /// Every location `GET /oauth/installedLocations` lists for a company,
    /// paged and bounded: at most `max_pages` pages (and one more that
    /// confirms the end), ids de-duplicated. The listing is complete only
    /// when every page parsed strictly, `count` never changed, the distinct
    /// ids equal `count`, and the page at `skip >= count` added no new id:
    /// a `count` that is too small, or a page size other than ours, would
    /// otherwise end the paging early and hide live locations. A server
    /// that ignores `skip` repeats its first page there, which is fine.
    /// Whatever stopped it otherwise is in `gap`.
    pub async fn all_installed_locations(
        &self,
        company_token: &SecretString,
        company_id: &str,
        app_id: &str,
        max_pages: u32,
        pace: Duration,
    ) -> Result<AllInstalled, GhlError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = AllInstalled::default();
        let mut count: Option<u64> = None;
        let mut skip = 0u64;
        loop {
            let past_the_end = count.is_some_and(|c| skip >= c);
            if out.pages >= max_pages && !past_the_end {
                out.gap = Some(ListingGap::PageCap { pages: out.pages });
                return Ok(out);
            }
            if out.pages > 0 {
                // Under HighLevel's per-company burst limit (100 / 10 s).
                tokio::time::sleep(pace).await;
            }
            let answer = self
                .installed_locations(company_token, company_id, app_id, skip, LOCATIONS_PAGE)
                .await?;
            out.pages += 1;
            let page = match answer {
                Ok(p) => p,
                Err(defect) => {
                    out.gap = Some(ListingGap::Malformed { skip, defect });
                    return Ok(out);
                }
            };
            if let Some(from) = count.filter(|c| *c != page.count) {
                out.gap = Some(ListingGap::CountChanged {
                    from,
                    to: page.count,
                });
                return Ok(out);
            }
            count = Some(page.count);
            out.count = page.count;
            let n = (page.locations.len() + page.without_id) as u64;
            let mut fresh = 0u64;
            for l in page.locations {
                if seen.insert(l.id.clone()) {
                    fresh += 1;
                    out.locations.push(l);
                }
            }
            let listed = seen.len() as u64;
            // Every check below that ends the listing needs the page's
            // ids; items we cannot identify leave a hole in any of them.
            out.gap = if page.without_id > 0 {
                Some(ListingGap::ItemsWithoutId {
                    skip,
                    n: page.without_id,
                })
            } else if skip >= page.count {
                // This page lies past the end `count` claims.
                if fresh > 0 {
                    Some(ListingGap::PastTheEnd {
                        count: page.count,
                        skip,
                    })
                } else if listed != page.count {
                    Some(ListingGap::CountMismatch {
                        count: page.count,
                        listed,
                    })
                } else {
                    None
                }
            } else if n == 0 {
                Some(ListingGap::CountMismatch {
                    count: page.count,
                    listed,
                })
            } else if fresh == 0 {
                Some(ListingGap::RepeatedPage { skip })
            } else {
                skip += n;
                continue;
            };
            return Ok(out);
        }
    }

    /// `DELETE /marketplace/app/{appId}/installations`: uninstalls the app
    /// from the company or location the access token belongs to, with the
    /// reason HighLevel requires when the developer uninstalls. HighLevel
    /// then revokes the grants (and sends the UNINSTALL webhook).
    pub async fn uninstall_app(
        &self,
        access_token: &SecretString,
        app_id: &str,
        target: UninstallTarget<'_>,
        reason: &str,
    ) -> Result<(), GhlError> {
        let mut body = serde_json::json!({ "reason": reason });
        match target {
            UninstallTarget::Company(id) => body["companyId"] = id.into(),
            UninstallTarget::Location(id) => body["locationId"] = id.into(),
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            success: Option<bool>,
        }
        let req = self
            .http
            .delete(format!(
                "{}/marketplace/app/{}/installations",
                self.base,
                crate::html::percent_encode(app_id)
            ))
            .bearer_auth(access_token.expose())
            .header("Version", API_VERSION)
            .json(&body);
        let answer: Answer = self.send(Endpoint::Bearer, "uninstall_app", req).await?;
        match answer.success {
            Some(false) => Err(GhlError::Rejected {
                status: 200,
                message: "HighLevel answered success: false".into(),
                trace_id: None,
            }),
            _ => Ok(()),
        }
    }

    /// `POST /oauth/reconnect` (seed 003): an authorization code for an
    /// install whose grant was lost. Reported removed since 2026-09.
    pub async fn reconnect(
        &self,
        app: &AppSecret,
        target: ReconnectTarget<'_>,
    ) -> Result<SecretString, GhlError> {
        let mut body = serde_json::json!({
            "clientKey": app.client_id,
            "clientSecret": app.client_secret.expose(),
        });
        match target {
            ReconnectTarget::Company(id) => body["companyId"] = id.into(),
            ReconnectTarget::Location(id) => body["locationId"] = id.into(),
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Reconnected {
            authorization_code: SecretString,
        }
        let req = self
            .http
            .post(format!("{}/oauth/reconnect", self.base))
            .json(&body);
        let r: Reconnected = self.send(Endpoint::Reconnect, "reconnect", req).await?;
        Ok(r.authorization_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn err(endpoint: Endpoint, status: u16, body: &str) -> GhlError {
        classify(
            endpoint,
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn nest_style_errors_are_typed_with_message_and_trace() {
        assert_eq!(
            err(
                Endpoint::Token,
                400,
                r#"{"statusCode":400,"message":"Invalid grant: refresh token is invalid","traceId":"t1"}"#
            ),
            GhlError::InvalidGrant {
                message: "Invalid grant: refresh token is invalid".into(),
                trace_id: Some("t1".into())
            }
        );
        assert_eq!(
            err(
                Endpoint::Token,
                400,
                r#"{"statusCode":400,"message":"Location is not active","traceId":"t2"}"#
            ),
            GhlError::LocationNotActive {
                trace_id: Some("t2".into())
            }
        );
        assert_eq!(
            err(
                Endpoint::Token,
                422,
                r#"{"statusCode":422,"message":["code should not be empty","x"],"error":"Unprocessable Entity","traceId":"t3"}"#
            ),
            GhlError::Rejected {
                status: 422,
                message: "code should not be empty; x".into(),
                trace_id: Some("t3".into())
            }
        );
    }

    #[test]
    fn unauthorized_means_client_on_token_endpoint_and_token_elsewhere() {
        let body =
            r#"{"statusCode":401,"message":"Invalid client credentials","error":"Unauthorized"}"#;
        assert!(matches!(
            err(Endpoint::Token, 401, body),
            GhlError::InvalidClient { .. }
        ));
        assert!(matches!(
            err(Endpoint::Bearer, 401, body),
            GhlError::Unauthorized { .. }
        ));
    }

    #[test]
    fn rfc6749_shape_is_understood() {
        assert!(matches!(
            err(Endpoint::Token, 400, r#"{"error":"invalid_grant","error_description":"expired"}"#),
            GhlError::InvalidGrant { message, .. } if message == "invalid_grant: expired"
        ));
        assert!(matches!(
            err(Endpoint::Token, 400, r#"{"error":"invalid_client"}"#),
            GhlError::InvalidClient { .. }
        ));
    }

    #[test]
    fn server_errors_and_garbage_bodies() {
        let e = err(Endpoint::Token, 503, "<html>bad gateway</html>");
        assert!(matches!(e, GhlError::Unavailable { status: 503, .. }));
        assert!(e.is_transient() && e.is_unknown_outcome());
        assert!(matches!(
            err(Endpoint::Token, 418, ""),
            GhlError::Rejected { status: 418, .. }
        ));
    }

    #[test]
    fn removed_reconnect_endpoint() {
        let body =
            r#"{"message":"API endpoint has been removed","error":"Bad Request","statusCode":400}"#;
        assert!(matches!(
            err(Endpoint::Reconnect, 400, body),
            GhlError::EndpointRemoved { .. }
        ));
    }

    #[test]
    fn rate_limit_waits_are_clamped_to_a_day() {
        for (name, value) in [
            ("retry-after", "18446744073709551615"),
            ("x-ratelimit-interval-milliseconds", "18446744073709551615"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            match classify(Endpoint::Token, StatusCode::TOO_MANY_REQUESTS, &h, b"{}") {
                GhlError::RateLimited { retry_after, .. } => {
                    assert_eq!(retry_after, Duration::from_secs(86_400), "{name}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rate_limit_headers_are_honoured() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-interval-milliseconds",
            HeaderValue::from_static("7000"),
        );
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert_eq!(
            classify(Endpoint::Token, StatusCode::TOO_MANY_REQUESTS, &h, b"{}"),
            GhlError::RateLimited {
                retry_after: Duration::from_millis(7000),
                daily_exhausted: false
            }
        );
        h.insert("x-ratelimit-daily-remaining", HeaderValue::from_static("0"));
        match classify(Endpoint::Token, StatusCode::TOO_MANY_REQUESTS, &h, b"{}") {
            GhlError::RateLimited {
                retry_after,
                daily_exhausted: true,
            } => assert!(retry_after <= Duration::from_secs(86_400)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_messages_are_clipped() {
        let long = "x".repeat(5000);
        let e = err(Endpoint::Token, 400, &format!(r#"{{"message":"{long}"}}"#));
        assert!(e.to_string().len() < 500);
    }

    fn page(body: serde_json::Value) -> Result<InstalledLocationsPage, PageDefect> {
        InstalledLocationsPage::parse(&body)
    }

    #[test]
    fn a_well_formed_page_is_read_and_odd_metadata_dropped() {
        let p = page(serde_json::json!({
            "locations": [
                {"_id": "l1", "name": "One", "isInstalled": true, "installedAt": "2026"},
                {"_id": "l2", "name": 7, "address": null}
            ],
            "count": 2,
            "installToFutureLocations": "yes",
            "somethingNew": {}
        }))
        .unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.without_id, 0);
        assert_eq!(p.install_to_future_locations, None);
        let ids: Vec<&str> = p.locations.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["l1", "l2"]);
        assert_eq!(p.locations[0].name.as_deref(), Some("One"));
        assert_eq!(p.locations[1].name, None);
    }

    #[test]
    fn a_page_without_its_fields_is_a_defect_not_an_empty_listing() {
        use serde_json::json;
        assert_eq!(
            page(json!({"count": 105, "installToFutureLocations": false})),
            Err(PageDefect::Missing("locations"))
        );
        assert_eq!(
            page(json!({"locations": [{"_id": "l1"}]})),
            Err(PageDefect::Missing("count"))
        );
        // A field renamed by another API version.
        assert_eq!(
            page(json!({"installedLocations": [{"_id": "l1"}], "total": 1})),
            Err(PageDefect::Missing("locations"))
        );
    }

    #[test]
    fn fields_of_the_wrong_type_are_defects() {
        use serde_json::json;
        for (body, field) in [
            (json!({"locations": {"_id": "l1"}, "count": 1}), "locations"),
            (json!({"locations": null, "count": 0}), "locations"),
            (json!({"locations": [], "count": "0"}), "count"),
            (json!({"locations": [], "count": -1}), "count"),
            (json!({"locations": [], "count": 1.5}), "count"),
            (json!({"locations": [], "count": null}), "count"),
        ] {
            match page(body.clone()) {
                Err(PageDefect::WrongType { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn error_shaped_bodies_are_defects_whatever_the_status() {
        use serde_json::json;
        for body in [
            json!({"traceId": "abc"}),
            json!({"statusCode": 400, "message": "Invalid parameter: appId"}),
            json!({"statusCode": 401, "message": "Invalid JWT", "error": "Unauthorized"}),
            json!({"error": "invalid_request", "error_description": "x"}),
            json!({}),
            json!({"statusCode": 503, "locations": [], "count": 0}),
        ] {
            assert!(
                matches!(page(body.clone()), Err(PageDefect::ErrorShaped(_))),
                "{body}"
            );
        }
        assert_eq!(page(json!([])), Err(PageDefect::NotAnObject));
        assert_eq!(page(json!("ok")), Err(PageDefect::NotAnObject));
        // A 2xx statusCode beside a real page is only metadata.
        assert!(page(json!({"statusCode": 200, "locations": [], "count": 0})).is_ok());
        // The reason names fields, never their values.
        let why = page(json!({"traceId": "secret-looking-value"}))
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("traceId") && !why.contains("secret-looking-value"),
            "{why}"
        );
    }

    #[test]
    fn items_without_an_id_are_counted_not_listed() {
        use serde_json::json;
        let p = page(json!({
            "locations": [{"_id": "l1"}, {"id": "l2"}, {"_id": ""}, {"_id": 3}, "l4", null],
            "count": 6
        }))
        .unwrap();
        assert_eq!(p.locations.len(), 1);
        assert_eq!(p.without_id, 5);
    }
}
