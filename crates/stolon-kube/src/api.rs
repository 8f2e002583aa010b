//! Calls to the API server bounded by the store timeout, and the mapping of `kube` errors to
//! [`StoreError`].

use std::future::Future;
use std::time::Duration;

use stolon_store::StoreError;

/// An API call failed.
#[derive(Debug)]
pub(crate) enum ApiFail {
    /// The server answered with this HTTP status (404 not found, 409 conflict / exists, ...).
    Status(u16, String),
    /// Anything else, already a store error (transport, timeout, decoding).
    Other(StoreError),
}

impl ApiFail {
    pub fn is(&self, code: u16) -> bool {
        matches!(self, ApiFail::Status(c, _) if *c == code)
    }

    /// The store error to report (a 409 here means something changed under us).
    pub fn into_store(self) -> StoreError {
        match self {
            ApiFail::Status(409, _) => StoreError::Conflict,
            ApiFail::Status(code, msg) => {
                StoreError::Unavailable(format!("kubernetes API answered {code}: {msg}"))
            }
            ApiFail::Other(e) => e,
        }
    }
}

impl From<ApiFail> for StoreError {
    fn from(f: ApiFail) -> StoreError {
        f.into_store()
    }
}

fn map_kube(e: kube::Error) -> ApiFail {
    match e {
        kube::Error::Api(status) => {
            let msg = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            ApiFail::Status(status.code, msg)
        }
        kube::Error::SerdeError(e) => ApiFail::Other(StoreError::Format {
            what: "kubernetes API response".into(),
            detail: e.to_string(),
        }),
        other => ApiFail::Other(StoreError::Unavailable(format!("kubernetes API: {other}"))),
    }
}

/// Runs one API call with the store timeout.
pub(crate) async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiFail> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(map_kube),
        Err(_) => Err(ApiFail::Other(StoreError::Timeout(timeout))),
    }
}
