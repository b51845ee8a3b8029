//! Operator and developer commands for the installs table and app secret.
//!
//!   installs-admin bootstrap   create the table and the app secret where AWS_ENDPOINT_URL (or the account) points
//!   installs-admin list        print every install as stored: readable metadata, tokens shown only as ciphertext
//!   installs-admin rekey       re-seal every install's tokens under the app secret's current data key
//!
//! Table and secret come from INSTALLS_TABLE and GHL_APP_SECRET_ID; the
//! bootstrap secret's client id/secret from GHL_CLIENT_ID, GHL_CLIENT_SECRET
//! and GHL_APP_ID.

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use rand::RngCore;
use shared::config::Env;
use std::process::ExitCode;

const USAGE: &str = "usage: installs-admin <bootstrap|list|rekey>\n\
  bootstrap  create the installs table (with its due index and TTL) and the app secret, if missing\n\
  list       print every install item, ciphertext abbreviated\n\
  rekey      re-seal every install under the current data key (safe while the functions run; resumable)\n\
environment: INSTALLS_TABLE, GHL_APP_SECRET_ID, and for bootstrap GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_APP_ID";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bootstrap") => bootstrap().await,
        Some("list") => list().await,
        Some("rekey") => rekey().await,
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("installs-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_required(var: &'static str, expected: &'static str) -> Result<String, String> {
    Env::process()
        .required(var, expected)
        .map_err(|e| e.to_string())
}

async fn bootstrap() -> Result<(), String> {
    let table = env_required("INSTALLS_TABLE", "the table name to create")?;
    let secret_id = env_required("GHL_APP_SECRET_ID", "the secret name to create")?;
    let sdk = shared::aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    match ddb.describe_table().table_name(&table).send().await {
        Ok(_) => println!("table {table}: exists"),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            shared::schema::create_table(&ddb, &table).await?;
            println!(
                "table {table}: created (pk/sk, {} on {}/{}, TTL on {})",
                shared::schema::DUE_INDEX,
                shared::schema::DUE_SHARD,
                shared::schema::DUE_AT,
                shared::schema::TTL
            );
        }
        Err(e) => {
            return Err(format!(
                "describe table {table}: {}",
                shared::aws::error_text(&e)
            ));
        }
    }
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    match sm.describe_secret().secret_id(&secret_id).send().await {
        Ok(_) => {
            println!("secret {secret_id}: exists (left as it is)");
            return Ok(());
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) => {}
        Err(e) => {
            return Err(format!(
                "describe secret {secret_id}: {}",
                shared::aws::error_text(&e)
            ));
        }
    }
    let client_id = env_required("GHL_CLIENT_ID", "the HighLevel app's client id")?;
    let client_secret = env_required("GHL_CLIENT_SECRET", "the HighLevel app's client secret")?;
    let app_id = std::env::var("GHL_APP_ID").ok().filter(|s| !s.is_empty());
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let value = serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "app_id": app_id,
        "data_keys": {"k1": base64::engine::general_purpose::STANDARD.encode(key)},
        "current_data_key": "k1",
    });
    sm.create_secret()
        .name(&secret_id)
        .secret_string(value.to_string())
        .send()
        .await
        .map_err(|e| format!("create secret {secret_id}: {}", shared::aws::error_text(&e)))?;
    println!("secret {secret_id}: created with a fresh data key k1");
    Ok(())
}

/// Ciphertext is abbreviated: the point is to show it is ciphertext.
fn render(v: &AttributeValue) -> serde_json::Value {
    match v {
        AttributeValue::S(s) if s.starts_with("v1:") && s.len() > 24 => {
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

async fn list() -> Result<(), String> {
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
            .map_err(|e| format!("scan {table}: {}", shared::aws::error_text(&e)))?;
        for item in out.items() {
            let mut obj: Vec<_> = item.iter().collect();
            obj.sort_by(|a, b| a.0.cmp(b.0));
            let map: serde_json::Map<_, _> = obj
                .into_iter()
                .map(|(k, v)| (k.clone(), render(v)))
                .collect();
            println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    Ok(())
}

/// Exit status 2 when some installs were left under an old key (busy the
/// whole time): run it again.
async fn rekey() -> Result<(), String> {
    let cfg = shared::config::CommonConfig::from_env(&Env::process()).map_err(|e| e.to_string())?;
    let svc = shared::services::Services::load_admin(&cfg)
        .await
        .map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    if summary.complete() {
        Ok(())
    } else {
        eprintln!(
            "installs-admin: {} installs still under an old key; run rekey again",
            summary.left.len()
        );
        std::process::exit(2)
    }
}
