//! Test harness for running the function binaries as real processes.
//!
//! [`RuntimeApi`] emulates the AWS Lambda Runtime API (version 2018-06-01) on a
//! loopback socket, and [`FunctionProcess`] runs a function binary against it the
//! way the Lambda service would: a separate process, configured only through its
//! environment, long-polling for work over HTTP.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

/// Lambda's limit on a synchronous invocation's payload, in bytes.
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

const DEFAULT_ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:test";
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// How much longer than the deadline an invoke waits by default, so that a
/// function that honours its deadline still gets its answer through.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// How an invocation ended, as the caller of `Invoke` would see it.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeError {
    /// The function reported an error through `/invocation/{id}/error`.
    Function {
        error_type: String,
        error_message: String,
    },
    /// No answer arrived within [`InvokeOptions::wait`]; this is also what a
    /// process killed mid-invocation produces.
    Timeout,
    /// A process reported an initialisation failure through `/init/error`.
    InitError {
        error_type: String,
        error_message: String,
    },
}

impl fmt::Display for InvokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvokeError::Function {
                error_type,
                error_message,
            } => write!(f, "function error {error_type}: {error_message}"),
            InvokeError::Timeout => f.write_str("invocation timed out"),
            InvokeError::InitError {
                error_type,
                error_message,
            } => write!(f, "init error {error_type}: {error_message}"),
        }
    }
}

impl std::error::Error for InvokeError {}

/// Per-invocation settings for [`RuntimeApi::invoke_with`].
#[derive(Clone, Debug)]
pub struct InvokeOptions {
    /// The function's time budget. `Lambda-Runtime-Deadline-Ms` is the moment
    /// a process receives the invocation plus this, because Lambda starts a
    /// function's timeout when the invocation starts, not while it is queued
    /// behind a cold start.
    pub deadline: Duration,
    /// How long `invoke_with` waits for an answer, from the call, before it
    /// returns [`InvokeError::Timeout`]. Default: 65 s (the default deadline
    /// plus 5 s); [`InvokeOptions::with_deadline`] keeps that 5 s margin for
    /// another deadline, struct-update syntax from `Default` does not.
    pub wait: Duration,
    /// Sent as `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// Sent as the JSON text of `Lambda-Runtime-Client-Context`. lambda_runtime
    /// parses it into its `ClientContext` type and stops if it does not fit.
    pub client_context: Option<Value>,
    /// Sent as the JSON text of `Lambda-Runtime-Cognito-Identity`; like
    /// `client_context`, it must fit lambda_runtime's `CognitoIdentity`.
    pub cognito_identity: Option<Value>,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        InvokeOptions {
            deadline: DEFAULT_DEADLINE,
            wait: DEFAULT_DEADLINE + WAIT_GRACE,
            function_arn: DEFAULT_ARN.to_owned(),
            client_context: None,
            cognito_identity: None,
        }
    }
}

impl InvokeOptions {
    /// Defaults, with `deadline` set and `wait` five seconds past it.
    pub fn with_deadline(deadline: Duration) -> Self {
        InvokeOptions {
            deadline,
            wait: deadline + WAIT_GRACE,
            ..InvokeOptions::default()
        }
    }
}

type Outcome = Result<Value, InvokeError>;

/// What a process receives from `/next`.
struct Invocation {
    id: String,
    event: Bytes,
    deadline: Duration,
    function_arn: HeaderValue,
    client_context: Option<HeaderValue>,
    cognito_identity: Option<HeaderValue>,
}

/// An invocation that no process has received yet.
struct Queued {
    invocation: Invocation,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Invocations {
    queue: VecDeque<Queued>,
    in_flight: HashMap<String, oneshot::Sender<Outcome>>,
    /// Init failures not yet charged to an invocation.
    init_errors: VecDeque<(String, String)>,
}

struct Shared {
    invocations: Mutex<Invocations>,
    queued: Notify,
    stop: watch::Sender<bool>,
    /// Set by the first `/next` poll: the process finished its cold start.
    polled: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Invocations> {
        // The lock is never held across a panic point that leaves the state
        // inconsistent, so a poisoned lock is still usable.
        self.invocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, id: &str, outcome: Outcome) -> bool {
        match self.lock().in_flight.remove(id) {
            Some(done) => {
                // The waiter may have given up in the meantime; the
                // function's answer is accepted all the same.
                let _ = done.send(outcome);
                true
            }
            None => false,
        }
    }
}

/// An emulator of the Lambda Runtime API on `127.0.0.1`. Dropping it stops it:
/// pending polls get a 500, which makes lambda_runtime exit.
pub struct RuntimeApi {
    shared: Arc<Shared>,
    address: String,
}

impl RuntimeApi {
    /// Binds a free loopback port and starts serving on the current tokio runtime.
    pub async fn start() -> std::io::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?.to_string();
        let (stop, mut stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            invocations: Mutex::new(Invocations::default()),
            queued: Notify::new(),
            stop,
            polled: watch::Sender::new(false),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(not_found)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%error, "runtime API emulator stopped with an error");
            }
        });
        Ok(RuntimeApi { shared, address })
    }

    /// `127.0.0.1:PORT`, the value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Waits for the first `/next` poll: a function is ready (its cold start
    /// is over) when it first asks for work.
    pub async fn polled(&self) {
        let mut polled = self.shared.polled.subscribe();
        // The sender lives in `shared`, which outlives this borrow.
        let _ = polled.wait_for(|p| *p).await;
    }

    /// Invokes with [`InvokeOptions::default`] (60 s deadline).
    pub async fn invoke(&self, event: Value) -> Result<Value, InvokeError> {
        self.invoke_with(event, InvokeOptions::default()).await
    }

    /// Queues `event` for the next poller and waits for its outcome.
    ///
    /// The invocation is queued before the first await, so invokes started in
    /// a given order are handed out in that order.
    ///
    /// # Panics
    /// If `client_context` or `cognito_identity` cannot be sent as a header value.
    pub async fn invoke_with(
        &self,
        event: Value,
        opts: InvokeOptions,
    ) -> Result<Value, InvokeError> {
        self.invoker().invoke_with(event, opts).await
    }

    /// A handle that invokes through this emulator from another task (the
    /// [`invoke_api::InvokeApi`] front); it does not keep the emulator running.
    pub fn invoker(&self) -> Invoker {
        Invoker {
            shared: self.shared.clone(),
        }
    }
}

/// Invokes through a [`RuntimeApi`]; see [`RuntimeApi::invoker`].
#[derive(Clone)]
pub struct Invoker {
    shared: Arc<Shared>,
}

impl Invoker {
    /// [`RuntimeApi::invoke_with`].
    pub async fn invoke_with(
        &self,
        event: Value,
        opts: InvokeOptions,
    ) -> Result<Value, InvokeError> {
        let id = request_id();
        let (done, outcome) = oneshot::channel();
        let invocation = Invocation {
            id: id.clone(),
            event: Bytes::from(serde_json::to_vec(&event).expect("a JSON value serialises")),
            deadline: opts.deadline,
            function_arn: header_value("function_arn", &opts.function_arn),
            client_context: opts
                .client_context
                .as_ref()
                .map(|v| header_value("client_context", &v.to_string())),
            cognito_identity: opts
                .cognito_identity
                .as_ref()
                .map(|v| header_value("cognito_identity", &v.to_string())),
        };
        {
            let mut invocations = self.shared.lock();
            if let Some((error_type, error_message)) = invocations.init_errors.pop_front() {
                return Err(InvokeError::InitError {
                    error_type,
                    error_message,
                });
            }
            invocations.queue.push_back(Queued { invocation, done });
        }
        self.shared.queued.notify_waiters();
        let _forget = Forget {
            shared: &self.shared,
            id: &id,
        };
        match tokio::time::timeout(opts.wait, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => Err(InvokeError::Timeout),
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

/// Withdraws an invocation whose caller stopped waiting, so that no process
/// receives work nobody will read, and a late answer gets a 400 as for any
/// invocation that is not in flight.
struct Forget<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut invocations = self.shared.lock();
        invocations.queue.retain(|q| q.invocation.id != self.id);
        invocations.in_flight.remove(self.id);
    }
}

fn header_value(what: &str, text: &str) -> HeaderValue {
    HeaderValue::from_bytes(text.as_bytes()).unwrap_or_else(|e| {
        panic!("InvokeOptions::{what} is not a valid header value ({e}): {text}")
    })
}

async fn next_invocation(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .polled
        .send_if_modified(|p| !std::mem::replace(p, true));
    let mut stop = shared.stop.subscribe();
    loop {
        // Registered before looking at the queue, so an invoke that lands in
        // between still wakes this poller.
        let mut queued = pin!(shared.queued.notified());
        queued.as_mut().enable();
        if *stop.borrow_and_update() {
            return stopped();
        }
        // Taking the invocation and returning the response happen in the
        // same poll, so it goes to a connection hyper has just seen alive: a
        // poller that hung up makes hyper drop this future while it waits,
        // before anything is taken.
        let next = {
            let mut invocations = shared.lock();
            invocations
                .queue
                .pop_front()
                .map(|Queued { invocation, done }| {
                    invocations.in_flight.insert(invocation.id.clone(), done);
                    invocation
                })
        };
        if let Some(invocation) = next {
            let Invocation {
                id,
                event,
                deadline,
                function_arn,
                client_context,
                cognito_identity,
            } = invocation;
            tracing::debug!(request_id = %id, "invocation handed out");
            let deadline_ms = (SystemTime::now() + deadline)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let mut put = |name: &'static str, value: HeaderValue| {
                headers.insert(HeaderName::from_static(name), value);
            };
            put(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_str(&id).expect("request ids are ASCII"),
            );
            put(
                "lambda-runtime-deadline-ms",
                HeaderValue::from(deadline_ms as u64),
            );
            put("lambda-runtime-invoked-function-arn", function_arn);
            put(
                "lambda-runtime-trace-id",
                HeaderValue::from_str(&trace_id()).expect("trace ids are ASCII"),
            );
            if let Some(value) = client_context {
                put("lambda-runtime-client-context", value);
            }
            if let Some(value) = cognito_identity {
                put("lambda-runtime-cognito-identity", value);
            }
            return (StatusCode::OK, headers, event).into_response();
        }
        tokio::select! {
            () = &mut queued => {}
            _ = stop.changed() => {}
        }
    }
}

fn stopped() -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Runtime.ExitError",
        "the runtime API emulator has stopped",
    )
}

async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(&shared, &id),
        Err(BodyError::Broken) => return broken_body(),
    };
    let result = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if shared.complete(&id, Ok(result)) {
        tracing::debug!(request_id = %id, "invocation succeeded");
        accepted()
    } else {
        invalid_request_id(&id)
    }
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(&shared, &id),
        Err(BodyError::Broken) => return broken_body(),
    };
    let (error_type, error_message) = parse_error(&headers, &body);
    if shared.complete(
        &id,
        Err(InvokeError::Function {
            error_type,
            error_message,
        }),
    ) {
        tracing::debug!(request_id = %id, "invocation failed");
        accepted()
    } else {
        invalid_request_id(&id)
    }
}

async fn init_error(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "error payload too large",
            );
        }
        Err(BodyError::Broken) => return broken_body(),
    };
    let (error_type, error_message) = parse_error(&headers, &body);
    tracing::debug!(%error_type, "init error reported");
    let mut invocations = shared.lock();
    match invocations.queue.pop_front() {
        Some(q) => {
            let _ = q.done.send(Err(InvokeError::InitError {
                error_type,
                error_message,
            }));
        }
        None => invocations
            .init_errors
            .push_back((error_type, error_message)),
    }
    accepted()
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such runtime API resource",
    )
}

/// Reads the error document, falling back to `Lambda-Runtime-Function-Error-Type`
/// as Lambda does when the payload is missing or malformed.
fn parse_error(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    let document: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        document
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error_type = field("errorType")
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Unhandled".to_owned());
    let error_message = field("errorMessage").unwrap_or_else(|| {
        if document.is_some() {
            String::new()
        } else {
            String::from_utf8_lossy(body).into_owned()
        }
    });
    (error_type, error_message)
}

enum BodyError {
    TooLarge,
    Broken,
}

async fn read_body(mut body: Body) -> Result<Vec<u8>, BodyError> {
    let mut bytes = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_PAYLOAD {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Lambda fails an invocation whose answer is over the payload limit, rather
/// than leaving it to time out.
fn too_large(shared: &Shared, id: &str) -> Response {
    let message = format!(
        "Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."
    );
    shared.complete(
        id,
        Err(InvokeError::Function {
            error_type: "Function.ResponseSizeTooLarge".to_owned(),
            error_message: message.clone(),
        }),
    );
    api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &message,
    )
}

fn broken_body() -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "request body could not be read",
    )
}

fn invalid_request_id(id: &str) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!(
            "invalid request id {id}: no such invocation is in flight (unknown, already answered, or abandoned by its caller)"
        ),
    )
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorMessage": message, "errorType": error_type})),
    )
        .into_response()
}

/// 64 unpredictable bits without a randomness crate: std seeds each
/// `RandomState` from the OS, and the counter keeps values distinct even if
/// two calls land on the same clock reading.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// A version-4 UUID, the shape Lambda's request ids have.
fn request_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// An X-Ray trace header as Lambda sends it for an unsampled request.
fn trace_id() -> String {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "Root=1-{:08x}-{:08x}{:016x};Parent={:016x};Sampled=0",
        epoch as u32,
        random_u64() as u32,
        random_u64(),
        random_u64()
    )
}

/// A function binary running as a child process against a [`RuntimeApi`].
pub struct FunctionProcess {
    child: tokio::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl FunctionProcess {
    /// Spawns `bin` with the environment Lambda gives a function and nothing
    /// else from this process (so a developer's own AWS settings cannot leak
    /// in): `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME` (the file name
    /// of `bin`), `AWS_LAMBDA_FUNCTION_VERSION=$LATEST`,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128`, `AWS_LAMBDA_LOG_STREAM_NAME`,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_INITIALIZATION_TYPE=on-demand`,
    /// `AWS_REGION` and `AWS_DEFAULT_REGION` (`us-east-1` unless `envs` sets
    /// `AWS_REGION`), `AWS_EC2_METADATA_DISABLED=true`, `LAMBDA_TASK_ROOT`
    /// (the directory of `bin`), `PATH`, `LANG`, `TZ`, and `RUST_BACKTRACE`
    /// and `LLVM_PROFILE_FILE` when this process has them; then `envs`, which
    /// override.
    ///
    /// stdout and stderr are captured line by line, not echoed, because tests
    /// check function logs for secrets before anything may print them.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(
        bin: &Path,
        api: &RuntimeApi,
        envs: &[(&str, &str)],
    ) -> std::io::Result<FunctionProcess> {
        Self::spawn_with_args(bin, &[], api, envs)
    }

    /// [`FunctionProcess::spawn`] with command-line arguments. Lambda passes
    /// none; this is for stand-ins such as a test harness that must be told
    /// which test to run.
    pub fn spawn_with_args(
        bin: &Path,
        args: &[&str],
        api: &RuntimeApi,
        envs: &[(&str, &str)],
    ) -> std::io::Result<FunctionProcess> {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "function".to_owned());
        let region = envs
            .iter()
            .rev()
            .find(|(k, _)| *k == "AWS_REGION")
            .map_or("us-east-1", |(_, v)| *v);
        let task_root = bin.parent().unwrap_or_else(|| Path::new("/"));
        let mut command = tokio::process::Command::new(bin);
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin")
            .env("LANG", "en_US.UTF-8")
            .env("TZ", ":UTC")
            .env("LAMBDA_TASK_ROOT", task_root)
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name())
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_REGION", region)
            .env("AWS_DEFAULT_REGION", region)
            // Lambda has no instance metadata service; without this the AWS
            // SDK's credential chain would probe 169.254.169.254.
            .env("AWS_EC2_METADATA_DISABLED", "true");
        // Backtraces help diagnose a crashing function, and coverage tools
        // need child processes to write their profiles too.
        for inherited in ["RUST_BACKTRACE", "LLVM_PROFILE_FILE"] {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(capture(stdout, logs.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(capture(stderr, logs.clone())));
        }
        Ok(FunctionProcess {
            child,
            logs,
            readers,
        })
    }

    /// Every line captured so far, stdout and stderr interleaved in arrival order.
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every line captured once one containing `needle` has arrived (or
    /// after 5 s): a function writes its log lines before it answers, but
    /// they cross a pipe and may reach us after the answer does.
    pub async fn logs_once(&self, needle: &str) -> Vec<String> {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if logs.iter().any(|l| l.contains(needle)) || std::time::Instant::now() > until {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the process and waits for it, and for its last output to be captured.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        for reader in self.readers.drain(..) {
            // A grandchild could hold the pipes open forever; what the
            // function itself wrote has arrived well within this.
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// The OS process id, until the process has been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn capture(stream: impl AsyncRead + Unpin, logs: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                logs.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }
}

/// `YYYY/MM/DD/[$LATEST]<32 hex>`, the shape of a Lambda log stream name.
fn log_stream_name() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}/{month:02}/{day:02}/[$LATEST]{:016x}{:016x}",
        random_u64(),
        random_u64()
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Path of a binary built in this workspace, next to the running test
/// executable's directory (`target/<profile>/<name>`).
///
/// # Panics
/// If the binary does not exist.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let mut dir = exe
        .parent()
        .expect("the executable is in a directory")
        .to_path_buf();
    // Test and example executables live one level below the profile directory.
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir.pop();
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "workspace binary `{name}` not found at {}: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'));
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn error_document_falls_back_to_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Runtime.Crash"),
        );
        assert_eq!(
            parse_error(&headers, br#"{"errorType":"E","errorMessage":"m"}"#),
            ("E".to_owned(), "m".to_owned())
        );
        assert_eq!(
            parse_error(&headers, b"boom"),
            ("Runtime.Crash".to_owned(), "boom".to_owned())
        );
        assert_eq!(
            parse_error(&HeaderMap::new(), b"{}"),
            ("Unhandled".to_owned(), String::new())
        );
    }
}

pub mod bus;
pub mod invoke_api;
pub mod stack;

/// GET without following redirects; the `Location` header of the answer.
pub async fn http_get_location(url: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let resp = client.get(url).send().await.expect("GET");
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| {
            panic!(
                "no Location header from {} (status {})",
                url.split('?').next().unwrap_or(url),
                resp.status()
            )
        })
        .to_owned()
}

/// Polls every future concurrently on the calling task (`join_all` without
/// another dependency); the futures may borrow from the caller.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// CPU seconds (user + system) and peak RSS in MiB (VmHWM) of a live
/// process, from /proc: what the benchmarks report.
pub fn cpu_and_peak_rss(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let cpu = fields
        .get(11)
        .zip(fields.get(12))
        .map(|(u, s)| (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / ticks)
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kib / 1024.0)
}

/// The p-th percentile (0..=100) of durations, in milliseconds.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}
