//! `installs-admin` as an operator runs it: the real binary as a process,
//! against moto and the HighLevel simulator over real sockets. Every run's
//! output is checked for tokens and for panics.

use ghl_sim::{Fault, Faults, UserType as SimUserType};
use serde_json::Value;
use shared::model::{InstallId, InstallState};
use shared::store::{LinkState, LocationLink, StoreError};
use std::time::{Duration, Instant};
use testkit::InvokeOptions;
use testkit::stack::{REDIRECT_URI, Stack, function_url_event, scheduled_event};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// How long the process ran.
    took: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `installs-admin args` with the stack's environment (plus `extra`;
/// an empty value removes the variable).
async fn admin(stack: &Stack, args: &[&str], extra: &[(&str, &str)]) -> Run {
    let mut env = stack.env();
    // Patient AWS calls: moto serves every test process on one core, and a
    // timed-out call is not what these tests are about (the lease must
    // outlast them, as the tool checks at start).
    for (k, v) in [
        ("AWS_ATTEMPT_TIMEOUT_MS", "10000"),
        ("AWS_OPERATION_TIMEOUT_MS", "30000"),
        ("LEASE_SECS", "150"),
    ] {
        env.retain(|(ek, _)| ek != k);
        env.push((k.into(), v.into()));
    }
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        if !v.is_empty() {
            env.push(((*k).into(), (*v).into()));
        }
    }
    let started = Instant::now();
    let out = tokio::process::Command::new(testkit::workspace_bin("installs-admin"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("installs-admin runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "installs-admin {args:?} panicked: {}",
        run.stderr
    );
    let output = format!("{}\n{}", run.stdout, run.stderr);
    for s in secrets(stack).await {
        assert!(
            s.len() < 8 || !output.contains(&s),
            "installs-admin {args:?} printed a token or secret (fingerprint {})",
            shared::redact::fingerprint(s.as_bytes())
        );
    }
    run
}

/// Every token the simulator ever issued (refresh and access, revoked ones
/// included) and the client secret: nothing the tool prints may contain one.
/// Read from the simulator's memory, so checking every run costs moto nothing.
async fn secrets(stack: &Stack) -> Vec<String> {
    let mut out: Vec<String> = stack
        .sim
        .ledger()
        .tokens
        .into_iter()
        .map(|t| t.refresh_token)
        .collect();
    out.extend(stack.sim.issued_access_tokens());
    out.push(stack.app.client_secret.expose().to_owned());
    out
}

fn expect(run: &Run, code: i32, what: &str) {
    assert_eq!(
        run.code, code,
        "{what}: exit {} (wanted {code})\nstdout: {}\nstderr: {}",
        run.code, run.stdout, run.stderr
    );
}

fn company(id: &str) -> InstallId {
    InstallId::Company(id.into())
}

fn location(id: &str) -> InstallId {
    InstallId::Location(id.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_lists_broken_installs_from_the_sparse_index_and_drops_them_when_active() {
    let stack = Stack::new().await;
    let started = Instant::now();
    let actives = stack.seed_many("fine", 2000, 86_399).await;
    println!(
        "seeded {} active installs in {:?}",
        actives.len(),
        started.elapsed()
    );
    let (sus, rev) = (location("loc-sus"), company("co-rev"));
    stack.seed_install(&sus, "co-sus", 86_399).await;
    stack.seed_install(&rev, "co-rev", 86_399).await;

    // Break them the way HighLevel does, through a forced refresh.
    stack.sim.set_location_active("loc-sus", false);
    stack.sim.revoke(SimUserType::Company, "co-rev");
    let r = admin(&stack, &["refresh", "location#loc-sus"], &[]).await;
    expect(
        &r,
        1,
        "a refresh that ends suspended is not the outcome asked for",
    );
    assert!(
        r.stdout.contains("location#loc-sus: suspended"),
        "{}",
        r.stdout
    );
    let r = admin(&stack, &["refresh", "--company", "co-rev", "--json"], &[]).await;
    expect(&r, 1, "refresh of a revoked grant");
    assert_eq!(r.json()["outcome"], "revoked", "{}", r.stdout);

    // The listing comes from the index: one Query page per state holds
    // exactly its broken installs, though the table holds 2,002 installs (a
    // Scan page of 100 would hold none of them and say there is more).
    let t = Instant::now();
    let mut ids = Vec::new();
    for state in [InstallState::Suspended, InstallState::Revoked] {
        let page = stack
            .store()
            .broken_page(state, 100, None)
            .await
            .expect("broken index query");
        assert!(page.next.is_none(), "one page");
        ids.extend(page.installs.iter().map(|b| (b.id.key(), b.state.clone())));
    }
    println!(
        "broken-index queries (two states) over {} installs: {:?}",
        actives.len() + 2,
        t.elapsed()
    );
    assert_eq!(
        ids,
        [
            ("location#loc-sus".to_owned(), "suspended".to_owned()),
            ("company#co-rev".to_owned(), "revoked".to_owned())
        ]
    );
    // And it is the index, not the table: a store limited to a function's
    // policy (none grants the broken index) is refused before sending.
    let limited = stack
        .store()
        .clone()
        .restricted_to(shared::iam::policy("refresh-sweep").unwrap());
    match limited.broken_page(InstallState::Lost, 100, None).await {
        Err(StoreError::NotPermitted { action, on, .. }) => {
            assert_eq!((action, on), ("dynamodb:Query", "the broken index"));
        }
        other => panic!("expected NotPermitted, got {:?}", other.map(|p| p.installs)),
    }

    let r = admin(&stack, &["broken", "--json"], &[]).await;
    println!(
        "installs-admin broken --json (the whole process, AWS set-up included): {:?}",
        r.took
    );
    expect(&r, 0, "broken");
    let listed = r.json();
    assert_eq!(listed["count"], 2, "{listed}");
    assert_eq!(listed["complete"], true);
    let row = |id: &str| -> Value {
        listed["installs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["installId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
    };
    let s = row("location#loc-sus");
    assert_eq!(s["state"], "suspended");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("Location is not active"),
        "{s}"
    );
    assert!(
        s["nextStep"]
            .as_str()
            .unwrap()
            .contains("inactive at HighLevel"),
        "{s}"
    );
    assert!(s["since"].as_i64().unwrap() > 0 && s["nextAttemptAt"].as_i64().is_some());
    let v = row("company#co-rev");
    assert_eq!(v["state"], "revoked");
    assert!(
        v["nextStep"]
            .as_str()
            .unwrap()
            .contains("installs-admin link"),
        "{v}"
    );
    assert!(v["nextAttemptAt"].is_null());

    let human = admin(&stack, &["broken"], &[]).await;
    expect(&human, 0, "broken (human)");
    println!("$ installs-admin broken\n{}", human.stdout);
    assert!(
        human.stdout.contains("location#loc-sus")
            && human.stdout.contains("Location is not active")
            && human.stdout.contains("2 installs not active"),
        "{}",
        human.stdout
    );
    let only = admin(&stack, &["broken", "--state", "revoked", "--json"], &[]).await;
    assert_eq!(only.json()["count"], 1, "{}", only.stdout);
    // The states needing someone come first; a limit says it cut the list.
    let first = admin(&stack, &["broken", "--limit", "1", "--json"], &[])
        .await
        .json();
    assert_eq!(
        first["installs"][0]["installId"], "company#co-rev",
        "{first}"
    );
    assert_eq!(
        (first["count"].as_u64(), first["complete"].as_bool()),
        (Some(1), Some(false))
    );
    let two = admin(&stack, &["broken", "--limit", "2", "--json"], &[])
        .await
        .json();
    assert_eq!(two["complete"], true, "{two}");

    let status = admin(&stack, &["status", "--json"], &[]).await;
    expect(&status, 0, "status");
    let st = status.json();
    assert_eq!(st["states"]["active"], 2000, "{st}");
    assert_eq!(st["states"]["suspended"], 1);
    assert_eq!(st["states"]["revoked"], 1);
    assert_eq!(st["states"]["lost"], 0);
    assert_eq!(st["total"], 2002);
    // The suspended install is due later; nothing is waiting now.
    assert!(st["oldestDue"].is_null(), "{st}");
    let human = admin(&stack, &["status"], &[]).await;
    println!("$ installs-admin status\n{}", human.stdout);
    assert!(
        human.stdout.contains("suspended") && human.stdout.contains("2002"),
        "{}",
        human.stdout
    );

    // Active again: out of the index, in the same write.
    stack.sim.set_location_active("loc-sus", true);
    let r = admin(&stack, &["refresh", "location#loc-sus"], &[]).await;
    expect(&r, 0, "refresh of a reactivated location");
    assert!(
        r.stdout.contains("location#loc-sus: refreshed"),
        "{}",
        r.stdout
    );
    let installed = stack.install(&sus).await;
    assert_eq!(installed.state, InstallState::Active);
    assert_eq!(installed.broken_since, None);
    let listed = admin(&stack, &["broken", "--json"], &[]).await.json();
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["installs"][0]["installId"], "company#co-rev");
    // A reinstall makes the revoked one active too.
    stack.seed_install(&rev, "co-rev", 86_399).await;
    let r = admin(&stack, &["broken"], &[]).await;
    expect(&r, 0, "broken, nothing broken");
    assert_eq!(r.stdout.trim(), "every install is active");
    assert_eq!(stack.sim.ledger().presented_twice(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn link_round_trips_through_the_consent_page_to_a_working_install() {
    let stack = Stack::new().await;
    // Patient AWS calls here too: under moto's load a claim write that
    // timed out after landing is retried by the SDK and then finds itself
    // pending (the callback answers 409), which is not what this test is about.
    let _callback = stack.spawn(
        "oauth-callback",
        &[
            ("AWS_ATTEMPT_TIMEOUT_MS", "10000"),
            ("AWS_OPERATION_TIMEOUT_MS", "30000"),
            ("LEASE_SECS", "150"),
        ],
    );
    let base = [("GHL_MARKETPLACE_BASE_URL", stack.sim.base_url())];
    let base: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = admin(&stack, &["link", "--json", "--version-id", "v-123"], &base).await;
    expect(&r, 0, "link");
    let link = r.json();
    let url = link["url"].as_str().unwrap().to_owned();
    println!("install link: {url}");
    assert!(
        url.starts_with(&format!(
            "{}/v2/oauth/chooselocation?",
            stack.sim.base_url()
        )),
        "{url}"
    );
    assert_eq!(link["clientId"], stack.app.client_id);
    assert_eq!(link["redirectUri"], REDIRECT_URI);
    assert!(url.contains("response_type=code") && url.contains("version_id=v-123"));
    assert!(url.contains("scope=oauth.readonly%20oauth.write"), "{url}");
    // Human output is the bare URL, to paste into a message.
    let human = admin(&stack, &["link", "--version-id", "v-123"], &base).await;
    assert_eq!(human.stdout.trim(), url);
    // Without a base, HighLevel's consent page (and white-label's).
    let r = admin(&stack, &["link", "--white-label"], &[]).await;
    assert!(
        r.stdout
            .starts_with("https://marketplace.leadconnectorhq.com/v2/oauth/chooselocation?"),
        "{}",
        r.stdout
    );

    // The customer consents (the simulator's stand-in for choosing the agency).
    let location = testkit::http_get_location(&format!(
        "{url}&sim_user_type=Company&sim_company_id=co-link"
    ))
    .await;
    let (to, query) = location.split_once('?').expect("redirect with a query");
    assert_eq!(
        to, REDIRECT_URI,
        "the consent page redirects to the callback"
    );
    let code = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("code="))
        .expect("a code")
        .to_owned();
    let out = stack
        .api
        .invoke_with(
            function_url_event("GET", &[("code", &code)]),
            InvokeOptions::with_deadline(Duration::from_secs(30)),
        )
        .await
        .expect("the callback answers");
    assert_eq!(out["statusCode"], 200, "{out}");
    let id = company("co-link");
    let install = stack.install(&id).await;
    assert_eq!(install.state, InstallState::Active);
    assert_eq!(
        install.info.scope.as_deref(),
        Some("oauth.readonly oauth.write")
    );
    assert!(stack.sim.ledger().is_live(install.refresh_token.expose()));

    // A working install: it refreshes, and shows without its tokens.
    let r = admin(&stack, &["refresh", "company#co-link"], &[]).await;
    expect(&r, 0, "refresh of the new install");
    let refreshed = stack.install(&id).await;
    assert!(stack.sim.ledger().is_live(refreshed.refresh_token.expose()));
    let shown = admin(&stack, &["show", "company#co-link", "--json"], &[]).await;
    expect(&shown, 0, "show");
    let s = shown.json();
    assert_eq!(s["state"], "active");
    assert_eq!(
        s["refreshToken"],
        format!("sha256:{}", refreshed.refresh_token.fingerprint())
    );
    assert_eq!(s["refreshCount"], 1);
    assert!(s["lease"].is_null() && s["dueAt"].as_i64().is_some());
    let human = admin(&stack, &["show", "--company", "co-link"], &[]).await;
    println!("$ installs-admin show --company co-link\n{}", human.stdout);
    assert!(
        human.stdout.contains("sha256:")
            && human.stdout.contains("lease")
            && human.stdout.contains("due"),
        "{}",
        human.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_while_a_sweep_runs_presents_no_token_twice() {
    let stack = Stack::new().await;
    let due = stack.seed_many("race", 40, 60).await;
    stack.sim.set_faults(Faults {
        latency_ms: 40,
        ..Default::default()
    });
    let st = admin(&stack, &["status", "--json"], &[]).await.json();
    assert_eq!(st["states"]["active"], 40, "{st}");
    let oldest = &st["oldestDue"];
    assert!(due.iter().any(|id| oldest["installId"] == id.key()), "{st}");
    // Due 6 h (the refresh-ahead window) less 60 s ago.
    let age = oldest["ageSecs"].as_i64().unwrap();
    assert!((21_000..=21_700).contains(&age), "{st}");
    let human = admin(&stack, &["status"], &[]).await;
    println!("$ installs-admin status\n{}", human.stdout);
    assert!(
        human.stdout.contains("oldest due: company#race-"),
        "{}",
        human.stdout
    );
    let _sweep = stack.spawn("refresh-sweep", &[("SWEEP_CONCURRENCY", "4")]);
    let sweep = stack.api.invoke_with(
        scheduled_event(),
        InvokeOptions::with_deadline(Duration::from_secs(60)),
    );
    let s = &stack;
    let operator = async {
        let mut outcomes = Vec::new();
        // Twice over the first ten, in parallel, while the sweep works.
        for _ in 0..2 {
            let runs = due[..10]
                .iter()
                .map(|id| {
                    let key = id.key();
                    async move { admin(s, &["refresh", &key, "--json"], &[]).await }
                })
                .collect();
            for r in testkit::join_all(runs).await {
                assert!(r.code == 0 || r.code == 1, "{}{}", r.stdout, r.stderr);
                outcomes.push(r.json()["outcome"].as_str().unwrap().to_owned());
            }
        }
        outcomes
    };
    let (summary, outcomes) = tokio::join!(sweep, operator);
    let summary = summary.expect("the sweep answers");
    println!("sweep: {summary}\noperator refreshes: {outcomes:?}");
    for o in &outcomes {
        assert!(
            ["refreshed", "locked", "not_needed"].contains(&o.as_str()),
            "unexpected outcome {o}"
        );
    }
    let ledger = stack.sim.ledger();
    assert_eq!(
        ledger.presented_twice(),
        0,
        "no refresh token presented twice"
    );
    assert_eq!(stack.sim.counters().stale_presentations, 0);
    for id in &due {
        let i = stack.install(id).await;
        assert_eq!(i.state, InstallState::Active, "{id}");
        assert!(
            ledger.is_live(i.refresh_token.expose()),
            "{id} holds its live token"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_refuses_an_install_not_in_doubt_and_probes_one_that_is() {
    let stack = Stack::new().await;
    let id = company("co-probe");
    stack.seed_install(&id, "co-probe", 86_399).await;
    let before = stack.items().await;
    let r = admin(&stack, &["probe", "company#co-probe"], &[]).await;
    expect(&r, 1, "probe of an active install");
    assert!(
        r.stderr
            .contains("company#co-probe is active, not in_doubt")
            && r.stderr.contains("installs-admin refresh company#co-probe"),
        "{}",
        r.stderr
    );
    assert_eq!(
        stack.items().await,
        before,
        "a refused probe changes nothing"
    );
    assert_eq!(stack.sim.counters().refreshes, 0, "nothing was presented");

    // A 503 with no re-presentation window leaves it in doubt.
    stack.sim.push_fault(Fault::ServerError { status: 503 });
    let r = admin(
        &stack,
        &["refresh", "company#co-probe", "--json"],
        &[("GHL_REPRESENT_WINDOW_MS", "0")],
    )
    .await;
    expect(&r, 1, "a refresh left in doubt");
    assert_eq!(r.json()["outcome"], "in_doubt", "{}", r.stdout);
    let listed = admin(&stack, &["broken", "--json"], &[]).await.json();
    assert_eq!(listed["installs"][0]["state"], "in_doubt", "{listed}");
    assert!(
        listed["installs"][0]["nextStep"]
            .as_str()
            .unwrap()
            .contains("installs-admin probe company#co-probe")
    );
    let r = admin(&stack, &["probe", "company#co-probe"], &[]).await;
    expect(&r, 0, "probe of an in_doubt install");
    assert!(
        r.stdout.contains("company#co-probe: recovered"),
        "{}",
        r.stdout
    );
    let i = stack.install(&id).await;
    assert_eq!(i.state, InstallState::Active);
    assert_eq!(i.doubt_since_ms, None);
    assert_eq!(stack.sim.ledger().presented_twice(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_calls_highlevel_and_erases_the_tokens() {
    let stack = Stack::new().await;
    let (co, own_loc) = (company("co-u"), location("loc-u1"));
    let co_install = stack.seed_install(&co, "co-u", 86_399).await;
    let loc_install = stack.seed_install(&own_loc, "co-u", 86_399).await;
    stack
        .store()
        .link_locations("co-u", &["loc-u1".into(), "loc-u2".into()], 1, "callback")
        .await
        .unwrap();
    let tokens = [
        co_install.access_token.expose().to_owned(),
        co_install.refresh_token.expose().to_owned(),
        loc_install.refresh_token.expose().to_owned(),
    ];

    let r = admin(
        &stack,
        &[
            "uninstall",
            "company#co-u",
            "--reason",
            "customer churned",
            "--json",
        ],
        &[],
    )
    .await;
    expect(&r, 0, "uninstall of a company");
    let out = r.json();
    assert_eq!(out["target"], "company#co-u");
    assert_eq!(out["grants"], 2, "{out}");
    assert_eq!(out["locations"], 2, "{out}");
    assert_eq!(
        stack.sim.counters().app_uninstalls,
        1,
        "HighLevel was called"
    );
    let ledger = stack.sim.ledger();
    assert!(
        !ledger.is_live(&tokens[1]) && !ledger.is_live(&tokens[2]),
        "HighLevel revoked them"
    );
    for id in [&co, &own_loc] {
        let i = stack.install(id).await;
        assert_eq!(i.state, InstallState::Uninstalled, "{id}");
        assert!(
            i.state_reason
                .as_deref()
                .unwrap()
                .contains("customer churned"),
            "{:?}",
            i.state_reason
        );
    }
    for item in stack.items().await {
        assert!(
            !item.contains_key("access_token") && !item.contains_key("refresh_token")
                || item["pk"].as_s().unwrap().starts_with("code#"),
            "tokens left in {:?}",
            item["pk"]
        );
    }
    let link = stack.store().link_of("loc-u2").await.unwrap().unwrap();
    assert_eq!(link.state, LinkState::Uninstalled);
    // The UNINSTALL webhook HighLevel queued changes nothing more when it comes.
    assert!(
        stack
            .sim
            .take_webhooks()
            .iter()
            .any(|d| d.kind == "UNINSTALL")
    );

    // Again: refused, nothing called.
    let r = admin(
        &stack,
        &["uninstall", "company#co-u", "--reason", "again"],
        &[],
    )
    .await;
    expect(&r, 1, "a second uninstall");
    assert!(r.stderr.contains("already uninstalled"), "{}", r.stderr);
    assert_eq!(stack.sim.counters().app_uninstalls, 1);

    // A location install, with its own Location token.
    let other = location("loc-v");
    stack.seed_install(&other, "co-v", 86_399).await;
    stack
        .store()
        .set_link(&LocationLink {
            company_id: "co-v".into(),
            location_id: "loc-v".into(),
            state: LinkState::Installed,
            at_ms: 1,
            source: "callback".into(),
            missing_since_ms: None,
        })
        .await
        .unwrap();
    let r = admin(
        &stack,
        &["uninstall", "--location", "loc-v", "--reason", "moved"],
        &[],
    )
    .await;
    expect(&r, 0, "uninstall of a location");
    assert!(
        r.stdout.contains("uninstalled the app from location#loc-v"),
        "{}",
        r.stdout
    );
    assert_eq!(stack.sim.counters().app_uninstalls, 2);
    assert_eq!(stack.install(&other).await.state, InstallState::Uninstalled);

    // HighLevel refusing the token: nothing changes here.
    let bad = company("co-w");
    stack.seed_install(&bad, "co-w", 86_399).await;
    stack.sim.revoke(SimUserType::Company, "co-w");
    let before = stack.items().await;
    let r = admin(&stack, &["uninstall", "company#co-w", "--reason", "x"], &[]).await;
    expect(&r, 1, "uninstall with a token HighLevel refuses");
    assert!(
        r.stderr
            .contains("HighLevel did not uninstall company#co-w")
            && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert_eq!(stack.items().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_and_arguments_fail_clearly_and_change_nothing() {
    let stack = Stack::new().await;
    stack.seed_install(&company("co-ok"), "co-ok", 86_399).await;
    let lost = company("co-lost");
    let seeded = stack.seed_install(&lost, "co-lost", 86_399).await;
    // Lost the way the sweep marks it: recorded under a lease.
    let token = shared::store::lease_token("test");
    stack
        .store()
        .acquire_lease(
            &lost,
            &token,
            Duration::from_secs(30),
            shared::store::LeaseWhen::Force,
        )
        .await
        .unwrap();
    stack
        .store()
        .record_state(
            &lost,
            &token,
            seeded.version,
            &shared::store::StateChange {
                state: InstallState::Lost,
                reason: "test: lost",
                due_at: None,
                failures: 0,
                doubt_since_ms: Some(1),
            },
        )
        .await
        .unwrap();
    let before = stack.items().await;
    // (arguments, environment changes, exit status, what stderr must say)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: &[Case] = &[
        (&[], &[], 2, "no command given"),
        (&["frobnicate"], &[], 2, "unknown command \"frobnicate\""),
        (&["show"], &[], 2, "show needs an install"),
        (&["show", "co-ok"], &[], 2, "has no kind"),
        (&["show", "agency#co-ok"], &[], 2, "unknown kind \"agency\""),
        (&["refresh", "company#co ok"], &[], 2, "contains ' '"),
        (
            &["refresh", "company#a", "--company", "b"],
            &[],
            2,
            "takes one install; 2",
        ),
        (&["probe", "--location"], &[], 2, "--location needs a value"),
        (
            &["refresh", "company#co-ok", "--force"],
            &[],
            2,
            "does not take \"--force\"",
        ),
        (&["uninstall", "company#co-ok"], &[], 2, "needs --reason"),
        (
            &["uninstall", "company#co-ok", "--reason", "  "],
            &[],
            2,
            "--reason is empty",
        ),
        (&["broken", "--state", "dead"], &[], 2, "not a state"),
        (
            &["broken", "--limit", "-3"],
            &[],
            2,
            "--limit \"-3\" is not a whole number",
        ),
        (&["status", "now"], &[], 2, "takes no argument \"now\""),
        (
            &["link"],
            &[("GHL_REDIRECT_URI", "")],
            2,
            "GHL_REDIRECT_URI is not set",
        ),
        (
            &["link", "--scope", "a b;c"],
            &[],
            2,
            "\"b;c\" is not a scope name",
        ),
        (&["link", "--base", "ftp://x"], &[], 2, "--base \"ftp://x\""),
        (
            &["status"],
            &[("INSTALLS_TABLE", "")],
            2,
            "INSTALLS_TABLE is not set",
        ),
        (
            &["show", "company#nope"],
            &[],
            1,
            "no install company#nope in table",
        ),
        (
            &["refresh", "location#nope"],
            &[],
            1,
            "no install location#nope",
        ),
        (
            &["uninstall", "company#nope", "--reason", "x"],
            &[],
            1,
            "no install company#nope",
        ),
        (
            &["refresh", "company#co-lost"],
            &[],
            1,
            "company#co-lost is lost",
        ),
        (
            &["probe", "company#co-lost"],
            &[],
            1,
            "is lost, not in_doubt",
        ),
        (
            &["uninstall", "company#co-lost", "--reason", "x"],
            &[],
            1,
            "no longer accepts its tokens",
        ),
    ];
    for (args, env, code, says) in cases {
        let r = admin(&stack, args, env).await;
        expect(&r, *code, &format!("{args:?}"));
        assert!(
            r.stderr.contains(says),
            "{args:?}: stderr should say {says:?}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?} printed {}", r.stdout);
    }
    assert_eq!(stack.items().await, before, "nothing changed");
    let c = stack.sim.counters();
    assert_eq!(
        (c.refreshes, c.refresh_rejections, c.app_uninstalls),
        (0, 0, 0)
    );
    let help = admin(&stack, &["help"], &[]).await;
    expect(&help, 0, "help");
    assert!(
        help.stdout.contains("broken-index") && help.stdout.contains("uninstall ID --reason TEXT")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_types_highlevels_uninstall_answers() {
    use shared::ghl::{GhlError, UninstallTarget};
    use shared::redact::SecretString;
    let stack = Stack::new().await;
    let installed = stack.seed_install(&company("co-c"), "co-c", 86_399).await;
    let app_id = stack.sim.app_id();
    let ghl = &stack.svc.ghl;
    let err = ghl
        .uninstall_app(
            &SecretString::new("eyJ.not.issued"),
            &app_id,
            UninstallTarget::Company("co-c"),
            "r",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GhlError::Unauthorized { .. }), "{err:?}");
    let err = ghl
        .uninstall_app(
            &installed.access_token,
            &app_id,
            UninstallTarget::Company("co-c"),
            "",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, GhlError::Rejected { status: 400, ref message, .. } if message.contains("reason")),
        "{err:?}"
    );
    ghl.uninstall_app(
        &installed.access_token,
        &app_id,
        UninstallTarget::Company("co-c"),
        "done",
    )
    .await
    .expect("uninstalled");
    assert_eq!(stack.sim.counters().app_uninstalls, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn index_broken_indexes_installs_broken_before_the_index_existed() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let stack = Stack::new().await;
    let id = company("co-old");
    stack.seed_install(&id, "co-old", 86_399).await;
    stack
        .seed_install(&company("co-fine"), "co-fine", 86_399)
        .await;
    stack.sim.revoke(SimUserType::Company, "co-old");
    let r = admin(&stack, &["refresh", "company#co-old"], &[]).await;
    expect(&r, 1, "refresh of a revoked grant");
    // As a write from before the index would have left it.
    stack
        .ddb
        .update_item()
        .table_name(&stack.table)
        .key("pk", AttributeValue::S(id.key()))
        .key("sk", AttributeValue::S("grant".into()))
        .update_expression("REMOVE broken_shard, broken_since")
        .send()
        .await
        .unwrap();
    let listed = admin(&stack, &["broken", "--json"], &[]).await.json();
    assert_eq!(listed["count"], 0, "{listed}");

    let r = admin(&stack, &["index-broken", "--json"], &[]).await;
    expect(&r, 0, "index-broken");
    assert_eq!(r.json(), serde_json::json!({"found": 1, "indexed": 1}));
    let listed = admin(&stack, &["broken", "--json"], &[]).await.json();
    assert_eq!(
        listed["installs"][0]["installId"], "company#co-old",
        "{listed}"
    );
    assert_eq!(
        listed["installs"][0]["brokenSince"],
        stack.install(&id).await.state_changed_at
    );
    // Again: nothing left to do.
    let r = admin(&stack, &["index-broken"], &[]).await;
    assert!(
        r.stdout.contains("0 installs not active were missing"),
        "{}",
        r.stdout
    );
}

/// HighLevel uninstalled the app already (its UNINSTALL webhook never came):
/// its explicit "not installed" answer applies the uninstall here, and says
/// so. A 5xx or a refused token erases nothing.
#[tokio::test(flavor = "multi_thread")]
async fn uninstall_records_what_highlevel_says_is_not_installed_and_nothing_on_doubt() {
    let stack = Stack::new().await;
    let gone = company("co-gone");
    stack.seed_install(&gone, "co-gone", 86_399).await;
    let gone_loc = location("loc-gone");
    stack.seed_install(&gone_loc, "co-gone", 86_399).await;
    stack
        .store()
        .link_locations("co-gone", &["loc-gone".into()], 1, "callback")
        .await
        .unwrap();
    stack.sim.uninstall(SimUserType::Company, "co-gone");
    stack.sim.take_webhooks();

    let r = admin(
        &stack,
        &[
            "uninstall",
            "company#co-gone",
            "--reason",
            "cleanup",
            "--json",
        ],
        &[],
    )
    .await;
    expect(&r, 0, "uninstall of an app HighLevel no longer has");
    let out = r.json();
    assert_eq!(out["highlevel"], "not_installed", "{out}");
    assert!(
        out["highlevelMessage"]
            .as_str()
            .unwrap()
            .contains("not installed"),
        "{out}"
    );
    assert_eq!(
        (out["grants"].as_u64(), out["locations"].as_u64()),
        (Some(2), Some(1)),
        "{out}"
    );
    assert_eq!(
        stack.sim.counters().app_uninstalls,
        0,
        "HighLevel uninstalled nothing now"
    );
    for id in [&gone, &gone_loc] {
        let i = stack.install(id).await;
        assert_eq!(i.state, InstallState::Uninstalled, "{id}");
        let reason = i.state_reason.unwrap_or_default();
        assert!(
            reason.contains("not installed") && reason.contains("cleanup"),
            "{reason}"
        );
    }
    for item in stack.items().await {
        let pk = item["pk"].as_s().unwrap();
        if pk.contains("gone") {
            assert!(
                !item.contains_key("access_token") && !item.contains_key("refresh_token"),
                "tokens left in {pk}"
            );
        }
    }

    // The people's answer says it too.
    let other = location("loc-gone2");
    stack.seed_install(&other, "co-g2", 86_399).await;
    stack.sim.uninstall(SimUserType::Location, "loc-gone2");
    let r = admin(
        &stack,
        &["uninstall", "location#loc-gone2", "--reason", "cleanup"],
        &[],
    )
    .await;
    expect(&r, 0, "uninstall of a location HighLevel no longer has");
    assert!(
        r.stdout
            .contains("HighLevel says the app is not installed there any more"),
        "{}",
        r.stdout
    );
    assert_eq!(stack.install(&other).await.state, InstallState::Uninstalled);

    // A 5xx says nothing about the install: nothing erased, and why.
    let busy = company("co-busy");
    stack.seed_install(&busy, "co-busy", 86_399).await;
    stack.sim.push_fault(Fault::ServerError { status: 503 });
    let before = stack.items().await;
    let r = admin(
        &stack,
        &["uninstall", "company#co-busy", "--reason", "x"],
        &[],
    )
    .await;
    expect(&r, 1, "uninstall answered 503");
    assert!(
        r.stderr.contains("503") && r.stderr.contains("nothing was changed here"),
        "{}",
        r.stderr
    );
    assert_eq!(stack.items().await, before, "the table changed");

    // Nor does a refused token (revoked, not uninstalled).
    let refused = company("co-refused");
    stack.seed_install(&refused, "co-refused", 86_399).await;
    stack.sim.revoke(SimUserType::Company, "co-refused");
    let before = stack.items().await;
    let r = admin(
        &stack,
        &["uninstall", "company#co-refused", "--reason", "x"],
        &[],
    )
    .await;
    expect(&r, 1, "uninstall with a refused token");
    assert!(
        r.stderr.contains("does not say the app is uninstalled")
            && r.stderr.contains("nothing was changed here"),
        "{}",
        r.stderr
    );
    assert_eq!(stack.items().await, before, "the table changed");
    assert_eq!(stack.install(&refused).await.state, InstallState::Active);
}

/// `link ID` asks for the install's stored scopes (a relinked install keeps
/// them all); `--scope` still wins.
#[tokio::test(flavor = "multi_thread")]
async fn link_for_an_install_asks_for_its_stored_scopes() {
    let stack = Stack::new().await;
    let id = company("co-scopes");
    let seeded = stack.seed_install(&id, "co-scopes", 86_399).await;
    let scope = "contacts.readonly locations.readonly oauth.readonly oauth.write";
    let pair = shared::model::TokenPair {
        access_token: seeded.access_token.clone(),
        refresh_token: seeded.refresh_token.clone(),
        expires_at: seeded.expires_at,
    };
    let info = shared::model::GrantInfo {
        scope: Some(scope.into()),
        ..seeded.info.clone()
    };
    stack
        .store()
        .save_grant(&id, &pair, &info, "installed")
        .await
        .unwrap();

    let r = admin(&stack, &["link", "company#co-scopes", "--json"], &[]).await;
    expect(&r, 0, "link for an install");
    let link = r.json();
    assert_eq!(link["scope"], scope, "{link}");
    assert_eq!(link["scopeFrom"], "install", "{link}");
    assert_eq!(link["installId"], "company#co-scopes", "{link}");
    assert_eq!(link["clientId"], stack.app.client_id);
    assert!(
        link["url"].as_str().unwrap().contains(
            "scope=contacts.readonly%20locations.readonly%20oauth.readonly%20oauth.write"
        ),
        "{link}"
    );

    let r = admin(
        &stack,
        &[
            "link",
            "--company",
            "co-scopes",
            "--scope",
            "oauth.write",
            "--json",
        ],
        &[],
    )
    .await;
    expect(&r, 0, "link with --scope");
    assert_eq!(r.json()["scope"], "oauth.write");

    let r = admin(&stack, &["link", "company#nobody"], &[]).await;
    expect(&r, 1, "link for an unknown install");
}

/// `bootstrap` creates an app secret the callback can start with when
/// `SUCCESS_REDIRECT_URL` is set: a data key and a separate hand-off key.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_creates_a_data_key_and_a_handoff_key() {
    let stack = Stack::new().await;
    let table = stack.table.replace("installs-", "boot-");
    let secret_id = stack.secret_id.replace("ghl-app-", "boot-app-");
    let run = admin(
        &stack,
        &["bootstrap"],
        &[
            ("INSTALLS_TABLE", table.as_str()),
            ("GHL_APP_SECRET_ID", secret_id.as_str()),
            ("GHL_CLIENT_ID", "boot-client"),
            ("GHL_CLIENT_SECRET", "boot-client-secret-value"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let sm = aws_sdk_secretsmanager::Client::new(&shared::aws::sdk_config().await);
    let text = sm
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .expect("secret created")
        .secret_string
        .expect("string secret");
    let app = shared::app_secret::AppSecret::parse(&text).expect("the bootstrapped secret parses");
    assert_eq!(app.keyring.current_key_id(), "k1");
    let handoff = app
        .handoff_for_redirect(true)
        .expect("a hand-off key for SUCCESS_REDIRECT_URL");
    assert_eq!(handoff.map(|k| k.current_key_id()), Some("h1"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_ne!(
        doc["handoff_keys"]["h1"], doc["data_keys"]["k1"],
        "the hand-off key is not a data key"
    );
    assert!(
        !run.stdout.contains("boot-client-secret-value")
            && !run.stderr.contains("boot-client-secret-value")
    );
}

/// Tokens sealed by a release before `v2` (associated data without the sort
/// key) still open, count as stale, and `rekey` re-seals them as `v2`
/// under the same key; a second run finds nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn rekey_reseals_old_format_tokens_that_still_open() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use shared::store::attr;
    let stack = Stack::new().await;
    let id = InstallId::Company("co-v1".into());
    let seeded = stack.seed_install(&id, "co-v1", 86_400).await;
    let ring = stack.store().keyring();
    let key = id.key();
    stack
        .ddb
        .update_item()
        .table_name(&stack.table)
        .key("pk", AttributeValue::S(key.clone()))
        .key("sk", AttributeValue::S(shared::store::GRANT_SK.into()))
        .update_expression("SET #a = :a, #r = :r")
        .expression_attribute_names("#a", attr::ACCESS_TOKEN)
        .expression_attribute_names("#r", attr::REFRESH_TOKEN)
        .expression_attribute_values(
            ":a",
            AttributeValue::S(ring.seal_legacy_v1(&seeded.access_token, &key, attr::ACCESS_TOKEN)),
        )
        .expression_attribute_values(
            ":r",
            AttributeValue::S(ring.seal_legacy_v1(
                &seeded.refresh_token,
                &key,
                attr::REFRESH_TOKEN,
            )),
        )
        .send()
        .await
        .expect("old-format tokens written");
    let raw = |items: Vec<testkit::stack::Item>| -> Vec<String> {
        let grant = items
            .into_iter()
            .find(|i| {
                i.get("pk").and_then(|v| v.as_s().ok()) == Some(&key)
                    && i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str)
                        == Some(shared::store::GRANT_SK)
            })
            .expect("grant row");
        [attr::ACCESS_TOKEN, attr::REFRESH_TOKEN]
            .iter()
            .map(|f| grant[*f].as_s().unwrap().clone())
            .collect()
    };
    assert!(
        raw(stack.items().await)
            .iter()
            .all(|v| v.starts_with("v1:k1:"))
    );
    let old = stack.install(&id).await;
    assert!(old.stale_key, "v1 is stale");
    assert_eq!(old.refresh_token.expose(), seeded.refresh_token.expose());

    let run = admin(&stack, &["rekey"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let summary = run.json();
    assert_eq!(
        (&summary["resealed"], &summary["left"]),
        (&1.into(), &Value::Array(vec![])),
        "{summary}"
    );
    assert!(
        raw(stack.items().await)
            .iter()
            .all(|v| v.starts_with("v2:k1:"))
    );
    let new = stack.install(&id).await;
    assert!(!new.stale_key);
    assert_eq!(new.access_token.expose(), seeded.access_token.expose());
    assert_eq!(new.refresh_token.expose(), seeded.refresh_token.expose());
    let again = admin(&stack, &["rekey"], &[]).await.json();
    assert_eq!(
        (&again["resealed"], &again["alreadyCurrent"]),
        (&0.into(), &1.into()),
        "{again}"
    );
}
