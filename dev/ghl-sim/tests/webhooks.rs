//! Signed Marketplace webhooks: what consent, bulk installs, uninstalls and
//! plan changes queue, and that the signatures verify against the published
//! keys (and fail on any changed byte).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ghl_sim::{ConsentTarget, Delivery, SeedGrant, Sim, SimConfig, UserType};
use ring::signature::{ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::Value;
use std::collections::HashSet;

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn ed_verifies(spki_b64: &str, body: &[u8], sig_b64: &str) -> bool {
    let spki = B64.decode(spki_b64).expect("public key is base64");
    assert_eq!(spki.len(), 44, "Ed25519 SPKI is 44 bytes");
    assert_eq!(spki[..12], ED25519_SPKI_PREFIX);
    let Ok(sig) = B64.decode(sig_b64) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, &spki[12..])
        .verify(body, &sig)
        .is_ok()
}

/// One DER TLV at the start of `der`: (tag, contents, rest).
fn der_tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, head) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let k = usize::from(n & 0x7f);
            let len = der[2..2 + k]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            (len, 2 + k)
        }
    };
    (tag, &der[head..head + len], &der[head + len..])
}

/// The PKCS#1 RSAPublicKey inside an RSA SubjectPublicKeyInfo.
fn rsa_pkcs1_from_spki(spki: &[u8]) -> Vec<u8> {
    let (tag, spki_seq, rest) = der_tlv(spki);
    assert_eq!((tag, rest.len()), (0x30, 0), "SPKI is one SEQUENCE");
    let (tag, alg, rest) = der_tlv(spki_seq);
    assert_eq!(tag, 0x30, "AlgorithmIdentifier");
    let (tag, oid, _) = der_tlv(alg);
    assert_eq!(tag, 0x06);
    assert_eq!(
        oid,
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        "rsaEncryption"
    );
    let (tag, bits, rest) = der_tlv(rest);
    assert_eq!((tag, rest.len()), (0x03, 0), "then one BIT STRING");
    assert_eq!(bits[0], 0, "no unused bits");
    bits[1..].to_vec()
}

fn rsa_verifies(spki_b64: &str, body: &[u8], sig_b64: &str) -> bool {
    let spki = B64.decode(spki_b64).expect("RSA key is base64");
    let pkcs1 = rsa_pkcs1_from_spki(&spki);
    let Ok(sig) = B64.decode(sig_b64) else {
        return false;
    };
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1)
        .verify(body, &sig)
        .is_ok()
}

fn body(d: &Delivery) -> Value {
    serde_json::from_str(&d.body).expect("the body is JSON")
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// The top-level keys of a compact JSON object body, in the order sent
/// (read off the raw text: a parsed `Value` may sort its keys).
fn raw_key_order(raw: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(raw).unwrap();
    let mut present: Vec<(usize, String)> = keys(&v)
        .into_iter()
        .map(|k| {
            let at = raw
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} in {raw}"));
            (at, k.to_owned())
        })
        .collect();
    present.sort();
    present.into_iter().map(|(_, k)| k).collect()
}

fn assert_timestamp(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 24, "{ts}");
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        assert_eq!(b[i], c, "{ts}");
    }
    let year: u32 = ts[..4].parse().unwrap();
    assert!((2025..2100).contains(&year), "{ts}");
}

fn assert_signed(sim: &Sim, d: &Delivery) {
    let raw = d.body.as_bytes();
    assert!(
        ed_verifies(&sim.webhook_public_key(), raw, &d.signature),
        "Ed25519 verifies"
    );
    assert!(
        rsa_verifies(&sim.webhook_rsa_public_key(), raw, &d.rsa_signature),
        "RSA verifies"
    );
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Consents and returns the code from the redirect.
async fn consent(sim: &Sim, target: &ConsentTarget) -> String {
    let r = no_redirects()
        .get(sim.consent_url("http://app.test/cb", target))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    loc.split_once("code=")
        .map(|(_, c)| c.to_owned())
        .unwrap_or_default()
}

async fn token(sim: &Sim, cfg: &SimConfig, form: &[(&str, &str)]) -> (u16, Value) {
    let mut f = vec![
        ("client_id", cfg.client_id.as_str()),
        ("client_secret", cfg.client_secret.as_str()),
    ];
    f.extend_from_slice(form);
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&f)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn exchange(sim: &Sim, cfg: &SimConfig, code: &str, user_type: &str) -> Value {
    let (status, body) = token(
        sim,
        cfg,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "http://app.test/cb"),
            ("user_type", user_type),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh_status(sim: &Sim, cfg: &SimConfig, rt: &str, user_type: &str) -> u16 {
    token(
        sim,
        cfg,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("user_type", user_type),
        ],
    )
    .await
    .0
}

/// Every location id `/oauth/installedLocations` lists for the company
/// (paging through), with a fresh company token.
async fn installed_locations(sim: &Sim, company: &str) -> (u64, Vec<String>) {
    let access = sim.seed_grant(SeedGrant {
        user_type: UserType::Company,
        company_id: company.into(),
        location_id: None,
        access_token_ttl_secs: None,
    })["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = Vec::new();
    loop {
        let skip = ids.len().to_string();
        let page: Value = reqwest::Client::new()
            .get(format!("{}/oauth/installedLocations", sim.base_url()))
            .bearer_auth(&access)
            .header("Version", ghl_sim::API_VERSION)
            .query(&[
                ("companyId", company),
                ("appId", &sim.app_id()),
                ("skip", &skip),
                ("limit", "100"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = page["count"].as_u64().unwrap();
        let locs = page["locations"].as_array().unwrap();
        if locs.is_empty() {
            return (count, ids);
        }
        ids.extend(locs.iter().map(|l| l["_id"].as_str().unwrap().to_owned()));
        if ids.len() as u64 >= count {
            return (count, ids);
        }
    }
}

#[tokio::test]
async fn a_location_consent_queues_one_signed_install_before_the_code_is_exchanged() {
    let cfg = SimConfig {
        app_id: "app-wh".into(),
        version_id: "ver-wh".into(),
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg.clone()).await.unwrap();
    assert_eq!(sim.app_id(), "app-wh");
    let code = consent(
        &sim,
        &ConsentTarget {
            user_type: UserType::Location,
            company_id: "co-1".into(),
            location_id: Some("loc-1".into()),
            deny: false,
        },
    )
    .await;

    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let d = &queued[0];
    assert_eq!(d.kind, "INSTALL");
    assert_signed(&sim, d);
    assert!(
        d.body
            .starts_with(r#"{"type":"INSTALL","appId":"app-wh","versionId":"ver-wh","installType":"Location","locationId":"loc-1","companyId":"co-1","#),
        "compact, in order: {}",
        d.body
    );
    assert_eq!(
        raw_key_order(&d.body),
        [
            "type",
            "appId",
            "versionId",
            "installType",
            "locationId",
            "companyId",
            "userId",
            "companyName",
            "planId",
            "trial",
            "isWhitelabelCompany",
            "timestamp",
            "webhookId"
        ]
    );
    let b = body(d);
    assert_eq!(b["planId"], "sim-plan");
    assert_eq!(b["trial"], serde_json::json!({}));
    assert_eq!(b["isWhitelabelCompany"], false);
    assert!(b["companyName"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(b["webhookId"], d.webhook_id.as_str());
    assert!(d.webhook_id.starts_with("wh-"));
    assert_timestamp(b["timestamp"].as_str().unwrap());
    assert!(
        !format!("{d:?}").contains(&d.signature),
        "Debug shows kind and id only"
    );

    // The code still works, and names the user the INSTALL named.
    let tokens = exchange(&sim, &cfg, &code, "Location").await;
    assert_eq!(tokens["userId"], b["userId"]);
    assert!(
        sim.take_webhooks().is_empty(),
        "the exchange queues nothing"
    );
}

#[tokio::test]
async fn a_company_consent_queues_a_company_install_and_a_denied_one_nothing() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let target = ConsentTarget {
        user_type: UserType::Company,
        company_id: "co-2".into(),
        location_id: None,
        deny: true,
    };
    let r = no_redirects()
        .get(sim.consent_url("http://app.test/cb", &target))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=access_denied")
    );
    assert!(sim.take_webhooks().is_empty(), "a denial queues nothing");

    consent(
        &sim,
        &ConsentTarget {
            deny: false,
            ..target
        },
    )
    .await;
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1);
    assert_signed(&sim, &queued[0]);
    let b = body(&queued[0]);
    assert_eq!(b["installType"], "Company");
    assert_eq!(b["companyId"], "co-2");
    assert!(b.get("locationId").is_none(), "{b}");
    assert!(sim.take_webhooks().is_empty(), "take_webhooks drains");
}

#[tokio::test]
async fn a_changed_byte_fails_both_signatures() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.bulk_install("co-3", 1);
    let d = sim.take_webhooks().remove(0);
    let (pk, rsa) = (sim.webhook_public_key(), sim.webhook_rsa_public_key());
    let raw = d.body.as_bytes();
    assert!(ed_verifies(&pk, raw, &d.signature) && rsa_verifies(&rsa, raw, &d.rsa_signature));
    for i in [0, raw.len() / 2, raw.len() - 1] {
        let mut bad = raw.to_vec();
        bad[i] ^= 0x01;
        assert!(!ed_verifies(&pk, &bad, &d.signature), "Ed25519, byte {i}");
        assert!(!rsa_verifies(&rsa, &bad, &d.rsa_signature), "RSA, byte {i}");
    }
    let mut longer = raw.to_vec();
    longer.push(b' ');
    assert!(!ed_verifies(&pk, &longer, &d.signature));
    // A signature from another simulator's key does not verify either.
    let other = Sim::start(SimConfig::default()).await.unwrap();
    assert_ne!(other.webhook_public_key(), pk, "a fresh key per simulator");
    assert!(!ed_verifies(&other.webhook_public_key(), raw, &d.signature));
}

#[tokio::test]
async fn sign_and_rsa_sign_verify_for_any_body_and_the_keys_have_the_published_forms() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let pk = sim.webhook_public_key();
    assert!(pk.starts_with("MCowBQYDK2VwAyEA"), "{pk}");
    let pem = sim.webhook_public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(
        pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
        "{pem}"
    );
    let inner: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(inner, pk);
    for body in [
        &b""[..],
        b"not json",
        "{\"type\":\"INSTALL\",\"x\":\"\u{e9}\"}".as_bytes(),
    ] {
        assert!(ed_verifies(&pk, body, &sim.sign(body)));
        assert!(rsa_verifies(
            &sim.webhook_rsa_public_key(),
            body,
            &sim.rsa_sign(body)
        ));
    }
    assert!(!ed_verifies(&pk, b"a", &sim.sign(b"b")));
    assert!(!rsa_verifies(
        &sim.webhook_rsa_public_key(),
        b"a",
        &sim.rsa_sign(b"b")
    ));
}

#[tokio::test]
async fn a_bulk_install_of_500_queues_500_distinct_installs_and_lists_500_locations() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let ids = sim.bulk_install("co-bulk", 500);
    assert_eq!(ids.len(), 500);
    assert_eq!(ids[0], "co-bulk-bulk-1");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);

    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 500);
    let webhook_ids: HashSet<&str> = queued.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(webhook_ids.len(), 500, "distinct webhookIds");
    let mut users = HashSet::new();
    for (d, id) in queued.iter().zip(&ids) {
        assert_eq!(d.kind, "INSTALL");
        let b = body(d);
        assert_eq!(b["type"], "INSTALL");
        assert_eq!(b["installType"], "Location");
        assert_eq!(b["locationId"], id.as_str(), "one per location, in order");
        assert_eq!(b["companyId"], "co-bulk");
        assert_eq!(b["webhookId"], d.webhook_id.as_str());
        users.insert(b["userId"].as_str().unwrap().to_owned());
        assert!(ed_verifies(
            &sim.webhook_public_key(),
            d.body.as_bytes(),
            &d.signature
        ));
    }
    assert_eq!(users.len(), 1, "one installing user");
    assert_signed(&sim, &queued[0]);
    assert_signed(&sim, &queued[499]);
    assert!(sim.take_webhooks().is_empty());

    let (count, listed) = installed_locations(&sim, "co-bulk").await;
    assert_eq!(count, 500);
    assert_eq!(
        listed.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );

    // A second bulk install adds new locations.
    let more = sim.bulk_install("co-bulk", 2);
    assert_eq!(more, ["co-bulk-bulk-501", "co-bulk-bulk-502"]);
    assert_eq!(sim.take_webhooks().len(), 2);
    assert_eq!(installed_locations(&sim, "co-bulk").await.0, 502);
}

#[tokio::test]
async fn uninstalling_a_location_revokes_its_grant_and_queues_uninstall() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let code = consent(
        &sim,
        &ConsentTarget {
            user_type: UserType::Location,
            company_id: "co-4".into(),
            location_id: Some("loc-4".into()),
            deny: false,
        },
    )
    .await;
    let rt = exchange(&sim, &cfg, &code, "Location").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.take_webhooks().len(), 1, "the INSTALL");

    sim.uninstall(UserType::Location, "loc-4");
    assert_eq!(refresh_status(&sim, &cfg, &rt, "Location").await, 400);
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1);
    let d = &queued[0];
    assert_eq!(d.kind, "UNINSTALL");
    assert_signed(&sim, d);
    assert_eq!(
        raw_key_order(&d.body),
        ["type", "appId", "locationId", "timestamp", "webhookId"]
    );
    let b = body(d);
    assert_eq!(b["type"], "UNINSTALL");
    assert_eq!(b["appId"], sim.app_id().as_str());
    assert_eq!(b["locationId"], "loc-4");
    assert_eq!(b["webhookId"], d.webhook_id.as_str());
    assert_timestamp(b["timestamp"].as_str().unwrap());
}

#[tokio::test]
async fn uninstalling_a_company_revokes_it_removes_its_locations_and_queues_uninstall() {
    let cfg = SimConfig::default();
    let sim = Sim::start(cfg.clone()).await.unwrap();
    let code = consent(
        &sim,
        &ConsentTarget {
            user_type: UserType::Company,
            company_id: "co-5".into(),
            location_id: None,
            deny: false,
        },
    )
    .await;
    let rt = exchange(&sim, &cfg, &code, "Company").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.add_locations("co-5", &[("loc-5a", "A"), ("loc-5b", "B")]);
    sim.take_webhooks();

    sim.uninstall(UserType::Company, "co-5");
    assert_eq!(refresh_status(&sim, &cfg, &rt, "Company").await, 400);
    assert!(sim.ledger().chain_of(&rt).unwrap().revoked);
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].kind, "UNINSTALL");
    assert_signed(&sim, &queued[0]);
    assert_eq!(
        raw_key_order(&queued[0].body),
        ["type", "appId", "companyId", "timestamp", "webhookId"]
    );
    assert_eq!(body(&queued[0])["companyId"], "co-5");
    assert_eq!(installed_locations(&sim, "co-5").await, (0, vec![]));
}

#[tokio::test]
async fn a_plan_change_queues_plan_change() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.plan_change(UserType::Location, "loc-6", "plan-pro");
    sim.plan_change(UserType::Company, "co-6", "plan-agency");
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 2);
    for d in &queued {
        assert_eq!(d.kind, "PLAN_CHANGE");
        assert_signed(&sim, d);
    }
    assert_eq!(
        raw_key_order(&queued[0].body),
        [
            "type",
            "appId",
            "locationId",
            "planId",
            "timestamp",
            "webhookId"
        ]
    );
    assert_eq!(body(&queued[0])["planId"], "plan-pro");
    assert_eq!(
        raw_key_order(&queued[1].body),
        [
            "type",
            "appId",
            "companyId",
            "planId",
            "timestamp",
            "webhookId"
        ]
    );
    assert_eq!(body(&queued[1])["companyId"], "co-6");
    assert_ne!(queued[0].webhook_id, queued[1].webhook_id);
}

#[tokio::test]
async fn the_control_routes_serve_keys_and_deliveries() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let base = sim.base_url();

    let key: Value = http
        .get(format!("{base}/_sim/webhook-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["publicKey"], sim.webhook_public_key().as_str());
    assert_eq!(key["publicKeyPem"], sim.webhook_public_key_pem().as_str());
    assert_eq!(key["rsaPublicKey"], sim.webhook_rsa_public_key().as_str());

    let r: Value = http
        .post(format!("{base}/_sim/bulk-install"))
        .json(&serde_json::json!({"companyId": "co-7", "count": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["locationIds"],
        serde_json::json!(["co-7-bulk-1", "co-7-bulk-2", "co-7-bulk-3"])
    );
    let s = http
        .post(format!("{base}/_sim/uninstall"))
        .json(&serde_json::json!({"userType": "Location", "id": "co-7-bulk-2"}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{s}");

    let raw: Value = http
        .get(format!("{base}/_sim/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deliveries: Vec<Delivery> = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(
        deliveries
            .iter()
            .map(|d| d.kind.as_str())
            .collect::<Vec<_>>(),
        ["INSTALL", "INSTALL", "INSTALL", "UNINSTALL"]
    );
    for d in &deliveries {
        assert_signed(&sim, d);
    }
    assert!(raw[0]["rsaSignature"].is_string() && raw[0]["webhookId"].is_string());
    let again: Vec<Delivery> = http
        .get(format!("{base}/_sim/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(again.is_empty(), "the route drains");
    assert!(sim.take_webhooks().is_empty());
}

#[test]
fn the_help_lists_the_webhook_routes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghl-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for route in [
        "/_sim/webhooks",
        "/_sim/webhook-key",
        "/_sim/uninstall",
        "/_sim/bulk-install",
        "/_sim/plan-change",
    ] {
        assert!(help.contains(route), "{route}: {help}");
    }
}
