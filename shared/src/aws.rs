//! AWS SDK set-up. Endpoints come only from the SDK's own configuration
//! (`AWS_ENDPOINT_URL` locally), never from project-specific plumbing.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;

pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The functions' configuration: every call bounded per attempt and in
/// total, so a stalled request fails while the lease and deadline still
/// leave time to act on the failure.
pub async fn sdk_config_with(t: &crate::config::AwsTimeouts) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(t.attempt)
        .operation_attempt_timeout(t.attempt)
        .operation_timeout(t.operation)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// A one-line description of an SDK error: its code and message, which never
/// carry item values.
pub fn error_text<E: ProvideErrorMetadata + std::error::Error>(err: &E) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_owned(),
        _ => {
            // Dispatch and timeout failures have no code; the Display chain says which.
            let mut text = aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string();
            text.truncate(300);
            text
        }
    }
}
