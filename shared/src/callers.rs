//! Who asked the mint for a token, and may they have it.
//!
//! The mint has two entrances. A direct Lambda invoke proves nothing about
//! the caller to the function: Lambda does not pass the invoker's identity,
//! and the client context is whatever the caller wrote. The optional IAM
//! Function URL (`AuthType: AWS_IAM`, on the function's [`URL_ALIAS`]
//! alias) is different: Lambda checks the SigV4 signature and hands the
//! verified principal ARN in the request context, so that ARN is an identity
//! the audit line can name and the [`CallerPolicy`] can judge.
//!
//! The policy is the app secret's optional `mint_callers` object, read at
//! cold start: keys are a caller's ARN (`arn:aws:iam::<acct>:user/<name>`),
//! a role's ARN (`arn:aws:iam::<acct>:role/<name>`, matching every session
//! of that role) or `role/<name>` (that role in the function's own
//! account); values are a list of company ids or `"*"` for any company.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The alias the IAM Function URL points at. Its invocations carry this
/// qualifier in the invoked function ARN; direct callers are granted the
/// unqualified ARN only, so they cannot reach the alias and forge a request
/// context.
pub const URL_ALIAS: &str = "url";

/// What a caller may mint for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    AnyCompany,
    Companies(BTreeSet<String>),
}

/// Caller ARNs and role names, each with the companies it may mint for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerPolicy {
    entries: BTreeMap<String, Allowed>,
}

/// Why a caller is refused; the mint maps it to `CallerNotAllowed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("caller {0} is not in the mint's caller policy")]
    UnknownCaller(String),
    #[error("caller {caller} may not mint for company {company}")]
    Company { caller: String, company: String },
    #[error("caller {0} may mint only for named companies; pass companyId")]
    CompanyRequired(String),
}

impl CallerPolicy {
    /// Parses `mint_callers`. The error names the offending key, never a
    /// value (the secret's other fields are secrets).
    pub fn parse(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or("mint_callers must be an object of caller to companies")?;
        let mut entries = BTreeMap::new();
        for (key, v) in obj {
            if !(key.starts_with("arn:") || key.starts_with("role/")) || key.len() > 2048 {
                return Err(format!(
                    "mint_callers key {key:?} must be an IAM ARN or role/<name>"
                ));
            }
            let allowed = match v {
                Value::String(s) if s == "*" => Allowed::AnyCompany,
                Value::Array(items) => {
                    let mut companies = BTreeSet::new();
                    for item in items {
                        match item.as_str() {
                            Some(c) if !c.is_empty() && c != "*" => {
                                companies.insert(c.to_owned());
                            }
                            _ => {
                                return Err(format!(
                                    "mint_callers {key:?} must list company ids (strings) or be \"*\""
                                ));
                            }
                        }
                    }
                    Allowed::Companies(companies)
                }
                _ => {
                    return Err(format!(
                        "mint_callers {key:?} must be a list of company ids or \"*\""
                    ));
                }
            };
            entries.insert(key.clone(), allowed);
        }
        Ok(Self { entries })
    }

    /// The entry that covers `caller_arn`: its exact ARN first, then its
    /// role (by ARN, or by name within `own_account`).
    fn lookup(&self, caller_arn: &str, own_account: &str) -> Option<&Allowed> {
        if let Some(a) = self.entries.get(caller_arn) {
            return Some(a);
        }
        let (account, role) = assumed_role(caller_arn)?;
        let partition = caller_arn.split(':').nth(1).unwrap_or("aws");
        self.entries
            .get(&format!("arn:{partition}:iam::{account}:role/{role}"))
            .or_else(|| {
                (account == own_account)
                    .then(|| self.entries.get(&format!("role/{role}")))
                    .flatten()
            })
    }

    /// May `caller_arn` mint for `company`? A caller limited to named
    /// companies must name one: the mint's company check then guarantees
    /// the served token belongs to it.
    pub fn check(
        &self,
        caller_arn: &str,
        own_account: &str,
        company: Option<&str>,
    ) -> Result<(), Refusal> {
        match (self.lookup(caller_arn, own_account), company) {
            (None, _) => Err(Refusal::UnknownCaller(caller_arn.to_owned())),
            (Some(Allowed::AnyCompany), _) => Ok(()),
            (Some(Allowed::Companies(_)), None) => {
                Err(Refusal::CompanyRequired(caller_arn.to_owned()))
            }
            (Some(Allowed::Companies(set)), Some(c)) if set.contains(c) => Ok(()),
            (Some(Allowed::Companies(_)), Some(c)) => Err(Refusal::Company {
                caller: caller_arn.to_owned(),
                company: c.to_owned(),
            }),
        }
    }
}

/// `arn:aws:sts::<account>:assumed-role/<role>/<session>` → (account, role).
fn assumed_role(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (_, _, service, _, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if service != "sts" {
        return None;
    }
    let rest = resource.strip_prefix("assumed-role/")?;
    let (role, _session) = rest.split_once('/')?;
    Some((account, role))
}

/// The account id in a Lambda function ARN (`arn:aws:lambda:<region>:<account>:function:…`).
pub fn account_of(function_arn: &str) -> &str {
    function_arn.split(':').nth(4).unwrap_or("")
}

/// True when the invocation came through the alias the IAM Function URL
/// targets (`…:function:<name>:url`).
pub fn via_url_alias(function_arn: &str) -> bool {
    let parts: Vec<&str> = function_arn.split(':').collect();
    parts.len() == 8 && parts[5] == "function" && parts[7] == URL_ALIAS
}

/// A Function URL request: the verified caller and the JSON it sent.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlRequest {
    pub caller_arn: String,
    pub method: String,
    pub body: Value,
}

/// Reads a Function URL event (payload format 2.0). `Err` says what is
/// wrong in words; the request is refused before anything is called.
pub fn url_request(event: &Value) -> Result<UrlRequest, String> {
    let caller_arn = event
        .pointer("/requestContext/authorizer/iam/userArn")
        .and_then(Value::as_str)
        .filter(|a| a.starts_with("arn:"))
        .ok_or("the request carries no verified IAM caller (the URL must use AuthType AWS_IAM)")?
        .to_owned();
    let method = event
        .pointer("/requestContext/http/method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let raw = event.get("body").and_then(Value::as_str).unwrap_or("");
    let text = if event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| "the body is not valid base64")?;
        String::from_utf8(bytes).map_err(|_| "the body is not UTF-8")?
    } else {
        raw.to_owned()
    };
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| "the body is not JSON")?
    };
    Ok(UrlRequest {
        caller_arn,
        method,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWN: &str = "111122223333";

    fn policy() -> CallerPolicy {
        CallerPolicy::parse(&json!({
            "arn:aws:iam::111122223333:user/alice": ["co-1"],
            "role/billing": ["co-1", "co-2"],
            "arn:aws:iam::444455556666:role/ops": "*",
        }))
        .unwrap()
    }

    #[test]
    fn callers_are_matched_by_arn_role_arn_and_own_account_role_name() {
        let p = policy();
        let alice = "arn:aws:iam::111122223333:user/alice";
        assert_eq!(p.check(alice, OWN, Some("co-1")), Ok(()));
        assert!(matches!(
            p.check(alice, OWN, Some("co-2")),
            Err(Refusal::Company { .. })
        ));
        assert!(matches!(
            p.check(alice, OWN, None),
            Err(Refusal::CompanyRequired(_))
        ));
        let billing = "arn:aws:sts::111122223333:assumed-role/billing/session-9";
        assert_eq!(p.check(billing, OWN, Some("co-2")), Ok(()));
        // A role of the same name in another account is someone else.
        let foreign = "arn:aws:sts::999999999999:assumed-role/billing/s";
        assert!(matches!(
            p.check(foreign, OWN, Some("co-1")),
            Err(Refusal::UnknownCaller(_))
        ));
        let ops = "arn:aws:sts::444455556666:assumed-role/ops/x";
        assert_eq!(p.check(ops, OWN, None), Ok(()));
        assert!(matches!(
            p.check("arn:aws:iam::111122223333:user/bob", OWN, Some("co-1")),
            Err(Refusal::UnknownCaller(_))
        ));
    }

    #[test]
    fn bad_policies_name_the_key() {
        for (v, expect) in [
            (json!([]), "must be an object"),
            (json!({"alice": ["c"]}), "\"alice\""),
            (json!({"role/x": "any"}), "role/x"),
            (json!({"role/x": [1]}), "role/x"),
            (json!({"role/x": ["*"]}), "role/x"),
        ] {
            let e = CallerPolicy::parse(&v).unwrap_err();
            assert!(e.contains(expect), "{v}: {e}");
        }
    }

    #[test]
    fn the_url_alias_is_told_from_other_qualifiers() {
        assert!(via_url_alias(
            "arn:aws:lambda:us-east-1:111122223333:function:mint:url"
        ));
        for arn in [
            "arn:aws:lambda:us-east-1:111122223333:function:mint",
            "arn:aws:lambda:us-east-1:111122223333:function:mint:$LATEST",
            "arn:aws:lambda:us-east-1:111122223333:function:url",
        ] {
            assert!(!via_url_alias(arn), "{arn}");
        }
        assert_eq!(
            account_of("arn:aws:lambda:us-east-1:111122223333:function:mint"),
            OWN
        );
    }

    #[test]
    fn url_events_yield_the_verified_caller_and_the_body() {
        let e = json!({
            "version": "2.0",
            "requestContext": {"http": {"method": "POST"}, "authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/a"}}},
            "body": "eyJsb2NhdGlvbklkIjoibCJ9",
            "isBase64Encoded": true
        });
        let r = url_request(&e).unwrap();
        assert_eq!(r.caller_arn, "arn:aws:iam::1:user/a");
        assert_eq!(r.body, json!({"locationId": "l"}));
        assert!(url_request(&json!({"body": "{}"})).is_err());
    }
}
