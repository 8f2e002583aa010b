//! Reading clusterdata in a daemon loop without flooding the log: while the read keeps failing
//! (an undecodable document, an unreachable store), the error is logged once per distinct
//! message and each retry waits a little longer, up to a bound; the first good read after
//! failures says so once.
//!
//! [`Repeated`] is the pure bookkeeping; [`read_cluster_data`] is the call the keeper, the
//! sentinel and the proxy make where they read clusterdata.

use std::time::Duration;

use crate::{ClusterDataRead, Store, StoreError};

/// First retry delay after a failed read.
pub const BASE_DELAY: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const MAX_DELAY: Duration = Duration::from_secs(3);

/// What to do about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Log it: the first failure, or a message different from the last one.
    pub log: bool,
    /// Wait this long before retrying.
    pub delay: Duration,
}

/// Consecutive failures of one repeated operation.
#[derive(Debug, Clone)]
pub struct Repeated {
    base: Duration,
    max: Duration,
    failures: u32,
    last: Option<String>,
}

impl Default for Repeated {
    fn default() -> Self {
        Repeated::new(BASE_DELAY, MAX_DELAY)
    }
}

impl Repeated {
    /// Delays start at `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Repeated {
            base,
            max,
            failures: 0,
            last: None,
        }
    }

    /// Records a failure with text `message`.
    pub fn fail(&mut self, message: &str) -> Failure {
        let log = self.last.as_deref() != Some(message);
        if log {
            self.last = Some(message.to_string());
        }
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        let delay = self.base.saturating_mul(1 << shift).min(self.max);
        Failure { log, delay }
    }

    /// Records a success; returns how many failures it ends (0: none).
    pub fn succeed(&mut self) -> u32 {
        self.last = None;
        std::mem::take(&mut self.failures)
    }
}

/// Reads clusterdata. On failure logs `message` with the error (only when the error changed),
/// waits the retry delay and returns the error; on the first success after failures logs that
/// clusterdata is readable again.
pub async fn read_cluster_data(
    store: &dyn Store,
    state: &mut Repeated,
    message: &str,
) -> Result<ClusterDataRead, StoreError> {
    match store.get_cluster_data().await {
        Ok(read) => {
            let ended = state.succeed();
            if ended > 0 {
                tracing::info!(failures = ended, "cluster data read again");
            }
            Ok(read)
        }
        Err(e) => {
            let text = e.to_string();
            let f = state.fail(&text);
            if f.log {
                tracing::error!(error = %text, "{message}");
            }
            tokio::time::sleep(f.delay).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_change_with_bounded_backoff() {
        let mut r = Repeated::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<(bool, u128)> = ["a", "a", "a", "b", "b", "a"]
            .iter()
            .map(|m| {
                let f = r.fail(m);
                (f.log, f.delay.as_millis())
            })
            .collect();
        assert_eq!(
            delays,
            vec![
                (true, 100),
                (false, 200),
                (false, 400),
                (true, 500),
                (false, 500),
                (true, 500)
            ]
        );
        assert_eq!(r.succeed(), 6);
        assert_eq!(r.succeed(), 0);
        // After a success the same error is news again, and the delay starts over.
        assert_eq!(
            r.fail("a"),
            Failure {
                log: true,
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut r = Repeated::default();
        for _ in 0..100_000 {
            assert!(r.fail("x").delay <= MAX_DELAY);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecodable_clusterdata_is_reported_once_and_retried_slower() {
        let store = crate::MemStore::new("c");
        store
            .kv()
            .raw_put(&store.layout().cluster_data(), b"{not json");
        let mut r = Repeated::default();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            let e = read_cluster_data(&store, &mut r, "error retrieving cluster data")
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Format { .. }), "{e}");
        }
        // 200 + 400 + 800 + 1600 + 3000 ms of waiting (paused clock: exact).
        assert_eq!(start.elapsed(), Duration::from_millis(6000));
        assert_eq!(r.fail("again").delay, MAX_DELAY);
    }
}
