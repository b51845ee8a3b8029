//! The Runtime API emulator, driven over real sockets by a hand-written poller.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{InvokeError, InvokeOptions, RuntimeApi};

#[tokio::test]
async fn next_carries_event_and_lambda_headers() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let opts = InvokeOptions {
        deadline: Duration::from_secs(30),
        function_arn: "arn:aws:lambda:eu-west-1:123456789012:function:f".to_owned(),
        ..InvokeOptions::default()
    };
    let event = json!({"source": "aws.events", "detail": {"n": 1}});
    let poller = async {
        let got = next(&addr).await;
        assert_eq!(
            got.event,
            json!({"source": "aws.events", "detail": {"n": 1}})
        );
        let h = |name| got.response.header(name).map(str::to_owned);
        let deadline: u128 = h("Lambda-Runtime-Deadline-Ms").unwrap().parse().unwrap();
        let now = now_ms();
        assert!(
            deadline > now + 25_000 && deadline <= now + 30_000,
            "deadline {deadline}, now {now}"
        );
        assert_eq!(
            h("Lambda-Runtime-Invoked-Function-Arn").unwrap(),
            "arn:aws:lambda:eu-west-1:123456789012:function:f"
        );
        let trace = h("Lambda-Runtime-Trace-Id").unwrap();
        assert!(
            trace.starts_with("Root=1-")
                && trace.contains(";Parent=")
                && trace.ends_with(";Sampled=0"),
            "{trace}"
        );
        assert_eq!(got.id.len(), 36, "{}", got.id);
        assert!(h("Lambda-Runtime-Client-Context").is_none());
        assert!(h("Lambda-Runtime-Cognito-Identity").is_none());
        let ack = respond(&addr, &got.id, br#"{"ok":true}"#).await;
        assert_eq!(ack.status, 202);
        assert_eq!(ack.json(), json!({"status": "OK"}));
    };
    let (result, ()) = tokio::join!(api.invoke_with(event, opts), poller);
    assert_eq!(result, Ok(json!({"ok": true})));
}

#[tokio::test]
async fn default_invoke_has_sixty_second_deadline_and_default_arn() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let poller = async {
        let got = next(&addr).await;
        let deadline: u128 = got
            .response
            .header("Lambda-Runtime-Deadline-Ms")
            .unwrap()
            .parse()
            .unwrap();
        let now = now_ms();
        assert!(deadline > now + 55_000 && deadline <= now + 60_000);
        assert_eq!(
            got.response.header("Lambda-Runtime-Invoked-Function-Arn"),
            Some("arn:aws:lambda:us-east-1:000000000000:function:test")
        );
        respond(&addr, &got.id, b"null").await;
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(result, Ok(Value::Null));
    let defaults = InvokeOptions::default();
    assert_eq!(defaults.deadline, Duration::from_secs(60));
    assert_eq!(defaults.wait, Duration::from_secs(65));
    assert_eq!(
        InvokeOptions::with_deadline(Duration::from_secs(3)).wait,
        Duration::from_secs(8)
    );
}

#[tokio::test]
async fn client_context_and_cognito_identity_are_json_headers() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let context = json!({"client": {"installation_id": "i", "app_title": "t", "app_version_name": "v", "app_version_code": "c", "app_package_name": "p"}, "custom": {}, "environment": {}});
    let identity = json!({"cognitoIdentityId": "id", "cognitoIdentityPoolId": "pool"});
    let opts = InvokeOptions {
        client_context: Some(context.clone()),
        cognito_identity: Some(identity.clone()),
        ..InvokeOptions::default()
    };
    let poller = async {
        let got = next(&addr).await;
        let parse =
            |name| serde_json::from_str::<Value>(got.response.header(name).unwrap()).unwrap();
        assert_eq!(parse("Lambda-Runtime-Client-Context"), context);
        assert_eq!(parse("Lambda-Runtime-Cognito-Identity"), identity);
        respond(&addr, &got.id, b"1").await;
    };
    let (result, ()) = tokio::join!(api.invoke_with(json!(null), opts), poller);
    assert_eq!(result, Ok(json!(1)));
}

#[tokio::test]
async fn invocations_are_handed_out_in_fifo_order() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    // join! polls the invokes first, and each queues before its first await.
    let invokes = async {
        tokio::join!(
            api.invoke(json!({"n": 1})),
            api.invoke(json!({"n": 2})),
            api.invoke(json!({"n": 3})),
        )
    };
    let poller = async {
        for n in 1..=3 {
            let got = next(&addr).await;
            assert_eq!(got.event, json!({"n": n}));
            respond(&addr, &got.id, json!({"echo": n}).to_string().as_bytes()).await;
        }
    };
    let ((a, b, c), ()) = tokio::join!(invokes, poller);
    assert_eq!(a, Ok(json!({"echo": 1})));
    assert_eq!(b, Ok(json!({"echo": 2})));
    assert_eq!(c, Ok(json!({"echo": 3})));
}

#[tokio::test]
async fn concurrent_pollers_each_get_a_different_invocation() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    // Both polls are waiting before anything is invoked.
    let first = send(&addr, "GET", NEXT, &[], b"").await.unwrap();
    let second = send(&addr, "GET", NEXT, &[], b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pollers = async {
        let (a, b) = tokio::join!(receive(first), receive(second));
        let (a, b) = (a.unwrap(), b.unwrap());
        let id_a = a
            .header("Lambda-Runtime-Aws-Request-Id")
            .unwrap()
            .to_owned();
        let id_b = b
            .header("Lambda-Runtime-Aws-Request-Id")
            .unwrap()
            .to_owned();
        assert_ne!(id_a, id_b);
        let events: HashSet<String> = [a.json().to_string(), b.json().to_string()].into();
        assert_eq!(
            events,
            HashSet::from([r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()])
        );
        // Each answers its own invocation with the event it got.
        respond(&addr, &id_b, &b.body).await;
        respond(&addr, &id_a, &a.body).await;
    };
    let ((one, two), ()) = tokio::join!(
        async { tokio::join!(api.invoke(json!({"n": 1})), api.invoke(json!({"n": 2}))) },
        pollers
    );
    assert_eq!(one, Ok(json!({"n": 1})));
    assert_eq!(two, Ok(json!({"n": 2})));
}

#[tokio::test]
async fn error_path_completes_with_function_error() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let poller = async {
        let got = next(&addr).await;
        let ack = fail(&addr, &got.id, "Runtime.Boom", "it broke").await;
        assert_eq!(ack.status, 202);
        assert_eq!(ack.json(), json!({"status": "OK"}));
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(
        result,
        Err(InvokeError::Function {
            error_type: "Runtime.Boom".to_owned(),
            error_message: "it broke".to_owned()
        })
    );
}

#[tokio::test]
async fn error_without_a_document_uses_the_error_type_header() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let poller = async {
        let got = next(&addr).await;
        let ack = request(
            &addr,
            "POST",
            &error_path(&got.id),
            &[("Lambda-Runtime-Function-Error-Type", "Runtime.Unknown")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(ack.status, 202);
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(
        result,
        Err(InvokeError::Function {
            error_type: "Runtime.Unknown".to_owned(),
            error_message: String::new()
        })
    );
}

#[tokio::test]
async fn unknown_or_answered_request_id_is_rejected() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    for path in [response_path("no-such-id"), error_path("no-such-id")] {
        let rejected = request(&addr, "POST", &path, &[], b"{}").await.unwrap();
        assert_eq!(rejected.status, 400, "{path}");
        assert_eq!(rejected.json()["errorType"], "InvalidRequestID");
        assert!(
            rejected.json()["errorMessage"]
                .as_str()
                .unwrap()
                .contains("no-such-id")
        );
    }
    let poller = async {
        let got = next(&addr).await;
        assert_eq!(respond(&addr, &got.id, b"1").await.status, 202);
        got.id
    };
    let (result, id) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(result, Ok(json!(1)));
    let again = respond(&addr, &id, b"2").await;
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["errorType"], "InvalidRequestID");
}

#[tokio::test]
async fn non_json_response_becomes_a_json_string() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let poller = async {
        let got = next(&addr).await;
        respond(&addr, &got.id, b"plain text").await;
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(result, Ok(json!("plain text")));
}

#[tokio::test]
async fn unanswered_invoke_times_out_and_is_withdrawn() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let opts = InvokeOptions {
        wait: Duration::from_millis(300),
        ..InvokeOptions::default()
    };
    let started = Instant::now();
    assert_eq!(
        api.invoke_with(json!({"stale": true}), opts.clone()).await,
        Err(InvokeError::Timeout)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Nobody is waiting for the stale invocation, so a poller must not get it.
    let poller = async {
        let got = next(&addr).await;
        assert_eq!(got.event, json!({"fresh": true}));
        respond(&addr, &got.id, b"true").await;
    };
    let (result, ()) = tokio::join!(api.invoke(json!({"fresh": true})), poller);
    assert_eq!(result, Ok(json!(true)));

    // Handed out, then abandoned: the late answer is refused.
    let poller = async {
        let got = next(&addr).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(&addr, &got.id, b"late").await
    };
    let (result, late) = tokio::join!(api.invoke_with(json!({}), opts), poller);
    assert_eq!(result, Err(InvokeError::Timeout));
    assert_eq!(late.status, 400);
}

#[tokio::test]
async fn a_poller_that_hangs_up_does_not_lose_the_invocation() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    for _ in 0..3 {
        drop(send(&addr, "GET", NEXT, &[], b"").await.unwrap());
    }
    // Give the server time to see the hang-ups before there is work to hand out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let poller = async {
        let got = next(&addr).await;
        assert_eq!(got.event, json!({"kept": true}));
        respond(&addr, &got.id, b"\"ok\"").await;
    };
    let (result, ()) = tokio::join!(api.invoke(json!({"kept": true})), poller);
    assert_eq!(result, Ok(json!("ok")));
}

#[tokio::test]
async fn init_error_fails_the_next_invoke_only() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let body = json!({"errorType": "Runtime.InitError", "errorMessage": "missing config"});
    let ack = request(&addr, "POST", INIT_ERROR, &[], body.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(ack.status, 202);
    assert_eq!(
        api.invoke(json!({})).await,
        Err(InvokeError::InitError {
            error_type: "Runtime.InitError".to_owned(),
            error_message: "missing config".to_owned()
        })
    );

    // Reported while an invoke is already queued: that invoke fails.
    let reporter = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        request(
            &addr,
            "POST",
            INIT_ERROR,
            &[("Lambda-Runtime-Function-Error-Type", "Runtime.ExitError")],
            b"",
        )
        .await
        .unwrap()
    };
    let (result, ack) = tokio::join!(api.invoke(json!({})), reporter);
    assert_eq!(ack.status, 202);
    assert!(
        matches!(result, Err(InvokeError::InitError { ref error_type, .. }) if error_type == "Runtime.ExitError"),
        "{result:?}"
    );

    let poller = async {
        let got = next(&addr).await;
        respond(&addr, &got.id, b"2").await;
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert_eq!(result, Ok(json!(2)));
}

#[tokio::test]
async fn large_bodies_up_to_six_megabytes_pass() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let big = "x".repeat(5_900_000);
    let event = json!({"data": big});
    let poller = async {
        let got = next(&addr).await;
        assert_eq!(got.event["data"].as_str().unwrap().len(), 5_900_000);
        let ack = respond(&addr, &got.id, &got.response.body).await;
        assert_eq!(ack.status, 202);
    };
    let (result, ()) = tokio::join!(api.invoke(event.clone()), poller);
    assert_eq!(result, Ok(event));
}

#[tokio::test]
async fn oversized_response_fails_the_invocation() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let poller = async {
        let got = next(&addr).await;
        let body = json!("y".repeat(7_000_000)).to_string();
        let stream = send(&addr, "POST", &response_path(&got.id), &[], body.as_bytes()).await;
        // The server may answer and close before taking the whole body.
        match stream {
            Ok(stream) => {
                if let Ok(ack) = receive(stream).await {
                    assert_eq!(ack.status, 413);
                }
            }
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            ),
        }
    };
    let (result, ()) = tokio::join!(api.invoke(json!({})), poller);
    assert!(
        matches!(result, Err(InvokeError::Function { ref error_type, .. }) if error_type == "Function.ResponseSizeTooLarge"),
        "{result:?}"
    );
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let api = RuntimeApi::start().await.unwrap();
    let response = request(&api.address(), "GET", "/2018-06-01/other", &[], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn dropping_the_emulator_ends_pending_polls_and_stops_listening() {
    let api = RuntimeApi::start().await.unwrap();
    let addr = api.address();
    let pending = send(&addr, "GET", NEXT, &[], b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(api);
    let response = tokio::time::timeout(Duration::from_secs(5), receive(pending))
        .await
        .expect("the pending poll ends")
        .unwrap();
    assert_eq!(response.status, 500);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

#[test]
fn free_port_is_bindable() {
    let port = testkit::free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
#[should_panic(expected = "run `cargo build --workspace` first")]
fn workspace_bin_explains_a_missing_binary() {
    testkit::workspace_bin("no-such-binary-in-this-workspace");
}

#[test]
fn invoke_error_displays() {
    assert_eq!(InvokeError::Timeout.to_string(), "invocation timed out");
}
