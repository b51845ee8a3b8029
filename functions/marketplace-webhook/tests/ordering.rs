//! Lifecycle events in any order, late, twice, and retried by HighLevel with
//! their original timestamp: one rule orders them all (event time, per grant
//! and per link, to the millisecond), and nothing older than what a grant
//! holds erases it. `marketplace-webhook` and `token-mint` run as real
//! processes against moto and the HighLevel simulator.

mod common;

use common::*;
use ghl_sim::courier::{self, Schedule};
use ghl_sim::{ConsentTarget, Delivery, UserType as SimUserType};
use serde_json::{Value, json};
use shared::model::{GrantInfo, InstallId, InstallState, TokenPair, UserType, now_millis};
use shared::redact::SecretString;
use shared::store::LinkState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use testkit::RuntimeApi;
use testkit::stack::{Stack, store_fault_proxy};

/// An UNINSTALL (or PLAN_CHANGE with `plan`) of a location or company at `at_ms`.
fn targeted(app: &str, kind: &str, target: (&str, &str), plan: Option<&str>, at_ms: i64) -> Value {
    let mut v = json!({
        "type": kind,
        "appId": app,
        target.0: target.1,
        "timestamp": iso8601_ms(at_ms),
        "webhookId": fresh_webhook_id(),
    });
    if let Some(p) = plan {
        v["planId"] = json!(p);
    }
    v
}

async fn send(api: &RuntimeApi, stack: &Stack, event: &Value) -> Answer {
    deliver(api, &stack.sim.delivery_of(event)).await
}

/// The token-mint's answer for `loc`, as (source, or the error's type).
async fn served(api: &RuntimeApi, loc: &str, company: &str) -> String {
    match mint(api, json!({"locationId": loc, "companyId": company})).await {
        Ok(v) => v["source"].as_str().unwrap_or_default().to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

async fn start_mint(stack: &Stack) -> (RuntimeApi, testkit::FunctionProcess) {
    let api = RuntimeApi::start().await.unwrap();
    let f = stack.spawn_on(&api, "token-mint", &[]);
    (api, f)
}

/// A late UNINSTALL never erases a newer install: INSTALL at t with the
/// UNINSTALL stamped a minute earlier delivered afterwards, and an UNINSTALL
/// delivered 2 s late behind an INSTALL stamped a second after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_uninstall_never_erases_a_newer_install() {
    let stack = Stack::new().await;
    let (sim, api, app) = (&stack.sim, &stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let (mint_api, minter) = start_mint(&stack).await;
    stack
        .seed_install(&InstallId::Company("co-a".into()), "co-a", 86_399)
        .await;
    sim.add_locations("co-a", &[("loc-a1", "A1"), ("loc-a2", "A2")]);
    for loc in ["loc-a1", "loc-a2"] {
        assert_eq!(served(&mint_api, loc, "co-a").await, "minted");
    }
    let minted = |l: &str| InstallId::Minted(l.into());
    let before = [
        stack.install(&minted("loc-a1")).await,
        stack.install(&minted("loc-a2")).await,
    ];

    // INSTALL at t, then the UNINSTALL stamped t - 60 s.
    let t = now_millis();
    send(api, &stack, &install_event(&app, "co-a", "loc-a1", t))
        .await
        .accepted("location_installed");
    let a = send(
        api,
        &stack,
        &targeted(
            &app,
            "UNINSTALL",
            ("locationId", "loc-a1"),
            None,
            t - 60_000,
        ),
    )
    .await;
    a.accepted("older");
    assert_eq!(a.body["target"], "location#loc-a1", "{a:?}");

    // UNINSTALL at t2 delivered 2 s late, behind an INSTALL stamped t2 + 1 s.
    let t2 = now_millis();
    let late = targeted(&app, "UNINSTALL", ("locationId", "loc-a2"), None, t2);
    send(
        api,
        &stack,
        &install_event(&app, "co-a", "loc-a2", t2 + 1_000),
    )
    .await
    .accepted("location_installed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(api, &stack, &late).await.accepted("older");

    for (i, loc) in ["loc-a1", "loc-a2"].into_iter().enumerate() {
        let now = stack.install(&minted(loc)).await;
        assert_eq!(now.state, InstallState::Active, "{loc}: {now:?}");
        assert_eq!(now.version, before[i].version, "{loc}: tokens untouched");
        assert_eq!(now.refresh_token.expose(), before[i].refresh_token.expose());
        let link = stack.store().link_of(loc).await.unwrap().unwrap();
        assert_eq!(link.state, LinkState::Installed, "{link:?}");
        assert_eq!(served(&mint_api, loc, "co-a").await, "cache", "{loc}");
    }
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

/// An agency installed again through the callback, then a company UNINSTALL
/// stamped before that reinstall (but after its location was minted): the
/// event is older than the agency's grant, so it erases nothing at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_company_uninstall_never_erases_an_agency_installed_again() {
    let stack = Stack::new().await;
    let (sim, api, app) = (&stack.sim, &stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let (mint_api, minter) = start_mint(&stack).await;
    let cb_api = RuntimeApi::start().await.unwrap();
    let cb = stack.spawn_on(&cb_api, "oauth-callback", &[]);
    let company = InstallId::Company("co-b".into());
    stack.seed_install(&company, "co-b", 86_399).await;
    sim.add_locations("co-b", &[("loc-b1", "B1")]);
    assert_eq!(served(&mint_api, "loc-b1", "co-b").await, "minted");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stamped = now_millis();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = install_through_callback(
        &stack,
        &cb_api,
        &ConsentTarget {
            user_type: SimUserType::Company,
            company_id: "co-b".into(),
            location_id: None,
            deny: false,
        },
    )
    .await;
    sim.take_webhooks();
    let reinstalled = stack.install(&company).await;

    let a = send(
        api,
        &stack,
        &targeted(&app, "UNINSTALL", ("companyId", "co-b"), None, stamped),
    )
    .await;
    a.accepted("older");
    let after = stack.install(&company).await;
    assert_eq!(after.state, InstallState::Active);
    assert_eq!(after.version, reinstalled.version);
    let minted = stack.install(&InstallId::Minted("loc-b1".into())).await;
    assert_eq!(minted.state, InstallState::Active, "{minted:?}");
    assert_eq!(
        stack
            .store()
            .link_of("loc-b1")
            .await
            .unwrap()
            .unwrap()
            .state,
        LinkState::Installed
    );
    assert_eq!(served(&mint_api, "loc-b1", "co-b").await, "cache");

    // An UNINSTALL after the reinstall still does its work.
    send(
        api,
        &stack,
        &targeted(&app, "UNINSTALL", ("companyId", "co-b"), None, now_millis()),
    )
    .await
    .accepted("uninstalled");
    assert_eq!(
        stack.install(&company).await.state,
        InstallState::Uninstalled
    );
    assert_eq!(
        stack
            .install(&InstallId::Minted("loc-b1".into()))
            .await
            .state,
        InstallState::Uninstalled
    );
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    logs.extend(cb.logs());
    stack.assert_logs_clean(&logs, &[&code]).await;
}

/// An uninstall and a reinstall within the same second, in order: the
/// location is installed, and the mint serves it.
#[tokio::test(flavor = "multi_thread")]
async fn an_uninstall_and_a_reinstall_in_the_same_second_leave_the_location_installed() {
    let stack = Stack::new().await;
    let (sim, api, app) = (&stack.sim, &stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let (mint_api, minter) = start_mint(&stack).await;
    stack
        .seed_install(&InstallId::Company("co-c".into()), "co-c", 86_399)
        .await;
    sim.add_locations("co-c", &[("loc-c1", "C1")]);
    assert_eq!(served(&mint_api, "loc-c1", "co-c").await, "minted");

    // Both events in one whole second, 300 ms apart.
    while now_millis() % 1000 > 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = now_millis() + 50;
    tokio::time::sleep(Duration::from_millis(60)).await;
    send(
        api,
        &stack,
        &targeted(&app, "UNINSTALL", ("locationId", "loc-c1"), None, s),
    )
    .await
    .accepted("uninstalled");
    assert!(
        served(&mint_api, "loc-c1", "co-c")
            .await
            .contains("AppUninstalled")
    );
    send(api, &stack, &install_event(&app, "co-c", "loc-c1", s + 300))
        .await
        .accepted("location_installed");
    assert_eq!(served(&mint_api, "loc-c1", "co-c").await, "minted");
    // Without companyId too: the link names the company.
    let r = mint(&mint_api, json!({"locationId": "loc-c1"}))
        .await
        .expect("served");
    assert_eq!(r["source"], "cache", "{r}");
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

/// An older PLAN_CHANGE delivered late keeps the newer plan; a plan for a
/// location with no grant yet is kept and given to the grant when it appears.
#[tokio::test(flavor = "multi_thread")]
async fn plan_changes_are_ordered_and_a_plan_waits_for_its_grant() {
    let stack = Stack::new().await;
    let (api, app) = (&stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let company = InstallId::Company("co-d".into());
    stack.seed_install(&company, "co-d", 86_399).await;

    let t = now_millis();
    let a = send(
        api,
        &stack,
        &targeted(
            &app,
            "PLAN_CHANGE",
            ("companyId", "co-d"),
            Some("plan-new"),
            t,
        ),
    )
    .await;
    a.accepted("plan_changed");
    assert_eq!(a.body["grants"], json!(["company#co-d"]), "{a:?}");
    let before = stack.items().await;
    let a = send(
        api,
        &stack,
        &targeted(
            &app,
            "PLAN_CHANGE",
            ("companyId", "co-d"),
            Some("plan-old"),
            t - 60_000,
        ),
    )
    .await;
    a.accepted("older");
    assert_eq!(a.body["target"], "company#co-d", "{a:?}");
    assert_eq!(
        stack.install(&company).await.info.plan_id.as_deref(),
        Some("plan-new")
    );
    // Only its webhook id was recorded.
    let grants_and_plans = |items: Vec<testkit::stack::Item>| -> Vec<testkit::stack::Item> {
        items
            .into_iter()
            .filter(|i| !i["pk"].as_s().unwrap().starts_with("webhook#"))
            .collect()
    };
    assert_eq!(
        grants_and_plans(stack.items().await),
        grants_and_plans(before),
        "an older plan changed nothing"
    );

    // No grant for loc-d9 yet: the plan is kept for it.
    let a = send(
        api,
        &stack,
        &targeted(
            &app,
            "PLAN_CHANGE",
            ("locationId", "loc-d9"),
            Some("plan-kept"),
            now_millis(),
        ),
    )
    .await;
    a.accepted("plan_kept");
    assert_eq!(a.body["grants"], json!([]), "{a:?}");
    let pair = TokenPair {
        access_token: SecretString::new("at-d9"),
        refresh_token: SecretString::new("rt-d9"),
        expires_at: now_millis() / 1000 + 86_399,
    };
    let info = GrantInfo {
        user_type: Some(UserType::Location),
        company_id: Some("co-d".into()),
        location_id: Some("loc-d9".into()),
        ..GrantInfo::default()
    };
    let stored = stack
        .store()
        .save_grant(&InstallId::Minted("loc-d9".into()), &pair, &info, "minted")
        .await
        .expect("saved");
    assert_eq!(stored.info.plan_id.as_deref(), Some("plan-kept"));
    stack.assert_logs_clean(&hook.logs(), &[]).await;
}

/// HighLevel's retry of a delivery that failed: the UNINSTALL was first sent
/// an hour ago and answered 503 (the store was down); the retries carry the
/// same bytes, so the same hour-old timestamp. Applied once, on the retry;
/// a further redelivery is a 2xx duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_retried_an_hour_later_is_applied_once() {
    let stack = Stack::new().await;
    let (sim, app) = (&stack.sim, stack.sim.app_id());
    let (mint_api, minter) = start_mint(&stack).await;
    stack
        .seed_install(&InstallId::Company("co-e".into()), "co-e", 86_399)
        .await;
    sim.add_locations("co-e", &[("loc-e1", "E1")]);
    assert_eq!(served(&mint_api, "loc-e1", "co-e").await, "minted");
    let minted = InstallId::Minted("loc-e1".into());
    let hour_ago = now_millis() - 3_600_000;
    // Installed before the UNINSTALL was first sent.
    stack.backdate_install(&minted, hour_ago - 60_000).await;
    stack
        .backdate_install(&InstallId::Company("co-e".into()), hour_ago - 60_000)
        .await;
    stack
        .backdate_link("co-e", "loc-e1", hour_ago - 60_000)
        .await;

    // The store fails every write while `down` is set.
    let down = Arc::new(AtomicBool::new(true));
    let d2 = down.clone();
    let proxy = store_fault_proxy(Arc::new(move |op: &str, _: &[u8]| {
        d2.load(Ordering::SeqCst) && op == "UpdateItem"
    }))
    .await;
    let api = RuntimeApi::start().await.unwrap();
    let hook = spawn_webhook(&stack, &api, &[("AWS_ENDPOINT_URL_DYNAMODB", proxy)]);
    let event = targeted(&app, "UNINSTALL", ("locationId", "loc-e1"), None, hour_ago);
    let delivery: Delivery = sim.delivery_of(&event);
    let schedule = Schedule::highlevel().scaled(60_000);
    let bodies = std::sync::Mutex::new(Vec::new());
    let receipt = courier::deliver(&schedule, &delivery, |d| {
        let (api, down, bodies) = (&api, down.clone(), &bodies);
        async move {
            let a = deliver(api, &d).await;
            bodies.lock().unwrap().push(a.body.clone());
            // The store comes back after the first attempt.
            down.store(false, Ordering::SeqCst);
            a.status as u16
        }
    })
    .await;
    let bodies = bodies.into_inner().unwrap();
    assert_eq!(receipt.statuses, vec![503, 200], "{bodies:?}");
    assert_eq!(bodies[0]["error"], "Storage", "{bodies:?}");
    assert_eq!(bodies[1]["status"], "uninstalled", "{bodies:?}");
    let gone = stack.install(&minted).await;
    assert_eq!(gone.state, InstallState::Uninstalled);
    assert_eq!(gone.refresh_token.expose(), "", "tokens erased");

    // HighLevel delivers it once more (its answer was lost): a duplicate.
    let after = stack.items().await;
    let again = courier::deliver(&schedule, &delivery, |d| {
        let api = &api;
        async move { deliver(api, &d).await.status as u16 }
    })
    .await;
    assert_eq!(again.statuses, vec![200]);
    assert_eq!(stack.items().await, after, "the duplicate changed nothing");
    let a = deliver(&api, &delivery).await;
    a.accepted("duplicate");
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

/// A burst of INSTALL and UNINSTALL events for many locations, scrambled
/// and half of them delivered twice, two at a time: every answer is a 2xx,
/// and every location ends as its newest event says.
#[tokio::test(flavor = "multi_thread")]
async fn scrambled_duplicated_events_end_as_the_newest_event_says() {
    let stack = Stack::new().await;
    let (api, app) = (&stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let t0 = now_millis() - 10_000;
    let mut events = Vec::new();
    let mut expected = Vec::new();
    for i in 0..16 {
        let loc = format!("loc-s{i}");
        events.push(install_event(&app, "co-s", &loc, t0 + i));
        events.push(targeted(
            &app,
            "UNINSTALL",
            ("locationId", &loc),
            None,
            t0 + 1_000 + i,
        ));
        // Even locations are installed again last; odd ones stay uninstalled.
        if i % 2 == 0 {
            events.push(install_event(&app, "co-s", &loc, t0 + 2_000 + i));
        }
        let state = if i % 2 == 0 {
            LinkState::Installed
        } else {
            LinkState::Uninstalled
        };
        expected.push((loc, state, t0 + if i % 2 == 0 { 2_000 } else { 1_000 } + i));
    }
    let deliveries: Vec<Delivery> = events.iter().map(|e| stack.sim.delivery_of(e)).collect();
    let scrambled = courier::scrambled(&deliveries, 0.5);
    assert!(scrambled.len() > deliveries.len());
    for pair in scrambled.chunks(2) {
        let answers = futures_like_join(api, pair).await;
        for a in answers {
            assert_eq!(a.status, 200, "{a:?}");
        }
    }
    for (loc, state, at_ms) in expected {
        let link = stack.store().link_of(&loc).await.unwrap().unwrap();
        assert_eq!((link.state, link.at_ms), (state, at_ms), "{loc}: {link:?}");
    }
    stack.assert_logs_clean(&hook.logs(), &[]).await;
}

/// Delivers up to two at once (the runtime emulator serves one function
/// process; two deliveries queue there as concurrent HighLevel posts would).
async fn futures_like_join(api: &RuntimeApi, ds: &[Delivery]) -> Vec<Answer> {
    match ds {
        [a] => vec![deliver(api, a).await],
        [a, b] => {
            let (x, y) = tokio::join!(deliver(api, a), deliver(api, b));
            vec![x, y]
        }
        _ => unreachable!("chunks of two"),
    }
}

/// HighLevel's clock may run ahead of ours (an UNINSTALL stamped two
/// minutes from now is accepted as skew). A reinstall through the callback
/// right after it is still the newest word on the location: served.
#[tokio::test(flavor = "multi_thread")]
async fn a_reinstall_after_an_uninstall_stamped_ahead_of_our_clock_is_served() {
    let stack = Stack::new().await;
    let (sim, api, app) = (&stack.sim, &stack.api, stack.sim.app_id());
    let hook = spawn_webhook(&stack, api, &[]);
    let (mint_api, minter) = start_mint(&stack).await;
    let cb_api = RuntimeApi::start().await.unwrap();
    let cb = stack.spawn_on(&cb_api, "oauth-callback", &[("GHL_USER_TYPE", "Location")]);
    let consent = ConsentTarget {
        user_type: SimUserType::Location,
        company_id: "co-f".into(),
        location_id: Some("loc-f1".into()),
        deny: false,
    };
    let install = async || {
        let code = install_through_callback(&stack, &cb_api, &consent).await;
        sim.take_webhooks();
        code
    };
    let first = install().await;
    send(
        api,
        &stack,
        &targeted(
            &app,
            "UNINSTALL",
            ("locationId", "loc-f1"),
            None,
            now_millis() + 120_000,
        ),
    )
    .await
    .accepted("uninstalled");
    let own = InstallId::Location("loc-f1".into());
    assert_eq!(stack.install(&own).await.state, InstallState::Uninstalled);
    let second = install().await;
    let again = stack.install(&own).await;
    assert_eq!(again.state, InstallState::Active);
    assert!(again.lifecycle_at_ms > now_millis() + 60_000, "{again:?}");
    let r = mint(&mint_api, json!({"locationId": "loc-f1"}))
        .await
        .expect("the reinstalled location is served");
    assert_eq!(r["source"], "location-install", "{r}");
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    logs.extend(cb.logs());
    stack.assert_logs_clean(&logs, &[&first, &second]).await;
}
