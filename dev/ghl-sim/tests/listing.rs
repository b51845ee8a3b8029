//! `GET /oauth/installedLocations` and its wrong 200s (`ListingFault`): the
//! shapes a client must refuse to read as a listing, set from Rust and over
//! `/_sim/config`.

use ghl_sim::{ListingFault, SeedGrant, Sim, SimConfig, UserType};
use serde_json::{Value, json};

const COMPANY: &str = "co-list";

async fn started(n: usize) -> (Sim, String) {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let access = sim.seed_grant(SeedGrant {
        user_type: UserType::Company,
        company_id: COMPANY.into(),
        location_id: None,
        access_token_ttl_secs: None,
    })["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("l{i:03}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "Sub")).collect();
    sim.add_locations(COMPANY, &pairs);
    (sim, access)
}

async fn page(sim: &Sim, access: &str, skip: u64) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/oauth/installedLocations", sim.base_url()))
        .bearer_auth(access)
        .header("Version", ghl_sim::API_VERSION)
        .query(&[
            ("companyId", COMPANY),
            ("appId", &sim.app_id()),
            ("skip", &skip.to_string()),
            ("limit", "100"),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[tokio::test]
async fn each_listing_fault_answers_200_with_its_wrong_body() {
    let (sim, access) = started(105).await;
    let (status, good) = page(&sim, &access, 100).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            good["count"].as_u64(),
            good["locations"].as_array().map(Vec::len)
        ),
        (Some(105), Some(5))
    );

    sim.set_listing_fault(Some(ListingFault::NoLocations));
    let (status, b) = page(&sim, &access, 0).await;
    assert_eq!(
        (status, keys(&b)),
        (200, vec!["count", "installToFutureLocations"])
    );

    sim.set_listing_fault(Some(ListingFault::NoCount));
    let (_, b) = page(&sim, &access, 0).await;
    assert_eq!(keys(&b), ["installToFutureLocations", "locations"]);
    assert_eq!(b["locations"].as_array().map(Vec::len), Some(100));

    sim.set_listing_fault(Some(ListingFault::CountAsString));
    assert_eq!(page(&sim, &access, 0).await.1["count"], "105");

    for (delta, count) in [(-5, 100), (-500, 0), (95, 200)] {
        sim.set_listing_fault(Some(ListingFault::CountOffBy { delta }));
        let (_, b) = page(&sim, &access, 100).await;
        assert_eq!(b["count"], count, "delta {delta}");
        assert_eq!(
            b["locations"].as_array().map(Vec::len),
            Some(5),
            "the pages stay right"
        );
    }

    sim.set_listing_fault(Some(ListingFault::Empty));
    assert_eq!(
        page(&sim, &access, 0).await.1,
        json!({"locations": [], "count": 0, "installToFutureLocations": false})
    );

    sim.set_listing_fault(Some(ListingFault::TraceIdOnly));
    let (status, b) = page(&sim, &access, 0).await;
    assert_eq!((status, keys(&b)), (200, vec!["traceId"]));

    sim.set_listing_fault(Some(ListingFault::ErrorEnvelope));
    let (status, b) = page(&sim, &access, 0).await;
    assert_eq!(
        (status, keys(&b)),
        (200, vec!["message", "statusCode", "traceId"])
    );

    sim.set_listing_fault(Some(ListingFault::ItemsWithoutId));
    let (_, b) = page(&sim, &access, 0).await;
    let items = b["locations"].as_array().unwrap();
    assert_eq!((items.len(), b["count"].as_u64()), (100, Some(105)));
    assert!(
        items
            .iter()
            .all(|i| i.get("_id").is_none() && i["id"].is_string())
    );

    sim.set_listing_fault(None);
    assert_eq!(page(&sim, &access, 100).await.1, good);
    assert_eq!(sim.counters().faults_injected, 10);
}

#[tokio::test]
async fn listing_faults_and_ignore_skip_are_set_over_http() {
    let (sim, access) = started(3).await;
    let http = reqwest::Client::new();
    let config = |body: Value| {
        let http = http.clone();
        let url = format!("{}/_sim/config", sim.base_url());
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    config(json!({"listingFault": {"kind": "countOffBy", "delta": -1}, "ignoreSkip": true})).await;
    let (_, b) = page(&sim, &access, 2).await;
    assert_eq!(b["count"], 2);
    assert_eq!(
        b["locations"].as_array().map(Vec::len),
        Some(3),
        "skip ignored"
    );
    let shown: Value = http
        .get(format!("{}/_sim/config", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["listingFault"],
        json!({"kind": "countOffBy", "delta": -1})
    );
    assert_eq!(shown["ignoreSkip"], true);
    // Another setting leaves the fault alone; null clears it.
    config(json!({"refreshGraceSecs": 5})).await;
    assert_eq!(page(&sim, &access, 0).await.1["count"], 2);
    config(json!({"listingFault": null, "ignoreSkip": false})).await;
    let (_, b) = page(&sim, &access, 2).await;
    assert_eq!(
        (b["count"].as_u64(), b["locations"].as_array().map(Vec::len)),
        (Some(3), Some(1))
    );
}
