//! The operator's commands behind `installs-admin`: one module per command
//! ([`status`], [`broken`], [`show`], [`refresh`] (also `probe`), [`link`],
//! [`uninstall`]), the argument parser ([`cli`]), and what they share here:
//! the error that decides the exit status, install ids as operators type
//! them, and the two renderings of every answer (a human table, or JSON for
//! scripts).
//!
//! No answer carries a token: installs are shown with token fingerprints
//! ([`crate::redact::SecretString::fingerprint`]) and nothing else of them.

pub mod broken;
pub mod cli;
pub mod link;
pub mod refresh;
pub mod show;
pub mod status;
pub mod uninstall;

use crate::model::InstallId;
use serde::Serialize;

/// Why a command did not do its job. The exit status follows from it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad arguments or environment: nothing was read or changed. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// The command ran and could not do what was asked. Exit 1.
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl From<crate::store::StoreError> for AdminError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<crate::config::ConfigError> for AdminError {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::Usage(e.to_string())
    }
}

impl From<crate::services::InitError> for AdminError {
    fn from(e: crate::services::InitError) -> Self {
        match e {
            crate::services::InitError::Config(c) => c.into(),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// An answer of a command: JSON for scripts (`--json`), text for people.
pub trait Report: Serialize {
    fn human(&self) -> String;

    /// False when the command ran but the outcome is not what was asked
    /// (a refresh that did not refresh): printed, then exit status 1.
    fn ok(&self) -> bool {
        true
    }
}

/// The longest id HighLevel issues (the mint's bound too).
pub const MAX_ID_LEN: usize = crate::mint::MAX_ID_LEN;

/// Checks one HighLevel id as typed: 1 to 64 letters, digits, `-` and `_`.
pub fn check_id(what: &str, id: &str) -> Result<(), AdminError> {
    if id.is_empty() {
        return Err(AdminError::Usage(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(AdminError::Usage(format!(
            "{what} is {} characters long; HighLevel ids are at most {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(AdminError::Usage(format!(
            "{what} contains {c:?}; HighLevel ids are letters, digits, - and _"
        )));
    }
    Ok(())
}

/// An install id as stored: `company#<id>`, `location#<id>` or `minted#<id>`.
pub fn parse_install_id(text: &str) -> Result<InstallId, AdminError> {
    let forms = "expected company#ID, location#ID or minted#ID (or --company ID / --location ID)";
    let Some((kind, id)) = text.split_once('#') else {
        return Err(AdminError::Usage(format!(
            "install id {:?} has no kind; {forms}",
            clip(text)
        )));
    };
    let make: fn(String) -> InstallId = match kind {
        "company" => InstallId::Company,
        "location" => InstallId::Location,
        "minted" => InstallId::Minted,
        _ => {
            return Err(AdminError::Usage(format!(
                "install id {:?}: unknown kind {:?}; {forms}",
                clip(text),
                clip(kind)
            )));
        }
    };
    check_id(&format!("the id in {:?}", clip(text)), id)?;
    Ok(make(id.to_owned()))
}

/// Arguments are echoed in errors; keep the echo short.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Epoch seconds as RFC 3339 (UTC).
pub fn when(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// A duration in seconds, to the two largest units: `2d 3h`, `4m 10s`.
pub fn age(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let text = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    };
    format!("{sign}{text}")
}

/// `when` with the age relative to `now`: `2026-11-23T08:00:00Z (3h 2m ago)`.
pub fn when_ago(secs: i64, now: i64) -> String {
    if secs <= now {
        format!("{} ({} ago)", when(secs), age(now - secs))
    } else {
        format!("{} (in {})", when(secs), age(secs - now))
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_ids_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_install_id("company#c-1").unwrap(),
            InstallId::Company("c-1".into())
        );
        assert_eq!(
            parse_install_id("minted#l_2").unwrap(),
            InstallId::Minted("l_2".into())
        );
        for (bad, says) in [
            ("c1", "has no kind"),
            ("agency#c1", "unknown kind \"agency\""),
            ("company#", "is empty"),
            ("company#a b", "contains ' '"),
            ("location#x#y", "contains '#'"),
        ] {
            let e = parse_install_id(bad).unwrap_err();
            assert!(matches!(e, AdminError::Usage(_)), "{bad}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let long = format!("company#{}", "x".repeat(65));
        assert!(
            parse_install_id(&long)
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
    }

    #[test]
    fn times_and_ages_read_well() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(age(45), "45s");
        assert_eq!(age(250), "4m 10s");
        assert_eq!(age(3 * 3600 + 120), "3h 2m");
        assert_eq!(age(2 * 86_400 + 3 * 3600), "2d 3h");
        assert_eq!(when_ago(100, 160), "1970-01-01T00:01:40Z (1m 0s ago)");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(t, "a     bb\nlong  x\ns     y\n");
    }
}
