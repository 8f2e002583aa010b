//! The sentinel's judgement as a pure function: [`decide`] turns the observed state (clusterdata,
//! keeper and proxy infos), the leader's [`SentinelMemory`] and the time into the next clusterdata
//! and [`Event`]s.
//!
//! Owns: health over `failInterval`, convergence timeouts, initialisation (`new`, `existing`,
//! `pitr`), failover to the most advanced eligible standby, fencing of the old master, the proxy
//! handshake, standby placement, synchronous standbys, spec propagation, the planned switchover
//! ([`switchover`]), and the safety invariants ([`invariants`]). Must not: do IO, read a clock,
//! draw random numbers, log.

mod classify;
mod decide;
mod event;
mod history;
pub mod invariants;
pub mod leadership;
mod memory;
mod pause;
pub mod priority;
mod quorum;
pub mod switchover;
mod syncloss;
mod takeover;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod update;

pub use classify::{
    DbKind, FAKE_STANDBY_NAME, NOT_INCREASING_XLOG_TIMES, Validity, db_kind,
    is_different_timeline_branch, keeper_of, most_advanced_first, validity,
};
pub use decide::{
    Chooser, DecideInput, Decision, FirstChoice, PROXY_REACTION, decide, proxy_active_window,
};
pub use event::{Event, Severity};
pub use invariants::{InvariantViolation, validate_handshake, validate_invariants};
pub use memory::{Convergence, InfoHistory, MonoInstant, SentinelMemory};
pub use takeover::{
    Sightings, TakeoverRead, expired_info_silence, memory_at_takeover,
    remember_expired_keepers_at_takeover, remember_proxies_at_takeover, takeover_memory,
};
