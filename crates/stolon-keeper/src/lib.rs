//! stolon-keeper: manages exactly one PostgreSQL instance and converges it to the DB the sentinel
//! assigned in clusterdata, then publishes what it sees (`KeeperInfo`).
//!
//! Module map: [`config`] (flags, startup checks), [`state`] (local files, data-dir lock),
//! [`failsafe`] (the keeper's side of failsafe mode: its answers and acknowledgement rounds),
//! [`runtime`] (the event-driven loop and the executor of the pure plan from
//! `stolon_core::keeper`), `publisher` (the KeeperInfo publishing task), [`metrics`]
//! (Prometheus), [`health`] (HTTP health checks), [`logging`] (Stolon-compatible log lines).
//! `main.rs` only wires these together.

pub mod config;
pub mod failsafe;
pub mod health;
pub mod logging;
pub mod metrics;
mod publisher;
pub mod runtime;
pub mod state;

pub use config::{Cli, KeeperConfig};
pub use runtime::Keeper;
