//! stolon-net: a multi-host fault harness and a Jepsen-style checker (test-only crate).
//!
//! Three hosts, each a network namespace with its own address on a bridge the run creates, each
//! running one member of a 3-member etcd cluster, one keeper with its PostgreSQL, one sentinel
//! and one proxy: the real binaries of the workspace (`cargo build --workspace --bins` first).
//! Clients run in the root namespace and spread their connections over all proxies. Faults are
//! iptables rules inside the namespaces, process kills, a slow store (a TCP fault proxy in front
//! of each etcd member) and a lost etcd quorum; each is bounded in time and healed, and the
//! cluster must converge back to one primary with every other keeper streaming.
//!
//! - [`net`]: namespaces, the bridge, cuts; removal of everything (also leftovers of dead runs).
//! - [`faultproxy`]: the TCP fault proxy.
//! - [`cluster`]: the processes on the hosts and the convergence check.
//! - [`workload`]: the clients and what they record.
//! - [`checker`]: the pure checker of a recorded history.
//! - [`campaign`]: faults, cycles, tables.

pub mod campaign;
pub mod checker;
pub mod cluster;
pub mod faultproxy;
pub mod net;
pub mod workload;
