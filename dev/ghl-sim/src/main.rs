//! `ghl-sim`: the HighLevel simulator as a standalone server for the local stack.
//!
//!   ghl-sim [--listen 127.0.0.1:8700] [--client-id X] [--client-secret Y] [--app-id Z] [--access-ttl-secs N]

use ghl_sim::{Sim, SimConfig};
use std::net::SocketAddr;

fn arg(args: &[String], flag: &str, env: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen =
        arg(&args, "--listen", "GHL_SIM_LISTEN").unwrap_or_else(|| "127.0.0.1:8700".into());
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("ghl-sim: --listen expects host:port, got {listen:?}");
            std::process::exit(2);
        }
    };
    let mut cfg = SimConfig::default();
    if let Some(v) = arg(&args, "--client-id", "GHL_SIM_CLIENT_ID") {
        cfg.client_id = v;
    }
    if let Some(v) = arg(&args, "--client-secret", "GHL_SIM_CLIENT_SECRET") {
        cfg.client_secret = v;
    }
    if let Some(v) = arg(&args, "--app-id", "GHL_SIM_APP_ID") {
        cfg.app_id = v;
    }
    if let Some(v) = arg(&args, "--access-ttl-secs", "GHL_SIM_ACCESS_TTL_SECS") {
        match v.parse() {
            Ok(n) => cfg.access_token_ttl_secs = n,
            Err(_) => {
                eprintln!("ghl-sim: --access-ttl-secs expects seconds, got {v:?}");
                std::process::exit(2);
            }
        }
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
