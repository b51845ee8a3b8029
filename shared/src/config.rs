//! Configuration, read and validated once at cold start.
//!
//! Every error names the variable and the form it expects, so a bad deploy
//! fails its first invocation with a message that says what to fix.

use crate::model::UserType;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration: {var} is not set; expected {expected}")]
    Missing {
        var: &'static str,
        expected: &'static str,
    },
    #[error("configuration: {var} is invalid ({reason}); expected {expected}")]
    Invalid {
        var: &'static str,
        expected: &'static str,
        reason: String,
    },
}

/// Reads variables through a lookup function so tests need not touch the
/// process environment.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

pub struct Env<'a> {
    lookup: Lookup<'a>,
}

impl Env<'static> {
    pub fn process() -> Self {
        Self::new(|k| std::env::var(k).ok())
    }
}

impl<'a> Env<'a> {
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(lookup),
        }
    }

    /// Unset and blank are the same: a blank value in a template is a mistake.
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub fn required(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<String, ConfigError> {
        self.get(var).ok_or(ConfigError::Missing { var, expected })
    }

    pub fn optional(&self, var: &'static str) -> Option<String> {
        self.get(var)
    }

    pub fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
        &self,
        var: &'static str,
        default: T,
        min: T,
        max: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        let value: T = raw.parse().map_err(|_| ConfigError::Invalid {
            var,
            expected,
            reason: format!("{:?} is not a number", clip(&raw)),
        })?;
        if value < min || value > max {
            return Err(ConfigError::Invalid {
                var,
                expected,
                reason: format!("{value} is out of range {min}..={max}"),
            });
        }
        Ok(value)
    }

    pub fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" || v == "1" => Ok(true),
            Some(v) if v == "false" || v == "0" => Ok(false),
            Some(v) => Err(ConfigError::Invalid {
                var,
                expected: "true or false",
                reason: format!("{:?} is not a boolean", clip(&v)),
            }),
        }
    }

    pub fn url(&self, var: &'static str, value: String) -> Result<String, ConfigError> {
        check_url(&value).map_err(|reason| ConfigError::Invalid {
            var,
            expected: "an absolute https:// URL (http:// only for localhost or 127.0.0.1)",
            reason,
        })?;
        Ok(value)
    }
}

/// Values are echoed in errors to help the operator; none of these variables
/// hold secrets, but keep the echo short.
fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

fn check_url(value: &str) -> Result<(), String> {
    let rest = if let Some(r) = value.strip_prefix("https://") {
        r
    } else if let Some(r) = value.strip_prefix("http://") {
        let host = r.split(['/', ':', '?']).next().unwrap_or_default();
        if host != "localhost" && host != "127.0.0.1" {
            return Err(format!(
                "{:?} uses plain http for a non-local host",
                clip(value)
            ));
        }
        r
    } else {
        return Err(format!("{:?} does not start with https://", clip(value)));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{:?} has no valid host", clip(value)));
    }
    Ok(())
}

/// HighLevel client settings.
#[derive(Debug, Clone)]
pub struct GhlConfig {
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// When an install becomes due for refresh. Written by every function that
/// stores tokens, read by the sweep, so it lives in the common part.
#[derive(Debug, Clone)]
pub struct DuePolicy {
    /// Refresh this long before the access token expires.
    pub refresh_ahead: Duration,
    /// Up to this much earlier again, chosen per install, so that installs
    /// made in one burst do not all come due in the same minute.
    pub jitter: Duration,
    /// Partitions of the due index; spreads reads and writes so none is hot.
    pub shards: u32,
}

/// Timeouts on every AWS SDK call, so a stalled DynamoDB or Secrets Manager
/// request cannot outlive a lease or a Lambda deadline.
#[derive(Debug, Clone, Copy)]
pub struct AwsTimeouts {
    /// One HTTP attempt.
    pub attempt: Duration,
    /// The whole operation, retries included.
    pub operation: Duration,
}

/// What every function needs.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub installs_table: String,
    pub app_secret_id: String,
    pub ghl: GhlConfig,
    pub due: DuePolicy,
    /// How long a lease on an install lasts. Longer than the HighLevel
    /// request timeout, so a holder gives up on HighLevel before its lease
    /// can pass to someone else.
    pub lease: Duration,
    /// A refresh whose outcome is unknown is presented again while its first
    /// send is younger than this (HighLevel answers the same pair for the
    /// same refresh token within 30 s). Zero: never re-presented at once.
    pub represent_window: Duration,
    pub aws: AwsTimeouts,
    /// The EventBridge bus state-change events go to.
    pub event_bus: String,
}

impl CommonConfig {
    /// Time kept after HighLevel answers: one operation for the commit, one
    /// for the journal written only when the commit cannot be.
    pub fn write_reserve(&self) -> Duration {
        self.aws.operation * 2
    }

    /// The least time a holder needs to present a refresh token once and
    /// store the answer: nobody presents with less.
    pub fn one_refresh(&self) -> Duration {
        self.ghl.connect_timeout + self.ghl.request_timeout + self.write_reserve()
    }

    /// The most a refresh takes, re-presentations within the window included.
    pub fn whole_refresh(&self) -> Duration {
        self.represent_window + self.one_refresh()
    }
}

pub const DEFAULT_GHL_API_BASE_URL: &str = "https://services.leadconnectorhq.com";

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let installs_table = env.required(
            "INSTALLS_TABLE",
            "the DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)",
        )?;
        if installs_table.len() < 3
            || installs_table.len() > 255
            || !installs_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(ConfigError::Invalid {
                var: "INSTALLS_TABLE",
                expected: "the DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)",
                reason: format!("{:?} is not a valid table name", clip(&installs_table)),
            });
        }
        let app_secret_id = env.required(
            "GHL_APP_SECRET_ID",
            "the Secrets Manager name or ARN of the app secret (JSON with client_id, client_secret, data_keys)",
        )?;
        let base_url = env.url(
            "GHL_API_BASE_URL",
            env.optional("GHL_API_BASE_URL")
                .unwrap_or_else(|| DEFAULT_GHL_API_BASE_URL.to_owned()),
        )?;
        let connect_ms = env.number(
            "GHL_CONNECT_TIMEOUT_MS",
            3_000u64,
            100,
            60_000,
            "milliseconds, 100 to 60000",
        )?;
        let request_ms = env.number(
            "GHL_HTTP_TIMEOUT_MS",
            10_000u64,
            200,
            120_000,
            "milliseconds, 200 to 120000",
        )?;
        let window_ms = env.number(
            "GHL_REPRESENT_WINDOW_MS",
            25_000u64,
            0,
            29_000,
            "milliseconds, 0 to 29000 (under HighLevel's 30 s same-token window)",
        )?;
        let attempt_ms = env.number(
            "AWS_ATTEMPT_TIMEOUT_MS",
            2_000u64,
            100,
            60_000,
            "milliseconds, 100 to 60000",
        )?;
        let operation_ms = env.number(
            "AWS_OPERATION_TIMEOUT_MS",
            5_000u64,
            100,
            120_000,
            "milliseconds, 100 to 120000, at least AWS_ATTEMPT_TIMEOUT_MS",
        )?;
        if operation_ms < attempt_ms {
            return Err(ConfigError::Invalid {
                var: "AWS_OPERATION_TIMEOUT_MS",
                expected: "milliseconds, at least AWS_ATTEMPT_TIMEOUT_MS",
                reason: format!("{operation_ms} ms leaves no room for one {attempt_ms} ms attempt"),
            });
        }
        let lease_secs = env.number("LEASE_SECS", 90u64, 5, 900, "seconds, 5 to 900")?;
        // A holder must be able to present, re-present within the window and
        // store the answer before anyone else may take the install.
        let needed_ms = window_ms + connect_ms + request_ms + 2 * operation_ms;
        if lease_secs * 1000 <= needed_ms {
            return Err(ConfigError::Invalid {
                var: "LEASE_SECS",
                expected: "seconds, longer than GHL_REPRESENT_WINDOW_MS + GHL_CONNECT_TIMEOUT_MS + GHL_HTTP_TIMEOUT_MS + 2 x AWS_OPERATION_TIMEOUT_MS",
                reason: format!(
                    "a {lease_secs} s lease could expire while a refresh ({needed_ms} ms at most) is still in flight or being stored"
                ),
            });
        }
        let due = DuePolicy {
            refresh_ahead: Duration::from_secs(env.number(
                "REFRESH_AHEAD_SECS",
                6 * 3600u64,
                60,
                20 * 3600,
                "seconds before access-token expiry, 60 to 72000",
            )?),
            jitter: Duration::from_secs(env.number(
                "REFRESH_JITTER_SECS",
                1800u64,
                0,
                4 * 3600,
                "seconds, 0 to 14400",
            )?),
            shards: env.number("DUE_SHARDS", 8u32, 1, 256, "a whole number, 1 to 256")?,
        };
        Ok(Self {
            installs_table,
            app_secret_id,
            ghl: GhlConfig {
                base_url: base_url.trim_end_matches('/').to_owned(),
                connect_timeout: Duration::from_millis(connect_ms),
                request_timeout: Duration::from_millis(request_ms),
            },
            due,
            lease: Duration::from_secs(lease_secs),
            represent_window: Duration::from_millis(window_ms),
            aws: AwsTimeouts {
                attempt: Duration::from_millis(attempt_ms),
                operation: Duration::from_millis(operation_ms),
            },
            event_bus: event_bus(env)?,
        })
    }
}

/// `EVENT_BUS_NAME`: an EventBridge bus name (or ARN), default `default`.
fn event_bus(env: &Env) -> Result<String, ConfigError> {
    let bus = env
        .optional("EVENT_BUS_NAME")
        .unwrap_or_else(|| "default".to_owned());
    let name = bus.rsplit('/').next().unwrap_or_default();
    let ok = !name.is_empty()
        && bus.len() <= 1600
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(ConfigError::Invalid {
            var: "EVENT_BUS_NAME",
            expected: "an EventBridge bus name (letters, digits, . _ -) or its ARN",
            reason: format!("{:?} is not one", clip(&bus)),
        });
    }
    Ok(bus)
}

/// `oauth-callback`.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    pub common: CommonConfig,
    /// The token type requested in the code exchange.
    pub user_type: UserType,
    pub redirect_uri: String,
    /// Parsed at cold start, so building the redirect never fails later.
    pub success_redirect_url: Option<url::Url>,
    /// How long a signed hand-off to `SUCCESS_REDIRECT_URL` is valid
    /// (`SUCCESS_REDIRECT_TTL_SECS`): long enough for the browser to follow
    /// the 302, short enough that a leaked URL soon stops vouching.
    pub handoff_ttl: Duration,
    /// The app's name as the installing customer knows it (`APP_NAME`).
    pub app_name: String,
    /// Where the pages' "Back to HighLevel" link goes (`GHL_APP_URL`).
    pub ghl_app_url: url::Url,
}

/// `APP_NAME` when unset: reads naturally inside a sentence.
pub const DEFAULT_APP_NAME: &str = "this app";
pub const DEFAULT_GHL_APP_URL: &str = "https://app.gohighlevel.com/";
const APP_NAME_MAX_CHARS: usize = 80;
const APP_NAME_EXPECTED: &str = "the app's name as customers know it: 1 to 80 printable characters";
const GHL_APP_URL_EXPECTED: &str =
    "an absolute https:// URL (HighLevel's app, or your white-label domain)";

impl CallbackConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let user_type = user_type(env)?;
        let redirect_uri = env.url(
            "GHL_REDIRECT_URI",
            env.required(
                "GHL_REDIRECT_URI",
                "the redirect URI registered in the HighLevel app, an absolute https:// URL",
            )?,
        )?;
        let success_redirect_url = env
            .optional("SUCCESS_REDIRECT_URL")
            .map(|u| {
                let u = env.url("SUCCESS_REDIRECT_URL", u)?;
                parse_url(&u).map_err(|reason| ConfigError::Invalid {
                    var: "SUCCESS_REDIRECT_URL",
                    expected: "an absolute https:// URL (http:// only for localhost or 127.0.0.1)",
                    reason,
                })
            })
            .transpose()?;
        let handoff_ttl = Duration::from_secs(env.number(
            "SUCCESS_REDIRECT_TTL_SECS",
            300u64,
            30,
            3_600,
            "seconds, 30 to 3600",
        )?);
        let app_name = app_name(env)?;
        let ghl_app_url = ghl_app_url(env)?;
        Ok(Self {
            common,
            user_type,
            redirect_uri,
            success_redirect_url,
            handoff_ttl,
            app_name,
            ghl_app_url,
        })
    }
}

fn parse_url(value: &str) -> Result<url::Url, String> {
    url::Url::parse(value).map_err(|e| format!("{:?} is not a URL ({e})", clip(value)))
}

/// `APP_NAME`: shown on the install pages, so nothing that could hide or
/// reorder text (control, line-separator or bidirectional-override characters).
fn app_name(env: &Env) -> Result<String, ConfigError> {
    let Some(name) = env.optional("APP_NAME") else {
        return Ok(DEFAULT_APP_NAME.to_owned());
    };
    let invalid = |reason: String| ConfigError::Invalid {
        var: "APP_NAME",
        expected: APP_NAME_EXPECTED,
        reason,
    };
    let chars = name.chars().count();
    if chars > APP_NAME_MAX_CHARS {
        return Err(invalid(format!("it is {chars} characters long")));
    }
    if let Some(c) = name.chars().find(|c| !printable(*c)) {
        return Err(invalid(format!(
            "it contains the non-printable character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(name)
}

fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `GHL_APP_URL`: https only, it is a link on a customer's page.
fn ghl_app_url(env: &Env) -> Result<url::Url, ConfigError> {
    let raw = env
        .optional("GHL_APP_URL")
        .unwrap_or_else(|| DEFAULT_GHL_APP_URL.to_owned());
    let invalid = |reason: String| ConfigError::Invalid {
        var: "GHL_APP_URL",
        expected: GHL_APP_URL_EXPECTED,
        reason,
    };
    let url = parse_url(&raw).map_err(invalid)?;
    if url.scheme() != "https" {
        return Err(invalid(format!("{:?} is not an https:// URL", clip(&raw))));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{:?} has no host", clip(&raw))));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!("{:?} carries credentials", clip(&raw))));
    }
    Ok(url)
}

pub fn user_type(env: &Env) -> Result<UserType, ConfigError> {
    match env.optional("GHL_USER_TYPE").as_deref() {
        None | Some("Company") => Ok(UserType::Company),
        Some("Location") => Ok(UserType::Location),
        Some(other) => Err(ConfigError::Invalid {
            var: "GHL_USER_TYPE",
            expected: "Company or Location",
            reason: format!("{:?} is neither", clip(other)),
        }),
    }
}

/// `refresh-sweep`.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub common: CommonConfig,
    /// Refreshes in flight at once.
    pub concurrency: usize,
    /// Time kept back from the Lambda deadline for the summary and the last writes.
    pub deadline_reserve: Duration,
    /// Retry delay for a suspended (`Location is not active`) install.
    pub suspended_retry: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Fleet breaker: after at least `breaker_min_attempts` outcomes, stop the run
    /// when this share failed the same way.
    pub breaker_min_attempts: u32,
    pub breaker_ratio: f64,
    pub reconnect_fallback: bool,
    /// Reconciliation: a link younger than this is never changed (HighLevel's
    /// listing may lag an install or uninstall).
    pub reconcile_grace: Duration,
    /// Reconciliation: pages of installed locations per company at most.
    pub reconcile_max_pages: u32,
    /// Reconciliation: pause between two pages of one company.
    pub reconcile_page_pace: Duration,
    /// Reconciliation: at most this share (0–100) of a company's installed
    /// links is removed in one run (at least one when above 0), so no
    /// single run can wipe an agency; 0 only marks.
    pub reconcile_max_removals_percent: u32,
}

impl SweepConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let ratio_pct = env.number(
            "BREAKER_PERCENT",
            50u32,
            1,
            100,
            "a whole percentage, 1 to 100",
        )?;
        Ok(Self {
            concurrency: env.number(
                "SWEEP_CONCURRENCY",
                64usize,
                1,
                1024,
                "a whole number, 1 to 1024",
            )?,
            deadline_reserve: Duration::from_millis(env.number(
                "SWEEP_DEADLINE_RESERVE_MS",
                2_000u64,
                100,
                60_000,
                "milliseconds, 100 to 60000",
            )?),
            suspended_retry: Duration::from_secs(env.number(
                "SUSPENDED_RETRY_SECS",
                6 * 3600u64,
                60,
                7 * 86400,
                "seconds, 60 to 604800",
            )?),
            backoff_base: Duration::from_secs(env.number(
                "BACKOFF_BASE_SECS",
                60u64,
                1,
                3600,
                "seconds, 1 to 3600",
            )?),
            backoff_max: Duration::from_secs(env.number(
                "BACKOFF_MAX_SECS",
                3600u64,
                1,
                86400,
                "seconds, 1 to 86400",
            )?),
            breaker_min_attempts: env.number(
                "BREAKER_MIN_ATTEMPTS",
                20u32,
                1,
                100_000,
                "a whole number, 1 to 100000",
            )?,
            breaker_ratio: f64::from(ratio_pct) / 100.0,
            reconnect_fallback: env.flag("RECONNECT_FALLBACK", false)?,
            reconcile_grace: Duration::from_secs(env.number(
                "RECONCILE_GRACE_SECS",
                3600u64,
                0,
                7 * 86400,
                "seconds, 0 to 604800",
            )?),
            reconcile_max_pages: env.number(
                "RECONCILE_MAX_PAGES",
                100u32,
                1,
                10_000,
                "a whole number of 100-location pages, 1 to 10000",
            )?,
            reconcile_page_pace: Duration::from_millis(env.number(
                "RECONCILE_PAGE_PACE_MS",
                150u64,
                0,
                10_000,
                "milliseconds, 0 to 10000",
            )?),
            reconcile_max_removals_percent: env.number(
                "RECONCILE_MAX_REMOVALS_PERCENT",
                10u32,
                0,
                100,
                "a whole percentage, 0 to 100",
            )?,
            common,
        })
    }
}

/// `token-mint`.
#[derive(Debug, Clone)]
pub struct MintConfig {
    pub common: CommonConfig,
    /// The marketplace app id for `/oauth/installedLocations`, when the app
    /// secret does not carry `app_id`.
    pub app_id: Option<String>,
}

impl MintConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            app_id: env.optional("GHL_APP_ID"),
        })
    }
}

/// HighLevel's published key for `x-ghl-signature` (SPKI, base64).
pub const HIGHLEVEL_WEBHOOK_KEY: &str =
    "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=";

/// `marketplace-webhook`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub common: CommonConfig,
    /// The raw Ed25519 key that signs `x-ghl-signature`.
    pub public_key: Vec<u8>,
    /// The legacy `x-wh-signature` key (PKCS#1 RSAPublicKey); None: that
    /// scheme is refused.
    pub rsa_public_key: Option<Vec<u8>>,
    /// How old an event's `timestamp` may be: HighLevel's whole retry
    /// schedule (12 retries with exponential backoff) resends the original.
    pub max_age: Duration,
    /// How far ahead of our clock an event's `timestamp` may be.
    pub max_skew: Duration,
    /// The marketplace app id events must carry, when the app secret does
    /// not hold `app_id`.
    pub app_id: Option<String>,
}

impl WebhookConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const KEY_FORM: &str = "an Ed25519 public key as SPKI DER in base64 (like HighLevel's published key) or a PEM block";
        const RSA_FORM: &str = "an RSA public key as SPKI DER in base64 or a PEM block";
        let key_text = env
            .optional("GHL_WEBHOOK_PUBLIC_KEY")
            .unwrap_or_else(|| HIGHLEVEL_WEBHOOK_KEY.to_owned());
        let public_key = crate::webhook::spki_der(&key_text)
            .and_then(|der| crate::webhook::ed25519_key(&der))
            .map_err(|reason| ConfigError::Invalid {
                var: "GHL_WEBHOOK_PUBLIC_KEY",
                expected: KEY_FORM,
                reason,
            })?;
        let rsa_public_key = env
            .optional("GHL_WEBHOOK_RSA_PUBLIC_KEY")
            .map(|text| {
                crate::webhook::spki_der(&text)
                    .and_then(|der| crate::webhook::rsa_key(&der))
                    .map_err(|reason| ConfigError::Invalid {
                        var: "GHL_WEBHOOK_RSA_PUBLIC_KEY",
                        expected: RSA_FORM,
                        reason,
                    })
            })
            .transpose()?;
        if env.optional("WEBHOOK_REPLAY_WINDOW_SECS").is_some() {
            // Its 5-minute default refused HighLevel's own retries; a deploy
            // still setting it would silently get the new default instead.
            return Err(ConfigError::Invalid {
                var: "WEBHOOK_REPLAY_WINDOW_SECS",
                expected: "unset: use WEBHOOK_MAX_AGE_SECS (how old a retried event may be) and WEBHOOK_MAX_SKEW_SECS",
                reason: "it is no longer read".into(),
            });
        }
        Ok(Self {
            max_age: Duration::from_secs(env.number(
                "WEBHOOK_MAX_AGE_SECS",
                172_800u64,
                3_600,
                2_592_000,
                "seconds, 3600 to 2592000 (1 hour to 30 days; HighLevel retries for about two days)",
            )?),
            max_skew: Duration::from_secs(env.number(
                "WEBHOOK_MAX_SKEW_SECS",
                300u64,
                0,
                3_600,
                "seconds, 0 to 3600",
            )?),
            app_id: env.optional("GHL_APP_ID"),
            public_key,
            rsa_public_key,
            common: CommonConfig::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> HashMap<String, String> {
        env(&[
            ("INSTALLS_TABLE", "installs"),
            ("GHL_APP_SECRET_ID", "ghl/app"),
            ("GHL_REDIRECT_URI", "https://example.com/cb"),
        ])
    }

    fn callback(vars: &HashMap<String, String>) -> Result<CallbackConfig, ConfigError> {
        CallbackConfig::from_env(&Env::new(|k| vars.get(k).cloned()))
    }

    #[test]
    fn webhook_ages_cover_highlevels_retries_and_the_old_window_is_refused() {
        let webhook = |vars: &HashMap<String, String>| {
            WebhookConfig::from_env(&Env::new(|k| vars.get(k).cloned()))
        };
        let c = webhook(&base()).unwrap();
        assert_eq!(c.max_age, Duration::from_secs(48 * 3600));
        assert_eq!(c.max_skew, Duration::from_secs(300));
        assert_eq!(c.app_id, None);
        let mut vars = base();
        vars.insert("WEBHOOK_MAX_AGE_SECS".into(), "60".into());
        let err = webhook(&vars).unwrap_err().to_string();
        assert!(
            err.contains("WEBHOOK_MAX_AGE_SECS") && err.contains("3600 to 2592000"),
            "{err}"
        );
        let mut vars = base();
        vars.insert("WEBHOOK_REPLAY_WINDOW_SECS".into(), "300".into());
        let err = webhook(&vars).unwrap_err().to_string();
        assert!(
            err.contains("WEBHOOK_REPLAY_WINDOW_SECS") && err.contains("WEBHOOK_MAX_AGE_SECS"),
            "{err}"
        );
        // No app id anywhere: the webhook refuses to start, naming it.
        let err = crate::webhook::app_id(&c).unwrap_err().to_string();
        assert!(
            err.contains("GHL_APP_ID") && err.contains("reads no app secret"),
            "{err}"
        );
        let mut vars = base();
        vars.insert("GHL_APP_ID".into(), "from-env".into());
        let c = webhook(&vars).unwrap();
        assert_eq!(crate::webhook::app_id(&c).unwrap(), "from-env");
    }

    #[test]
    fn defaults_apply() {
        let c = callback(&base()).unwrap();
        assert_eq!(c.common.ghl.base_url, DEFAULT_GHL_API_BASE_URL);
        assert_eq!(c.user_type, UserType::Company);
        assert_eq!(c.common.due.shards, 8);
        assert!(c.success_redirect_url.is_none());
        assert_eq!(c.handoff_ttl, Duration::from_secs(300));
    }

    #[test]
    fn missing_variable_is_named() {
        let mut vars = base();
        vars.remove("INSTALLS_TABLE");
        let err = callback(&vars).unwrap_err();
        assert!(
            err.to_string().contains("INSTALLS_TABLE is not set"),
            "{err}"
        );
        let mut vars = base();
        vars.insert("GHL_REDIRECT_URI".into(), "   ".into());
        assert!(matches!(
            callback(&vars).unwrap_err(),
            ConfigError::Missing {
                var: "GHL_REDIRECT_URI",
                ..
            }
        ));
    }

    #[test]
    fn malformed_values_are_named_with_the_expected_form() {
        for (var, value) in [
            ("GHL_USER_TYPE", "Agency"),
            ("GHL_REDIRECT_URI", "ftp://x"),
            ("GHL_REDIRECT_URI", "http://example.com/cb"),
            ("GHL_API_BASE_URL", "services.leadconnectorhq.com"),
            ("GHL_HTTP_TIMEOUT_MS", "ten"),
            ("GHL_HTTP_TIMEOUT_MS", "5"),
            ("DUE_SHARDS", "0"),
            ("INSTALLS_TABLE", "a b"),
            ("SUCCESS_REDIRECT_URL", "/relative"),
            ("SUCCESS_REDIRECT_TTL_SECS", "5"),
        ] {
            let mut vars = base();
            vars.insert(var.into(), value.into());
            let err = callback(&vars).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(var) && text.contains("expected"),
                "{var}: {text}"
            );
        }
    }

    #[test]
    fn lease_must_outlast_the_http_timeout() {
        let mut vars = base();
        vars.insert("LEASE_SECS".into(), "10".into());
        vars.insert("GHL_HTTP_TIMEOUT_MS".into(), "10000".into());
        let err = callback(&vars).unwrap_err();
        assert!(err.to_string().contains("LEASE_SECS"), "{err}");
    }

    #[test]
    fn window_timeouts_and_lease_are_checked_against_each_other() {
        let c = callback(&base()).unwrap();
        assert_eq!(c.common.represent_window, Duration::from_secs(25));
        assert!(c.common.lease > c.common.whole_refresh(), "defaults fit");
        let mut vars = base();
        vars.insert("GHL_REPRESENT_WINDOW_MS".into(), "29000".into());
        vars.insert("LEASE_SECS".into(), "45".into());
        let err = callback(&vars).unwrap_err().to_string();
        assert!(
            err.contains("LEASE_SECS") && err.contains("GHL_REPRESENT_WINDOW_MS"),
            "{err}"
        );
        vars.insert("GHL_REPRESENT_WINDOW_MS".into(), "31000".into());
        let err = callback(&vars).unwrap_err().to_string();
        assert!(err.contains("GHL_REPRESENT_WINDOW_MS"), "{err}");
        let mut vars = base();
        vars.insert("AWS_ATTEMPT_TIMEOUT_MS".into(), "3000".into());
        vars.insert("AWS_OPERATION_TIMEOUT_MS".into(), "1000".into());
        let err = callback(&vars).unwrap_err().to_string();
        assert!(err.contains("AWS_OPERATION_TIMEOUT_MS"), "{err}");
    }

    /// The deployed functions set none of the timing variables, so the
    /// defaults must fit the Lambda timeouts: a refresh starts only with its
    /// whole window and writes before the deadline, so a timeout shorter
    /// than that would refuse every refresh.
    #[test]
    fn the_deployed_timeouts_leave_room_for_a_whole_refresh() {
        let template = include_str!("../../infra/template.yaml");
        let timeout_of = |function: &str| -> Duration {
            let at = template
                .find(&format!("\n  {function}:\n"))
                .unwrap_or_else(|| panic!("{function} is not in the template"));
            let line = template[at..]
                .lines()
                .find(|l| l.trim_start().starts_with("Timeout:"))
                .unwrap_or_else(|| panic!("{function} has no Timeout"));
            Duration::from_secs(
                line.trim_start()["Timeout:".len()..]
                    .trim()
                    .parse()
                    .unwrap(),
            )
        };
        let vars = base();
        let sweep = SweepConfig::from_env(&Env::new(|k| vars.get(k).cloned())).unwrap();
        let whole = sweep.common.whole_refresh();
        assert_eq!(whole, Duration::from_secs(48));
        // token-mint keeps 500 ms for its answer.
        let mint = timeout_of("TokenMintFunction");
        assert!(whole + Duration::from_millis(500) < mint, "{mint:?}");
        assert!(mint < sweep.common.lease, "a mint outlives its lease");
        let sweep_timeout = timeout_of("RefreshSweepFunction");
        assert!(whole + sweep.deadline_reserve < sweep_timeout);
    }

    #[test]
    fn app_name_and_highlevel_link() {
        let c = callback(&base()).unwrap();
        assert_eq!(c.app_name, DEFAULT_APP_NAME);
        assert_eq!(c.ghl_app_url.as_str(), DEFAULT_GHL_APP_URL);
        let mut vars = base();
        vars.insert("APP_NAME".into(), "  Acme Sync & Co. (EU)  ".into());
        vars.insert("GHL_APP_URL".into(), "https://crm.example.com/v2/".into());
        let c = callback(&vars).unwrap();
        assert_eq!(c.app_name, "Acme Sync & Co. (EU)");
        assert_eq!(c.ghl_app_url.as_str(), "https://crm.example.com/v2/");
        vars.insert("APP_NAME".into(), "   ".into());
        assert_eq!(callback(&vars).unwrap().app_name, DEFAULT_APP_NAME);
        vars.insert("APP_NAME".into(), "é".repeat(80));
        assert!(callback(&vars).is_ok(), "80 characters (not bytes) fit");
        for (var, value) in [
            ("APP_NAME", "x".repeat(81)),
            ("APP_NAME", "Acme\nSync".into()),
            ("APP_NAME", "Acme\u{202E}cnyS".into()),
            ("APP_NAME", "Acme\u{7}".into()),
            ("GHL_APP_URL", "http://app.gohighlevel.com/".into()),
            ("GHL_APP_URL", "http://127.0.0.1:8700/".into()),
            ("GHL_APP_URL", "javascript:alert(1)".into()),
            ("GHL_APP_URL", "app.gohighlevel.com".into()),
            ("GHL_APP_URL", "https://user:pw@app.gohighlevel.com/".into()),
        ] {
            let mut vars = base();
            vars.insert(var.into(), value.clone());
            let err = callback(&vars).unwrap_err().to_string();
            assert!(
                err.contains(var) && err.contains("expected"),
                "{var}={value:?}: {err}"
            );
        }
    }

    #[test]
    fn success_redirect_url_is_parsed_at_cold_start() {
        let mut vars = base();
        vars.insert(
            "SUCCESS_REDIRECT_URL".into(),
            "https://x.example/done#/welcome".into(),
        );
        let c = callback(&vars).unwrap();
        assert_eq!(
            c.success_redirect_url.map(|u| u.to_string()).as_deref(),
            Some("https://x.example/done#/welcome")
        );
        vars.insert(
            "SUCCESS_REDIRECT_URL".into(),
            "https://exa mple.com/".into(),
        );
        let err = callback(&vars).unwrap_err().to_string();
        assert!(err.contains("SUCCESS_REDIRECT_URL"), "{err}");
    }

    #[test]
    fn local_http_is_allowed() {
        let mut vars = base();
        vars.insert("GHL_API_BASE_URL".into(), "http://127.0.0.1:8700/".into());
        let c = callback(&vars).unwrap();
        assert_eq!(c.common.ghl.base_url, "http://127.0.0.1:8700");
    }

    #[test]
    fn sweep_settings_parse() {
        let mut vars = base();
        vars.insert("BREAKER_PERCENT".into(), "40".into());
        vars.insert("RECONNECT_FALLBACK".into(), "true".into());
        let s = SweepConfig::from_env(&Env::new(|k| vars.get(k).cloned())).unwrap();
        assert!((s.breaker_ratio - 0.4).abs() < 1e-9);
        assert!(s.reconnect_fallback);
        vars.insert("RECONNECT_FALLBACK".into(), "maybe".into());
        let err = SweepConfig::from_env(&Env::new(|k| vars.get(k).cloned())).unwrap_err();
        assert!(err.to_string().contains("RECONNECT_FALLBACK"));
    }

    #[test]
    fn reconcile_removal_cap_is_a_percentage() {
        let mut vars = base();
        let sweep = |vars: &HashMap<String, String>| {
            SweepConfig::from_env(&Env::new(|k| vars.get(k).cloned()))
        };
        assert_eq!(sweep(&vars).unwrap().reconcile_max_removals_percent, 10);
        vars.insert("RECONCILE_MAX_REMOVALS_PERCENT".into(), "0".into());
        assert_eq!(sweep(&vars).unwrap().reconcile_max_removals_percent, 0);
        for bad in ["101", "-1", "ten", "2.5"] {
            vars.insert("RECONCILE_MAX_REMOVALS_PERCENT".into(), bad.into());
            let err = sweep(&vars).unwrap_err().to_string();
            assert!(
                err.contains("RECONCILE_MAX_REMOVALS_PERCENT")
                    && err.contains("percentage, 0 to 100"),
                "{err}"
            );
        }
    }
}
