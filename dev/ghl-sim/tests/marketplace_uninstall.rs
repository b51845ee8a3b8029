//! The developer's uninstall, `DELETE /marketplace/app/{appId}/installations`,
//! as the simulator enforces it: the bearer token, the `Version` header, a
//! reason, and a target the token may act on.

use ghl_sim::{SeedGrant, Sim, SimConfig, UserType};
use serde_json::{Value, json};

async fn delete(
    sim: &Sim,
    app_id: &str,
    token: &str,
    version: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .delete(format!(
            "{}/marketplace/app/{app_id}/installations",
            sim.base_url()
        ))
        .bearer_auth(token)
        .json(&body);
    if let Some(v) = version {
        req = req.header("Version", v);
    }
    let r = req.send().await.expect("simulator answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn seed(sim: &Sim, user_type: UserType, company: &str, location: Option<&str>) -> Value {
    sim.seed_grant(SeedGrant {
        user_type,
        company_id: company.into(),
        location_id: location.map(str::to_owned),
        access_token_ttl_secs: None,
    })
}

#[tokio::test]
async fn the_developer_uninstall_checks_token_version_reason_and_target() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    sim.add_locations("co-1", &[("loc-1", "One")]);
    let company = seed(&sim, UserType::Company, "co-1", None);
    let loc = seed(&sim, UserType::Location, "co-1", Some("loc-1"));
    let other = seed(&sim, UserType::Company, "co-2", None);
    let token = company["access_token"].as_str().unwrap();
    let v = Some("2021-07-28");
    let app = cfg.app_id.as_str();

    let (s, b) = delete(
        &sim,
        app,
        "not-a-token",
        v,
        json!({"companyId": "co-1", "reason": "r"}),
    )
    .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (401, Some("Invalid JWT")),
        "{b}"
    );
    let (s, b) = delete(
        &sim,
        app,
        token,
        None,
        json!({"companyId": "co-1", "reason": "r"}),
    )
    .await;
    assert_eq!(s, 400, "no Version: {b}");
    let (s, b) = delete(&sim, app, token, v, json!({"companyId": "co-1"})).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["message"], json!(["reason should not be empty"]));
    let (s, b) = delete(
        &sim,
        "other-app",
        token,
        v,
        json!({"companyId": "co-1", "reason": "r"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = delete(
        &sim,
        app,
        token,
        v,
        json!({"companyId": "co-2", "reason": "r"}),
    )
    .await;
    assert_eq!(s, 400, "another company's id: {b}");
    let loc_token = loc["access_token"].as_str().unwrap();
    let (s, b) = delete(
        &sim,
        app,
        loc_token,
        v,
        json!({"companyId": "co-1", "reason": "r"}),
    )
    .await;
    assert_eq!(s, 400, "a location token for the company: {b}");
    assert_eq!(sim.counters().app_uninstalls, 0);
    assert!(sim.take_webhooks().is_empty(), "nothing was uninstalled");

    // A location token uninstalls its own location.
    let (s, b) = delete(
        &sim,
        app,
        loc_token,
        v,
        json!({"locationId": "loc-1", "reason": "r"}),
    )
    .await;
    assert_eq!((s, &b), (200, &json!({"success": true})));
    assert!(!sim.ledger().is_live(loc["refresh_token"].as_str().unwrap()));
    assert!(
        sim.ledger()
            .is_live(company["refresh_token"].as_str().unwrap())
    );

    // A company token uninstalls the company (and every sub-account).
    let (s, b) = delete(
        &sim,
        app,
        token,
        v,
        json!({"companyId": "co-1", "reason": "bye"}),
    )
    .await;
    assert_eq!((s, &b), (200, &json!({"success": true})));
    let ledger = sim.ledger();
    assert!(!ledger.is_live(company["refresh_token"].as_str().unwrap()));
    assert!(ledger.is_live(other["refresh_token"].as_str().unwrap()));
    assert_eq!(sim.counters().app_uninstalls, 2);
    let kinds: Vec<String> = sim.take_webhooks().into_iter().map(|d| d.kind).collect();
    assert_eq!(kinds, ["UNINSTALL", "UNINSTALL"]);
    // Its token still verifies, and finds no installation: not a refusal
    // of the token (401), an answer that the app is not installed.
    let (s, b) = delete(
        &sim,
        app,
        token,
        v,
        json!({"companyId": "co-1", "reason": "r"}),
    )
    .await;
    assert_eq!(s, 404, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("not installed"),
        "{b}"
    );
    assert_eq!(sim.counters().app_uninstalls, 2);
}
