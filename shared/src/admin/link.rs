//! `installs-admin link`: the marketplace install link to send a customer
//! who must (re)install the app: HighLevel's consent page with
//! `response_type=code`, the app's `client_id`, the registered
//! `redirect_uri` (the oauth-callback), the `scope` and optionally the
//! `version_id` to install. The consent page redirects to the callback with
//! a code, which the callback turns into an install.
//!
//! Given an install (`link company#C`), the link asks for that install's
//! stored scopes, so a relinked install keeps every scope it had; an
//! explicit `--scope` still wins.

use super::{AdminError, Report, check_id};
use crate::config::Env;
use crate::model::InstallId;
use serde::Serialize;
use url::Url;

pub const MARKETPLACE_BASE_URL: &str = "https://marketplace.gohighlevel.com";
pub const WHITE_LABEL_MARKETPLACE_BASE_URL: &str = "https://marketplace.leadconnectorhq.com";
pub const CONSENT_PATH: &str = "/v2/oauth/chooselocation";
pub const DEFAULT_SCOPE: &str = "oauth.readonly oauth.write";
/// Replaces the marketplace host, for tests and the local stack (the
/// simulator's consent page); `--base` wins over it.
pub const BASE_URL_VAR: &str = "GHL_MARKETPLACE_BASE_URL";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkOptions {
    pub white_label: bool,
    pub version_id: Option<String>,
    /// Space-separated; when None, the install's stored scopes, else
    /// [`DEFAULT_SCOPE`].
    pub scope: Option<String>,
    /// The consent page's origin instead of HighLevel's (`--base`).
    pub base: Option<String>,
    /// The install being relinked: its stored scopes are asked for.
    pub install: Option<InstallId>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub url: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    /// Where the scope came from: `--scope`, `install` (its stored scopes)
    /// or `default`.
    pub scope_from: &'static str,
    /// The install being relinked, if one was named.
    pub install_id: Option<String>,
    pub version_id: Option<String>,
    pub white_label: bool,
}

/// An http(s) origin: https, or http for localhost / 127.0.0.1 only.
fn parse_base(what: &str, value: &str) -> Result<Url, AdminError> {
    let bad = |why: &str| {
        AdminError::Usage(format!(
            "{what} {value:?} {why}; expected an https:// URL (http:// only for localhost or 127.0.0.1)"
        ))
    };
    let url = Url::parse(value).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1"));
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => return Err(bad("uses plain http for a non-local host")),
        _ => return Err(bad("is not http(s)")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    Ok(url)
}

/// Scopes are space-separated names of letters, digits, `.`, `/`, `-`, `_`.
fn check_scope(scope: &str) -> Result<String, AdminError> {
    let names: Vec<&str> = scope.split_whitespace().collect();
    if names.is_empty() {
        return Err(AdminError::Usage(
            "--scope is empty; expected space-separated scopes such as \"oauth.readonly oauth.write\"".into(),
        ));
    }
    if let Some(bad) = names.iter().find(|n| {
        !n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "./-_".contains(c))
    }) {
        return Err(AdminError::Usage(format!(
            "--scope: {bad:?} is not a scope name (letters, digits, . / - _), in {scope:?}"
        )));
    }
    Ok(names.join(" "))
}

/// Everything of the link but the app's client id, read and checked first
/// (before the app secret is fetched).
#[derive(Debug, Clone)]
pub struct LinkPlan {
    base: Url,
    redirect_uri: String,
    /// None until an install's stored scopes are filled in.
    scope: Option<String>,
    scope_from: &'static str,
    install: Option<InstallId>,
    version_id: Option<String>,
    white_label: bool,
}

/// Reads and checks the link's inputs. The redirect URI comes from
/// `GHL_REDIRECT_URI` (required: the callback's registered URL), the
/// consent page's origin from `--base`, else `GHL_MARKETPLACE_BASE_URL`,
/// else HighLevel's (white-label's with `white_label`).
pub fn plan(env: &Env, opts: &LinkOptions) -> Result<LinkPlan, AdminError> {
    let redirect_uri = env.url(
        "GHL_REDIRECT_URI",
        env.required(
            "GHL_REDIRECT_URI",
            "the redirect URI registered in the HighLevel app (the CallbackUrl output), an absolute https:// URL",
        )?,
    )?;
    let (scope, scope_from) = match (&opts.scope, &opts.install) {
        (Some(s), _) => (Some(check_scope(s)?), "--scope"),
        (None, Some(_)) => (None, "install"),
        (None, None) => (Some(DEFAULT_SCOPE.to_owned()), "default"),
    };
    if let Some(v) = &opts.version_id {
        check_id("--version-id", v)?;
    }
    let base = match (&opts.base, env.optional(BASE_URL_VAR)) {
        (Some(b), _) => parse_base("--base", b)?,
        (None, Some(b)) => parse_base(BASE_URL_VAR, &b)?,
        (None, None) if opts.white_label => parse_base("base", WHITE_LABEL_MARKETPLACE_BASE_URL)?,
        (None, None) => parse_base("base", MARKETPLACE_BASE_URL)?,
    };
    Ok(LinkPlan {
        base,
        redirect_uri,
        scope,
        scope_from,
        install: opts.install.clone(),
        version_id: opts.version_id.clone(),
        white_label: opts.white_label,
    })
}

impl LinkPlan {
    /// The install whose stored scopes must be read before [`LinkPlan::link`].
    pub fn needs_stored_scope(&self) -> Option<&InstallId> {
        self.install.as_ref().filter(|_| self.scope.is_none())
    }

    /// Fills in the install's stored scopes (`scope` as stored, space
    /// separated). An install with none stored is refused rather than given
    /// the default, which would silently drop its other scopes.
    pub fn with_stored_scope(mut self, stored: Option<&str>) -> Result<Self, AdminError> {
        let Some(id) = self.needs_stored_scope() else {
            return Ok(self);
        };
        let stored = stored.map(str::trim).filter(|s| !s.is_empty());
        let scope = stored.ok_or_else(|| {
            AdminError::Failed(format!(
                "{id} has no stored scopes; give the scopes to ask for with --scope \"a b\""
            ))
        })?;
        let scope = check_scope(scope).map_err(|e| {
            AdminError::Failed(format!(
                "{id}'s stored scopes cannot be used ({e}); give them with --scope"
            ))
        })?;
        self.scope = Some(scope);
        Ok(self)
    }

    /// The install link for the app `client_id`.
    pub fn link(&self, client_id: &str) -> Link {
        debug_assert!(
            self.needs_stored_scope().is_none(),
            "with_stored_scope first"
        );
        let scope = self
            .scope
            .clone()
            .unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
        let mut url = self.base.clone();
        let path = format!("{}{CONSENT_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &scope);
            if let Some(v) = &self.version_id {
                q.append_pair("version_id", v);
            }
        }
        // Form encoding writes a space as `+` (and a real `+` as `%2B`):
        // spell spaces `%20`, which every query parser reads as a space.
        let query = url.query().unwrap_or_default().replace('+', "%20");
        url.set_query(Some(&query));
        Link {
            url: url.into(),
            client_id: client_id.to_owned(),
            redirect_uri: self.redirect_uri.clone(),
            scope,
            scope_from: if self.scope.is_some() {
                self.scope_from
            } else {
                "default"
            },
            install_id: self.install.as_ref().map(InstallId::key),
            version_id: self.version_id.clone(),
            white_label: self.white_label,
        }
    }
}

/// [`plan`], then [`LinkPlan::link`].
pub fn install_link(env: &Env, client_id: &str, opts: &LinkOptions) -> Result<Link, AdminError> {
    Ok(plan(env, opts)?.link(client_id))
}

impl Report for Link {
    fn human(&self) -> String {
        format!("{}\n", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Env<'static> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::new(move |k| map.get(k).cloned())
    }

    fn pairs(url: &str) -> Vec<(String, String)> {
        Url::parse(url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn the_link_is_highlevels_consent_page_with_the_apps_query() {
        let e = env(&[("GHL_REDIRECT_URI", "https://cb.example.com/oauth/callback/")]);
        let l = install_link(&e, "cid-1", &LinkOptions::default()).unwrap();
        assert!(
            l.url
                .starts_with("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?"),
            "{}",
            l.url
        );
        assert!(
            l.url.contains("scope=oauth.readonly%20oauth.write"),
            "{}",
            l.url
        );
        assert_eq!(
            pairs(&l.url),
            vec![
                ("response_type".into(), "code".into()),
                ("client_id".into(), "cid-1".into()),
                (
                    "redirect_uri".into(),
                    "https://cb.example.com/oauth/callback/".into()
                ),
                ("scope".into(), "oauth.readonly oauth.write".into()),
            ]
        );
        let wl = install_link(
            &e,
            "cid-1",
            &LinkOptions {
                white_label: true,
                version_id: Some("66abc".into()),
                scope: Some("  contacts.readonly   oauth.write ".into()),
                base: None,
                install: None,
            },
        )
        .unwrap();
        assert!(
            wl.url
                .starts_with("https://marketplace.leadconnectorhq.com/v2/oauth/chooselocation?")
        );
        let p = pairs(&wl.url);
        assert!(p.contains(&("version_id".into(), "66abc".into())));
        assert!(p.contains(&("scope".into(), "contacts.readonly oauth.write".into())));
    }

    #[test]
    fn a_relinked_install_asks_for_its_stored_scopes_unless_scope_is_given() {
        let e = env(&[("GHL_REDIRECT_URI", "https://cb.example.com/")]);
        let id = InstallId::Company("c1".into());
        let opts = LinkOptions {
            install: Some(id.clone()),
            ..Default::default()
        };
        let p = plan(&e, &opts).unwrap();
        assert_eq!(p.needs_stored_scope(), Some(&id));
        let l = p
            .with_stored_scope(Some(
                "contacts.readonly oauth.readonly oauth.write  locations.readonly",
            ))
            .unwrap()
            .link("cid");
        assert_eq!(
            l.scope,
            "contacts.readonly oauth.readonly oauth.write locations.readonly"
        );
        assert_eq!(
            (l.scope_from, l.install_id.as_deref()),
            ("install", Some("company#c1"))
        );
        assert!(
            pairs(&l.url).contains(&(
                "scope".into(),
                "contacts.readonly oauth.readonly oauth.write locations.readonly".into()
            )),
            "{}",
            l.url
        );
        // Nothing stored: refused, never the default (it would drop scopes).
        for stored in [None, Some("  ")] {
            let err = plan(&e, &opts)
                .unwrap()
                .with_stored_scope(stored)
                .unwrap_err();
            assert!(
                matches!(err, AdminError::Failed(_)) && err.to_string().contains("--scope"),
                "{err}"
            );
        }
        // An explicit --scope wins; the store is not needed.
        let p = plan(
            &e,
            &LinkOptions {
                scope: Some("a.b".into()),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(p.needs_stored_scope(), None);
        let l = p.with_stored_scope(Some("x.y")).unwrap().link("cid");
        assert_eq!((l.scope.as_str(), l.scope_from), ("a.b", "--scope"));
        let l = install_link(&e, "cid", &LinkOptions::default()).unwrap();
        assert_eq!((l.scope.as_str(), l.scope_from), (DEFAULT_SCOPE, "default"));
    }

    #[test]
    fn the_base_is_overridden_by_flag_then_environment() {
        let e = env(&[
            ("GHL_REDIRECT_URI", "https://cb.example.com/"),
            (BASE_URL_VAR, "http://127.0.0.1:8700"),
        ]);
        let l = install_link(&e, "c", &LinkOptions::default()).unwrap();
        assert!(
            l.url
                .starts_with("http://127.0.0.1:8700/v2/oauth/chooselocation?"),
            "{}",
            l.url
        );
        let l = install_link(
            &e,
            "c",
            &LinkOptions {
                base: Some("http://localhost:9/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            l.url
                .starts_with("http://localhost:9/v2/oauth/chooselocation?"),
            "{}",
            l.url
        );
    }

    #[test]
    fn bad_inputs_are_usage_errors_naming_the_input() {
        let none = env(&[]);
        let e = install_link(&none, "c", &LinkOptions::default()).unwrap_err();
        assert!(
            matches!(e, AdminError::Usage(_)) && e.to_string().contains("GHL_REDIRECT_URI"),
            "{e}"
        );
        let ok = env(&[("GHL_REDIRECT_URI", "https://cb.example.com/")]);
        for (opts, says) in [
            (
                LinkOptions {
                    scope: Some("  ".into()),
                    ..Default::default()
                },
                "--scope is empty",
            ),
            (
                LinkOptions {
                    scope: Some("a b&c".into()),
                    ..Default::default()
                },
                "\"b&c\"",
            ),
            (
                LinkOptions {
                    version_id: Some("v 1".into()),
                    ..Default::default()
                },
                "--version-id",
            ),
            (
                LinkOptions {
                    base: Some("http://example.com".into()),
                    ..Default::default()
                },
                "plain http",
            ),
            (
                LinkOptions {
                    base: Some("marketplace".into()),
                    ..Default::default()
                },
                "--base",
            ),
        ] {
            let e = install_link(&ok, "c", &opts).unwrap_err();
            assert!(
                matches!(e, AdminError::Usage(_)) && e.to_string().contains(says),
                "{says}: {e}"
            );
        }
        let http = env(&[("GHL_REDIRECT_URI", "http://cb.example.com/")]);
        assert!(install_link(&http, "c", &LinkOptions::default()).is_err());
    }
}
