//! stolon-core: the pure heart of stolon-rs.
//!
//! The data model (cluster spec, clusterdata, infos), and the pure decisions: the sentinel's
//! `decide`, the keeper's `plan`, the proxy's `route`, and PostgreSQL config rendering. Nothing here
//! does IO, reads a clock or draws random numbers: time and ids are passed in.

pub mod duration;
pub mod model;
pub mod timestamp;
pub mod uid;

pub use duration::GoDuration;
pub use timestamp::Timestamp;
pub mod failsafe;
pub mod keeper;
pub mod pgconf;
pub mod proxy;
pub mod sentinel;
pub mod wal;
