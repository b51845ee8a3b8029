//! Gets a location token and the agency token from a deployed mint.
//!
//! ```sh
//! TOKEN_MINT=<TokenMintFunctionArn> cargo run -p ghl-token-client --example token -- <companyId> <locationId>
//! ```
//! Credentials and region come from the usual AWS environment; with
//! `AWS_ENDPOINT_URL` set it calls a local Invoke API instead (`dev/up.sh`
//! serves the mint on http://127.0.0.1:9000).

use ghl_token_client::TokenClient;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(company_id), Some(location_id)) = (args.next(), args.next()) else {
        eprintln!("usage: token <companyId> <locationId>   (TOKEN_MINT names the function)");
        std::process::exit(2);
    };
    let function = std::env::var("TOKEN_MINT").unwrap_or_else(|_| "token-mint".into());
    let sdk = aws_config::load_from_env().await;
    // Build one client per process and share it (it is cheap to clone): the
    // cache and the single flight live in it.
    let mint = TokenClient::new(aws_sdk_lambda::Client::new(&sdk), function)
        .with_caller("token-example")
        .with_min_validity(Duration::from_secs(600));

    let location = mint.location_token_in(&company_id, &location_id).await?;
    // Debug prints the token as [redacted]; `authorization()` is for the header.
    println!("location token: {location:?}");
    let agency = mint.company_token(&company_id).await;
    match agency {
        Ok(t) => println!(
            "agency token expires at {} ({} s left)",
            t.expires_at,
            t.expires_in().as_secs()
        ),
        Err(e) if e.is_retryable() => println!("try again later: {e}"),
        Err(e) => println!("needs a person: {e}"),
    }
    // Served from the cache: no second invoke.
    let again = mint.location_token(&location_id).await?;
    assert_eq!(again.token, location.token);
    Ok(())
}
