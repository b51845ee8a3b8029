//! `FunctionProcess` against the emulator, with this test executable itself as
//! the function: run with `TESTKIT_FAKE_FUNCTION` set and filtered to its
//! `fake_function` test, it becomes a Lambda runtime loop.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{FunctionProcess, InvokeError, InvokeOptions, RuntimeApi};

const CHILD: &str = "TESTKIT_FAKE_FUNCTION";

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

// Written straight to the file descriptors: libtest captures print! output.
fn out(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The fake function. Event fields: `log` (a line for stdout and stderr),
/// `sleep_ms`, `fail` (an error message). It answers with its pid, its
/// environment and the invocation headers.
#[tokio::test]
async fn fake_function() {
    if !in_child() {
        return;
    }
    let addr = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API");
    if std::env::var("TESTKIT_FAKE_MODE").as_deref() == Ok("init_error") {
        let body = json!({"errorType": "Runtime.Fake", "errorMessage": "init failed on purpose"});
        request(&addr, "POST", INIT_ERROR, &[], body.to_string().as_bytes())
            .await
            .expect("POST init error");
        std::process::exit(1);
    }
    out("ready");
    loop {
        let response = match request(&addr, "GET", NEXT, &[], b"").await {
            Ok(r) if r.status == 200 => r,
            Ok(r) => {
                err(&format!("poll failed: status {}", r.status));
                std::process::exit(1);
            }
            Err(e) => {
                err(&format!("poll failed: {e}"));
                std::process::exit(1);
            }
        };
        let id = response
            .header("Lambda-Runtime-Aws-Request-Id")
            .unwrap()
            .to_owned();
        let event = response.json();
        out(&format!("start {id}"));
        if let Some(line) = event["log"].as_str() {
            out(line);
            err(&format!("{line} (stderr)"));
        }
        if let Some(ms) = event["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(message) = event["fail"].as_str() {
            fail(&addr, &id, "Fake.Failure", message).await;
            continue;
        }
        let env: serde_json::Map<String, Value> = std::env::vars()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let answer = json!({
            "pid": std::process::id(),
            "env": env,
            "deadline_ms": response.header("Lambda-Runtime-Deadline-Ms"),
            "arn": response.header("Lambda-Runtime-Invoked-Function-Arn"),
        });
        respond(&addr, &id, answer.to_string().as_bytes()).await;
    }
}

fn spawn_fake(api: &RuntimeApi, envs: &[(&str, &str)]) -> FunctionProcess {
    let exe = std::env::current_exe().unwrap();
    let mut all = vec![(CHILD, "1")];
    all.extend_from_slice(envs);
    // Only the fake function, quietly: the harness's own progress lines would
    // otherwise interleave with the function's output in the captured logs.
    let args = ["fake_function", "--exact", "--quiet", "--test-threads=1"];
    FunctionProcess::spawn_with_args(&exe, &args, api, &all).expect("spawn the fake function")
}

/// Waits for a captured line that starts with `wanted`.
async fn wait_for_log(process: &FunctionProcess, wanted: &str) {
    let started = Instant::now();
    while !process.logs().iter().any(|l| l.starts_with(wanted)) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {wanted:?} line in {:?}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn function_gets_lambda_environment_and_its_output_is_captured() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let process = spawn_fake(&api, &[("AWS_REGION", "eu-west-1"), ("EXTRA", "x")]);
    let answer = api
        .invoke(json!({"log": "hello from the function"}))
        .await
        .unwrap();

    assert_eq!(answer["pid"], json!(process.pid().unwrap()));
    let env = &answer["env"];
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], json!(api.address()));
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], json!(name));
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert_eq!(
        env["AWS_LAMBDA_LOG_GROUP_NAME"],
        json!(format!("/aws/lambda/{name}"))
    );
    assert!(
        env["AWS_LAMBDA_LOG_STREAM_NAME"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
    assert_eq!(env["AWS_EC2_METADATA_DISABLED"], "true");
    assert_eq!(env["EXTRA"], "x");
    // Nothing of the test process's own environment leaks in.
    assert!(
        env.get("HOME").is_none() && env.get("CARGO").is_none(),
        "{env}"
    );
    assert_eq!(
        answer["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:test"
    );

    wait_for_log(&process, "hello from the function (stderr)").await;
    let logs = process.logs();
    let at = |line: &str| logs.iter().position(|l| l == line).unwrap();
    assert!(at("ready") < at("hello from the function"), "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("start ")));
}

#[tokio::test]
async fn region_defaults_to_us_east_1() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let _process = spawn_fake(&api, &[]);
    let answer = api.invoke(json!({})).await.unwrap();
    assert_eq!(answer["env"]["AWS_REGION"], "us-east-1");
    assert_eq!(answer["env"]["AWS_DEFAULT_REGION"], "us-east-1");
}

#[tokio::test]
async fn function_errors_reach_the_invoker() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let _process = spawn_fake(&api, &[]);
    assert_eq!(
        api.invoke(json!({"fail": "no token"})).await,
        Err(InvokeError::Function {
            error_type: "Fake.Failure".to_owned(),
            error_message: "no token".to_owned()
        })
    );
    assert!(api.invoke(json!({})).await.is_ok());
}

#[tokio::test]
async fn several_processes_poll_one_emulator() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let a = spawn_fake(&api, &[]);
    let b = spawn_fake(&api, &[]);
    wait_for_log(&a, "ready").await;
    wait_for_log(&b, "ready").await;
    // Both are busy at once, so neither can take both invocations.
    let slow = || api.invoke(json!({"sleep_ms": 1500}));
    let (one, two) = tokio::join!(slow(), slow());
    let pids: HashSet<Value> = [one.unwrap()["pid"].clone(), two.unwrap()["pid"].clone()].into();
    let expected: HashSet<Value> = [json!(a.pid().unwrap()), json!(b.pid().unwrap())].into();
    assert_eq!(pids, expected);
}

#[tokio::test]
async fn killing_a_process_mid_invocation_times_out_that_invoke_only() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let mut processes = [spawn_fake(&api, &[]), spawn_fake(&api, &[])];
    for process in &processes {
        wait_for_log(process, "ready").await;
    }
    let opts = InvokeOptions {
        wait: Duration::from_secs(3),
        ..InvokeOptions::default()
    };
    let killer = async {
        let started = Instant::now();
        let busy = loop {
            if let Some(i) = processes
                .iter()
                .position(|p| p.logs().iter().any(|l| l.starts_with("start ")))
            {
                break i;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no process took the invocation"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let pid = processes[busy].pid();
        processes[busy].kill().await;
        assert_eq!(processes[busy].pid(), None);
        (busy, pid)
    };
    let (result, (busy, killed_pid)) =
        tokio::join!(api.invoke_with(json!({"sleep_ms": 30_000}), opts), killer);
    assert_eq!(result, Err(InvokeError::Timeout));
    assert!(
        !processes[busy]
            .logs()
            .iter()
            .any(|l| l.starts_with("poll failed"))
    );

    let answer = api.invoke(json!({})).await.unwrap();
    assert_ne!(Some(answer["pid"].as_u64().unwrap() as u32), killed_pid);
    assert_eq!(answer["pid"], json!(processes[1 - busy].pid().unwrap()));
}

#[tokio::test]
async fn init_error_from_a_process_fails_the_invoke() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let _process = spawn_fake(&api, &[("TESTKIT_FAKE_MODE", "init_error")]);
    assert_eq!(
        api.invoke(json!({})).await,
        Err(InvokeError::InitError {
            error_type: "Runtime.Fake".to_owned(),
            error_message: "init failed on purpose".to_owned()
        })
    );
}

#[tokio::test]
async fn dropping_the_emulator_ends_the_function_loop() {
    if in_child() {
        return;
    }
    let api = RuntimeApi::start().await.unwrap();
    let process = spawn_fake(&api, &[]);
    wait_for_log(&process, "ready").await;
    assert!(api.invoke(json!({})).await.is_ok());
    // Give the function time to be waiting in its next poll, which the
    // emulator then ends with a 500; a poll that comes later is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(api);
    wait_for_log(&process, "poll failed: status 500").await;
}
