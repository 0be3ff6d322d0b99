//! Why a reading of the config file is not applied, and the checks that guard against a file
//! that would wipe what it declared by accident (emptied, cut short, or mostly deleted).
//! Pure: the caller brings what the config currently holds.

use std::collections::BTreeSet;

use super::parse::{ConfigError, Declared};

/// Most entries a mass-removal refusal names; the rest are counted.
const NAMED: usize = 10;

/// Why a reading of the config file was refused; the last good state stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file is missing, unreadable, not UTF-8, or larger than [`super::MAX_FILE_BYTES`].
    #[error("cannot read it: {0}")]
    Unreadable(String),
    /// It does not parse or validate: every error with its line.
    #[error("{}", join(.0))]
    Invalid(Vec<ConfigError>),
    /// Nothing but blanks and comments (a file truncated, or emptied by mistake).
    #[error(
        "the file is empty (nothing but blanks and comments), so nothing is applied; to remove everything \
         it declared, start the server with --config-allow-removal"
    )]
    Empty,
    /// It would remove more than half of the entries the config holds.
    #[error(
        "this reading would remove {} of the {held} environments and pools the config holds ({}); \
         refused as a likely accident. To allow it, put `allow_mass_removal = true` at the top of the \
         file (before any table) or start the server with --config-allow-removal",
        .removed.len(), named(.removed)
    )]
    MassRemoval {
        /// `environment "web"`, `pool "warm"`, …
        removed: Vec<String>,
        held: usize,
    },
    /// At start: it was still being written after this many polls.
    #[error("the file kept changing for {0} polls; it is applied once it is stable")]
    Unstable(u32),
    /// It checked, but writing it to the store failed (part of it may be applied; the next
    /// change of the file applies it again).
    #[error("applying it failed: {0}")]
    Apply(String),
}

impl Refusal {
    /// Whether this refusal at start stops the server from starting: a file that cannot be
    /// read or does not check says nothing of what is meant (and may hold the `[auth]` key);
    /// one refused by a guard leaves the store's last good state, which is safe to serve.
    pub fn stops_start(&self) -> bool {
        matches!(self, Refusal::Unreadable(_) | Refusal::Invalid(_) | Refusal::Apply(_))
    }

    /// The refusal as config errors (only [`Refusal::Invalid`] has lines).
    pub fn errors(&self) -> Vec<ConfigError> {
        match self {
            Refusal::Invalid(errors) => errors.clone(),
            other => vec![ConfigError { line: 0, column: 0, message: other.to_string() }],
        }
    }
}

fn join(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn named(removed: &[String]) -> String {
    let mut text = removed.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if removed.len() > NAMED {
        text.push_str(&format!(" and {} more", removed.len() - NAMED));
    }
    text
}

/// How an entry the config holds or declares is named in a refusal.
pub(crate) fn environment(id: &str) -> String {
    format!("environment {id:?}")
}

pub(crate) fn pool(name: &str) -> String {
    format!("pool {name:?}")
}

/// Nothing but whitespace and `#` comments.
pub(crate) fn is_empty(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#'))
}

/// Refuses `declared` when it would remove more than half of `held` (and at least one),
/// unless `allowed`.
pub(crate) fn check_removal(held: &BTreeSet<String>, declared: &Declared, allowed: bool) -> Result<(), Refusal> {
    let kept: BTreeSet<String> = declared
        .environments
        .iter()
        .map(|(e, _)| environment(&e.id))
        .chain(declared.pools.iter().map(|p| pool(&p.name)))
        .collect();
    let removed: Vec<String> = held.difference(&kept).cloned().collect();
    if allowed || removed.is_empty() || removed.len() * 2 <= held.len() {
        return Ok(());
    }
    Err(Refusal::MassRemoval { removed, held: held.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declare::parse;

    fn held(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| environment(n)).collect()
    }

    fn declaring(ids: &[&str]) -> Declared {
        let text: String =
            ids.iter().map(|id| format!("[[environment]]\nid = \"{id}\"\nspec = {{ provider = \"sim\" }}\n")).collect();
        parse(&text, std::time::Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn removing_more_than_half_is_refused_unless_allowed() {
        let four = held(&["a", "b", "c", "d"]);
        assert_eq!(check_removal(&four, &declaring(&["a", "b"]), false), Ok(()), "exactly half is fine");
        assert_eq!(check_removal(&four, &declaring(&["a", "b", "c", "d", "e"]), false), Ok(()));
        let refused = check_removal(&four, &declaring(&["a"]), false).unwrap_err();
        assert_eq!(
            refused,
            Refusal::MassRemoval { removed: vec![environment("b"), environment("c"), environment("d")], held: 4 }
        );
        let text = refused.to_string();
        assert!(text.contains("remove 3 of the 4") && text.contains("environment \"b\""), "{text}");
        assert!(text.contains("allow_mass_removal = true") && text.contains("--config-allow-removal"), "{text}");
        assert_eq!(check_removal(&four, &declaring(&["a"]), true), Ok(()));
        assert_eq!(check_removal(&held(&[]), &declaring(&[]), false), Ok(()), "nothing held, nothing removed");
        assert!(check_removal(&held(&["only"]), &declaring(&[]), false).is_err(), "the one entry, all of it");
    }

    #[test]
    fn a_pool_counts_like_an_environment() {
        let mut held = held(&["a"]);
        held.insert(pool("warm"));
        held.insert(pool("a"));
        let refused = check_removal(&held, &declaring(&[]), false).unwrap_err();
        assert!(refused.to_string().contains("pool \"warm\""), "{refused}");
    }

    #[test]
    fn many_removed_are_counted_not_all_named() {
        let names: Vec<String> = (0..25).map(|i| format!("e{i}")).collect();
        let held: BTreeSet<String> = names.iter().map(|n| environment(n)).collect();
        let text = check_removal(&held, &declaring(&[]), false).unwrap_err().to_string();
        assert!(text.contains("remove 25 of the 25") && text.contains("and 15 more"), "{text}");
    }

    #[test]
    fn empty_means_blanks_and_comments() {
        assert!(is_empty(""));
        assert!(is_empty("\n  \n# a comment\n\t# another\n"));
        assert!(!is_empty("allow_mass_removal = true\n"));
        assert!(!is_empty("[redis]\n"));
    }
}
