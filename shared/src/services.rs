//! Clients built once per execution environment, at cold start.

use crate::app_secret::{AppSecret, DataKeys, SecretError};
use crate::config::CommonConfig;
use crate::ghl::{GhlClient, GhlError};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("no IAM policy is listed for function {0} in shared::iam")]
    UnknownFunction(&'static str),
    #[error("HighLevel client: {0}")]
    Ghl(#[from] GhlError),
}

/// Everything a handler needs: the store, the HighLevel client and the app
/// secret. Cheap to clone (clients are reference counted).
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub ghl: GhlClient,
    pub app: AppSecret,
    /// State-change events to EventBridge.
    pub events: crate::events::Events,
}

impl Services {
    /// `function` is the binary name: the store is limited to what its IAM
    /// policy in `shared::iam` grants.
    pub async fn load(function: &'static str, common: &CommonConfig) -> Result<Self, InitError> {
        Self::load_with(function, common, DataKeys::All).await
    }

    /// The same, keeping only the data keys `scope` names.
    pub async fn load_with(
        function: &'static str,
        common: &CommonConfig,
        scope: DataKeys,
    ) -> Result<Self, InitError> {
        let policy = crate::iam::policy(function).ok_or(InitError::UnknownFunction(function))?;
        let mut svc = Self::load_scoped(common, scope).await?;
        svc.store = svc.store.restricted_to(policy);
        Ok(svc)
    }

    /// For marketplace-webhook: no app secret is read (its role may not read
    /// it), so the process never holds the client secret or a data key. Its
    /// store can read and erase items but not open or seal a token
    /// ([`crate::crypto::Keyring::none`]); `app_id` comes from `GHL_APP_ID`.
    /// The HighLevel client is built but holds no credentials, and the
    /// webhook never calls HighLevel.
    pub async fn load_without_secret(
        function: &'static str,
        common: &CommonConfig,
        app_id: String,
    ) -> Result<Self, InitError> {
        let policy = crate::iam::policy(function).ok_or(InitError::UnknownFunction(function))?;
        let ghl_cfg = common.ghl.clone();
        let ghl = tokio::task::spawn_blocking(move || GhlClient::new(&ghl_cfg));
        let sdk = crate::aws::sdk_config_with(&common.aws).await;
        let ghl = ghl.await.map_err(|e| {
            GhlError::Unreachable(format!("HTTP client set-up did not finish: {e}"))
        })??;
        let keyring = crate::crypto::Keyring::none();
        let store = Store::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &common.installs_table,
            keyring.clone(),
            common.due.clone(),
        )
        .restricted_to(policy);
        let events = crate::events::Events::new(
            aws_sdk_eventbridge::Client::new(&sdk),
            common.event_bus.clone(),
        );
        let app = AppSecret {
            client_id: String::new(),
            client_secret: crate::redact::SecretString::new(""),
            app_id: Some(app_id),
            keyring,
            mint_callers: None,
            handoff: None,
        };
        Ok(Self {
            store,
            ghl,
            app,
            events,
        })
    }

    /// The same, unrestricted: for the operator's admin tool, which runs
    /// with the operator's own credentials.
    pub async fn load_admin(common: &CommonConfig) -> Result<Self, InitError> {
        Self::load_scoped(common, DataKeys::All).await
    }

    async fn load_scoped(common: &CommonConfig, scope: DataKeys) -> Result<Self, InitError> {
        // The HighLevel client loads the system's trust roots when built: a
        // few milliseconds of CPU, spent on another thread while the secret
        // is on its way rather than after it.
        let ghl_cfg = common.ghl.clone();
        let ghl = tokio::task::spawn_blocking(move || GhlClient::new(&ghl_cfg));
        let sdk = crate::aws::sdk_config_with(&common.aws).await;
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let app = AppSecret::load(&secrets, &common.app_secret_id, scope).await?;
        let ghl = ghl.await.map_err(|e| {
            GhlError::Unreachable(format!("HTTP client set-up did not finish: {e}"))
        })??;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let store = Store::new(
            ddb,
            &common.installs_table,
            app.keyring.clone(),
            common.due.clone(),
        );
        let events = crate::events::Events::new(
            aws_sdk_eventbridge::Client::new(&sdk),
            common.event_bus.clone(),
        );
        Ok(Self {
            store,
            ghl,
            app,
            events,
        })
    }
}
