//! The sentinel leader's memory: every timer and history Stolon keeps in fields, as one value.
//!
//! Pure data. Instants are monotonic durations since an arbitrary origin chosen by the runtime
//! (the core never reads a clock). A fresh [`SentinelMemory::default`] stands for Stolon's
//! `firstRun`: the runtime creates one on every gain of leadership.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A monotonic instant: time elapsed since an origin the runtime picked.
pub type MonoInstant = Duration;

/// What the leader remembers between two decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentinelMemory {
    /// False until the first decision after gaining leadership (Stolon's `firstRun`).
    pub initialized: bool,
    /// Last keeper info seen per keeper UID.
    pub keeper_infos: BTreeMap<String, InfoHistory>,
    /// Since when each keeper has had no fresh info.
    pub keeper_error_since: BTreeMap<String, MonoInstant>,
    /// Since when each DB has been in error.
    pub db_error_since: BTreeMap<String, MonoInstant>,
    /// Since when each unconverged DB has been at its current generation.
    pub db_convergence: BTreeMap<String, Convergence>,
    /// Consecutive new keeper infos in which a DB's WAL position did not move.
    pub db_not_increasing_xlog: BTreeMap<String, u32>,
    /// Last proxy info seen per proxy UID.
    pub proxy_infos: BTreeMap<String, InfoHistory>,
    /// Synchronous standbys the master stopped reporting in sync, and since when: not chosen
    /// as new synchronous standbys for `failInterval` after (syncloss.rs).
    pub sync_lost: BTreeMap<String, MonoInstant>,
    /// Quorum commit: the listed synchronous standbys the master last reported streaming (a
    /// listed standby it stops reporting is lost, syncloss.rs). Empty after a takeover, so a new
    /// leader detects losses only once it saw a standby stream.
    pub sync_streaming: BTreeSet<String>,
    /// Quorum commit: since when each listed synchronous standby has been listed (one listed
    /// for `failInterval` without streaming is lost too).
    pub sync_listed_since: BTreeMap<String, MonoInstant>,
    /// When the previous decision was made (`None` before the first).
    pub last_decision: Option<MonoInstant>,
}

/// The last published info of a keeper or proxy and when it was first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoHistory {
    /// The info's `infoUID` (new on every publish).
    pub info_uid: String,
    /// False when recorded on the first run after gaining leadership (not proof of life).
    pub seen: bool,
    /// When this `infoUID` was first seen.
    pub first_seen: MonoInstant,
}

/// Convergence tracking of one DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Convergence {
    /// The generation being waited for.
    pub generation: i64,
    /// When that generation was first observed unconverged.
    pub since: MonoInstant,
}
