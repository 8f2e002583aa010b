//! stolon-sim: a simulation of a whole stolon cluster inside one test process.
//!
//! The real sentinel loops (`stolon_sentinel::run`) and the real keeper runtimes
//! (`stolon_keeper::Keeper`) run over one in-memory store ([`stolon_store::MemKv`]), each
//! component through its own fault wrapper ([`stolon_store::Unreliable`]), and each keeper over its
//! own [`stolon_pg::fake::FakePg`]. Everything runs on a current-thread tokio runtime with paused
//! time, so a minute of cluster life takes a fraction of a second.
//!
//! The [`World`] adds what no component does itself: replication between the fake PostgreSQL
//! instances ([`pgmodel`]), a client writing through the proxy's route, proxies running the proxy
//! daemon's own check loop (`stolon_proxy::daemon::drive` over the pure
//! `stolon_core::proxy::machine`) with a recorder instead of the forwarding engine, seeded faults
//! ([`rng`],
//! [`world::Fault`]) and the safety invariants of docs/invariants.md, checked after every step.
//! A violation is returned as a [`Violation`] carrying the seed and the last events.
//!
//! Not modelled (known gaps): the proxy's sockets and forwarding engine (the recorder stands in:
//! it keeps the destination the check loop sets); PostgreSQL reloads (the configuration file as last
//! written is the one in force); WAL retention and replication slots (a compatible standby can
//! always catch up); network partitions between PostgreSQL instances; a broken store watch; a
//! sentinel losing its election lease through an injected store fault (the wrapped election fails
//! new campaigns, but a running campaign refreshes its lease through the unwrapped backend).

pub mod fsnet;
pub mod pgmodel;
pub mod rng;
pub mod world;

pub use fsnet::{FailsafeNet, Party};
pub use world::{Bug, Component, Fault, SimConfig, Stats, Violation, World};
