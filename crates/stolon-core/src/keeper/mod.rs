//! The keeper's pure decisions, in the sentinel's shape: [`step`] turns the clusterdata (what
//! the sentinel assigned), the keeper's observation of its local PostgreSQL ([`Observed`], each
//! check that can fail a [`Probe`]), its memory ([`KeeperMemory`]) and the time into the ordered
//! [`KeeperAction`]s that converge the instance (docs/architecture.md §7.1), the new memory and
//! when to wake up; [`record`] folds each executed action's [`Outcome`] into the memory and
//! returns the follow-up steps it calls for. [`plan`] is the planning part of the step, split
//! along its phases. Also here: the local state file formats (`keeperstate`, `dbstate`), the
//! timeline-fork check used after a pg_rewind, the small policies of `policy` (when to publish
//! the keeper's info, when it goes stale, which `pending_restart` parameters count), and the
//! answers of the keeper's HTTP health checks ([`health`]).
//!
//! No IO, no clock, no randomness: the keeper crate observes, calls [`step`], executes the
//! actions in order through stolon-pg, reports each outcome to [`record`] and stops at the first
//! failure (the next pass re-plans from a fresh observation).

pub mod health;
mod plan;
mod policy;
mod step;
mod types;

pub use plan::{SlotChanges, is_different_timeline_branch, plan, slot_changes, wanted_slots};
pub use policy::*;
pub use step::*;
pub use types::*;

#[cfg(test)]
mod tests;
