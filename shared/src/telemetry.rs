//! Structured JSON logs, one line per outcome. `RUST_LOG` sets the level
//! (default `info`).

/// lambda_runtime logs every raw event at TRACE (`raw JSON event received
/// from Lambda`): the callback's query string with its authorization code,
/// the webhook's body. That target is held at DEBUG whatever `RUST_LOG`
/// says; its warnings and errors still show.
pub const QUIET_RAW_EVENT: &str = "lambda_runtime::layers::api_response=debug";

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(QUIET_RAW_EVENT.parse().expect("a valid directive"));
    // A second init (tests, benches) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .flatten_event(true)
        .try_init();
}
