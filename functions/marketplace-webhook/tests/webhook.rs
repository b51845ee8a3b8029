//! `marketplace-webhook` run as a real process under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator, over real sockets:
//! HighLevel's signed INSTALL / UNINSTALL / PLAN_CHANGE deliveries, as the
//! simulator queues them or as a test crafts them, arrive as Function URL
//! POST events.

mod common;

use common::*;
use ghl_sim::{ConsentTarget, Sim, SimConfig, UserType as SimUserType};
use serde_json::{Value, json};
use shared::model::{InstallId, InstallState, TokenPair, now_millis};
use shared::store::LinkState;
use std::time::{Duration, Instant};
use testkit::stack::{Stack, function_url_event, scheduled_event};
use testkit::{FunctionProcess, InvokeOptions, RuntimeApi, join_all};

#[test]
fn iso8601_matches_known_instants() {
    assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601_ms(1_796_051_568_123), "2026-11-30T15:12:48.123Z");
    assert_eq!(iso8601_ms(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
}

// ---------------------------------------------------------------------------
// 1. Signatures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn signatures_are_verified_over_the_exact_bytes_received() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let app = sim.app_id();
    let f = spawn_webhook(&stack, &stack.api, &[]);
    let api = &stack.api;
    let other = Sim::start(SimConfig::default())
        .await
        .expect("a second simulator starts");

    // Refused deliveries, each leaving the table exactly as it was.
    let before = stack.items().await;
    let body = bytes(&install_event(&app, "co-sig", "loc-sig-1", now_millis()));
    let good_sig = sim.sign(&body);
    let rsa_sig = sim.rsa_sign(&body);
    let mut tampered = body.clone();
    let at = tampered
        .windows(9)
        .position(|w| w == b"loc-sig-1")
        .expect("the body names the location")
        + 8;
    tampered[at] = b'2';
    // (what, body, headers, error, message says)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no signature",
            body.clone(),
            vec![],
            "MissingSignature",
            "missing",
        ),
        (
            "blank signature",
            body.clone(),
            vec![("x-ghl-signature", "  ".into())],
            "MissingSignature",
            "missing",
        ),
        (
            "signed with another key",
            body.clone(),
            vec![("x-ghl-signature", other.sign(&body))],
            "BadSignature",
            "does not match",
        ),
        (
            "one byte changed after signing",
            tampered.clone(),
            vec![("x-ghl-signature", good_sig.clone())],
            "BadSignature",
            "does not match",
        ),
        (
            "signature not base64",
            body.clone(),
            vec![("x-ghl-signature", "not base64!".into())],
            "BadSignature",
            "not base64",
        ),
        (
            "legacy RSA signature alone, RSA not configured",
            body.clone(),
            vec![("x-wh-signature", rsa_sig.clone())],
            "MissingSignature",
            "x-ghl-signature",
        ),
    ];
    for (what, b, headers, error, says) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = post(api, b, &h, false).await;
        a.refused(401, error, says);
        assert_eq!(stack.items().await, before, "{what} changed the table");
    }
    // The one-byte change is refused however it travels.
    let a = post(api, &tampered, &[("x-ghl-signature", &good_sig)], true).await;
    a.refused(401, "BadSignature", "does not match");
    assert_eq!(stack.items().await, before);

    // The valid delivery is applied.
    let a = post(api, &body, &[("x-ghl-signature", &good_sig)], false).await;
    a.accepted("location_installed");
    let link = stack
        .store()
        .link_of("loc-sig-1")
        .await
        .unwrap()
        .expect("linked");
    assert_eq!(
        (link.company_id.as_str(), link.state, link.source.as_str()),
        ("co-sig", LinkState::Installed, "webhook")
    );

    // Bytes a re-serialisation would change (escapes, odd spacing, key order,
    // a trailing newline) verify as sent, as text and base64-encoded.
    let odd = |loc: &str| {
        format!(
            "{{ \"webhookId\" : \"{}\",\"type\":\"INSTALL\",  \"appId\":\"{app}\",\n\t\"companyName\":\"Ag\\u00eancia S\u{e3}o Paulo \u{2713}\",\"installType\":\"Location\",\"locationId\":\"{loc}\",\"companyId\":\"co-sig\",\"timestamp\":\"{}\"}}\n",
            fresh_webhook_id(),
            iso8601_ms(now_millis())
        )
        .into_bytes()
    };
    let text = odd("loc-sig-2");
    post_signed(api, sim, &text)
        .await
        .accepted("location_installed");
    let encoded = odd("loc-sig-3");
    let sig = sim.sign(&encoded);
    let a = post(api, &encoded, &[("x-ghl-signature", &sig)], true).await;
    a.accepted("location_installed");
    let linked: Vec<String> = stack
        .store()
        .links_of("co-sig")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.location_id)
        .collect();
    assert_eq!(linked, ["loc-sig-1", "loc-sig-2", "loc-sig-3"]);

    // The legacy RSA scheme, once configured, is a fallback for deliveries
    // without x-ghl-signature only.
    let rsa_api = RuntimeApi::start().await.unwrap();
    let rsa = spawn_webhook(
        &stack,
        &rsa_api,
        &[("GHL_WEBHOOK_RSA_PUBLIC_KEY", sim.webhook_rsa_public_key())],
    );
    let body = bytes(&install_event(&app, "co-sig", "loc-sig-4", now_millis()));
    let before = stack.items().await;
    let other_rsa = {
        // The same fixed RSA key signs in every simulator: sign other bytes.
        let mut b = body.clone();
        b.push(b' ');
        sim.rsa_sign(&b)
    };
    post(&rsa_api, &body, &[("x-wh-signature", &other_rsa)], false)
        .await
        .refused(401, "BadSignature", "x-wh-signature");
    post(
        &rsa_api,
        &body,
        &[
            ("x-ghl-signature", &other.sign(&body)),
            ("x-wh-signature", &sim.rsa_sign(&body)),
        ],
        false,
    )
    .await
    .refused(401, "BadSignature", "x-ghl-signature");
    assert_eq!(
        stack.items().await,
        before,
        "refused RSA deliveries changed the table"
    );
    post(
        &rsa_api,
        &body,
        &[("x-wh-signature", &sim.rsa_sign(&body))],
        false,
    )
    .await
    .accepted("location_installed");
    assert!(stack.store().link_of("loc-sig-4").await.unwrap().is_some());

    // The key configured as a PEM block works the same.
    let pem_api = RuntimeApi::start().await.unwrap();
    let pem = stack.spawn_on(
        &pem_api,
        BIN,
        &[("GHL_WEBHOOK_PUBLIC_KEY", &sim.webhook_public_key_pem())],
    );
    let body = bytes(&install_event(&app, "co-sig", "loc-sig-5", now_millis()));
    post(
        &pem_api,
        &body,
        &[("x-ghl-signature", &other.sign(&body))],
        false,
    )
    .await
    .refused(401, "BadSignature", "does not match");
    post_signed(&pem_api, sim, &body)
        .await
        .accepted("location_installed");
    assert!(stack.store().link_of("loc-sig-5").await.unwrap().is_some());

    let mut logs = f.logs();
    logs.extend(rsa.logs());
    logs.extend(pem.logs());
    assert!(
        logs.iter()
            .any(|l| l.contains("webhook answered") && l.contains("BadSignature")),
        "refusals are logged"
    );
    stack.assert_logs_clean(&logs, &[]).await;
}

// ---------------------------------------------------------------------------
// 2. Replay protection, app, method and shape
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stale_replayed_foreign_and_malformed_deliveries_change_nothing() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let app = sim.app_id();
    let f = spawn_webhook(&stack, &stack.api, &[]);
    let api = &stack.api;
    let before = stack.items().await;

    // Older than HighLevel's whole retry schedule (48 h by default), or
    // further ahead than clock skew (300 s).
    const HOUR_MS: i64 = 3_600_000;
    for (what, offset_ms, status, error, says) in [
        ("old", -49 * HOUR_MS, 400, "Stale", "at most 172800 s"),
        ("ahead", 600_000, 400, "FromTheFuture", "at most 300 s"),
    ] {
        let body = bytes(&install_event(
            &app,
            "co-r",
            "loc-r1",
            now_millis() + offset_ms,
        ));
        post_signed(api, sim, &body)
            .await
            .refused(status, error, says);
        assert_eq!(
            stack.items().await,
            before,
            "a refused ({what}) delivery changed the table"
        );
    }
    // The same timestamp as epoch milliseconds is read the same way.
    let mut v = install_event(&app, "co-r", "loc-r1", 0);
    v["timestamp"] = json!(now_millis() - 49 * HOUR_MS);
    post_signed(api, sim, &bytes(&v))
        .await
        .refused(400, "Stale", "172800 s");

    // Another app's event, correctly signed.
    let body = bytes(&install_event("other-app", "co-r", "loc-r1", now_millis()));
    post_signed(api, sim, &body)
        .await
        .refused(403, "WrongApp", "other-app");

    // Malformed bodies, correctly signed.
    for (body, says) in [
        (&b"{\"type\":\"INSTALL\",\"appId\""[..], "invalid JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"", "invalid JSON"),
    ] {
        post_signed(api, sim, body)
            .await
            .refused(400, "Malformed", says);
    }
    let mut v = install_event(&app, "co-r", "loc-r1", now_millis());
    v.as_object_mut().unwrap().remove("webhookId");
    post_signed(api, sim, &bytes(&v))
        .await
        .refused(400, "Malformed", "webhookId is missing");
    let mut v = install_event(&app, "co-r", "loc-r1", now_millis());
    v["locationId"] = json!("../loc");
    post_signed(api, sim, &bytes(&v))
        .await
        .refused(400, "Malformed", "locationId is not");
    let mut v = install_event(&app, "co-r", "loc-r1", now_millis());
    v.as_object_mut().unwrap().remove("locationId");
    post_signed(api, sim, &bytes(&v))
        .await
        .refused(400, "Malformed", "INSTALL without locationId");

    // Too large, whatever its signature.
    let big = vec![b' '; 70 * 1024];
    post_signed(api, sim, &big)
        .await
        .refused(413, "TooLarge", "71680 bytes");

    // Another method.
    for method in ["GET", "PUT"] {
        let a = invoke_url(api, function_url_event(method, &[])).await;
        a.refused(405, "MethodNotAllowed", "POST");
        assert_eq!(a.headers["allow"], "POST");
    }
    assert_eq!(stack.items().await, before, "a refusal changed the table");

    // A delivery applied once; its redelivery is a 2xx (HighLevel counts
    // anything else as a failure and retries it) and changes nothing.
    let body = bytes(&install_event(&app, "co-r", "loc-r1", now_millis()));
    post_signed(api, sim, &body)
        .await
        .accepted("location_installed");
    let after_first = stack.items().await;
    assert_ne!(after_first, before);
    post_signed(api, sim, &body).await.accepted("duplicate");
    assert_eq!(
        stack.items().await,
        after_first,
        "the replay changed the table"
    );
    // Its id is what is remembered: new bytes under the same webhookId change nothing either.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["locationId"] = json!("loc-r2");
    post_signed(api, sim, &bytes(&v))
        .await
        .accepted("duplicate");
    assert_eq!(stack.items().await, after_first);
    assert!(stack.store().link_of("loc-r2").await.unwrap().is_none());

    // A type this project does not act on is acknowledged.
    let v = json!({"type": "EXTERNAL_AUTH_CONNECTED", "appId": app, "companyId": "co-r",
        "timestamp": iso8601_ms(now_millis()), "webhookId": fresh_webhook_id()});
    post_signed(api, sim, &bytes(&v)).await.accepted("ignored");

    stack.assert_logs_clean(&f.logs(), &[]).await;
}

// ---------------------------------------------------------------------------
// 3. INSTALL and the OAuth callback, in either order
// ---------------------------------------------------------------------------

async fn install_in_order(webhook_first: bool) {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let (company, loc) = ("co-o", "loc-o1");
    stack
        .seed_install(&InstallId::Company(company.into()), company, 86_399)
        .await;
    let hook = spawn_webhook(&stack, &stack.api, &[]);
    let cb_api = RuntimeApi::start().await.unwrap();
    let cb = stack.spawn_on(&cb_api, "oauth-callback", &[("GHL_USER_TYPE", "Location")]);
    let mint_api = RuntimeApi::start().await.unwrap();
    let minter = stack.spawn_on(&mint_api, "token-mint", &[]);

    let code = stack
        .consent_code(&ConsentTarget {
            user_type: SimUserType::Location,
            company_id: company.into(),
            location_id: Some(loc.into()),
            deny: false,
        })
        .await;
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].kind, "INSTALL");

    let callback = async || {
        let out = cb_api
            .invoke_with(
                function_url_event("GET", &[("code", &code)]),
                InvokeOptions::with_deadline(Duration::from_secs(30)),
            )
            .await
            .expect("the callback answers");
        assert_eq!(out["statusCode"], 200, "{out}");
    };
    if webhook_first {
        deliver(&stack.api, &queued[0])
            .await
            .accepted("location_installed");
        let link = stack.store().link_of(loc).await.unwrap().expect("linked");
        assert_eq!(link.source, "webhook");
        callback().await;
    } else {
        callback().await;
        deliver(&stack.api, &queued[0])
            .await
            .accepted("location_installed");
    }

    let link = stack.store().link_of(loc).await.unwrap().expect("linked");
    assert_eq!(
        (link.company_id.as_str(), link.state),
        (company, LinkState::Installed),
        "{link:?}"
    );
    let links = stack.store().links_of(company).await.unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(
        (links[0].location_id.as_str(), links[0].state),
        (loc, LinkState::Installed)
    );
    let own = stack.install(&InstallId::Location(loc.into())).await;
    assert_eq!(own.state, InstallState::Active);
    assert_eq!(own.info.company_id.as_deref(), Some(company));
    assert!(sim.ledger().is_live(own.refresh_token.expose()));

    // The mint serves the location without being told its company.
    let served = mint(&mint_api, json!({"locationId": loc}))
        .await
        .expect("served without companyId");
    assert_eq!(served["companyId"], company, "{served}");
    assert_eq!(served["locationId"], loc);
    assert_eq!(served["source"], "location-install", "{served}");
    assert_eq!(
        served["accessToken"].as_str(),
        Some(own.access_token.expose())
    );

    let mut logs = hook.logs();
    logs.extend(cb.logs());
    logs.extend(minter.logs());
    stack.assert_logs_clean(&logs, &[&code]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_webhook_before_the_callback_links_the_location() {
    install_in_order(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_webhook_after_the_callback_links_the_location() {
    install_in_order(false).await;
}

// ---------------------------------------------------------------------------
// 4. A bulk install's burst
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_install_burst_is_linked_without_calling_highlevel() {
    const N: usize = 500;
    const AT_ONCE: usize = 50;
    const PROCESSES: usize = 8;
    let stack = Stack::new().await;
    let sim = &stack.sim;
    stack
        .seed_install(&InstallId::Company("co-bulk".into()), "co-bulk", 86_399)
        .await;
    let procs: Vec<FunctionProcess> = (0..PROCESSES)
        .map(|_| spawn_webhook(&stack, &stack.api, &[]))
        .collect();
    let locations = sim.bulk_install("co-bulk", N);
    let deliveries = sim.take_webhooks();
    assert_eq!((locations.len(), deliveries.len()), (N, N));
    assert!(deliveries.iter().all(|d| d.kind == "INSTALL"));
    let counters_before = counters(sim);

    let started = Instant::now();
    let mut answers = Vec::with_capacity(N);
    for batch in deliveries.chunks(AT_ONCE) {
        answers.extend(join_all(batch.iter().map(|d| deliver(&stack.api, d)).collect()).await);
    }
    // As HighLevel does: a 5xx (storage, when the shared moto is saturated)
    // is delivered again; nothing else is.
    let mut redelivered = 0;
    for _ in 0..3 {
        let retry: Vec<usize> = (0..N).filter(|&i| answers[i].status >= 500).collect();
        if retry.is_empty() {
            break;
        }
        redelivered += retry.len();
        let again = join_all(
            retry
                .iter()
                .map(|&i| deliver(&stack.api, &deliveries[i]))
                .collect(),
        )
        .await;
        for (i, a) in retry.into_iter().zip(again) {
            answers[i] = a;
        }
    }
    println!("burst: {redelivered} deliveries answered 5xx and were delivered again");
    let took = started.elapsed();
    println!(
        "burst: {N} INSTALL webhooks, {AT_ONCE} at a time, {PROCESSES} processes: {:.2} s ({:.1} ms per delivery)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / N as f64
    );
    for a in &answers {
        a.accepted("location_installed");
    }
    let links = stack.store().links_of("co-bulk").await.unwrap();
    assert_eq!(links.len(), N);
    assert!(links.iter().all(|l| l.state == LinkState::Installed));
    let mut linked: Vec<&str> = links.iter().map(|l| l.location_id.as_str()).collect();
    let mut expected: Vec<&str> = locations.iter().map(String::as_str).collect();
    linked.sort_unstable();
    expected.sort_unstable();
    assert_eq!(linked, expected);
    assert_eq!(counters(sim), counters_before, "the burst called HighLevel");

    // One of them is minted without companyId: the link names its company.
    let mint_api = RuntimeApi::start().await.unwrap();
    let minter = stack.spawn_on(&mint_api, "token-mint", &[]);
    let loc = &locations[N / 2];
    let served = mint(&mint_api, json!({"locationId": loc}))
        .await
        .expect("served");
    assert_eq!(served["source"], "minted", "{served}");
    assert_eq!(served["companyId"], "co-bulk");
    assert_eq!(sim.counters().location_mints.get(loc), Some(&1));

    let mut logs: Vec<String> = procs.iter().flat_map(FunctionProcess::logs).collect();
    logs.extend(minter.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}

// ---------------------------------------------------------------------------
// 5. UNINSTALL: grants erased, the mint and the sweep stand down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_erases_the_grants_and_the_mint_and_sweep_stand_down() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let hook = spawn_webhook(&stack, &stack.api, &[]);
    let mint_api = RuntimeApi::start().await.unwrap();
    let minter = stack.spawn_on(&mint_api, "token-mint", &[]);
    let sweep_api = RuntimeApi::start().await.unwrap();
    let sweeper = stack.spawn_on(&sweep_api, "refresh-sweep", &[]);
    let sweep = async || {
        sweep_api
            .invoke_with(
                scheduled_event(),
                InvokeOptions::with_deadline(Duration::from_secs(60)),
            )
            .await
            .expect("the sweep answers")
    };

    // co-u: a company grant near expiry (the first mint refreshes it) and
    // two minted location grants; the company also gets a journal entry.
    let company = InstallId::Company("co-u".into());
    stack.seed_install(&company, "co-u", 300).await;
    sim.add_locations("co-u", &[("loc-u1", "U1"), ("loc-u2", "U2")]);
    for loc in ["loc-u1", "loc-u2"] {
        let r = mint(&mint_api, json!({"locationId": loc, "companyId": "co-u"}))
            .await
            .expect("minted");
        assert_eq!(r["source"], "minted", "{r}");
    }
    // co-v: another company, one of whose locations is uninstalled later.
    let other = InstallId::Company("co-v".into());
    stack.seed_install(&other, "co-v", 86_399).await;
    sim.add_locations("co-v", &[("loc-v1", "V1"), ("loc-v2", "V2")]);
    for loc in ["loc-v1", "loc-v2"] {
        let r = mint(&mint_api, json!({"locationId": loc, "companyId": "co-v"}))
            .await
            .expect("minted");
        assert_eq!(r["source"], "minted", "{r}");
    }
    let gone = [
        company.clone(),
        InstallId::Minted("loc-u1".into()),
        InstallId::Minted("loc-u2".into()),
    ];
    // Due now, so that only the uninstall keeps the sweep off them.
    for id in &gone {
        stack.make_due(id).await;
    }
    let mut plain = Vec::new();
    for id in &gone {
        let i = stack.install(id).await;
        assert_eq!(i.state, InstallState::Active);
        plain.push(i.access_token.expose().to_owned());
        plain.push(i.refresh_token.expose().to_owned());
    }
    // A journal entry as a commit whose answer timed out (but which landed)
    // leaves it: the pair written to the journal as the fallback.
    let current = stack.install(&company).await;
    stack
        .store()
        .write_journal(
            &company,
            current.version,
            &TokenPair {
                access_token: current.access_token.clone(),
                refresh_token: current.refresh_token.clone(),
                expires_at: current.expires_at,
            },
            "commit-fallback",
        )
        .await
        .expect("journal written");
    let items = stack.items().await;
    assert!(
        items_of(&items, std::slice::from_ref(&company))
            .iter()
            .any(|i| i["sk"].as_s().unwrap().starts_with("journal#")),
        "the company has a journal entry"
    );
    let sealed = sealed_tokens(&items_of(&items, &gone));
    assert!(
        sealed.len() >= 8,
        "grants and journal carry tokens: {}",
        sealed.len()
    );
    let company_chain_tokens: Vec<String> = sim
        .ledger()
        .tokens
        .into_iter()
        .filter(|t| t.company_id == "co-u")
        .map(|t| t.refresh_token)
        .collect();
    assert!(company_chain_tokens.len() >= 4);

    // HighLevel uninstalls the app from the agency and says so.
    sim.uninstall(SimUserType::Company, "co-u");
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].kind, "UNINSTALL");
    deliver(&stack.api, &queued[0])
        .await
        .accepted("uninstalled");

    for id in &gone {
        let i = stack.install(id).await;
        assert_eq!(i.state, InstallState::Uninstalled, "{id}");
        assert!(i.due_at.is_none(), "{id} is still due");
        assert!(
            i.state_reason
                .as_deref()
                .unwrap_or_default()
                .contains("UNINSTALL"),
            "{id}: {:?}",
            i.state_reason
        );
    }
    let items = stack.items().await;
    for item in items_of(&items, &gone) {
        for field in ["access_token", "refresh_token", "due_at", "due_shard"] {
            assert!(
                !item.contains_key(field),
                "{field} left on {:?}/{:?}",
                item["pk"],
                item["sk"]
            );
        }
    }
    let dump = format!("{items:?}");
    for t in sealed.iter().chain(&plain).chain(&company_chain_tokens) {
        assert!(
            !dump.contains(t.as_str()),
            "a token from before the uninstall is still in the table (fp {})",
            shared::redact::fingerprint(t.as_bytes())
        );
    }
    for loc in ["loc-u1", "loc-u2"] {
        let link = stack.store().link_of(loc).await.unwrap().expect("linked");
        assert_eq!(
            (link.company_id.as_str(), link.state),
            ("co-u", LinkState::Uninstalled)
        );
    }

    // The mint answers AppUninstalled, with or without companyId, and for a
    // location of the company it never minted.
    let mints_before = counters(sim);
    for req in [
        json!({"locationId": "loc-u1"}),
        json!({"locationId": "loc-u2", "companyId": "co-u"}),
        json!({"locationId": "loc-u3", "companyId": "co-u"}),
    ] {
        let (kind, message) = mint_error(mint(&mint_api, req.clone()).await);
        assert_eq!(kind, "AppUninstalled", "{req}: {message}");
        assert!(message.contains("uninstalled"), "{message}");
    }

    // The sweep looks at none of them and presents nothing.
    let ledger_before = presentations(sim);
    let summary = sweep().await;
    assert_eq!(summary["examined"], 0, "{summary}");
    assert_eq!(
        presentations(sim),
        ledger_before,
        "the sweep presented a token"
    );
    assert_eq!(counters(sim), mints_before, "HighLevel was called");

    // A location UNINSTALL for one location of another company: that
    // location only.
    let v1 = InstallId::Minted("loc-v1".into());
    let v2 = InstallId::Minted("loc-v2".into());
    let v2_before = stack.install(&v2).await;
    let other_before = stack.install(&other).await;
    sim.uninstall(SimUserType::Location, "loc-v1");
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1, "{queued:?}");
    deliver(&stack.api, &queued[0])
        .await
        .accepted("uninstalled");
    let i = stack.install(&v1).await;
    assert_eq!(i.state, InstallState::Uninstalled);
    let items = stack.items().await;
    for item in items_of(&items, std::slice::from_ref(&v1)) {
        assert!(!item.contains_key("access_token") && !item.contains_key("refresh_token"));
    }
    let link = stack.store().link_of("loc-v1").await.unwrap().unwrap();
    assert_eq!(
        (link.company_id.as_str(), link.state),
        ("co-v", LinkState::Uninstalled)
    );
    let link = stack.store().link_of("loc-v2").await.unwrap().unwrap();
    assert_eq!(link.state, LinkState::Installed);
    for (id, before) in [(&v2, &v2_before), (&other, &other_before)] {
        let now = stack.install(id).await;
        assert_eq!(now.state, InstallState::Active, "{id}");
        assert_eq!(now.version, before.version, "{id} was touched");
        assert_eq!(now.refresh_token.expose(), before.refresh_token.expose());
    }
    let (kind, _) = mint_error(
        mint(
            &mint_api,
            json!({"locationId": "loc-v1", "companyId": "co-v"}),
        )
        .await,
    );
    assert_eq!(kind, "AppUninstalled");
    let r = mint(&mint_api, json!({"locationId": "loc-v2"}))
        .await
        .expect("the other location is still served");
    assert_eq!(r["source"], "cache");

    // The sweep keeps the remaining grants alive and leaves the erased ones be.
    stack.make_due(&other).await;
    stack.make_due(&v2).await;
    let summary = sweep().await;
    assert_eq!(summary["examined"], 2, "{summary}");
    assert_eq!(summary["refreshed"], 2, "{summary}");
    let ledger = sim.ledger();
    for t in &ledger.tokens {
        let erased = t.company_id == "co-u" || t.location_id.as_deref() == Some("loc-v1");
        if erased {
            let before = ledger_before
                .iter()
                .find(|(rt, _, _)| rt == &t.refresh_token)
                .expect("no token was issued for an uninstalled grant");
            assert_eq!(
                t.presented, before.1,
                "an uninstalled grant's token was presented"
            );
        }
    }
    assert_eq!(ledger.presented_twice(), 0);

    let mut logs = hook.logs();
    logs.extend(minter.logs());
    logs.extend(sweeper.logs());
    stack
        .assert_logs_clean(&logs, &plain.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

// ---------------------------------------------------------------------------
// 6. PLAN_CHANGE
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn plan_change_updates_the_stored_plan() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let hook = spawn_webhook(&stack, &stack.api, &[]);
    let company = InstallId::Company("co-p".into());
    let own = InstallId::Location("loc-p".into());
    let seeded = stack.seed_install(&company, "co-p", 86_399).await;
    stack.seed_install(&own, "co-p", 86_399).await;
    assert_ne!(seeded.info.plan_id.as_deref(), Some("plan-gold"));

    sim.plan_change(SimUserType::Company, "co-p", "plan-gold");
    let queued = sim.take_webhooks();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].kind, "PLAN_CHANGE");
    deliver(&stack.api, &queued[0])
        .await
        .accepted("plan_changed");
    let after = stack.install(&company).await;
    assert_eq!(after.info.plan_id.as_deref(), Some("plan-gold"));
    assert_eq!(after.state, InstallState::Active);
    assert_eq!(after.version, seeded.version, "the tokens were not touched");
    assert_eq!(after.refresh_token.expose(), seeded.refresh_token.expose());
    assert_ne!(
        stack.install(&own).await.info.plan_id.as_deref(),
        Some("plan-gold"),
        "a company plan change is the company's"
    );

    // A location's plan: its own install; no minted grant is conjured up.
    sim.plan_change(SimUserType::Location, "loc-p", "plan-silver");
    let queued = sim.take_webhooks();
    deliver(&stack.api, &queued[0])
        .await
        .accepted("plan_changed");
    assert_eq!(
        stack.install(&own).await.info.plan_id.as_deref(),
        Some("plan-silver")
    );
    assert_eq!(
        stack.install(&company).await.info.plan_id.as_deref(),
        Some("plan-gold")
    );
    assert!(
        stack
            .store()
            .get(&InstallId::Minted("loc-p".into()))
            .await
            .unwrap()
            .is_none()
    );

    // Redelivered: a duplicate, nothing changes.
    let before = stack.items().await;
    deliver(&stack.api, &queued[0]).await.accepted("duplicate");
    assert_eq!(stack.items().await, before);

    // Without planId: malformed.
    let v = json!({"type": "PLAN_CHANGE", "appId": sim.app_id(), "companyId": "co-p",
        "timestamp": iso8601_ms(now_millis()), "webhookId": fresh_webhook_id()});
    post_signed(&stack.api, sim, &bytes(&v)).await.refused(
        400,
        "Malformed",
        "PLAN_CHANGE without planId",
    );
    assert_eq!(stack.items().await, before);

    stack.assert_logs_clean(&hook.logs(), &[]).await;
}

// ---------------------------------------------------------------------------
// Reinstall after an uninstall (README, states: `uninstalled` → "the
// customer installs again → active").
// ---------------------------------------------------------------------------

/// A location uninstalled and then installed again (a Location install
/// through the callback, and HighLevel's INSTALL) is served again.
#[tokio::test(flavor = "multi_thread")]
async fn a_location_installed_again_after_its_uninstall_is_served() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let hook = spawn_webhook(&stack, &stack.api, &[]);
    let mint_api = RuntimeApi::start().await.unwrap();
    let minter = stack.spawn_on(&mint_api, "token-mint", &[]);
    let cb_api = RuntimeApi::start().await.unwrap();
    let cb = stack.spawn_on(&cb_api, "oauth-callback", &[("GHL_USER_TYPE", "Location")]);
    stack
        .seed_install(&InstallId::Company("co-w".into()), "co-w", 86_399)
        .await;
    sim.add_locations("co-w", &[("loc-w1", "W1")]);
    let r = mint(
        &mint_api,
        json!({"locationId": "loc-w1", "companyId": "co-w"}),
    )
    .await
    .expect("minted");
    assert_eq!(r["source"], "minted");
    sim.uninstall(SimUserType::Location, "loc-w1");
    for d in sim.take_webhooks() {
        deliver(&stack.api, &d).await.accepted("uninstalled");
    }
    let (kind, _) = mint_error(mint(&mint_api, json!({"locationId": "loc-w1"})).await);
    assert_eq!(kind, "AppUninstalled");

    // The sub-account installs the app again, a moment later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let code = install_through_callback(
        &stack,
        &cb_api,
        &ConsentTarget {
            user_type: SimUserType::Location,
            company_id: "co-w".into(),
            location_id: Some("loc-w1".into()),
            deny: false,
        },
    )
    .await;
    for d in sim.take_webhooks() {
        deliver(&stack.api, &d).await.accepted("location_installed");
    }
    let own = stack.install(&InstallId::Location("loc-w1".into())).await;
    assert_eq!(own.state, InstallState::Active);
    let link = stack.store().link_of("loc-w1").await.unwrap().unwrap();
    assert_eq!(link.state, LinkState::Installed, "{link:?}");

    let served = mint(&mint_api, json!({"locationId": "loc-w1"})).await;
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    logs.extend(cb.logs());
    stack.assert_logs_clean(&logs, &[&code]).await;
    let served = served.expect("the reinstalled location is served");
    assert_eq!(served["source"], "location-install", "{served}");
}

/// An agency uninstalled and then installed again: its locations are minted
/// again from the new company grant.
#[tokio::test(flavor = "multi_thread")]
async fn a_company_installed_again_after_its_uninstall_mints_again() {
    let stack = Stack::new().await;
    let sim = &stack.sim;
    let hook = spawn_webhook(&stack, &stack.api, &[]);
    let mint_api = RuntimeApi::start().await.unwrap();
    let minter = stack.spawn_on(&mint_api, "token-mint", &[]);
    let cb_api = RuntimeApi::start().await.unwrap();
    let cb = stack.spawn_on(&cb_api, "oauth-callback", &[]);
    let company = InstallId::Company("co-x".into());
    stack.seed_install(&company, "co-x", 86_399).await;
    sim.add_locations("co-x", &[("loc-x1", "X1")]);
    let r = mint(
        &mint_api,
        json!({"locationId": "loc-x1", "companyId": "co-x"}),
    )
    .await
    .expect("minted");
    assert_eq!(r["source"], "minted");
    sim.uninstall(SimUserType::Company, "co-x");
    for d in sim.take_webhooks() {
        deliver(&stack.api, &d).await.accepted("uninstalled");
    }

    // The agency installs the app again, on the same sub-account.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.add_locations("co-x", &[("loc-x1", "X1")]);
    let code = install_through_callback(
        &stack,
        &cb_api,
        &ConsentTarget {
            user_type: SimUserType::Company,
            company_id: "co-x".into(),
            location_id: None,
            deny: false,
        },
    )
    .await;
    for d in sim.take_webhooks() {
        deliver(&stack.api, &d).await.accepted("company_installed");
    }
    let again = stack.install(&company).await;
    assert_eq!(again.state, InstallState::Active);
    let link = stack.store().link_of("loc-x1").await.unwrap().unwrap();
    assert_eq!(link.state, LinkState::Installed, "{link:?}");

    let served = mint(
        &mint_api,
        json!({"locationId": "loc-x1", "companyId": "co-x"}),
    )
    .await;
    let mut logs = hook.logs();
    logs.extend(minter.logs());
    logs.extend(cb.logs());
    stack.assert_logs_clean(&logs, &[&code]).await;
    let served = served.expect("a location of the reinstalled agency is served");
    assert_eq!(served["source"], "minted", "{served}");
}
