//! [`Versioned`]: a row as read, with what an update that starts from it needs in order to
//! skip its own read ([`crate::Store::get_versioned`], [`crate::Store::update_versioned`]).
//!
//! **Contract.**
//! - `update_versioned(known, change)` is [`crate::Store::update`] of `known`'s row whose
//!   first attempt runs `change` on `known` instead of reading the row again. On SQLite the
//!   write is conditional on the revision `known` was read (or written) at, and every write
//!   of a row, whatever its path, grows that revision; so a row written meanwhile is read
//!   again and `change` runs on the current row, as `update` does on any conflict. Nothing
//!   is ever written over a change `change` did not see.
//! - On PostgreSQL, whose `update` locks the row it reads (`SELECT ... FOR UPDATE`), the
//!   known row is not used: the locked read is the update's own.
//! - The row returned is the row written, with its new revision, so a caller may chain
//!   updates of one row (an intent, then its result) without reading it in between.

use lapse_core::model::Environment;

/// A row as read or written, and (on SQLite) the revision it had then.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub env: Environment,
    rev: Option<i64>,
}

impl Versioned {
    /// A row read (or written) at revision `rev`.
    pub(crate) fn read_at(env: Environment, rev: i64) -> Versioned {
        Versioned { env, rev: Some(rev) }
    }

    /// A row from a backend that locks what it updates (PostgreSQL): no revision.
    pub(crate) fn unversioned(env: Environment) -> Versioned {
        Versioned { env, rev: None }
    }

    /// The row and its revision, for an update's first attempt (`None` to read it).
    pub(crate) fn known(&self) -> Option<(Environment, i64)> {
        self.rev.map(|rev| (self.env.clone(), rev))
    }
}
