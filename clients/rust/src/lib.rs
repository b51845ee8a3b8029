//! A client for the `token-mint` Lambda: HighLevel location and agency
//! (company) access tokens for the app owner's services, in one line.
//!
//! ```no_run
//! # async fn run() -> Result<(), ghl_token_client::TokenError> {
//! let sdk = aws_config::load_from_env().await;
//! let mint = ghl_token_client::TokenClient::new(
//!     aws_sdk_lambda::Client::new(&sdk),
//!     "arn:aws:lambda:us-east-1:123456789012:function:ghl-token-mint",
//! )
//! .with_caller("billing-service");
//! let token = mint.location_token("loc_123").await?;
//! // request.header("Authorization", token.authorization())
//! # Ok(()) }
//! ```
//!
//! What it adds to a bare `Invoke`:
//! - **A cache in the process**, keyed by kind (location or company) and id:
//!   a token is served until `expiresAt − min_validity` (5 minutes unless
//!   [`TokenClient::with_min_validity`] says otherwise), so a service pays
//!   one invoke per token lifetime, not one per HighLevel call. It asks the
//!   mint for tokens with 15 minutes more than that left, so each one it
//!   caches lasts at least that long.
//! - **Single flight per key**: however many tasks ask for one location's
//!   token at once, one invoke goes out and all of them get its answer
//!   (its token or its error).
//! - **Typed errors** ([`TokenError`]) from the mint's `errorType`s, with
//!   [`TokenError::is_retryable`].
//! - **The caller's name**, set once, sent as the invoke's client context
//!   (`{"custom":{"caller":…}}`) so the mint's audit log names the service.
//!
//! Tokens come wrapped in [`SecretToken`], whose Debug and Display print
//! `[redacted]`. Not for: refresh tokens (the mint never hands them out), or
//! sharing a cache between processes (each process pays its own invokes).

mod error;
mod token;

pub use error::TokenError;
pub use token::{AccessToken, InstalledLocation, InstalledLocations, SecretToken, TokenKind};

use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Served from the cache while more than this is left, unless configured.
pub const DEFAULT_MIN_VALIDITY: Duration = Duration::from_secs(300);
/// Asked of the mint beyond `min_validity`: the least a fetched token stays
/// in the cache.
pub const FETCH_AHEAD: Duration = Duration::from_secs(900);
/// The mint serves no token for longer than this (its `MAX_MIN_VALIDITY`).
const MINT_MAX_VALIDITY: u64 = 82_800;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An invoke's answer: the payload, and Lambda's `FunctionError` when the
/// function failed.
struct Answer {
    function_error: Option<String>,
    payload: Vec<u8>,
}

/// The one call the client makes; a seam so the cache can be tested
/// without Lambda.
trait Transport: Send + Sync {
    /// `client_context`: base64 JSON, as the Invoke API takes it.
    fn invoke(
        &self,
        payload: Vec<u8>,
        client_context: Option<String>,
    ) -> BoxFuture<'_, Result<Answer, TokenError>>;
}

struct LambdaTransport {
    lambda: aws_sdk_lambda::Client,
    function_name: String,
}

impl Transport for LambdaTransport {
    fn invoke(
        &self,
        payload: Vec<u8>,
        client_context: Option<String>,
    ) -> BoxFuture<'_, Result<Answer, TokenError>> {
        Box::pin(async move {
            let out = self
                .lambda
                .invoke()
                .function_name(&self.function_name)
                .payload(Blob::new(payload))
                .set_client_context(client_context)
                .send()
                .await
                .map_err(invoke_error)?;
            Ok(Answer {
                function_error: out.function_error().map(str::to_owned),
                payload: out
                    .payload()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default(),
            })
        })
    }
}

fn invoke_error<R: std::fmt::Debug>(
    e: SdkError<aws_sdk_lambda::operation::invoke::InvokeError, R>,
) -> TokenError {
    match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let retryable = err.is_too_many_requests_exception()
                || err.is_service_exception()
                || err.is_ec2_throttled_exception()
                || err.is_resource_not_ready_exception()
                || err.is_resource_conflict_exception();
            TokenError::Invoke {
                code: err.code().unwrap_or("Unknown").to_owned(),
                message: err.message().unwrap_or("no message").to_owned(),
                retryable,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            TokenError::Invoke {
                code: "Transport".into(),
                message: aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
                retryable: true,
            }
        }
        _ => TokenError::Invoke {
            code: "Client".into(),
            message: aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
            retryable: false,
        },
    }
}

type Flight = Arc<OnceCell<Result<AccessToken, TokenError>>>;

#[derive(Default)]
struct Slot {
    token: Option<AccessToken>,
    /// The invoke under way for this key, which later callers join.
    flight: Option<Flight>,
}

/// The mint's client. Cheap to clone; clones share one cache.
#[derive(Clone)]
pub struct TokenClient {
    transport: Arc<dyn Transport>,
    slots: Arc<Mutex<HashMap<(TokenKind, String), Slot>>>,
    min_validity: Duration,
    /// Base64 of `{"custom":{"caller":…}}`.
    client_context: Option<String>,
}

impl TokenClient {
    /// `function_name`: the mint's name or ARN (the stack's
    /// `TokenMintFunctionArn` output).
    pub fn new(lambda: aws_sdk_lambda::Client, function_name: impl Into<String>) -> Self {
        Self::with_transport(Arc::new(LambdaTransport {
            lambda,
            function_name: function_name.into(),
        }))
    }

    fn with_transport(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            slots: Arc::default(),
            min_validity: DEFAULT_MIN_VALIDITY,
            client_context: None,
        }
    }

    /// Names the calling service in the mint's audit log (the mint keeps 128
    /// characters). Set once, when building the client.
    pub fn with_caller(mut self, caller: impl Into<String>) -> Self {
        let context = json!({"custom": {"caller": caller.into()}}).to_string();
        self.client_context = Some(base64(context.as_bytes()));
        self
    }

    /// Tokens are served from the cache while more than this is left.
    /// At most 23 hours minus [`FETCH_AHEAD`]: HighLevel's tokens live 24.
    pub fn with_min_validity(mut self, min_validity: Duration) -> Self {
        self.min_validity = min_validity;
        self
    }

    /// The location's access token: from the cache, else from the mint (which
    /// serves, refreshes or mints it). For an agency app's location the mint
    /// finds the company from the install; see
    /// [`TokenClient::location_token_in`] for a location it does not know yet.
    pub async fn location_token(&self, location_id: &str) -> Result<AccessToken, TokenError> {
        self.token(TokenKind::Location, location_id, None).await
    }

    /// The same, naming the location's company: the mint needs it to mint a
    /// first token for a location that no install or webhook has linked.
    pub async fn location_token_in(
        &self,
        company_id: &str,
        location_id: &str,
    ) -> Result<AccessToken, TokenError> {
        self.token(TokenKind::Location, location_id, Some(company_id))
            .await
    }

    /// The agency's own access token (HighLevel's company-level endpoints:
    /// sub-account search and creation, SaaS, snapshots, custom menus).
    pub async fn company_token(&self, company_id: &str) -> Result<AccessToken, TokenError> {
        self.token(TokenKind::Company, company_id, None).await
    }

    /// The locations where the agency app is installed. Not cached: it is a
    /// listing, paged at HighLevel on every call.
    pub async fn installed_locations(
        &self,
        company_id: &str,
    ) -> Result<InstalledLocations, TokenError> {
        let request = json!({"action": "listInstalledLocations", "companyId": company_id});
        let payload = self.call(&request).await?;
        read(&payload)
    }

    /// Forgets a cached token (say, after HighLevel answered 401 to it); the
    /// next call asks the mint again.
    pub fn forget(&self, kind: TokenKind, id: &str) {
        if let Some(slot) = self.lock().get_mut(&(kind, id.to_owned())) {
            slot.token = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TokenKind, String), Slot>> {
        // No code panics while holding it, so its state stays whole.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn token(
        &self,
        kind: TokenKind,
        id: &str,
        company_id: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let key = (kind, id.to_owned());
        let flight = {
            let mut slots = self.lock();
            let slot = slots.entry(key.clone()).or_default();
            if let Some(t) = &slot.token
                && t.fresh_for(self.min_validity)
            {
                return Ok(t.clone());
            }
            slot.flight.get_or_insert_with(Flight::default).clone()
        };
        // One caller runs the invoke; the others wait for its result. If
        // that caller is cancelled, a waiter takes over.
        let result = flight
            .get_or_init(|| self.fetch(kind, id, company_id))
            .await
            .clone();
        let mut slots = self.lock();
        let slot = slots.entry(key).or_default();
        if slot
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            slot.flight = None;
            if let Ok(t) = &result {
                slot.token = Some(t.clone());
            }
        }
        result
    }

    async fn fetch(
        &self,
        kind: TokenKind,
        id: &str,
        company_id: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let min_validity = (self.min_validity + FETCH_AHEAD)
            .as_secs()
            .min(MINT_MAX_VALIDITY);
        let request = match kind {
            TokenKind::Location => {
                let mut r = json!({"locationId": id, "minValiditySeconds": min_validity});
                if let Some(c) = company_id {
                    r["companyId"] = c.into();
                }
                r
            }
            TokenKind::Company => json!({
                "action": "companyToken",
                "companyId": id,
                "minValiditySeconds": min_validity,
            }),
        };
        let sent_at = Instant::now();
        let payload = self.call(&request).await?;
        let answer: token::TokenAnswer = read(&payload)?;
        Ok(answer.into_token(sent_at))
    }

    /// The answer's payload, or the function's error.
    async fn call(&self, request: &Value) -> Result<Vec<u8>, TokenError> {
        let payload = serde_json::to_vec(request).expect("a JSON value serialises");
        let answer = self
            .transport
            .invoke(payload, self.client_context.clone())
            .await?;
        if let Some(kind) = answer.function_error {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct FunctionError {
                error_type: Option<String>,
                error_message: Option<String>,
            }
            let e: FunctionError =
                serde_json::from_slice(&answer.payload).unwrap_or(FunctionError {
                    error_type: None,
                    error_message: None,
                });
            return Err(TokenError::from_function(
                e.error_type.as_deref().unwrap_or(&kind),
                e.error_message.unwrap_or_default(),
            ));
        }
        Ok(answer.payload)
    }
}

/// Reads an answer. The error names where it broke, never what was there:
/// serde's own message quotes a wrongly typed value, which could be a token.
fn read<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, TokenError> {
    serde_json::from_slice(payload).map_err(|e| {
        TokenError::BadResponse(format!(
            "{:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// Standard base64 with padding: the client context's encoding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Reply = Box<dyn Fn(&Value) -> Answer + Send + Sync>;

    /// Records what the client sends; answers after `delay`.
    struct Fake {
        sent: Mutex<Vec<(Value, Option<String>)>>,
        calls: AtomicUsize,
        delay: Duration,
        reply: Reply,
    }

    impl Transport for Fake {
        fn invoke(
            &self,
            payload: Vec<u8>,
            client_context: Option<String>,
        ) -> BoxFuture<'_, Result<Answer, TokenError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let request: Value = serde_json::from_slice(&payload).unwrap();
                tokio::time::sleep(self.delay).await;
                let answer = (self.reply)(&request);
                self.sent.lock().unwrap().push((request, client_context));
                Ok(answer)
            })
        }
    }

    fn fake(delay_ms: u64, reply: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            sent: Mutex::default(),
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            reply: Box::new(reply),
        })
    }

    fn token_answer(expires_in: u64) -> impl Fn(&Value) -> Answer + Send + Sync {
        static N: AtomicUsize = AtomicUsize::new(0);
        move |req| {
            let n = N.fetch_add(1, Ordering::SeqCst);
            let company = req["action"] == "companyToken";
            Answer {
                function_error: None,
                payload: json!({
                    "accessToken": format!("tok-{n}"),
                    "tokenType": "Bearer",
                    "expiresAt": "2026-11-23T08:00:00Z",
                    "expiresIn": expires_in,
                    "scope": "a b",
                    "companyId": req.get("companyId").cloned().unwrap_or("co".into()),
                    "locationId": if company { Value::Null } else { req["locationId"].clone() },
                    "userType": if company { "Company" } else { "Location" },
                    "source": "minted",
                })
                .to_string()
                .into_bytes(),
            }
        }
    }

    fn client(f: &Arc<Fake>) -> TokenClient {
        TokenClient::with_transport(f.clone())
    }

    #[tokio::test]
    async fn a_burst_makes_one_invoke_and_the_cache_serves_the_rest() {
        let f = fake(100, token_answer(86_399));
        let c = client(&f);
        let burst: Vec<_> = (0..20)
            .map(|_| tokio::spawn(fut_owned(c.clone(), "loc-1")))
            .collect();
        let mut tokens = Vec::new();
        for h in burst {
            tokens.push(h.await.unwrap().unwrap());
        }
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            1,
            "one invoke for the burst"
        );
        let first = tokens[0].token.expose().to_owned();
        assert!(tokens.iter().all(|t| t.token.expose() == first));
        // Later calls: the cache, no invoke.
        let again = c.location_token("loc-1").await.unwrap();
        assert_eq!(again.token.expose(), first);
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        // Another kind with the same id is another key.
        let company = c.company_token("loc-1").await.unwrap();
        assert_eq!(company.user_type, "Company");
        assert_ne!(company.token.expose(), first);
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    }

    async fn fut_owned(c: TokenClient, id: &'static str) -> Result<AccessToken, TokenError> {
        c.location_token(id).await
    }

    #[tokio::test]
    async fn a_token_with_no_more_than_min_validity_left_is_fetched_again() {
        let f = fake(0, token_answer(300));
        let c = client(&f).with_min_validity(Duration::from_secs(300));
        let a = c.location_token("l").await.unwrap();
        let b = c.location_token("l").await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        assert_ne!(a.token.expose(), b.token.expose());

        let f = fake(0, token_answer(302));
        let c = client(&f).with_min_validity(Duration::from_secs(300));
        c.location_token("l").await.unwrap();
        c.location_token("l").await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), 1, "2 s of margin: cached");
        // Forgotten: asked again.
        c.forget(TokenKind::Location, "l");
        c.location_token("l").await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_burst_shares_one_error_and_errors_are_not_cached() {
        let f = fake(100, |_| {
            Answer {
            function_error: Some("Unhandled".into()),
            payload: br#"{"errorType":"RateLimited","errorMessage":"HighLevel rate limit reached; retry after 3 s"}"#.to_vec(),
        }
        });
        let c = client(&f);
        let handles: Vec<_> = (0..5)
            .map(|_| tokio::spawn(fut_owned(c.clone(), "loc-e")))
            .collect();
        for h in handles {
            let e = h.await.unwrap().unwrap_err();
            assert_eq!(e.error_type(), "RateLimited");
            assert!(e.is_retryable());
            assert!(
                matches!(e, TokenError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3))
            );
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        c.location_token("loc-e").await.unwrap_err();
        assert_eq!(f.calls.load(Ordering::SeqCst), 2, "an error is not cached");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_flight_to_a_waiter() {
        let f = fake(200, token_answer(86_399));
        let c = client(&f);
        let leader = tokio::spawn(fut_owned(c.clone(), "loc-c"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiter = tokio::spawn(fut_owned(c.clone(), "loc-c"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        let t = waiter.await.unwrap().unwrap();
        assert_eq!(t.location_id.as_deref(), Some("loc-c"));
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            2,
            "the waiter invoked again"
        );
        c.location_token("loc-c").await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), 2, "and its token is cached");
    }

    #[tokio::test]
    async fn requests_carry_the_mint_shapes_and_the_caller() {
        let f = fake(0, |req| {
            if req["action"] == "listInstalledLocations" {
                Answer {
                    function_error: None,
                    payload: br#"{"companyId":"co","count":1,"complete":true,"locations":[{"locationId":"l1","name":"One"}]}"#.to_vec(),
                }
            } else {
                token_answer(86_399)(req)
            }
        });
        let c = client(&f)
            .with_caller("billing")
            .with_min_validity(Duration::from_secs(60));
        c.location_token("l1").await.unwrap();
        c.location_token_in("co", "l2").await.unwrap();
        c.company_token("co").await.unwrap();
        let list = c.installed_locations("co").await.unwrap();
        assert_eq!(list.count, 1);
        assert_eq!(list.locations[0].location_id, "l1");
        let sent = f.sent.lock().unwrap().clone();
        let requests: Vec<&Value> = sent.iter().map(|(r, _)| r).collect();
        assert_eq!(
            requests,
            [
                &json!({"locationId": "l1", "minValiditySeconds": 960}),
                &json!({"locationId": "l2", "companyId": "co", "minValiditySeconds": 960}),
                &json!({"action": "companyToken", "companyId": "co", "minValiditySeconds": 960}),
                &json!({"action": "listInstalledLocations", "companyId": "co"}),
            ]
        );
        let expected = base64(br#"{"custom":{"caller":"billing"}}"#);
        assert!(
            sent.iter()
                .all(|(_, ctx)| ctx.as_deref() == Some(expected.as_str()))
        );
    }

    #[tokio::test]
    async fn unreadable_answers_are_typed_and_never_echo_the_body() {
        let f = fake(0, |_| Answer {
            function_error: None,
            payload: br#"{"accessToken":"tok-leak","expiresIn":"tok-leak2"}"#.to_vec(),
        });
        let e = client(&f).location_token("l").await.unwrap_err();
        assert_eq!(e.error_type(), "BadResponse");
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains("tok-leak"), "{e}");
        let f = fake(0, |_| Answer {
            function_error: Some("Unhandled".into()),
            payload: b"Task timed out".to_vec(),
        });
        let e = client(&f).location_token("l").await.unwrap_err();
        assert_eq!(e.error_type(), "Unhandled");
        assert!(e.is_retryable());
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), out);
        }
    }
}
