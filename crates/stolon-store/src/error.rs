//! Store errors, with what callers branch on.

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-swap lost: the key changed since it was read.
    #[error("clusterdata was modified concurrently (compare-and-swap failed)")]
    Conflict,
    /// No endpoint could serve the request.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request did not finish within the store timeout.
    #[error("store request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A stored value could not be decoded.
    #[error("cannot decode {what}: {detail}")]
    Format {
        /// Which key or document.
        what: String,
        /// Decoder message.
        detail: String,
    },
    /// Bad store configuration (flags).
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    /// Worth retrying (possibly on another endpoint).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}
