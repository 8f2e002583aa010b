//! The keeper logs through the layout every stolon binary shares (`stolon_obs::logging`).

pub use stolon_obs::logging::*;
