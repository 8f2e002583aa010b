//! stolon-proxy: the TCP proxy applications connect to. It forwards new connections to the
//! current primary named in the cluster data (only while this proxy is enabled and its store
//! reads are fresh), closes every proxied connection when that target changes, and optionally
//! serves a read-only port spread over healthy standbys.
//!
//! This crate owns the IO: the forwarding [`engine`], the flags ([`config`]) and the executor of
//! the check loop ([`daemon`]). Every decision of that loop (when to check and publish, where to
//! route, the `proxyTimeout` fencing) is the pure `stolon_core::proxy::machine`.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod metrics;
