//! The simulator's own rules, over real sockets: everything else trusts
//! them, so they are tested directly.

use ghl_sim::{Fault, SeedGrant, Sim, SimConfig, UserType};
use serde_json::Value;

async fn send(sim: &Sim, cfg: &SimConfig, token: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&[
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("user_type", "Company"),
        ])
        .send()
        .await
}

async fn refresh(sim: &Sim, cfg: &SimConfig, token: &str) -> (u16, Value) {
    let r = send(sim, cfg, token).await.expect("simulator answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn seed(sim: &Sim) -> String {
    sim.seed_grant(SeedGrant {
        user_type: UserType::Company,
        company_id: "co-rules".into(),
        location_id: None,
        access_token_ttl_secs: None,
    })["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_refresh_token_works_once_and_a_second_presentation_is_recorded() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200, "{body}");
    let second = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second, "rotated");
    assert_eq!(body["expires_in"], 86_399);
    assert_eq!(body["userType"], "Company");
    let ledger = sim.ledger();
    assert!(!ledger.is_live(&first) && ledger.is_live(&second));
    assert_eq!(ledger.presented_twice(), 0);

    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Invalid grant: refresh token is invalid");
    assert_eq!(sim.ledger().presented_twice(), 1, "the reuse is on record");
    assert!(
        sim.ledger().is_live(&second),
        "HighLevel keeps the newer token"
    );
}

#[tokio::test]
async fn wrong_client_credentials_are_refused_without_consuming_the_token() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let token = seed(&sim);
    let wrong = SimConfig {
        client_secret: "not-the-secret".into(),
        ..cfg.clone()
    };
    let (status, body) = refresh(&sim, &wrong, &token).await;
    assert_eq!(status, 401, "{body}");
    assert!(sim.ledger().is_live(&token));
    assert_eq!(refresh(&sim, &cfg, &token).await.0, 200);
    assert_eq!(sim.ledger().presented_twice(), 0);
}

#[tokio::test]
async fn a_dropped_response_still_rotates_the_token() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let token = seed(&sim);
    sim.push_fault(Fault::Drop);
    let sent = send(&sim, &cfg, &token).await;
    let answered = match sent {
        Ok(r) => r.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "the connection is cut before an answer");
    assert!(!sim.ledger().is_live(&token), "HighLevel rotated it anyway");
    assert_eq!(refresh(&sim, &cfg, &token).await.0, 400);
}

#[tokio::test]
async fn rate_limit_and_server_faults_do_not_consume_the_token() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let token = seed(&sim);
    sim.push_fault(Fault::RateLimited);
    sim.push_fault(Fault::ServerError { status: 502 });
    let r = send(&sim, &cfg, &token).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    for h in ["x-ratelimit-remaining", "x-ratelimit-interval-milliseconds"] {
        assert!(r.headers().contains_key(h), "429 carries {h}");
    }
    let (status, _) = refresh(&sim, &cfg, &token).await;
    assert_eq!(status, 502);
    assert!(sim.ledger().is_live(&token));
    assert_eq!(refresh(&sim, &cfg, &token).await.0, 200);
    assert_eq!(sim.ledger().presented_twice(), 0);
}
