//! stolon-it: end-to-end tests of stolon-rs with the real binaries (`stolon-keeper`,
//! `stolon-sentinel`, `stolon-proxy`, `stolonctl`), a real etcd and real PostgreSQL, all started by
//! the tests on loopback; and the failover benchmark binary.
//!
//! - [`bins`]: where the binaries under test are (build them first: `cargo build --workspace --bins`).
//! - [`process`]: one supervised process with a log file, signals, cleanup.
//! - [`cluster`]: a whole cluster and the waits the scenarios use.
//! - [`pg`]: SQL helpers (through the proxy or on a keeper's instance).
//! - [`docker`]: containers of the project's image on a private network of a Docker engine.

pub mod bench;
pub mod bins;
pub mod cluster;
pub mod docker;
pub mod pg;
pub mod process;

pub use cluster::{Cluster, ClusterConfig, Keeper, KeeperOpts, Proxy, test_spec, wait_for};
