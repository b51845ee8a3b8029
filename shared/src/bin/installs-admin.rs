//! The operator's tool for the installs table and app secret. The commands
//! live in `shared::admin` (one module each); this file parses nothing
//! itself (`shared::admin::cli`), loads what a command needs, and prints the
//! answer: a table for people, JSON with `--json`. `installs-admin help`
//! lists the commands.
//!
//! Exit status: 0 done; 1 failed, or the outcome was not the one asked for
//! (a refresh that did not refresh); 2 bad arguments or environment.

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use rand::RngCore;
use shared::admin::cli::{Command, USAGE, parse};
use shared::admin::{AdminError, Report};
use shared::config::{CommonConfig, Env};
use shared::refresh::RefreshPolicy;
use shared::services::Services;
use std::process::ExitCode;

/// `println!` that never panics: a reader that went away (`| head`) only
/// cuts the output short.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match parse(&args) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let json = invocation.json;
    let result = match invocation.command {
        Command::Help => {
            say!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Bootstrap => bootstrap().await,
        Command::List => list().await,
        Command::Rekey => rekey().await,
        other => operate(other, json).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &AdminError) -> ExitCode {
    eprintln!("installs-admin: {e}");
    if matches!(e, AdminError::Usage(_)) {
        eprintln!("(`installs-admin help` lists the commands and their arguments)");
    }
    ExitCode::from(e.exit_code())
}

/// Prints an answer; exit status 1 when it is not the outcome asked for.
fn emit<R: Report>(report: &R, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => say!("{s}"),
            Err(e) => {
                eprintln!("installs-admin: the answer could not be written as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        say!("{}", report.human().trim_end_matches('\n'));
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn services() -> Result<(CommonConfig, Services), AdminError> {
    let cfg = CommonConfig::from_env(&Env::process())?;
    let svc = Services::load_admin(&cfg).await?;
    Ok((cfg, svc))
}

/// The owner name of the leases this process takes (a nonce is added per taking).
fn lease_owner() -> String {
    format!("installs-admin-{}", std::process::id())
}

async fn operate(command: Command, json: bool) -> Result<ExitCode, AdminError> {
    use shared::admin::{broken, link, refresh, show, status, uninstall};
    if let Command::Link(opts) = &command {
        let env = Env::process();
        // Checked before the secret is fetched.
        let plan = link::plan(&env, opts)?;
        if let Some(id) = plan.needs_stored_scope().cloned() {
            // Relinking an install: ask for the scopes it has.
            let (_, svc) = services().await?;
            let install = show::read(&svc.store, &id).await?;
            let plan = plan.with_stored_scope(install.info.scope.as_deref())?;
            return Ok(emit(&plan.link(&svc.app.client_id), json));
        }
        let secret_id = env.required(
            "GHL_APP_SECRET_ID",
            "the Secrets Manager name or ARN of the app secret",
        )?;
        let sdk = shared::aws::sdk_config().await;
        let app = shared::app_secret::AppSecret::load(
            &aws_sdk_secretsmanager::Client::new(&sdk),
            &secret_id,
            // A link needs the client id alone: no old data key is decoded.
            shared::app_secret::DataKeys::CurrentOnly,
        )
        .await
        .map_err(|e| AdminError::Failed(e.to_string()))?;
        return Ok(emit(&plan.link(&app.client_id), json));
    }
    let (cfg, svc) = services().await?;
    let policy = RefreshPolicy::new(&cfg);
    let owner = lease_owner();
    Ok(match command {
        Command::Status => emit(&status::status(&svc.store).await?, json),
        Command::Broken { state, limit } => {
            emit(&broken::broken(&svc.store, state, limit).await?, json)
        }
        Command::IndexBroken => emit(&broken::index_broken(&svc.store).await?, json),
        Command::Show(id) => emit(&show::show(&svc.store, &id).await?, json),
        Command::Refresh(id) => emit(&refresh::refresh(&svc, &policy, &id, &owner).await?, json),
        Command::Probe(id) => emit(&refresh::probe(&svc, &policy, &id, &owner).await?, json),
        Command::Uninstall { id, reason } => {
            let app_id = Env::process().optional("GHL_APP_ID");
            emit(
                &uninstall::uninstall(&svc, &policy, &id, &reason, app_id.as_deref(), &owner)
                    .await?,
                json,
            )
        }
        Command::Help | Command::Bootstrap | Command::List | Command::Rekey | Command::Link(_) => {
            unreachable!("handled before")
        }
    })
}

/// A missing variable is a usage error (exit 2).
fn env_required(var: &'static str, expected: &'static str) -> Result<String, AdminError> {
    Ok(Env::process().required(var, expected)?)
}

/// Anything else that stops a maintenance command is a failure (exit 1).
fn failed(e: impl std::fmt::Display) -> AdminError {
    AdminError::Failed(e.to_string())
}

async fn bootstrap() -> Result<ExitCode, AdminError> {
    let table = env_required("INSTALLS_TABLE", "the table name to create")?;
    let secret_id = env_required("GHL_APP_SECRET_ID", "the secret name to create")?;
    let sdk = shared::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    match ddb.describe_table().table_name(&table).send().await {
        Ok(_) => say!("table {table}: exists"),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            shared::schema::create_table(&ddb, &table)
                .await
                .map_err(failed)?;
            let indexes: Vec<String> = shared::schema::INDEXES
                .iter()
                .map(|i| format!("{} on {}/{}", i.name, i.hash, i.range))
                .collect();
            say!(
                "table {table}: created (pk/sk, {}, TTL on {})",
                indexes.join(", "),
                shared::schema::TTL
            );
        }
        Err(e) => {
            return Err(failed(format!(
                "describe table {table}: {}",
                shared::aws::error_text(&e)
            )));
        }
    }
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    match sm.describe_secret().secret_id(&secret_id).send().await {
        Ok(_) => {
            say!("secret {secret_id}: exists (left as it is)");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) => {}
        Err(e) => {
            return Err(failed(format!(
                "describe secret {secret_id}: {}",
                shared::aws::error_text(&e)
            )));
        }
    }
    let client_id = env_required("GHL_CLIENT_ID", "the HighLevel app's client id")?;
    let client_secret = env_required("GHL_CLIENT_SECRET", "the HighLevel app's client secret")?;
    let app_id = std::env::var("GHL_APP_ID").ok().filter(|s| !s.is_empty());
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    // A separate key signs the SUCCESS_REDIRECT_URL hand-off: the owner's
    // site holds it to verify, and must never hold a data key.
    let mut handoff_key = [0u8; 32];
    rand::rng().fill_bytes(&mut handoff_key);
    let value = serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "app_id": app_id,
        "data_keys": {"k1": base64::engine::general_purpose::STANDARD.encode(key)},
        "current_data_key": "k1",
        "handoff_keys": {"h1": base64::engine::general_purpose::STANDARD.encode(handoff_key)},
        "current_handoff_key": "h1",
    });
    sm.create_secret()
        .name(&secret_id)
        .secret_string(value.to_string())
        .send()
        .await
        .map_err(|e| {
            failed(format!(
                "create secret {secret_id}: {}",
                shared::aws::error_text(&e)
            ))
        })?;
    say!("secret {secret_id}: created with a fresh data key k1 and hand-off key h1");
    Ok(ExitCode::SUCCESS)
}

/// Ciphertext is abbreviated: the point is to show it is ciphertext.
fn render(v: &AttributeValue) -> serde_json::Value {
    match v {
        AttributeValue::S(s) if shared::crypto::Keyring::key_id_of(s).is_some() && s.len() > 24 => {
            format!("{}… (encrypted)", &s[..20]).into()
        }
        AttributeValue::S(s) => s.clone().into(),
        AttributeValue::N(n) => n
            .parse::<i64>()
            .map(Into::into)
            .unwrap_or_else(|_| n.clone().into()),
        AttributeValue::Bool(b) => (*b).into(),
        AttributeValue::L(l) => l.iter().map(render).collect::<Vec<_>>().into(),
        other => format!("{other:?}").into(),
    }
}

async fn list() -> Result<ExitCode, AdminError> {
    let table = env_required("INSTALLS_TABLE", "the table name")?;
    let sdk = shared::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(&table)
            .filter_expression("sk = :g")
            .expression_attribute_values(":g", AttributeValue::S(shared::store::GRANT_SK.into()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| failed(format!("scan {table}: {}", shared::aws::error_text(&e))))?;
        for item in out.items() {
            let mut obj: Vec<_> = item.iter().collect();
            obj.sort_by(|a, b| a.0.cmp(b.0));
            let map: serde_json::Map<_, _> = obj
                .into_iter()
                .map(|(k, v)| (k.clone(), render(v)))
                .collect();
            say!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status 2 when some installs were left under an old key (busy the
/// whole time): run it again.
async fn rekey() -> Result<ExitCode, AdminError> {
    let (cfg, svc) = services().await?;
    let owner = format!("installs-admin-rekey-{}", std::process::id());
    eprintln!(
        "re-sealing every install in {} under data key {}",
        cfg.installs_table,
        svc.store.keyring().current_key_id()
    );
    let summary = shared::rekey::Rekeyer {
        store: &svc.store,
        owner: &owner,
        lease: std::time::Duration::from_secs(10),
        attempts: 10,
        max_wait: std::time::Duration::from_secs(5),
    }
    .run(|s| {
        eprintln!(
            "  examined {} resealed {} already current {} left {}",
            s.examined,
            s.resealed,
            s.already_current,
            s.left.len()
        )
    })
    .await
    .map_err(failed)?;
    say!("{}", serde_json::to_string(&summary).unwrap_or_default());
    if summary.complete() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "installs-admin: {} installs still under an old key; run rekey again",
            summary.left.len()
        );
        Ok(ExitCode::from(2))
    }
}
