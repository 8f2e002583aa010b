//! The keeper's pure decisions: [`plan`] turns the clusterdata (what the sentinel assigned) and
//! the keeper's observation of its local PostgreSQL into the ordered [`KeeperAction`]s that
//! converge the instance (stolon-behaviour.md §4.8), plus the local state file formats
//! (`keeperstate`, `dbstate`) and the timeline-fork check used after a pg_rewind, and the small
//! policies of `policy` (when the published info goes stale, which `pending_restart` parameters
//! count), and the answers of the keeper's HTTP health checks ([`health`]).
//!
//! No IO, no clock, no randomness: the keeper crate observes, calls [`plan`], executes the actions
//! in order through stolon-pg and stops at the first failure (the next tick re-plans from a fresh
//! observation).

pub mod health;
mod plan;
mod policy;
mod types;

pub use plan::{is_different_timeline_branch, plan, wanted_slots};
pub use policy::*;
pub use types::*;

#[cfg(test)]
mod tests;
