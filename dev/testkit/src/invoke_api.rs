//! The Lambda `Invoke` API (`POST /2015-03-31/functions/{name}/invocations`)
//! in front of [`RuntimeApi`] emulators, on a loopback socket: what the AWS
//! SDKs call, so a test can drive a function through the real SDK for Rust,
//! JavaScript or Python, and count what reached it.
//!
//! Why not `cargo lambda watch`: it also serves this API, but on a fixed
//! port, building the functions itself and giving them the environment of
//! `[package.metadata.lambda.env]` (the fixed local stack), so a test could
//! neither give a function its own table nor count invocations.
//!
//! Emulated: synchronous (`RequestResponse`) invokes by name, ARN or partial
//! ARN (a qualifier is accepted and ignored), `X-Amz-Client-Context` (base64
//! JSON, handed to the function as Lambda does), function errors as Lambda
//! reports them (200, `X-Amz-Function-Error: Unhandled`, the error document
//! as payload), and `ResourceNotFoundException` for an unknown function.
//! Not emulated: `Event` and `DryRun` invokes (refused with a 400), log tails.

use crate::{InvokeError, InvokeOptions, Invoker, RuntimeApi};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The function's timeout, as the template sets the mint's.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);

/// One invocation that reached a function.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoked {
    pub function: String,
    pub payload: Value,
    /// The decoded client context, when the caller sent one.
    pub client_context: Option<Value>,
}

struct Front {
    functions: HashMap<String, Invoker>,
    log: Mutex<Vec<Invoked>>,
}

/// See the module's documentation. Dropping it stops it.
pub struct InvokeApi {
    front: Arc<Front>,
    endpoint: String,
    stop: watch::Sender<bool>,
}

impl InvokeApi {
    /// Serves `functions` (name → the emulator its processes poll) on a free
    /// loopback port.
    pub async fn start(functions: &[(&str, &RuntimeApi)]) -> std::io::Result<InvokeApi> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let front = Arc::new(Front {
            functions: functions
                .iter()
                .map(|(name, api)| ((*name).to_owned(), api.invoker()))
                .collect(),
            log: Mutex::default(),
        });
        let app = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "UnknownOperationException",
                    "only Invoke is emulated",
                )
            })
            .with_state(front.clone());
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(InvokeApi {
            front,
            endpoint,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT`: the SDKs' endpoint (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every invocation handed to a function so far, in arrival order.
    pub fn invocations(&self) -> Vec<Invoked> {
        self.front
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for InvokeApi {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The function's name from a name, an ARN (`arn:aws:lambda:R:A:function:N[:Q]`),
/// a partial ARN (`A:function:N`) or `N:Q`.
fn function_name(given: &str) -> &str {
    let parts: Vec<&str> = given.split(':').collect();
    match parts.iter().position(|p| *p == "function") {
        Some(i) if i + 1 < parts.len() => parts[i + 1],
        _ => parts[0],
    }
}

async fn invoke(
    State(front): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let function = function_name(&name).to_owned();
    let Some(invoker) = front.functions.get(&function) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: arn:aws:lambda:us-east-1:000000000000:function:{function}"
            ),
        );
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    if kind != "RequestResponse" {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("invocation type {kind} is not emulated"),
        );
    }
    let client_context = match headers.get("x-amz-client-context") {
        None => None,
        Some(v) => match base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(ctx) => Some(ctx),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Client context must be a valid Base64-encoded JSON object.",
                );
            }
        },
    };
    let payload: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Could not parse request body into json",
                );
            }
        }
    };
    front
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Invoked {
            function,
            payload: payload.clone(),
            client_context: client_context.clone(),
        });
    let opts = InvokeOptions {
        client_context,
        ..InvokeOptions::with_deadline(FUNCTION_TIMEOUT)
    };
    let (body, function_error) = match invoker.invoke_with(payload, opts).await {
        Ok(v) => (v, false),
        Err(
            InvokeError::Function {
                error_type,
                error_message,
            }
            | InvokeError::InitError {
                error_type,
                error_message,
            },
        ) => (
            json!({"errorType": error_type, "errorMessage": error_message}),
            true,
        ),
        Err(InvokeError::Timeout) => (
            json!({"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out"}),
            true,
        ),
    };
    let mut response = (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(
        "x-amz-executed-version",
        HeaderValue::from_static("$LATEST"),
    );
    if function_error {
        h.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    response
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-amzn-errortype", kind),
        ],
        json!({"Type": "User", "message": message}).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::function_name;

    #[test]
    fn names_arns_and_qualifiers() {
        for given in [
            "token-mint",
            "token-mint:$LATEST",
            "arn:aws:lambda:us-east-1:123456789012:function:token-mint",
            "arn:aws:lambda:us-east-1:123456789012:function:token-mint:live",
            "123456789012:function:token-mint",
        ] {
            assert_eq!(function_name(given), "token-mint", "{given}");
        }
    }
}
