//! `oauth-callback` run as a real process under the Lambda Runtime API
//! emulator, against moto and the HighLevel simulator, over real sockets.

use ghl_sim::{ConsentTarget, Fault, UserType as SimUserType};
use serde_json::Value;
use shared::model::{InstallId, InstallState};
use std::time::Duration;
use testkit::stack::{Stack, function_url_event};
use testkit::{FunctionProcess, InvokeOptions};

fn company(id: &str) -> ConsentTarget {
    ConsentTarget {
        user_type: SimUserType::Company,
        company_id: id.into(),
        location_id: None,
        deny: false,
    }
}

fn location(company: &str, loc: &str) -> ConsentTarget {
    ConsentTarget {
        user_type: SimUserType::Location,
        company_id: company.into(),
        location_id: Some(loc.into()),
        deny: false,
    }
}

struct Answer {
    status: u64,
    body: String,
    headers: serde_json::Map<String, Value>,
}

async fn get(stack: &Stack, query: &[(&str, &str)]) -> Answer {
    call(stack, "GET", query).await
}

async fn call(stack: &Stack, method: &str, query: &[(&str, &str)]) -> Answer {
    let out = stack
        .api
        .invoke_with(
            function_url_event(method, query),
            InvokeOptions::with_deadline(Duration::from_secs(30)),
        )
        .await
        .expect("the function answers (never a function error)");
    Answer {
        status: out["statusCode"].as_u64().expect("statusCode"),
        body: out["body"].as_str().unwrap_or_default().to_owned(),
        headers: out["headers"].as_object().cloned().unwrap_or_default(),
    }
}

async fn start(stack: &Stack, extra: &[(&str, &str)]) -> FunctionProcess {
    stack.spawn("oauth-callback", extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn company_install_lands_encrypted_with_metadata() {
    let stack = Stack::new().await;
    stack
        .sim
        .add_locations("co-1", &[("loc-a", "A"), ("loc-b", "B")]);
    let f = start(&stack, &[("APP_NAME", "Acme Sync")]).await;
    let code = stack.consent_code(&company("co-1")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains("App installed") && a.body.contains("co-1"),
        "{}",
        a.body
    );
    assert_eq!(a.headers["referrer-policy"], "no-referrer");
    assert!(
        a.headers["content-security-policy"]
            .as_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(
        a.body.contains("Acme Sync is now installed for the agency"),
        "{}",
        a.body
    );
    assert!(
        a.body.contains("href=\"https://app.gohighlevel.com/\""),
        "{}",
        a.body
    );
    assert!(
        a.headers["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/html")
    );

    let install = stack.install(&InstallId::Company("co-1".into())).await;
    assert_eq!(install.state, InstallState::Active);
    assert_eq!(install.install_count, 1);
    assert_eq!(install.info.company_id.as_deref(), Some("co-1"));
    assert_eq!(
        install.info.approved_locations.as_ref().map(Vec::len),
        Some(2)
    );
    assert!(install.info.scope.is_some() && install.info.user_id.is_some());
    let now = shared::model::now_secs();
    assert!(
        (install.expires_at - (now + 86_399)).abs() < 30,
        "absolute expiry from expires_in"
    );
    assert!(install.due_at.unwrap() < install.expires_at);
    assert!(
        stack.sim.ledger().is_live(install.refresh_token.expose()),
        "the stored refresh token is HighLevel's live one"
    );

    // At rest, the tokens are ciphertext under key k1 and nothing else looks like a token.
    let items = stack.items().await;
    let raw = items
        .iter()
        .find(|i| i["pk"].as_s().unwrap() == "company#co-1")
        .unwrap();
    for field in ["access_token", "refresh_token"] {
        let v = raw[field].as_s().unwrap();
        assert!(v.starts_with("v2:k1:"), "{field} is not sealed");
        assert!(
            !v.contains(install.refresh_token.expose())
                && !v.contains(install.access_token.expose())
        );
    }
    assert_eq!(raw["company_id"].as_s().unwrap(), "co-1");
    // The code claim records the outcome, and the bulk install's two
    // approved locations are linked to the company (each under the company
    // and under the location); no other items.
    let keys: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i["pk"].as_s().unwrap().clone(),
                i["sk"].as_s().unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        6,
        "install + code claim + 2 x 2 links: {keys:?}"
    );
    for (pk, sk) in [
        ("company#co-1", "location#loc-a"),
        ("company#co-1", "location#loc-b"),
        ("location#loc-a", "company"),
        ("location#loc-b", "company"),
    ] {
        assert!(
            keys.contains(&(pk.to_owned(), sk.to_owned())),
            "{pk} {sk} missing: {keys:?}"
        );
    }
    assert!(
        a.body.contains("It covers 2 sub-accounts."),
        "the page says how far the install reaches: {}",
        a.body
    );
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
    assert!(!a.body.contains(&code));
}

#[tokio::test(flavor = "multi_thread")]
async fn location_install_is_stored_under_the_location() {
    let stack = Stack::new().await;
    let f = start(&stack, &[("GHL_USER_TYPE", "Location")]).await;
    let code = stack.consent_code(&location("co-2", "loc-9")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("sub-account") && a.body.contains("loc-9"));
    let install = stack.install(&InstallId::Location("loc-9".into())).await;
    assert_eq!(install.info.company_id.as_deref(), Some("co-2"));
    assert_eq!(install.info.location_id.as_deref(), Some("loc-9"));
    assert!(stack.sim.ledger().is_live(install.refresh_token.expose()));
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let stack = Stack::new().await;
    let f = start(&stack, &[]).await;
    let long = "a".repeat(600);
    // (method, query, expected status, expected message)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", vec![], 400, "no authorization code"),
        ("GET", vec![("code", "")], 400, "no authorization code"),
        ("GET", vec![("code", &long)], 400, "600 characters long"),
        (
            "GET",
            vec![
                ("error", "access_denied"),
                ("error_description", "The user denied access"),
            ],
            400,
            "not approved in HighLevel",
        ),
        (
            "POST",
            vec![("code", "abc")],
            405,
            "only accepts the GET request",
        ),
        (
            "DELETE",
            vec![("code", "abc")],
            405,
            "only accepts the GET request",
        ),
        (
            "GET",
            vec![("code", "not-a-real-code")],
            400,
            "did not accept the authorization code",
        ),
    ];
    let before = stack.items().await;
    for (method, query, status, message) in cases {
        let a = call(&stack, method, &query).await;
        assert_eq!(a.status, status, "{method} {query:?}: {}", a.body);
        assert!(
            a.body.contains(message),
            "{method} {query:?}: page lacks {message:?}: {}",
            a.body
        );
        assert!(a.body.contains("role=\"alert\""));
        assert_eq!(
            stack.items().await,
            before,
            "{method} {query:?} changed the table"
        );
    }
    // Nothing from the request is echoed (anyone can craft these links).
    let denied = get(
        &stack,
        &[
            ("error", "access_denied"),
            (
                "error_description",
                "Your account is locked, call +1 555 0100",
            ),
        ],
    )
    .await;
    assert!(!denied.body.contains("555 0100"), "{}", denied.body);
    let a = call(&stack, "POST", &[("code", "abc")]).await;
    assert_eq!(a.headers["allow"], "GET, HEAD");
    // HEAD is a probe: no exchange, nothing stored.
    let code = stack.consent_code(&company("co-3")).await;
    let a = call(&stack, "HEAD", &[("code", &code)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(stack.items().await, before);
    assert_eq!(stack.sim.counters().code_exchanges, 0);
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn highlevel_down_or_slow_is_a_gateway_error_and_stores_nothing() {
    let stack = Stack::new().await;
    let _f = start(
        &stack,
        &[
            ("GHL_HTTP_TIMEOUT_MS", "800"),
            ("GHL_CONNECT_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let before = stack.items().await;

    stack.sim.push_fault(Fault::ServerError { status: 503 });
    let code = stack.consent_code(&company("co-4")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(
        a.body
            .contains("HighLevel could not complete the installation right now."),
        "{}",
        a.body
    );
    for internal in ["unavailable", "(5", "503"] {
        assert!(
            !a.body.contains(internal),
            "the page shows {internal:?}: {}",
            a.body
        );
    }
    assert_eq!(stack.items().await, before);

    // The 5xx consumed nothing: the same code works on retry.
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let before = stack.items().await;
    stack.sim.push_fault(Fault::Latency { ms: 2_000 });
    let code = stack.consent_code(&company("co-5")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(a.body.contains("did not answer in time"));
    assert_eq!(stack.items().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_code_twice_exchanges_once_and_shows_the_same_page() {
    let stack = Stack::new().await;
    // Two processes: two concurrent Lambda execution environments.
    let f1 = start(&stack, &[]).await;
    let f2 = start(&stack, &[]).await;
    // Slow HighLevel so both requests overlap.
    stack.sim.set_faults(ghl_sim::Faults {
        latency_ms: 400,
        ..Default::default()
    });
    let code = stack.consent_code(&company("co-6")).await;
    let q = [("code", code.as_str())];
    let (a, b) = tokio::join!(get(&stack, &q), get(&stack, &q));
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.body, b.body);
    assert_eq!(a.body, b.body, "both requests show the same page");
    let c = get(&stack, &[("code", &code)]).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body, a.body, "a browser refresh shows it again");
    assert_eq!(
        stack.sim.counters().code_exchanges,
        1,
        "HighLevel saw one exchange"
    );
    let install = stack.install(&InstallId::Company("co-6".into())).await;
    assert_eq!(install.install_count, 1);
    assert!(stack.sim.ledger().is_live(install.refresh_token.expose()));
    let mut logs = f1.logs();
    logs.extend(f2.logs());
    stack.assert_logs_clean(&logs, &[&code]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reinstall_replaces_tokens_and_keeps_identity() {
    let stack = Stack::new().await;
    let f = start(&stack, &[]).await;
    let first = stack.consent_code(&company("co-7")).await;
    assert_eq!(get(&stack, &[("code", &first)]).await.status, 200);
    let id = InstallId::Company("co-7".into());
    let one = stack.install(&id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = stack.consent_code(&company("co-7")).await;
    let a = get(&stack, &[("code", &second)]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("App reinstalled"), "{}", a.body);
    let two = stack.install(&id).await;
    assert_eq!(
        two.installed_at, one.installed_at,
        "first-install time kept"
    );
    assert!(two.last_installed_at > one.last_installed_at);
    assert_eq!(two.install_count, 2);
    assert!(two.version > one.version, "version only grows");
    assert_ne!(two.refresh_token, one.refresh_token);
    assert!(stack.sim.ledger().is_live(two.refresh_token.expose()));
    stack.assert_logs_clean(&f.logs(), &[&first, &second]).await;
}

/// The README's verification snippet for `lang` (the fenced block after
/// its `<!-- handoff-{lang} -->` marker): the test runs what the owner copies.
fn readme_snippet(lang: &str) -> String {
    let readme = include_str!("../../../README.md");
    let marker = format!("<!-- handoff-{lang} -->");
    let after = &readme[readme.find(&marker).expect("README has the snippet") + marker.len()..];
    let body = &after[after.find('\n').unwrap() + 1..];
    let body = &body[body.find('\n').unwrap() + 1..]; // past the ``` line
    body[..body.find("\n```").expect("closed block")].to_owned()
}

/// Runs the README's Node or Python verifier on `url` outside Rust; Some
/// with what it printed when it accepts, None when it refuses. Fails loudly
/// when the interpreter is missing: a skipped check would prove nothing.
fn verify_outside(lang: &str, url: &str, kid: &str, key: &str, now: i64) -> Option<Value> {
    let (program, driver) = match lang {
        "node" => (
            "node",
            "const [url, kid, key, now] = process.argv.slice(2);\n\
             const r = verifyHandoff(url, {[kid]: key}, Number(now));\n\
             console.log(JSON.stringify(r));\n",
        ),
        "python" => (
            "python3",
            "import json, sys\n\
             url, kid, key, now = sys.argv[1:5]\n\
             print(json.dumps(verify_handoff(url, {kid: key}, int(now))))\n",
        ),
        _ => unreachable!(),
    };
    let dir = std::env::temp_dir().join(format!("handoff-{}-{lang}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(if lang == "node" {
        "verify.js"
    } else {
        "verify.py"
    });
    std::fs::write(&file, format!("{}\n{driver}", readme_snippet(lang))).unwrap();
    let out = std::process::Command::new(program)
        .arg(&file)
        .args([url, kid, key, &now.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed to verify the hand-off (dev/clients.sh setup installs nodejs and python3 when missing): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} failed: {stderr}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("the verifier prints JSON");
    (!printed.is_null()).then_some(printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn success_redirect_is_signed_and_verified_by_node_and_python() {
    let stack = Stack::new().await;
    let f = start(
        &stack,
        &[
            (
                "SUCCESS_REDIRECT_URL",
                "https://app.example.com/welcome#/done",
            ),
            ("SUCCESS_REDIRECT_TTL_SECS", "120"),
            ("GHL_USER_TYPE", "Location"),
        ],
    )
    .await;
    let code = stack.consent_code(&location("co-8", "loc-8")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 302, "{}", a.body);
    let target = a.headers["location"].as_str().unwrap().to_owned();
    assert!(!target.contains(&code));
    assert!(
        target.starts_with(
            "https://app.example.com/welcome?userType=Location&companyId=co-8&locationId=loc-8&installedAt="
        ) && target.contains("&kid=h1&sig=")
            && target.ends_with("#/done"),
        "{target}"
    );
    let now = shared::model::now_secs();
    let stored = stack
        .store()
        .get_without_tokens(&InstallId::Location("loc-8".into()))
        .await
        .unwrap()
        .unwrap();
    let key = stack.handoff_key.clone();
    for lang in ["node", "python"] {
        let ok = verify_outside(lang, &target, "h1", &key, now)
            .unwrap_or_else(|| panic!("{lang} refused a genuine hand-off"));
        assert_eq!(ok["companyId"], "co-8", "{lang}");
        assert_eq!(ok["locationId"], "loc-8", "{lang}");
        assert_eq!(
            ok["installedAt"],
            stored.last_installed_at.to_string(),
            "{lang}"
        );
        let exp: i64 = ok["exp"].as_str().unwrap().parse().unwrap();
        assert!((now + 100..=now + 121).contains(&exp), "{lang}: exp {exp}");
        // Another customer's id typed in, an id dropped, a later expiry, a
        // key id relabelled, a flipped signature digit: all refused.
        let sig_at = target.find("&sig=").unwrap() + 5;
        let flipped = {
            let mut s = target.clone();
            let c = if &s[sig_at..sig_at + 1] == "0" {
                "1"
            } else {
                "0"
            };
            s.replace_range(sig_at..sig_at + 1, c);
            s
        };
        let tampered = [
            target.replace("companyId=co-8", "companyId=co-9"),
            target.replace("&locationId=loc-8", ""),
            target.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600)),
            flipped,
        ];
        for t in &tampered {
            assert_ne!(t, &target);
            assert!(
                verify_outside(lang, t, "h1", &key, now).is_none(),
                "{lang} accepted {t}"
            );
        }
        assert!(
            verify_outside(lang, &target, "h2", &key, now).is_none(),
            "{lang}: unknown kid"
        );
        assert!(
            verify_outside(lang, &target, "h1", &key, exp + 1).is_none(),
            "{lang} accepted an expired hand-off"
        );
    }
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
}

/// An unsigned hand-off is what the signature fixes: with
/// `SUCCESS_REDIRECT_URL` set and no hand-off key in the app secret, the
/// callback refuses to start, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn success_redirect_without_a_handoff_key_fails_the_cold_start() {
    let stack = Stack::new().await;
    stack.set_secret_field("handoff_keys", Value::Null).await;
    stack
        .set_secret_field("current_handoff_key", Value::Null)
        .await;
    let f = start(
        &stack,
        &[("SUCCESS_REDIRECT_URL", "https://app.example.com/welcome")],
    )
    .await;
    let code = stack.consent_code(&company("co-unsigned")).await;
    let _ = stack
        .api
        .invoke_with(
            function_url_event("GET", &[("code", &code)]),
            InvokeOptions {
                wait: Duration::from_secs(5),
                ..InvokeOptions::with_deadline(Duration::from_secs(5))
            },
        )
        .await;
    let logs = f.logs().join("\n");
    assert!(
        logs.contains("handoff_keys") && logs.contains("SUCCESS_REDIRECT_URL"),
        "{logs}"
    );
    assert_eq!(stack.sim.counters().code_exchanges, 0, "nothing exchanged");
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_fails_the_cold_start_naming_the_variable() {
    let stack = Stack::new().await;
    let f = start(&stack, &[("GHL_REDIRECT_URI", "ftp://nope")]).await;
    let _ = stack
        .api
        .invoke_with(
            function_url_event("GET", &[("code", "x")]),
            InvokeOptions {
                wait: Duration::from_secs(5),
                ..InvokeOptions::with_deadline(Duration::from_secs(5))
            },
        )
        .await;
    let logs = f.logs().join("\n");
    assert!(logs.contains("GHL_REDIRECT_URI is invalid"), "{logs}");
    assert!(logs.contains("expected"), "{logs}");
}

/// `RUST_LOG=trace` is what an operator sets to debug: neither the
/// runtime's raw-event trace nor anything else may print a code. A burst of
/// garbage codes costs at most one HighLevel call per distinct code, and
/// codes HighLevel never issues (too long, odd characters) none.
#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_carry_no_code_and_garbage_costs_one_call_per_code_at_most() {
    let stack = Stack::new().await;
    let f = start(&stack, &[("RUST_LOG", "trace")]).await;
    let code = stack.consent_code(&company("co-trace")).await;
    assert_eq!(get(&stack, &[("code", &code)]).await.status, 200);
    let garbage: Vec<String> = (0..6).map(|i| format!("garbage-code-{i}-x9Qz")).collect();
    for g in garbage.iter().chain(&garbage) {
        assert_eq!(get(&stack, &[("code", g)]).await.status, 400);
    }
    let long = "a".repeat(600);
    for bad in [long.as_str(), "bad code\u{7f}", "<script>"] {
        assert_eq!(get(&stack, &[("code", bad)]).await.status, 400);
    }
    let exchanges = stack.sim.counters().code_exchanges;
    assert!(
        exchanges <= 1 + garbage.len() as u64,
        "{exchanges} HighLevel calls for {} distinct codes",
        1 + garbage.len()
    );
    let logs = f.logs();
    assert!(
        logs.iter().any(|l| l.contains("TRACE")),
        "RUST_LOG=trace took effect"
    );
    let mut secrets: Vec<&str> = vec![&code];
    secrets.extend(garbage.iter().map(String::as_str));
    stack.assert_logs_clean(&logs, &secrets).await;
}

/// The callback keeps only the current data key. A reinstall of an install
/// whose tokens are still sealed under an older key reads the earlier
/// install without opening them, so its event says where it came from
/// (`revoked` -> `active`, `reinstalled`), and a repeated request for the
/// same code replays the outcome the same way.
#[tokio::test(flavor = "multi_thread")]
async fn reinstall_over_tokens_sealed_under_an_old_key_needs_no_old_key() {
    let mut stack = Stack::new().await;
    let (bus, queue) =
        testkit::bus::bus_to_queue(&stack.table.replace("installs-", "cbrot-")).await;
    let id = InstallId::Company("co-rot".into());
    // Installed under k1 (as the callback did before the rotation), then
    // revoked, so that the reinstall is a change of state.
    stack.seed_install(&id, "co-rot", 86_400).await;
    stack.set_state(&id, InstallState::Revoked).await;
    stack.rotate_data_key("k2").await;
    assert!(
        stack.install(&id).await.stale_key,
        "the first tokens are under k1"
    );
    // Spawned after the rotation: it holds k2 alone.
    let f = start(&stack, &[("EVENT_BUS_NAME", bus.as_str())]).await;
    let code = stack.consent_code(&company("co-rot")).await;
    let a = get(&stack, &[("code", &code)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("App reinstalled"), "{}", a.body);
    let again = get(&stack, &[("code", &code)]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let events = testkit::bus::drain(&queue).await;
    let details: Vec<&Value> = events.iter().map(|e| &e["detail"]).collect();
    assert_eq!(details.len(), 1, "{events:#?}");
    assert_eq!(
        (
            &details[0]["installId"],
            &details[0]["from"],
            &details[0]["to"],
            &details[0]["reason"]
        ),
        (
            &"company#co-rot".into(),
            &"revoked".into(),
            &"active".into(),
            &"reinstalled".into()
        ),
        "{events:#?}"
    );
    let new = stack.install(&id).await;
    assert!(!new.stale_key, "the new tokens are under k2");
    assert_eq!(new.state, InstallState::Active);
    stack.assert_logs_clean(&f.logs(), &[&code]).await;
}
