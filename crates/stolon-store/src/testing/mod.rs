//! Test support for this crate and the others (feature `testing`): the backend conformance
//! suite and a real etcd harness.

pub mod etcd;
pub mod suite;
