//! Typed failures: the mint's `errorType`s, and the invoke's own.

use std::time::Duration;

/// Why no token (or listing) came back. The variants named after the mint's
/// `errorType`s carry its message, which names ids and causes, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request was malformed (a bug in the caller); nothing was called.
    #[error("InvalidRequest: {0}")]
    InvalidRequest(String),
    /// No install is stored for the location or company.
    #[error("InstallNotFound: {0}")]
    InstallNotFound(String),
    /// The grant is revoked or lost: the customer must reinstall the app.
    #[error("NeedsReauthorization: {0}")]
    NeedsReauthorization(String),
    /// HighLevel does not list the app as installed on that location.
    #[error("LocationNotInstalled: {0}")]
    LocationNotInstalled(String),
    /// The app was uninstalled; its tokens are erased.
    #[error("AppUninstalled: {0}")]
    AppUninstalled(String),
    /// HighLevel's rate limit; `retry_after` as the mint's message says.
    #[error("RateLimited: {message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// HighLevel failed or was slow, or the invocation ran short of time.
    #[error("UpstreamUnavailable: {0}")]
    UpstreamUnavailable(String),
    /// The mint's storage failed.
    #[error("Internal: {0}")]
    Internal(String),
    /// A function error this client does not know: a newer mint, or Lambda's
    /// own (`Sandbox.Timedout`, `Runtime.ExitError`, …).
    #[error("{error_type}: {message}")]
    Function { error_type: String, message: String },
    /// The Invoke call itself failed (network, throttling, permissions, no
    /// such function). `code` is the Lambda API's error code when there was one.
    #[error("Lambda Invoke failed ({code}): {message}")]
    Invoke {
        code: String,
        message: String,
        retryable: bool,
    },
    /// The mint answered something this client cannot read.
    #[error("unreadable answer from the mint: {0}")]
    BadResponse(String),
}

impl TokenError {
    /// The stable name: the mint's `errorType`, or `Invoke` / `BadResponse`.
    pub fn error_type(&self) -> &str {
        match self {
            Self::InvalidRequest(_) => "InvalidRequest",
            Self::InstallNotFound(_) => "InstallNotFound",
            Self::NeedsReauthorization(_) => "NeedsReauthorization",
            Self::LocationNotInstalled(_) => "LocationNotInstalled",
            Self::AppUninstalled(_) => "AppUninstalled",
            Self::RateLimited { .. } => "RateLimited",
            Self::UpstreamUnavailable(_) => "UpstreamUnavailable",
            Self::Internal(_) => "Internal",
            Self::Function { error_type, .. } => error_type,
            Self::Invoke { .. } => "Invoke",
            Self::BadResponse(_) => "BadResponse",
        }
    }

    /// Whether the same call may succeed later without anyone changing
    /// anything: back off and retry. The others need a person (a reinstall,
    /// a fixed request, a permission).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::UpstreamUnavailable(_) | Self::Internal(_) => true,
            Self::Invoke { retryable, .. } => *retryable,
            // Lambda's own failures (timeouts, crashes) pass; a newer mint's
            // unknown type is treated the same way, cautiously.
            Self::Function { .. } => true,
            Self::InvalidRequest(_)
            | Self::InstallNotFound(_)
            | Self::NeedsReauthorization(_)
            | Self::LocationNotInstalled(_)
            | Self::AppUninstalled(_)
            | Self::BadResponse(_) => false,
        }
    }

    /// A function error from its `errorType` and `errorMessage`.
    pub(crate) fn from_function(error_type: &str, message: String) -> Self {
        match error_type {
            "InvalidRequest" => Self::InvalidRequest(message),
            "InstallNotFound" => Self::InstallNotFound(message),
            "NeedsReauthorization" => Self::NeedsReauthorization(message),
            "LocationNotInstalled" => Self::LocationNotInstalled(message),
            "AppUninstalled" => Self::AppUninstalled(message),
            "RateLimited" => Self::RateLimited {
                retry_after: retry_after(&message),
                message,
            },
            "UpstreamUnavailable" => Self::UpstreamUnavailable(message),
            "Internal" => Self::Internal(message),
            other => Self::Function {
                error_type: other.to_owned(),
                message,
            },
        }
    }
}

/// The mint says "retry after N s".
fn retry_after(message: &str) -> Option<Duration> {
    let rest = &message[message.find("retry after ")? + "retry after ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mint_error_type_maps_to_its_variant_and_retryability() {
        for (t, retryable) in [
            ("InvalidRequest", false),
            ("InstallNotFound", false),
            ("NeedsReauthorization", false),
            ("LocationNotInstalled", false),
            ("AppUninstalled", false),
            ("RateLimited", true),
            ("UpstreamUnavailable", true),
            ("Internal", true),
            ("Sandbox.Timedout", true),
        ] {
            let e = TokenError::from_function(t, "m".into());
            assert_eq!(e.error_type(), t);
            assert_eq!(e.is_retryable(), retryable, "{t}");
        }
        assert!(matches!(
            TokenError::from_function("Sandbox.Timedout", "m".into()),
            TokenError::Function { .. }
        ));
    }

    #[test]
    fn rate_limit_carries_the_wait() {
        let e = TokenError::from_function(
            "RateLimited",
            "HighLevel rate limit reached; retry after 7 s".into(),
        );
        assert_eq!(
            e,
            TokenError::RateLimited {
                message: "HighLevel rate limit reached; retry after 7 s".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert_eq!(retry_after("no number here"), None);
    }
}
