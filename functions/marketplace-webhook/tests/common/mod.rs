//! What the webhook tests share: delivering to `marketplace-webhook` under
//! the runtime emulator, crafting and signing events, reading the table.

// Each test binary uses its own subset of these.
#![allow(dead_code)]

use ghl_sim::{Delivery, Sim};
use serde_json::{Value, json};
use shared::model::{InstallId, now_millis};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::stack::{Item, Stack, function_url_post_event};
use testkit::{FunctionProcess, InvokeError, InvokeOptions, RuntimeApi};

pub const BIN: &str = "marketplace-webhook";

/// What the function answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u64,
    pub body: Value,
    pub headers: serde_json::Map<String, Value>,
}

impl Answer {
    /// Asserts a refusal: the status, the stable error name, and a message
    /// that says something (containing `says`).
    pub fn refused(&self, status: u64, error: &str, says: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], error, "{self:?}");
        let message = self.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "message lacks {says:?}: {self:?}");
    }

    pub fn accepted(&self, status: &str) {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
    }
}

pub async fn invoke_url(api: &RuntimeApi, event: Value) -> Answer {
    let out = api
        .invoke_with(event, InvokeOptions::with_deadline(Duration::from_secs(30)))
        .await
        .expect("the function answers (never a function error)");
    let text = out["body"].as_str().unwrap_or_default();
    let headers = out["headers"].as_object().cloned().unwrap_or_default();
    assert_eq!(
        headers.get("content-type").and_then(Value::as_str),
        Some("application/json"),
        "{out}"
    );
    Answer {
        status: out["statusCode"].as_u64().expect("statusCode"),
        body: serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}")),
        headers,
    }
}

/// POSTs `body` with `headers` (the body base64-encoded in the event when `base64`).
pub async fn post(api: &RuntimeApi, body: &[u8], headers: &[(&str, &str)], base64: bool) -> Answer {
    invoke_url(api, function_url_post_event(body, headers, base64)).await
}

/// POSTs `body` signed by `sim` (`x-ghl-signature`).
pub async fn post_signed(api: &RuntimeApi, sim: &Sim, body: &[u8]) -> Answer {
    let sig = sim.sign(body);
    post(api, body, &[("x-ghl-signature", &sig)], false).await
}

/// Hands on a delivery the simulator queued, as HighLevel sends it.
pub async fn deliver(api: &RuntimeApi, d: &Delivery) -> Answer {
    post(
        api,
        d.body.as_bytes(),
        &[("x-ghl-signature", &d.signature)],
        false,
    )
    .await
}

pub fn webhook_env(sim: &Sim) -> Vec<(&'static str, String)> {
    vec![("GHL_WEBHOOK_PUBLIC_KEY", sim.webhook_public_key())]
}

pub fn spawn_webhook(stack: &Stack, api: &RuntimeApi, extra: &[(&str, String)]) -> FunctionProcess {
    let mut env = webhook_env(&stack.sim);
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    stack.spawn_on(api, BIN, &refs)
}

pub static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn fresh_webhook_id() -> String {
    format!(
        "wh-test-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        now_millis()
    )
}

/// `2026-11-30T15:12:48.123Z` for epoch milliseconds (HighLevel's form).
pub fn iso8601_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A Location INSTALL as HighLevel words it, at `at_ms`, for `app_id`.
pub fn install_event(app_id: &str, company: &str, location: &str, at_ms: i64) -> Value {
    json!({
        "type": "INSTALL",
        "appId": app_id,
        "versionId": "sim-version-id",
        "installType": "Location",
        "locationId": location,
        "companyId": company,
        "userId": "user-test",
        "companyName": "Simulated agency",
        "isWhitelabelCompany": false,
        "planId": "sim-plan",
        "trial": {},
        "timestamp": iso8601_ms(at_ms),
        "webhookId": fresh_webhook_id(),
    })
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

/// The items of the table whose key is one of `ids`' (grant and journal entries).
pub fn items_of<'a>(items: &'a [Item], ids: &[InstallId]) -> Vec<&'a Item> {
    let keys: Vec<String> = ids.iter().map(InstallId::key).collect();
    items
        .iter()
        .filter(|i| {
            i.get("pk")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|pk| keys.contains(pk))
        })
        .collect()
}

pub fn sealed_tokens(items: &[&Item]) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| ["access_token", "refresh_token"].map(|f| i.get(f).cloned()))
        .flatten()
        .filter_map(|v| v.as_s().ok().cloned())
        .collect()
}

pub async fn mint(api: &RuntimeApi, req: Value) -> Result<Value, InvokeError> {
    api.invoke_with(req, InvokeOptions::with_deadline(Duration::from_secs(60)))
        .await
}

pub fn mint_error(r: Result<Value, InvokeError>) -> (String, String) {
    match r {
        Err(InvokeError::Function {
            error_type,
            error_message,
        }) => (error_type, error_message),
        other => panic!("expected a function error, got {other:?}"),
    }
}

/// (refresh token, presented, live) per token the simulator issued.
pub fn presentations(sim: &Sim) -> Vec<(String, u32, bool)> {
    sim.ledger()
        .tokens
        .into_iter()
        .map(|t| (t.refresh_token, t.presented, t.live))
        .collect()
}

pub fn counters(sim: &Sim) -> Value {
    serde_json::to_value(sim.counters()).expect("counters serialise")
}

/// Walks HighLevel's consent page for `target` and hands its code to the
/// OAuth callback on `cb_api`, which must answer 200; returns the code (for
/// the log checks).
pub async fn install_through_callback(
    stack: &Stack,
    cb_api: &RuntimeApi,
    target: &ghl_sim::ConsentTarget,
) -> String {
    let code = stack.consent_code(target).await;
    let out = cb_api
        .invoke_with(
            testkit::stack::function_url_event("GET", &[("code", &code)]),
            InvokeOptions::with_deadline(Duration::from_secs(30)),
        )
        .await
        .expect("the callback answers");
    assert_eq!(out["statusCode"], 200, "{out}");
    code
}
