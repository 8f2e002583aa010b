//! stolonctl: the operator's command line client for a stolon-rs (or Stolon) cluster.
//!
//! The binary (`src/main.rs`) only parses flags, connects to the store and calls [`app::run`].
//! Deciding what to write lives in pure functions ([`ops`] builds the new clusterdata for
//! init/update/failkeeper/removekeeper/promote, [`operations`] pause/resume and history,
//! [`status`] renders `stolonctl status`), so they are
//! unit-tested without a store; [`app`] does the reads, the writes and the prompts.

pub mod app;
pub mod cli;
pub mod confirm;
pub mod json;
pub mod operations;
pub mod ops;
pub mod status;
pub mod switchover;
pub mod tabwriter;
