//! A local stack for one test: a fresh table and app secret in moto, a
//! HighLevel simulator, and a Lambda Runtime API emulator for the function
//! processes. Each test gets its own table and secret, so tests run in
//! parallel against one moto server.

use crate::{FunctionProcess, RuntimeApi, workspace_bin};
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use ghl_sim::{Sim, SimConfig};
use rand::RngCore;
use serde_json::{Value, json};
use shared::app_secret::AppSecret;
use shared::config::{DuePolicy, GhlConfig};
use shared::ghl::GhlClient;
use shared::model::{GrantInfo, InstallId, InstallState, TokenPair};
use shared::redact::SecretString;
use shared::services::Services;
use shared::store::{Install, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

pub const REDIRECT_URI: &str = "https://app.example.com/oauth/callback";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails loudly (never skips) when the moto server is not there.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!("AWS_ENDPOINT_URL is not set: run the tests through dev/test.sh, which starts moto's server")
    })
}

pub struct Stack {
    pub sim: Arc<Sim>,
    pub api: RuntimeApi,
    pub table: String,
    pub secret_id: String,
    pub ddb: aws_sdk_dynamodb::Client,
    pub app: AppSecret,
    pub svc: Services,
    pub shards: u32,
    /// The hand-off key `h1` (base64), as the owner's site would hold it to
    /// verify a `SUCCESS_REDIRECT_URL` hand-off.
    pub handoff_key: String,
}

impl Stack {
    pub async fn new() -> Stack {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(sim_cfg: SimConfig) -> Stack {
        Self::build(sim_cfg, 4).await
    }

    /// A stack whose due index has `shards` shards (1 makes the sweep's order total).
    pub async fn with_shards(shards: u32) -> Stack {
        Self::build(SimConfig::default(), shards).await
    }

    async fn build(sim_cfg: SimConfig, shards: u32) -> Stack {
        // Fail before anything starts if moto is not there.
        aws_endpoint();
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            if std::env::var(k).is_err() {
                // SAFETY: set before any thread reads them in this test process's SDK set-up; values are constants.
                unsafe { std::env::set_var(k, v) };
            }
        }
        let sim = Arc::new(Sim::start(sim_cfg.clone()).await.expect("simulator starts"));
        let api = RuntimeApi::start()
            .await
            .expect("runtime API emulator starts");
        let sdk = shared::aws::sdk_config().await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let table = unique("installs");
        shared::schema::create_table(&ddb, &table)
            .await
            .expect("table created in moto");
        let secret_id = unique("ghl-app");
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut handoff = [0u8; 32];
        rand::rng().fill_bytes(&mut handoff);
        let handoff_key = base64::engine::general_purpose::STANDARD.encode(handoff);
        let secret_json = json!({
            "client_id": sim_cfg.client_id,
            "client_secret": sim_cfg.client_secret,
            "app_id": sim_cfg.app_id,
            "data_keys": {"k1": base64::engine::general_purpose::STANDARD.encode(key)},
            "current_data_key": "k1",
            "handoff_keys": {"h1": handoff_key},
            "current_handoff_key": "h1",
        })
        .to_string();
        aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(&secret_id)
            .secret_string(&secret_json)
            .send()
            .await
            .expect("secret created in moto");
        let app = AppSecret::parse(&secret_json).expect("secret parses");
        let due = DuePolicy {
            refresh_ahead: Duration::from_secs(6 * 3600),
            jitter: Duration::from_secs(0),
            shards,
        };
        let store = Store::new(ddb.clone(), &table, app.keyring.clone(), due);
        let ghl = GhlClient::new(&GhlConfig {
            base_url: sim.base_url(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        })
        .expect("client");
        let svc = Services {
            store,
            ghl,
            app: app.clone(),
            events: shared::events::Events::new(aws_sdk_eventbridge::Client::new(&sdk), "default"),
        };
        Stack {
            sim,
            api,
            table,
            secret_id,
            ddb,
            app,
            svc,
            shards,
            handoff_key,
        }
    }

    /// The environment every function process gets; `extra` overrides.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL".into(), aws_endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("INSTALLS_TABLE".into(), self.table.clone()),
            ("GHL_APP_SECRET_ID".into(), self.secret_id.clone()),
            ("GHL_API_BASE_URL".into(), self.sim.base_url()),
            ("GHL_REDIRECT_URI".into(), REDIRECT_URI.into()),
            // marketplace-webhook's only source of it (it reads no secret).
            (
                "GHL_APP_ID".into(),
                self.app.app_id.clone().unwrap_or_default(),
            ),
            ("REFRESH_JITTER_SECS".into(), "0".into()),
            // moto serialises every request (dev/moto_server.py), so with the
            // whole suite running at once a call can wait seconds in its
            // queue; DynamoDB answers in milliseconds. One 4 s attempt, not
            // retried within the operation, keeps a refresh's budget (connect
            // + request + two writes = 21 s) inside the tests' 30 s
            // deadlines. Tests that exercise tight timeouts set their own.
            ("AWS_ATTEMPT_TIMEOUT_MS".into(), "4000".into()),
            ("AWS_OPERATION_TIMEOUT_MS".into(), "4000".into()),
            ("DUE_SHARDS".into(), self.shards.to_string()),
            ("RUST_LOG".into(), "info".into()),
        ];
        // DynamoDB elsewhere than moto (dev/dynalite.sh), as the SDK reads it.
        if let Ok(url) = std::env::var("AWS_ENDPOINT_URL_DYNAMODB") {
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), url));
        }
        env
    }

    /// Starts a function binary of this workspace against this stack, polling `self.api`.
    pub fn spawn(&self, bin: &str, extra: &[(&str, &str)]) -> FunctionProcess {
        self.spawn_on(&self.api, bin, extra)
    }

    /// The same, polling another Runtime API: one per function, as in Lambda,
    /// when several functions run at once.
    pub fn spawn_on(&self, api: &RuntimeApi, bin: &str, extra: &[(&str, &str)]) -> FunctionProcess {
        let mut env: Vec<(String, String)> = self.env();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).into(), (*v).into()));
        }
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        FunctionProcess::spawn(&workspace_bin(bin), api, &refs).expect("function process starts")
    }

    /// Creates a grant in the simulator and stores it as an install whose
    /// access token expires in `expires_in` seconds (under the 6 h refresh-ahead
    /// window, it is due at once).
    pub async fn seed_install(&self, id: &InstallId, company_id: &str, expires_in: i64) -> Install {
        let (pair, info) = sim_grant(&self.sim, id, company_id, expires_in);
        self.store()
            .save_grant(id, &pair, &info, "seeded")
            .await
            .expect("seeded install saved")
    }

    /// Seeds `n` installs (companies `{prefix}-{i}`) whose access tokens
    /// expire in `expires_in` seconds, written in bulk exactly as
    /// `save_grant` would create them.
    pub async fn seed_many(&self, prefix: &str, n: usize, expires_in: i64) -> Vec<InstallId> {
        let ids: Vec<InstallId> = (0..n)
            .map(|i| InstallId::Company(format!("{prefix}-{i}")))
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for chunk in ids.chunks(500) {
            let grants: Vec<_> = chunk
                .iter()
                .map(|id| {
                    let (pair, info) = sim_grant(&self.sim, id, id.id(), expires_in);
                    (id.clone(), pair, info)
                })
                .collect();
            let store = self.store().clone();
            set.spawn(async move {
                store
                    .put_new_grants(&grants)
                    .await
                    .expect("seeded installs written")
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("seeding task");
        }
        ids
    }

    /// Refreshes a stored install directly at the simulator, as a worker
    /// that then died (or lost its commit) would have: the old token is used
    /// up, and the new pair exists only where the test puts it.
    pub async fn refresh_behind_the_back(&self, stored: &Install) -> TokenPair {
        let grant = self
            .svc
            .ghl
            .refresh(&self.app, &stored.refresh_token, stored.id.user_type())
            .await
            .expect("the simulator refreshes the stored token");
        TokenPair {
            access_token: grant.access_token.clone(),
            refresh_token: grant
                .refresh_token
                .clone()
                .expect("a refresh answer carries a refresh token"),
            expires_at: shared::model::now_secs() + grant.expires_in as i64,
        }
    }

    /// Makes an install due now (tests only: stands in for the passage of time).
    pub async fn make_due(&self, id: &InstallId) {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(id.key()))
            .key("sk", AttributeValue::S("grant".into()))
            .update_expression("SET due_at = :d")
            .expression_attribute_values(
                ":d",
                AttributeValue::N((shared::model::now_secs() - 1).to_string()),
            )
            .send()
            .await
            .expect("make due");
    }

    /// Rotates the data key as an operator would: a new key `id` joins the
    /// app secret and becomes current, the old ones stay for reading.
    /// Function processes spawned afterwards load it at cold start; the
    /// stack's own store uses it at once.
    pub async fn rotate_data_key(&mut self, id: &str) -> SecretString {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let key_b64 = SecretString::new(base64::engine::general_purpose::STANDARD.encode(key));
        let doc = self
            .edit_secret(|doc| {
                doc["data_keys"][id] = key_b64.expose().into();
                doc["current_data_key"] = id.into();
            })
            .await;
        self.app = AppSecret::parse(&doc.to_string()).expect("rotated secret parses");
        self.svc.store = Store::new(
            self.ddb.clone(),
            &self.table,
            self.app.keyring.clone(),
            self.store().due_policy().clone(),
        );
        key_b64
    }

    /// Sets one field of the app secret, as an operator's
    /// put-secret-value would; processes spawned afterwards read it.
    pub async fn set_secret_field(&self, field: &str, value: Value) {
        self.edit_secret(|doc| doc[field] = value).await;
    }

    /// Reads the app secret's JSON, applies `edit`, writes it back as a new
    /// version, and returns what was written.
    async fn edit_secret(&self, edit: impl FnOnce(&mut Value)) -> Value {
        let sm = aws_sdk_secretsmanager::Client::new(&shared::aws::sdk_config().await);
        let current = sm
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .expect("secret readable");
        let mut doc: Value = serde_json::from_str(current.secret_string().expect("string secret"))
            .expect("JSON secret");
        edit(&mut doc);
        sm.put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(doc.to_string())
            .send()
            .await
            .expect("secret updated");
        doc
    }

    /// Moves an install's lifecycle back to `at_ms`, as if it had been
    /// installed then: for late deliveries whose event predates "now".
    pub async fn backdate_install(&self, id: &InstallId, at_ms: i64) {
        use shared::store::attr;
        self.ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(id.key()))
            .key("sk", AttributeValue::S(shared::store::GRANT_SK.into()))
            .update_expression("SET #life = :ms, #installed = :secs")
            .expression_attribute_names("#life", attr::LIFECYCLE_AT)
            .expression_attribute_names("#installed", attr::LAST_INSTALLED_AT)
            .expression_attribute_values(":ms", AttributeValue::N(at_ms.to_string()))
            .expression_attribute_values(
                ":secs",
                AttributeValue::N(at_ms.div_euclid(1000).to_string()),
            )
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .unwrap_or_else(|e| panic!("backdating {id}: {e:?}"));
    }

    /// Sets an install's state field alone, as a past sweep would have left
    /// it (tokens untouched): for flows that start from a broken install.
    pub async fn set_state(&self, id: &InstallId, state: InstallState) {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(id.key()))
            .key("sk", AttributeValue::S(shared::store::GRANT_SK.into()))
            .update_expression("SET #s = :s")
            .expression_attribute_names("#s", shared::store::attr::STATE)
            .expression_attribute_values(":s", AttributeValue::S(state.as_str().into()))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .unwrap_or_else(|e| panic!("setting the state of {id}: {e:?}"));
    }

    /// Moves a location's link (both sides) back to `at_ms`.
    pub async fn backdate_link(&self, company_id: &str, location_id: &str, at_ms: i64) {
        use shared::store::attr;
        for (pk, sk) in [
            (format!("location#{location_id}"), "company".to_owned()),
            (
                format!("company#{company_id}"),
                format!("location#{location_id}"),
            ),
        ] {
            self.ddb
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(pk))
                .key("sk", AttributeValue::S(sk))
                .update_expression("SET #at = :ms")
                .expression_attribute_names("#at", attr::LINK_AT)
                .expression_attribute_values(":ms", AttributeValue::N(at_ms.to_string()))
                .condition_expression("attribute_exists(pk)")
                .send()
                .await
                .unwrap_or_else(|e| panic!("backdating the link of {location_id}: {e:?}"));
        }
    }

    pub fn store(&self) -> &Store {
        &self.svc.store
    }

    /// The stored install; panics, naming it, when it is missing or unreadable.
    pub async fn install(&self, id: &InstallId) -> Install {
        match self.store().get(id).await {
            Ok(Some(i)) => i,
            Ok(None) => panic!("{id} is not stored"),
            Err(e) => panic!("reading {id}: {e}"),
        }
    }

    /// Every item in the table, in key order: compare before and after to
    /// prove a request changed nothing.
    pub async fn items(&self) -> Vec<Item> {
        let mut all = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            all.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        all.sort_by_key(|i| {
            (
                i.get("pk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default(),
                i.get("sk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default(),
            )
        });
        all
    }

    /// Runs the simulator's consent page and returns the code it issued.
    pub async fn consent_code(&self, target: &ghl_sim::ConsentTarget) -> String {
        let url = self.sim.consent_url(REDIRECT_URI, target);
        let location = crate::http_get_location(&url).await;
        let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("code="))
            .unwrap_or_else(|| panic!("consent redirect had no code"))
            .to_owned()
    }

    /// Every token and secret this stack has seen: the simulator's refresh
    /// tokens, the stored access tokens, and the client secret.
    pub async fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .sim
            .ledger()
            .tokens
            .iter()
            .map(|t| t.refresh_token.clone())
            .collect();
        out.push(self.app.client_secret.expose().to_owned());
        out.push(self.handoff_key.clone());
        for item in self.items().await {
            let pk = item
                .get("pk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            if let Some(id) = shared::model::InstallId::parse_key(&pk)
                && let Ok(Some(i)) = self.store().get(&id).await
            {
                out.push(i.access_token.expose().to_owned());
                out.push(i.refresh_token.expose().to_owned());
            }
        }
        out
    }

    /// Fails, without printing the secret, if any log line contains one.
    pub async fn assert_logs_clean(&self, logs: &[String], extra: &[&str]) {
        let mut secrets = self.secrets().await;
        secrets.extend(extra.iter().map(|s| s.to_string()));
        for line in logs {
            for s in &secrets {
                assert!(
                    s.len() < 8 || !line.contains(s.as_str()),
                    "a log line contains a token or secret (fingerprint {})",
                    shared::redact::fingerprint(s.as_bytes())
                );
            }
        }
    }
}

/// For tests that load the shared moto hard (several sweeps over hundreds
/// of installs while the rest of the suite runs): AWS calls may wait in
/// moto's queue far longer than DynamoDB would ever take, and a timed-out
/// write would leave the test counting a store error, not testing the
/// protocol.
pub const PATIENT_AWS: &[(&str, &str)] = &[
    ("AWS_ATTEMPT_TIMEOUT_MS", "20000"),
    ("AWS_OPERATION_TIMEOUT_MS", "20000"),
];

/// A Lambda Function URL (payload 2.0) request event.
pub fn function_url_event(method: &str, query: &[(&str, &str)]) -> Value {
    let raw: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", shared::html::percent_encode(v)))
        .collect();
    let params: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": raw.join("&"),
        "headers": {"accept": "text/html", "host": "abcdefghij.lambda-url.us-east-1.on.aws", "user-agent": "test"},
        "requestContext": {
            "accountId": "anonymous", "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.us-east-1.on.aws", "domainPrefix": "abcdefghij",
            "http": {"method": method, "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "test"},
            "requestId": "req", "routeKey": "$default", "stage": "$default",
            "time": "23/Nov/2026:08:00:00 +0000", "timeEpoch": 1795420800000u64
        },
        "isBase64Encoded": false
    });
    if !params.is_empty() {
        event["queryStringParameters"] = Value::Object(params);
    }
    event
}

/// A Lambda Function URL (payload 2.0) POST event carrying `body`, with
/// `headers` (names as given; Function URLs lower-case them) over a JSON
/// content type. `base64`: the body travels base64-encoded
/// (`isBase64Encoded: true`), as Lambda sends a body it does not take for
/// text; otherwise it must be UTF-8 and travels as it is.
///
/// # Panics
/// If `base64` is false and `body` is not UTF-8.
pub fn function_url_post_event(body: &[u8], headers: &[(&str, &str)], base64: bool) -> Value {
    let mut event = function_url_event("POST", &[]);
    let map = event["headers"]
        .as_object_mut()
        .expect("the event has a headers object");
    map.insert("accept".into(), "application/json".into());
    map.insert("content-type".into(), "application/json".into());
    map.insert("content-length".into(), body.len().to_string().into());
    for (k, v) in headers {
        map.insert((*k).into(), (*v).into());
    }
    event["body"] = if base64 {
        base64::engine::general_purpose::STANDARD
            .encode(body)
            .into()
    } else {
        std::str::from_utf8(body)
            .expect("a body sent without base64 is UTF-8")
            .into()
    };
    event["isBase64Encoded"] = base64.into();
    event
}

/// An EventBridge scheduled event.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-11-23T08:00:00Z",
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/sweep"], "detail": {}
    })
}

/// The JSON log lines of a function process (other lines skipped).
pub fn json_logs(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// A grant issued by the simulator for `id`, as the store would save it.
fn sim_grant(
    sim: &Sim,
    id: &InstallId,
    company_id: &str,
    expires_in: i64,
) -> (TokenPair, GrantInfo) {
    let (user_type, location_id) = match id {
        InstallId::Company(_) => (ghl_sim::UserType::Company, None),
        InstallId::Location(l) | InstallId::Minted(l) => {
            (ghl_sim::UserType::Location, Some(l.clone()))
        }
    };
    if let Some(l) = &location_id {
        sim.add_locations(company_id, &[(l.as_str(), l.as_str())]);
    }
    let body = sim.seed_grant(ghl_sim::SeedGrant {
        user_type,
        company_id: company_id.into(),
        location_id: location_id.clone(),
        access_token_ttl_secs: None,
    });
    let pair = TokenPair {
        access_token: SecretString::new(body["access_token"].as_str().expect("access_token")),
        refresh_token: SecretString::new(body["refresh_token"].as_str().expect("refresh_token")),
        expires_at: shared::model::now_secs() + expires_in,
    };
    let info = GrantInfo {
        user_type: Some(id.user_type()),
        company_id: Some(company_id.into()),
        location_id,
        scope: body["scope"].as_str().map(str::to_owned),
        ..Default::default()
    };
    (pair, info)
}

/// What a [`store_fault_proxy`] is asked about each request: the
/// operation (`UpdateItem`, from `X-Amz-Target`) and the request body.
pub type StoreFault = dyn Fn(&str, &[u8]) -> bool + Send + Sync;

/// A DynamoDB endpoint for one test: requests pass through to the real one
/// (moto, or `AWS_ENDPOINT_URL_DYNAMODB`), except those `fail` picks, which
/// get DynamoDB's `InternalServerError` (500) and never reach the store.
/// Pass it to a function as `AWS_ENDPOINT_URL_DYNAMODB`.
pub async fn store_fault_proxy(fail: Arc<StoreFault>) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap_or_else(|_| aws_endpoint());
    let client = reqwest::Client::new();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let (fail, client, upstream) = (fail.clone(), client.clone(), upstream.clone());
        async move {
            let op = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.rsplit('.').next())
                .unwrap_or("")
                .to_owned();
            if fail(&op, &body) {
                let error = json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                    "message": "injected by the test's store fault proxy"
                });
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [("content-type", "application/x-amz-json-1.0")],
                    error.to_string(),
                )
                    .into_response();
            }
            let mut req = client.post(&upstream).body(body);
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name, value);
                }
            }
            match req.send().await {
                Ok(resp) => {
                    let status = StatusCode::from_u16(resp.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    let mut out = HeaderMap::new();
                    for (name, value) in resp.headers() {
                        if name != "content-length" && name != "connection" {
                            out.insert(name.clone(), value.clone());
                        }
                    }
                    let bytes = resp.bytes().await.unwrap_or_default();
                    (status, out, bytes).into_response()
                }
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("proxy binds");
    let address = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}
