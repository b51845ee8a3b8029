//! `installs-admin`'s arguments: parsed completely, and checked, before
//! anything is read or changed. A mistake is an [`AdminError::Usage`]
//! naming the argument (exit status 2).

use super::link::LinkOptions;
use super::{AdminError, check_id, parse_install_id};
use crate::model::{InstallId, InstallState};

pub const USAGE: &str = "\
usage: installs-admin <command> [options]

operating installs (add --json to any of them for a JSON answer):
  status                      installs per state, and the oldest due install and its age
                              (counts read every install's state: a Scan projecting `state`
                              alone, whose cost grows with the table; `broken` is the instant one)
  broken [--state S] [--limit N]
                              every install that is not active, with its reason, since when and
                              the next step; lost, revoked, in_doubt, suspended, retrying, then
                              uninstalled, longest broken first in each (a Query per state on the
                              sparse broken-index, never a scan; default limit 1000)
  show ID                     one install: every field but its tokens (fingerprints only), its
                              lease, doubt, due time and location links
  refresh ID                  refresh it now under the lease/journal protocol (a sweep or mint
                              holding it answers `locked`); prints the outcome
  probe ID                    the same, only for an in_doubt install
  link [ID] [--white-label] [--version-id V] [--scope \"a b\"] [--base URL]
                              the marketplace install link to send a customer (GHL_REDIRECT_URI
                              required; --base or GHL_MARKETPLACE_BASE_URL replace the
                              marketplace host, for tests and the local stack). With an install,
                              it asks for that install's stored scopes (--scope still wins);
                              without, for oauth.readonly oauth.write
  uninstall ID --reason TEXT  uninstall the app at HighLevel with the install's own token, then
                              erase its tokens here as the UNINSTALL webhook does; also when
                              HighLevel answers that the app is not installed there any more
                              (a refused token, a 5xx or no answer erase nothing)
  index-broken                put installs broken before broken-index existed into it (once,
                              after deploying the index; resumable)

  ID is company#C, location#L or minted#L, or --company C / --location L.

maintenance:
  bootstrap                   create the installs table (with its indexes and TTL) and the app
                              secret, if missing
  list                        print every install item, ciphertext abbreviated
  rekey                       re-seal every install under the current data key (safe while the
                              functions run; resumable)

environment: INSTALLS_TABLE, GHL_APP_SECRET_ID (and the functions' settings: DUE_SHARDS,
LEASE_SECS, GHL_API_BASE_URL, ... as deployed); link: GHL_REDIRECT_URI; uninstall: GHL_APP_ID
if the app secret has no app_id; bootstrap: GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_APP_ID.
exit status: 0 done, 1 failed (or the outcome was not the one asked for), 2 bad arguments
(and for rekey: some installs stayed busy; run it again).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Bootstrap,
    List,
    Rekey,
    Status,
    Broken {
        state: Option<InstallState>,
        limit: usize,
    },
    IndexBroken,
    Show(InstallId),
    Refresh(InstallId),
    Probe(InstallId),
    Link(LinkOptions),
    Uninstall {
        id: InstallId,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub json: bool,
}

/// The options one command takes: (name, takes a value).
fn options_of(command: &str) -> Option<&'static [(&'static str, bool)]> {
    const ID: [(&str, bool); 2] = [("--company", true), ("--location", true)];
    Some(match command {
        "bootstrap" | "list" | "rekey" => &[],
        "status" | "index-broken" => &[("--json", false)],
        "broken" => &[("--json", false), ("--state", true), ("--limit", true)],
        "show" | "refresh" | "probe" => &[("--json", false), ID[0], ID[1]],
        "link" => &[
            ("--json", false),
            ID[0],
            ID[1],
            ("--white-label", false),
            ("--version-id", true),
            ("--scope", true),
            ("--base", true),
        ],
        "uninstall" => &[("--json", false), ID[0], ID[1], ("--reason", true)],
        _ => return None,
    })
}

fn usage(msg: impl Into<String>) -> AdminError {
    AdminError::Usage(msg.into())
}

pub fn parse(args: &[String]) -> Result<Invocation, AdminError> {
    let Some(command) = args.first() else {
        return Err(usage("no command given"));
    };
    if matches!(command.as_str(), "help" | "-h" | "--help") {
        return Ok(Invocation {
            command: Command::Help,
            json: false,
        });
    }
    let Some(allowed) = options_of(command) else {
        return Err(usage(format!("unknown command {:?}", super::clip(command))));
    };
    let mut flags: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut positional: Vec<&String> = Vec::new();
    let mut it = args[1..].iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Invocation {
                command: Command::Help,
                json: false,
            });
        }
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(&(flag, takes_value)) = allowed.iter().find(|(f, _)| *f == name) else {
            return Err(usage(format!(
                "{command} does not take {:?}{}",
                super::clip(name),
                if allowed.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it takes {})",
                        allowed
                            .iter()
                            .map(|(f, _)| *f)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        };
        if flags.iter().any(|(f, _)| *f == flag) {
            return Err(usage(format!("{flag} is given twice")));
        }
        let value = match (takes_value, inline) {
            (false, None) => None,
            (false, Some(_)) => return Err(usage(format!("{flag} takes no value"))),
            (true, Some(v)) => Some(v),
            (true, None) => match it.next() {
                Some(v) if !v.starts_with("--") => Some(v.clone()),
                _ => return Err(usage(format!("{flag} needs a value"))),
            },
        };
        flags.push((flag, value));
    }
    let value = |flag: &str| {
        flags
            .iter()
            .find(|(f, _)| *f == flag)
            .and_then(|(_, v)| v.clone())
    };
    let has = |flag: &str| flags.iter().any(|(f, _)| *f == flag);
    let json = has("--json");
    let no_positional = || match positional.first() {
        Some(p) => Err(usage(format!(
            "{command} takes no argument {:?}",
            super::clip(p)
        ))),
        None => Ok(()),
    };
    let install = || -> Result<InstallId, AdminError> {
        let mut given: Vec<InstallId> = Vec::new();
        for p in &positional {
            given.push(parse_install_id(p)?);
        }
        if let Some(c) = value("--company") {
            check_id("--company", &c)?;
            given.push(InstallId::Company(c));
        }
        if let Some(l) = value("--location") {
            check_id("--location", &l)?;
            given.push(InstallId::Location(l));
        }
        match given.len() {
            1 => Ok(given.remove(0)),
            0 => Err(usage(format!(
                "{command} needs an install: ID (company#C, location#L or minted#L), or --company C / --location L"
            ))),
            _ => Err(usage(format!(
                "{command} takes one install; {} were given",
                given.len()
            ))),
        }
    };
    let command = match command.as_str() {
        "bootstrap" => no_positional().map(|_| Command::Bootstrap)?,
        "list" => no_positional().map(|_| Command::List)?,
        "rekey" => no_positional().map(|_| Command::Rekey)?,
        "status" => no_positional().map(|_| Command::Status)?,
        "index-broken" => no_positional().map(|_| Command::IndexBroken)?,
        "broken" => {
            no_positional()?;
            let state = value("--state")
                .map(|s| {
                    InstallState::parse(&s).ok_or_else(|| {
                        usage(format!(
                            "--state {:?} is not a state; expected one of {}",
                            super::clip(&s),
                            InstallState::ALL
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
                })
                .transpose()?;
            if state == Some(InstallState::Active) {
                return Err(usage(
                    "--state active: broken lists installs that are not active (`status` counts the active ones)",
                ));
            }
            let limit = match value("--limit") {
                None => super::broken::DEFAULT_LIMIT,
                Some(n) => n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        usage(format!(
                            "--limit {:?} is not a whole number from 1 to 1000000",
                            super::clip(&n)
                        ))
                    })?,
            };
            Command::Broken { state, limit }
        }
        "show" => Command::Show(install()?),
        "refresh" => Command::Refresh(install()?),
        "probe" => Command::Probe(install()?),
        "link" => {
            // The install is optional: a first install has none.
            let install = if positional.is_empty() && !has("--company") && !has("--location") {
                None
            } else {
                Some(install()?)
            };
            Command::Link(LinkOptions {
                white_label: has("--white-label"),
                version_id: value("--version-id"),
                scope: value("--scope"),
                base: value("--base"),
                install,
            })
        }
        "uninstall" => {
            let id = install()?;
            let reason = value("--reason").ok_or_else(|| {
                usage("uninstall needs --reason TEXT (HighLevel requires a reason when the developer uninstalls)")
            })?;
            let reason = super::uninstall::check_reason(&reason)?;
            Command::Uninstall { id, reason }
        }
        _ => unreachable!("options_of knows every command"),
    };
    Ok(Invocation { command, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, AdminError> {
        parse(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    fn err(args: &[&str]) -> String {
        match p(args) {
            Err(AdminError::Usage(m)) => m,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn commands_and_ids_parse() {
        assert_eq!(p(&["status"]).unwrap().command, Command::Status);
        assert!(p(&["status", "--json"]).unwrap().json);
        assert_eq!(
            p(&["show", "company#c1"]).unwrap().command,
            Command::Show(InstallId::Company("c1".into()))
        );
        assert_eq!(
            p(&["refresh", "--location", "l1"]).unwrap().command,
            Command::Refresh(InstallId::Location("l1".into()))
        );
        assert_eq!(
            p(&["probe", "--company=c2", "--json"]).unwrap(),
            Invocation {
                command: Command::Probe(InstallId::Company("c2".into())),
                json: true
            }
        );
        assert_eq!(
            p(&["broken", "--state", "in_doubt", "--limit", "5"])
                .unwrap()
                .command,
            Command::Broken {
                state: Some(InstallState::InDoubt),
                limit: 5
            }
        );
        assert_eq!(
            p(&[
                "link",
                "--white-label",
                "--scope",
                "a b",
                "--version-id",
                "v1"
            ])
            .unwrap()
            .command,
            Command::Link(LinkOptions {
                white_label: true,
                version_id: Some("v1".into()),
                scope: Some("a b".into()),
                base: None,
                install: None
            })
        );
        assert_eq!(
            p(&["link", "company#c1"]).unwrap().command,
            Command::Link(LinkOptions {
                install: Some(InstallId::Company("c1".into())),
                ..Default::default()
            })
        );
        assert_eq!(
            p(&["link", "--location", "l1", "--scope", "x.y"])
                .unwrap()
                .command,
            Command::Link(LinkOptions {
                install: Some(InstallId::Location("l1".into())),
                scope: Some("x.y".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            p(&["uninstall", "minted#l", "--reason", " moving on "])
                .unwrap()
                .command,
            Command::Uninstall {
                id: InstallId::Minted("l".into()),
                reason: "moving on".into()
            }
        );
        assert_eq!(p(&["help"]).unwrap().command, Command::Help);
        assert_eq!(p(&["show", "--help"]).unwrap().command, Command::Help);
    }

    #[test]
    fn mistakes_name_what_is_wrong() {
        assert!(err(&[]).contains("no command"));
        assert!(err(&["stats"]).contains("unknown command \"stats\""));
        assert!(err(&["show"]).contains("show needs an install"));
        assert!(err(&["show", "c1"]).contains("has no kind"));
        assert!(err(&["show", "company#c1", "--location", "l"]).contains("one install; 2"));
        assert!(err(&["show", "--company"]).contains("--company needs a value"));
        assert!(err(&["show", "--company", "a/b"]).contains("--company contains '/'"));
        assert!(err(&["refresh", "company#c", "--force"]).contains("does not take \"--force\""));
        assert!(err(&["status", "extra"]).contains("takes no argument \"extra\""));
        assert!(err(&["status", "--json=yes"]).contains("takes no value"));
        assert!(err(&["broken", "--state", "dead"]).contains("not a state"));
        assert!(err(&["broken", "--state", "active"]).contains("not active"));
        assert!(err(&["broken", "--limit", "0"]).contains("--limit \"0\""));
        assert!(err(&["broken", "--json", "--json"]).contains("twice"));
        assert!(err(&["uninstall", "company#c"]).contains("--reason"));
        assert!(err(&["uninstall", "company#c", "--reason", " "]).contains("--reason is empty"));
        assert!(err(&["link", "--scope"]).contains("--scope needs a value"));
        assert!(err(&["link", "c1"]).contains("has no kind"));
        assert!(err(&["link", "company#a", "company#b"]).contains("one install; 2"));
        assert!(err(&["list", "--json"]).contains("list does not take \"--json\""));
    }
}
