//! `ghl-sim`: the HighLevel simulator as a standalone server for the local stack.
//!
//!   ghl-sim [--listen 127.0.0.1:8700] [--client-id X] [--client-secret Y] [--app-id Z]
//!           [--access-ttl-secs N] [--refresh-grace-secs N]
//!
//! `ghl-sim --help` prints every flag and its environment variable.

use ghl_sim::{Sim, SimConfig};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Flags that take a value: (flag, environment variable, description).
const FLAGS: &[(&str, &str, &str)] = &[
    (
        "--listen",
        "GHL_SIM_LISTEN",
        "host:port to listen on (default 127.0.0.1:8700)",
    ),
    (
        "--client-id",
        "GHL_SIM_CLIENT_ID",
        "the app's client_id (default sim-client-id)",
    ),
    (
        "--client-secret",
        "GHL_SIM_CLIENT_SECRET",
        "the app's client_secret (default sim-client-secret)",
    ),
    (
        "--app-id",
        "GHL_SIM_APP_ID",
        "the Marketplace app id (default sim-app-id)",
    ),
    (
        "--access-ttl-secs",
        "GHL_SIM_ACCESS_TTL_SECS",
        "access token lifetime in seconds (default 86399)",
    ),
    (
        "--refresh-grace-secs",
        "GHL_SIM_REFRESH_GRACE_SECS",
        "window in which a rotated refresh token replays its answer (default 0: strict single use)",
    ),
];

fn usage() -> String {
    let mut s = String::from(
        "ghl-sim: a HighLevel OAuth simulator (single-use refresh tokens, fault injection, a ledger)\n\n\
         Usage: ghl-sim [FLAGS]\n\nFlags (each also read from its environment variable; the flag wins):\n",
    );
    for (flag, env, help) in FLAGS {
        s.push_str(&format!("  {flag} <value>\n      {help} [env {env}]\n"));
    }
    s.push_str("  -h, --help\n      print this help and exit\n");
    s.push_str(
        "\nWebhook control routes (signed Marketplace webhooks are queued, never POSTed):\n\
         \x20 GET  /_sim/webhooks       drain the queued deliveries: [{body, signature, rsaSignature, kind, webhookId}]\n\
         \x20 GET  /_sim/webhook-key    {publicKey (Ed25519 SPKI base64), publicKeyPem, rsaPublicKey (SPKI base64)}\n\
         \x20 POST /_sim/uninstall      {userType, id}: revoke and queue UNINSTALL\n\
         \x20 POST /_sim/bulk-install   {companyId, count}: add locations, queue one INSTALL each -> {locationIds}\n\
         \x20 POST /_sim/plan-change    {userType, id, planId}: queue PLAN_CHANGE\n\
         A consent at /v2/oauth/chooselocation queues an INSTALL at once; the developer's\n\
         DELETE /marketplace/app/{appId}/installations (bearer token, {companyId|locationId, reason})\n\
         revokes like /_sim/uninstall and queues the UNINSTALL too.\n",
    );
    s
}

fn bad_usage(msg: &str) -> ! {
    eprintln!("ghl-sim: {msg}\n\n{}", usage());
    std::process::exit(2);
}

/// Parses `--flag value` and `--flag=value`; exits on `--help` and on anything unknown.
fn parse(args: &[String]) -> HashMap<&'static str, String> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            print!("{}", usage());
            std::process::exit(0);
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let Some((flag, _, _)) = FLAGS.iter().find(|(f, _, _)| *f == name) else {
            bad_usage(&format!("unknown argument {a:?}"));
        };
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) => v.clone(),
                None => bad_usage(&format!("{flag} expects a value")),
            },
        };
        out.insert(*flag, value);
    }
    out
}

fn value(flags: &HashMap<&'static str, String>, flag: &str) -> Option<String> {
    let env = FLAGS
        .iter()
        .find(|(f, _, _)| *f == flag)
        .map(|(_, e, _)| *e);
    flags
        .get(flag)
        .cloned()
        .or_else(|| env.and_then(|e| std::env::var(e).ok()))
}

fn seconds(flags: &HashMap<&'static str, String>, flag: &str) -> Option<u64> {
    let v = value(flags, flag)?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("ghl-sim: {flag} expects seconds, got {v:?}");
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = parse(&args);
    let listen = value(&flags, "--listen").unwrap_or_else(|| "127.0.0.1:8700".into());
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("ghl-sim: --listen expects host:port, got {listen:?}");
            std::process::exit(2);
        }
    };
    let mut cfg = SimConfig::default();
    if let Some(v) = value(&flags, "--client-id") {
        cfg.client_id = v;
    }
    if let Some(v) = value(&flags, "--client-secret") {
        cfg.client_secret = v;
    }
    if let Some(v) = value(&flags, "--app-id") {
        cfg.app_id = v;
    }
    if let Some(n) = seconds(&flags, "--access-ttl-secs") {
        cfg.access_token_ttl_secs = n;
    }
    if let Some(n) = seconds(&flags, "--refresh-grace-secs") {
        cfg.refresh_grace_secs = n;
    }
    let sim = match Sim::start_on(cfg, addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ghl-sim: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({"event": "listening", "baseUrl": sim.base_url()})
    );
    let _ = tokio::signal::ctrl_c().await;
    sim.shutdown();
}
