//! The token clients (Rust, Node, Python) through their real AWS SDKs'
//! Lambda `Invoke`, against token-mint run as processes behind the testkit's
//! Invoke API front, moto and the HighLevel simulator. The front counts what
//! reaches the function: a burst of 20 calls from one client must be one.
//!
//! Node and Python need `dev/clients.sh setup` (dev/test.sh runs it first);
//! without it this test fails, saying so.

use ghl_token_client::{TokenClient, TokenError};
use serde_json::Value;
use shared::model::InstallId;
use shared::redact::fingerprint;
use std::path::{Path, PathBuf};
use testkit::invoke_api::{InvokeApi, Invoked};
use testkit::join_all;
use testkit::stack::Stack;

const COMPANY: &str = "co-cl";
const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:token-mint";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lambda(endpoint: &str) -> aws_sdk_lambda::Client {
    use aws_sdk_lambda::config::{Credentials, Region};
    aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::Config::builder()
            .behavior_version_latest()
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build(),
    )
}

/// The invocations one caller (named in its client context) made.
fn by_caller<'a>(all: &'a [Invoked], caller: &str) -> Vec<&'a Invoked> {
    all.iter()
        .filter(|i| {
            i.client_context
                .as_ref()
                .is_some_and(|c| c["custom"]["caller"] == caller)
        })
        .collect()
}

fn count(invoked: &[&Invoked], key: &str, value: &str) -> usize {
    invoked.iter().filter(|i| i.payload[key] == value).count()
}

/// Runs a Node or Python proof script and returns its one JSON line.
async fn proof(program: &Path, script: &str, endpoint: &str, caller: &str, loc: &str) -> Value {
    assert!(
        program.exists(),
        "{} is missing: run dev/clients.sh setup (dev/test.sh does)",
        program.display()
    );
    let dir = root().join(Path::new(script).parent().unwrap());
    assert!(
        dir.join("node_modules").exists() || !script.ends_with(".mjs"),
        "clients/node/node_modules is missing: run dev/clients.sh setup (dev/test.sh does)"
    );
    let out = tokio::process::Command::new(program)
        .arg(root().join(script))
        .current_dir(&dir)
        .env("MINT_ENDPOINT", endpoint)
        .env("MINT_FUNCTION", FUNCTION_ARN)
        .env("CALLER", caller)
        .env("LOCATION_ID", loc)
        .env("COMPANY_ID", COMPANY)
        .env("MISSING_ID", "loc-nowhere")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} does not run: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_through_its_real_sdk() {
    let stack = Stack::new().await;
    let company = stack
        .seed_install(&InstallId::Company(COMPANY.into()), COMPANY, 86_399)
        .await;
    let locs = [
        ("loc-rust", "R"),
        ("loc-node", "N"),
        ("loc-py", "P"),
        ("loc-429", "L"),
    ];
    stack.sim.add_locations(COMPANY, &locs);
    let procs: Vec<_> = (0..2).map(|_| stack.spawn("token-mint", &[])).collect();
    let front = InvokeApi::start(&[("token-mint", &stack.api)])
        .await
        .expect("Invoke API front starts");
    let sdk = lambda(front.endpoint());
    let client = TokenClient::new(sdk.clone(), FUNCTION_ARN).with_caller("rust-proof");

    // Rust: a burst of 20 for one location is one invoke.
    let burst = join_all(
        (0..20)
            .map(|_| client.location_token_in(COMPANY, "loc-rust"))
            .collect(),
    )
    .await;
    let tokens: Vec<_> = burst
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("rust burst: {e}")))
        .collect();
    let minted = stack.install(&InstallId::Minted("loc-rust".into())).await;
    assert!(
        tokens
            .iter()
            .all(|t| t.token.expose() == minted.access_token.expose()),
        "every caller got the stored minted token"
    );
    assert_eq!(tokens[0].user_type, "Location");
    assert_eq!(tokens[0].location_id.as_deref(), Some("loc-rust"));
    assert_eq!(tokens[0].company_id.as_deref(), Some(COMPANY));
    assert!(tokens[0].expires_in().as_secs() > 86_000);
    let invoked = front.invocations();
    assert_eq!(
        count(&by_caller(&invoked, "rust-proof"), "locationId", "loc-rust"),
        1,
        "one invoke for the burst"
    );
    assert_eq!(
        stack.sim.counters().location_mints.get("loc-rust"),
        Some(&1)
    );

    let agency = client.company_token(COMPANY).await.expect("company token");
    assert_eq!(agency.token.expose(), company.access_token.expose());
    assert_eq!(agency.user_type, "Company");
    assert_eq!(agency.location_id, None);
    let again = client.company_token(COMPANY).await.expect("cached");
    assert_eq!(again.token.expose(), agency.token.expose());
    let listed = client
        .installed_locations(COMPANY)
        .await
        .expect("installed locations");
    assert!(listed.complete);
    let ids: std::collections::BTreeSet<&str> = listed
        .locations
        .iter()
        .map(|l| l.location_id.as_str())
        .collect();
    assert!(locs.iter().all(|(l, _)| ids.contains(l)), "{ids:?}");

    let e = client.location_token("loc-nowhere").await.unwrap_err();
    assert!(matches!(e, TokenError::InstallNotFound(_)), "{e}");
    assert!(!e.is_retryable());
    stack.sim.push_fault(ghl_sim::Fault::RateLimited);
    let e = client
        .location_token_in(COMPANY, "loc-429")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TokenError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_retryable());
    let e = TokenClient::new(sdk.clone(), "no-such-function")
        .location_token("loc-rust")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TokenError::Invoke { code, retryable: false, .. } if code == "ResourceNotFoundException"),
        "{e}"
    );
    let invoked = front.invocations();
    let rust = by_caller(&invoked, "rust-proof");
    assert_eq!(
        count(&rust, "action", "companyToken"),
        1,
        "the second was cached"
    );
    assert_eq!(rust.len(), 5, "burst, company, listing, two errors");

    // Node and Python: the same steps, each in its own process and SDK.
    let venv_python = root().join(".local/venv-clients/bin/python");
    for (program, script, caller, loc) in [
        (
            PathBuf::from("node"),
            "clients/node/proof.mjs",
            "node-proof",
            "loc-node",
        ),
        (
            venv_python,
            "clients/python/proof.py",
            "python-proof",
            "loc-py",
        ),
    ] {
        let program = if program.is_absolute() {
            program
        } else {
            which(&program)
        };
        let got = proof(&program, script, front.endpoint(), caller, loc).await;
        let minted = stack.install(&InstallId::Minted(loc.into())).await;
        let want_loc = fingerprint(minted.access_token.expose().as_bytes());
        let want_co = fingerprint(company.access_token.expose().as_bytes());
        assert_eq!(
            got["location"]["fps"],
            serde_json::json!([want_loc]),
            "{caller}: {got}"
        );
        assert_eq!(got["location"]["userType"], "Location", "{caller}");
        assert_eq!(got["location"]["locationId"], loc, "{caller}");
        assert_eq!(got["location"]["companyId"], COMPANY, "{caller}");
        assert_eq!(got["company"]["fp"], want_co, "{caller}: {got}");
        assert_eq!(got["company"]["again"], want_co, "{caller}");
        assert_eq!(got["company"]["userType"], "Company", "{caller}");
        assert_eq!(got["installed"]["count"], locs.len(), "{caller}: {got}");
        assert_eq!(
            got["error"]["errorType"], "InstallNotFound",
            "{caller}: {got}"
        );
        assert_eq!(got["error"]["retryable"], false, "{caller}");
        let invoked = front.invocations();
        let mine = by_caller(&invoked, caller);
        assert_eq!(
            count(&mine, "locationId", loc),
            1,
            "{caller}: one invoke for the burst"
        );
        assert_eq!(
            count(&mine, "action", "companyToken"),
            1,
            "{caller}: the second was cached"
        );
        assert_eq!(mine.len(), 4, "{caller}: burst, company, listing, error");
    }

    // The audit log names each caller; no log line carries a token.
    let logs: Vec<String> = procs.iter().flat_map(|p| p.logs()).collect();
    for caller in ["rust-proof", "node-proof", "python-proof"] {
        assert!(
            logs.iter().any(|l| l.contains("\"audit\":true")
                && l.contains(&format!("\"claimedCaller\":\"{caller}\""))),
            "no audit line names {caller}"
        );
    }
    stack.assert_logs_clean(&logs, &[]).await;
}

/// A program on PATH; fails the test, naming the fix, when it is not there.
fn which(program: &Path) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} is not installed: run dev/clients.sh setup (dev/test.sh does)",
                program.display()
            )
        })
}
