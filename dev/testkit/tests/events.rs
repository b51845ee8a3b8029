//! Every sample event in `events/` does what its file name says, run against
//! the real function binaries (Lambda Runtime API emulator), moto and the
//! HighLevel simulator: a `bad-*` event gets its named refusal and changes
//! nothing (no item in the table, no HighLevel call); every other event
//! succeeds. A file added to `events/` without an expectation here fails
//! the test, so the samples cannot drift from what the functions do.
//!
//! The stack is the one `dev/up.sh` demonstrates: the agency `demo-company`
//! installs the app with its sub-account `demo-location-1`.

use ghl_sim::{ConsentTarget, UserType};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::stack::Stack;
use testkit::{InvokeError, InvokeOptions, RuntimeApi};

const COMPANY: &str = "demo-company";
const LOCATION: &str = "demo-location-1";
/// What `events/oauth-callback/install-code.json` holds instead of a code:
/// codes are single-use and expire in minutes, so a real one comes from the
/// consent page when the event is sent.
const CODE_PLACEHOLDER: &str = "REPLACE_WITH_A_CODE_FROM_THE_CONSENT_PAGE";

/// What an event must produce.
enum Expect {
    /// A Function URL answer: this status, a body containing this text, and
    /// nothing changed.
    Refused(u64, &'static str),
    /// A function error with this `errorType`, and nothing changed.
    Error(&'static str),
    /// HEAD: an empty 200, and nothing changed.
    Probe,
    /// Success, checked by the function (which may look at the stack).
    Ok(fn(&Value) -> Result<(), String>),
}

/// In the order they run: the refusals first (so "nothing changed" is
/// checked against an empty stack and an installed one alike), then the
/// install, the sweep and the mints that need it.
fn expectations() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        (
            "marketplace-webhook/bad-method-get.json",
            Refused(405, "\"error\":\"MethodNotAllowed\""),
        ),
        (
            "marketplace-webhook/bad-missing-signature.json",
            Refused(401, "\"error\":\"MissingSignature\""),
        ),
        (
            "marketplace-webhook/bad-signature.json",
            Refused(401, "\"error\":\"BadSignature\""),
        ),
        (
            "oauth-callback/bad-consent-denied.json",
            Refused(400, "The installation was not approved in HighLevel."),
        ),
        (
            "oauth-callback/bad-empty-code.json",
            Refused(400, "The request has no authorization code"),
        ),
        (
            "oauth-callback/bad-method-post.json",
            Refused(405, "only accepts the GET request"),
        ),
        (
            "oauth-callback/bad-missing-code.json",
            Refused(400, "The request has no authorization code"),
        ),
        (
            "oauth-callback/bad-oversized-code.json",
            Refused(400, "The authorization code is 600 characters long"),
        ),
        ("oauth-callback/head-probe.json", Probe),
        ("refresh-sweep/bad-not-an-event.json", Error("InvalidEvent")),
        (
            "token-mint/bad-missing-location.json",
            Error("InvalidRequest"),
        ),
        ("token-mint/bad-oversized-id.json", Error("InvalidRequest")),
        (
            "token-mint/bad-unknown-action.json",
            Error("InvalidRequest"),
        ),
        ("token-mint/bad-wrong-types.json", Error("InvalidRequest")),
        ("oauth-callback/install-code.json", Ok(installed)),
        ("refresh-sweep/scheduled.json", Ok(swept)),
        ("token-mint/mint.json", Ok(minted)),
        ("token-mint/mint-known-location.json", Ok(served_from_cache)),
        ("token-mint/list-installed-locations.json", Ok(listed)),
    ]
}

fn installed(answer: &Value) -> Result<(), String> {
    let body = answer["body"].as_str().unwrap_or_default();
    let wanted = [
        "App installed",
        "Demo App is now installed for the agency with company id demo-company.",
        "It covers 1 sub-account.",
    ];
    match (
        answer["statusCode"].as_u64(),
        wanted.iter().find(|w| !body.contains(**w)),
    ) {
        (Some(200), None) => Ok(()),
        (status, missing) => Err(format!("status {status:?}, missing {missing:?}: {body}")),
    }
}

fn swept(answer: &Value) -> Result<(), String> {
    // A fresh install has ~24 h left: nothing is due, and the run completes.
    if answer["complete"] == true && answer["refreshed"] == 0 && answer["lost"] == 0 {
        Ok(())
    } else {
        Err(format!("not a complete, quiet sweep: {answer}"))
    }
}

fn token(answer: &Value, source: &str) -> Result<(), String> {
    let ok = answer["accessToken"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
        && answer["locationId"] == LOCATION
        && answer["companyId"] == COMPANY
        && answer["source"] == source
        && answer.get("refreshToken").is_none();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a {source} token for {LOCATION}: {}",
            redacted(answer)
        ))
    }
}

fn minted(answer: &Value) -> Result<(), String> {
    token(answer, "minted")
}

/// The location is known from the install (the bulk install linked it), so
/// no `companyId` is needed, and the token minted just before is served.
fn served_from_cache(answer: &Value) -> Result<(), String> {
    token(answer, "cache")
}

fn listed(answer: &Value) -> Result<(), String> {
    let ids: Vec<&str> = answer["locations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["locationId"].as_str())
        .collect();
    if answer["companyId"] == COMPANY && answer["complete"] == true && ids == [LOCATION] {
        Ok(())
    } else {
        Err(format!("expected {LOCATION} alone: {answer}"))
    }
}

/// An answer with its access token masked, for failure messages.
fn redacted(answer: &Value) -> Value {
    let mut a = answer.clone();
    if a.get("accessToken").is_some() {
        a["accessToken"] = "<redacted>".into();
    }
    a
}

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

/// Every `*.json` under `events/`, as `function/file.json`.
fn event_files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in std::fs::read_dir(events_dir()).expect("events/ exists") {
        let dir = dir.expect("events/ entry").path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).expect("events/<function>/") {
            let f = f.expect("event file").path();
            if f.extension().and_then(|e| e.to_str()) == Some("json") {
                out.insert(relative(&f));
            }
        }
    }
    out
}

fn relative(path: &Path) -> String {
    let function = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    format!("{function}/{file}")
}

fn read_event(name: &str) -> Value {
    let path = events_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// What "nothing changed" compares: every item of the table, and every
/// HighLevel call the simulator counted.
async fn state(stack: &Stack) -> (Vec<testkit::stack::Item>, Value) {
    (
        stack.items().await,
        serde_json::to_value(stack.sim.counters()).expect("counters serialise"),
    )
}

#[test]
fn every_event_file_has_an_expectation() {
    let files = event_files();
    let expected: BTreeSet<String> = expectations()
        .iter()
        .map(|(f, _)| (*f).to_owned())
        .collect();
    assert_eq!(
        files, expected,
        "events/ and this test's expectations differ (left: files, right: expectations)"
    );
    for (name, expect) in expectations() {
        let refusal = matches!(expect, Expect::Refused(..) | Expect::Error(_));
        let file = name.rsplit('/').next().unwrap_or_default();
        assert_eq!(
            file.starts_with("bad-"),
            refusal,
            "{name}: a bad-* file must be refused, and only those"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_event_does_what_its_name_says() {
    let stack = Stack::new().await;
    stack
        .sim
        .add_locations(COMPANY, &[(LOCATION, "Demo Location")]);
    let key = stack.sim.webhook_public_key();
    // One Runtime API per function, as in Lambda.
    let mut apis = Vec::new();
    let mut processes = Vec::new();
    for (function, extra) in [
        ("oauth-callback", vec![("APP_NAME", "Demo App")]),
        (
            "marketplace-webhook",
            vec![("GHL_WEBHOOK_PUBLIC_KEY", key.as_str())],
        ),
        ("refresh-sweep", vec![]),
        ("token-mint", vec![]),
    ] {
        let api = RuntimeApi::start().await.expect("runtime API starts");
        processes.push(stack.spawn_on(&api, function, &extra));
        apis.push((function, api));
    }
    let api_of = |function: &str| {
        &apis
            .iter()
            .find(|(f, _)| *f == function)
            .unwrap_or_else(|| panic!("no function {function}"))
            .1
    };

    let mut failures = Vec::new();
    for (name, expect) in expectations() {
        let function = name.split('/').next().unwrap_or_default();
        let mut event = read_event(name);
        if name == "oauth-callback/install-code.json" {
            event = with_fresh_code(&stack, event).await;
        }
        let before = state(&stack).await;
        let outcome = api_of(function)
            .invoke_with(event, InvokeOptions::with_deadline(Duration::from_secs(60)))
            .await;
        let verdict = match (&expect, &outcome) {
            (Expect::Refused(status, text), Ok(answer)) => {
                let body = answer["body"].as_str().unwrap_or_default();
                if answer["statusCode"].as_u64() == Some(*status) && body.contains(text) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {status} with {text:?}, got {} {body}",
                        answer["statusCode"]
                    ))
                }
            }
            (Expect::Probe, Ok(answer)) => {
                if answer["statusCode"] == 200 && answer["body"].as_str().unwrap_or("").is_empty() {
                    Ok(())
                } else {
                    Err(format!("expected an empty 200: {answer}"))
                }
            }
            (Expect::Error(kind), Err(InvokeError::Function { error_type, .. }))
                if error_type == kind =>
            {
                Ok(())
            }
            (Expect::Ok(check), Ok(answer)) => check(answer),
            (_, other) => Err(format!(
                "unexpected outcome: {:?}",
                other.as_ref().map(redacted)
            )),
        };
        if let Err(e) = verdict {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        if !matches!(expect, Expect::Ok(_)) && state(&stack).await != before {
            failures.push(format!(
                "{name}: changed the table or called HighLevel, but must change nothing"
            ));
        }
    }
    let mut logs = Vec::new();
    for p in &processes {
        logs.extend(p.logs());
    }
    assert!(
        failures.is_empty(),
        "{} sample event(s) do not do what their names say:\n  {}\nfunction logs:\n{}",
        failures.len(),
        failures.join("\n  "),
        logs.join("\n")
    );
    // The install stored the demo company's grant, and linked its location.
    let install = stack
        .install(&shared::model::InstallId::Company(COMPANY.into()))
        .await;
    assert_eq!(install.state, shared::model::InstallState::Active);
    stack.assert_logs_clean(&logs, &[]).await;
}

/// `install-code.json` with its placeholder replaced by a code the
/// simulator's consent page just issued for `demo-company`.
async fn with_fresh_code(stack: &Stack, mut event: Value) -> Value {
    assert_eq!(
        event["queryStringParameters"]["code"], CODE_PLACEHOLDER,
        "install-code.json documents its placeholder"
    );
    let code = stack
        .consent_code(&ConsentTarget {
            user_type: UserType::Company,
            company_id: COMPANY.into(),
            location_id: None,
            deny: false,
        })
        .await;
    event["queryStringParameters"]["code"] = code.clone().into();
    let raw = event["rawQueryString"].as_str().unwrap_or_default();
    event["rawQueryString"] = raw.replace(CODE_PLACEHOLDER, &code).into();
    event
}
