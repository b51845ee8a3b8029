//! The simulator's own rules, over real sockets: everything else trusts
//! them, so they are tested directly.

use ghl_sim::{Fault, Faults, SeedGrant, Sim, SimConfig, UserType};
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

fn grace(secs: u64) -> SimConfig {
    SimConfig {
        refresh_grace_secs: secs,
        ..SimConfig::default()
    }
}

fn seed_location(sim: &Sim, company: &str, location: &str) -> String {
    sim.seed_grant(SeedGrant {
        user_type: UserType::Location,
        company_id: company.into(),
        location_id: Some(location.into()),
        access_token_ttl_secs: None,
    })["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The raw answer: status, content type, body bytes.
async fn raw(sim: &Sim, cfg: &SimConfig, token: &str) -> (u16, String, Vec<u8>) {
    let r = send(sim, cfg, token).await.expect("simulator answers");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ct, r.bytes().await.expect("a full body").to_vec())
}

/// The first token is dead, its successor live and never presented.
fn assert_rotated_unseen(sim: &Sim, first: &str) -> String {
    let ledger = sim.ledger();
    assert!(!ledger.is_live(first), "the presented token was rotated");
    let entry = ledger
        .tokens
        .iter()
        .find(|t| t.refresh_token == first)
        .unwrap();
    let successor = entry.successor.clone().expect("a successor was issued");
    assert!(entry.rotated_at_ms.is_some());
    let chain = ledger.chain_of(first).unwrap();
    assert_eq!(chain.newest_refresh_token, successor);
    assert!(chain.newest_live);
    assert_eq!(chain.newest_presented, 0, "nobody has seen the successor");
    assert_eq!(chain.issued, 2);
    successor
}

#[tokio::test]
async fn strict_mode_refuses_a_second_presentation() {
    let cfg = grace(0);
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 200);
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Invalid grant: refresh token is invalid");
    let c = sim.counters();
    assert_eq!(c.grace_replays, 0);
    assert_eq!(c.refresh_rejections, 1);
    assert_eq!(
        c.stale_presentations, 0,
        "the successor was never presented"
    );
}

#[tokio::test]
async fn within_the_grace_window_a_rotated_token_replays_the_same_answer() {
    let cfg = grace(30);
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    let (status, rotated) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200);
    let issued = sim.ledger().tokens.len();

    let (status, replayed) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed, rotated, "exactly the rotation's body");
    let c = sim.counters();
    assert_eq!(
        (c.grace_replays, c.refreshes, c.refresh_rejections),
        (1, 1, 0)
    );
    assert_eq!(sim.ledger().tokens.len(), issued, "a replay issues nothing");
    assert_eq!(
        sim.ledger().presented_twice(),
        1,
        "both presentations count"
    );
    assert_eq!(c.stale_presentations, 0);

    // The client stores and uses the successor, then sends the old one again.
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&sim, &cfg, second).await.0, 200);
    let (status, again) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200, "still inside the window");
    assert_eq!(again, rotated);
    let c = sim.counters();
    assert_eq!(c.stale_presentations, 1, "the invariant a client must keep");
    assert_eq!(c.grace_replays, 2);
}

#[tokio::test]
async fn after_the_grace_window_a_rotated_token_is_refused() {
    let cfg = grace(30);
    let sim = Sim::start(cfg.clone()).await.unwrap();
    sim.set_refresh_grace_secs(1);
    let first = seed(&sim);
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], "Invalid grant: refresh token is invalid");
    assert_eq!(sim.counters().grace_replays, 0);
}

#[tokio::test]
async fn the_grace_window_is_set_over_http() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_sim/config", sim.base_url()))
        .json(&serde_json::json!({"refreshGraceSecs": 30}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let first = seed(&sim);
    let (_, rotated) = refresh(&sim, &cfg, &first).await;
    assert_eq!(refresh(&sim, &cfg, &first).await, (200, rotated));
    assert_eq!(sim.counters().grace_replays, 1);
    let ledger: Value = http
        .get(format!("{}/_sim/ledger", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chains = ledger["chains"]
        .as_array()
        .expect("chains in the ledger JSON");
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0]["issued"], 2);
    assert_eq!(chains[0]["newestLive"], true);
}

#[tokio::test]
async fn a_revoked_grant_never_replays() {
    let cfg = grace(30);
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 200);
    sim.revoke(UserType::Company, "co-rules");
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], "Invalid grant: refresh token is invalid");
    assert_eq!(sim.counters().grace_replays, 0);
    let chain = sim.ledger().chain_of(&first).unwrap();
    assert!(chain.revoked && !chain.newest_live);
}

#[tokio::test]
async fn server_error_after_rotate_rotates_and_answers_5xx() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    sim.push_fault(Fault::ServerErrorAfterRotate { status: 502 });
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 502);
    assert_eq!(body["statusCode"], 502);
    assert!(body["message"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert_rotated_unseen(&sim, &first);
    assert_eq!(sim.counters().faults_injected, 1);
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 400, "strict: gone");
}

#[tokio::test]
async fn odd_metadata_rotates_and_answers_odd_but_usable_values() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    sim.add_locations("co-rules", &[("loc-a", "A"), ("loc-b", "B")]);
    let first = seed(&sim);
    sim.push_fault(Fault::OddMetadata);
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200, "{body}");
    let successor = assert_rotated_unseen(&sim, &first);
    assert_eq!(body["refresh_token"], successor.as_str());
    assert!(body["access_token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(body["expires_in"], 86_399);
    assert_eq!(body["userType"], "company");
    assert!(body["companyId"].is_u64(), "{body}");
    assert_eq!(body["isBulkInstallation"], "false");
    assert_eq!(body["approvedLocations"], "loc-a,loc-b");
    assert!(body["planId"].is_null());
    assert!(body["scope"].as_array().is_some_and(|a| a.len() == 3));
    assert!(body["simOddNested"].is_object());

    // A location token says "location".
    let loc = seed_location(&sim, "co-rules", "loc-a");
    sim.push_fault(Fault::OddMetadata);
    let (status, body) = refresh(&sim, &cfg, &loc).await;
    assert_eq!(status, 200);
    assert_eq!(body["userType"], "location");
    assert_eq!(body["approvedLocations"], "loc-a");
}

#[tokio::test]
async fn garbled_rotates_and_answers_invalid_json() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    sim.push_fault(Fault::Garbled);
    let (status, ct, bytes) = raw(&sim, &cfg, &first).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(!bytes.is_empty());
    assert!(
        serde_json::from_slice::<Value>(&bytes).is_err(),
        "cut short"
    );
    assert_rotated_unseen(&sim, &first);
}

#[tokio::test]
async fn no_refresh_token_rotates_and_leaves_the_field_out() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    sim.push_fault(Fault::NoRefreshToken);
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 200);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].is_string());
    assert_eq!(body["userType"], "Company");
    assert_rotated_unseen(&sim, &first);
}

#[tokio::test]
async fn rfc_invalid_grant_does_not_rotate() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    sim.push_fault(Fault::RfcInvalidGrant);
    let (status, body) = refresh(&sim, &cfg, &first).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        serde_json::json!({"error": "invalid_grant", "error_description": "refresh token is invalid"})
    );
    let ledger = sim.ledger();
    assert!(ledger.is_live(&first));
    assert_eq!(ledger.tokens.len(), 1);
    assert_eq!(ledger.tokens[0].presented, 0, "never decided on");
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 200);
}

#[tokio::test]
async fn standing_after_rotate_and_odd_metadata_rates_apply() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let first = seed(&sim);
    sim.set_faults(Faults {
        error_5xx_after_rotate_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(refresh(&sim, &cfg, &first).await.0, 503);
    let second = assert_rotated_unseen(&sim, &first);
    sim.set_faults(Faults {
        odd_metadata_rate: 1.0,
        ..Default::default()
    });
    let (status, body) = refresh(&sim, &cfg, &second).await;
    assert_eq!(status, 200);
    assert_eq!(body["userType"], "company");
    assert_eq!(sim.counters().faults_injected, 2);
}

#[tokio::test]
async fn chains_report_the_newest_token_and_newest_chain_for_finds_it() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let company = seed(&sim);
    let (_, b) = refresh(&sim, &cfg, &company).await;
    let company2 = b["refresh_token"].as_str().unwrap().to_owned();
    let (_, b) = refresh(&sim, &cfg, &company2).await;
    let company3 = b["refresh_token"].as_str().unwrap().to_owned();
    let old_loc = seed_location(&sim, "co-rules", "loc-x");
    let new_loc = seed_location(&sim, "co-rules", "loc-x");
    let other_loc = seed_location(&sim, "co-rules", "loc-y");

    let ledger = sim.ledger();
    let chains = ledger.chains();
    assert_eq!(chains.len(), 4);
    let c = &chains[0];
    assert_eq!(
        (c.user_type, c.company_id.as_str()),
        (UserType::Company, "co-rules")
    );
    assert_eq!(c.newest_refresh_token, company3);
    assert!(c.newest_live && !c.revoked);
    assert_eq!((c.issued, c.newest_presented), (3, 0));
    assert_eq!(ledger.chain_of(&company).as_ref(), Some(c));
    assert_eq!(ledger.chain_of(&company2).as_ref(), Some(c));
    assert!(ledger.chain_of("rt-unknown").is_none());
    let debug = format!("{c:?}");
    assert!(!debug.contains(&company3), "Debug hides tokens: {debug}");
    let entry_debug = format!("{:?}", ledger.tokens[0]);
    assert!(
        !entry_debug.contains(&company2),
        "Debug hides the successor"
    );

    let found = ledger
        .newest_chain_for(UserType::Company, "co-rules", None)
        .unwrap();
    assert_eq!(found.newest_refresh_token, company3);
    let found = ledger
        .newest_chain_for(UserType::Location, "co-rules", Some("loc-x"))
        .unwrap();
    assert_eq!(found.newest_refresh_token, new_loc);
    assert_ne!(found.newest_refresh_token, old_loc);
    let found = ledger
        .newest_chain_for(UserType::Location, "co-rules", Some("loc-y"))
        .unwrap();
    assert_eq!(found.newest_refresh_token, other_loc);
    assert!(
        ledger
            .newest_chain_for(UserType::Company, "co-other", None)
            .is_none()
    );

    // Presenting the newest token makes it dead and presented, with a new newest.
    assert_eq!(refresh(&sim, &cfg, &company3).await.0, 200);
    let c = sim.ledger().chain_of(&company3).unwrap();
    assert_ne!(c.newest_refresh_token, company3);
    assert_eq!(c.issued, 4);
    // A stale presentation: company2's successor (company3) was presented.
    assert_eq!(refresh(&sim, &cfg, &company2).await.0, 400);
    assert_eq!(sim.counters().stale_presentations, 1);
}

#[test]
fn the_binary_prints_help_and_refuses_unknown_flags() {
    let bin = env!("CARGO_BIN_EXE_ghl-sim");
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--client-id",
        "--client-secret",
        "--app-id",
        "--access-ttl-secs",
        "--refresh-grace-secs",
        "GHL_SIM_REFRESH_GRACE_SECS",
    ] {
        assert!(help.contains(flag), "usage names {flag}: {help}");
    }
    assert_eq!(
        std::process::Command::new(bin)
            .arg("-h")
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let out = std::process::Command::new(bin)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--refresh-grace-secs"));
}
