//! The data model every component shares: cluster spec, clusterdata and published infos.
//!
//! Pure data and pure helpers; no IO.

pub mod cluster;
pub mod history;
pub mod json;
pub mod member;
pub mod patch;
pub mod quorum;
pub mod spec;
pub mod switchover;

pub use cluster::*;
pub use history::{MasterChange, MasterChangeReason};
pub use member::*;
pub use quorum::*;
pub use spec::*;
pub use switchover::*;

use serde::{Deserialize, Deserializer};

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Go decodes JSON `null` into a map or slice as empty; do the same.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
