//! The keeper's HTTP health checks (`/health`, `/primary`, `/replica`, `/read-only`, served
//! beside `/metrics` on `--metrics-listen-address`): the keeper loop publishes a
//! [`HealthSnapshot`] after every pass, and each request is answered from the latest one by the
//! pure `stolon_core::keeper::health`.

use std::time::Duration;

use stolon_core::keeper::health::{self, Answer, LocalView};
use stolon_core::model::{ClusterData, PostgresState};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the keeper loop observed in its last pass.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    /// This keeper's UID.
    pub keeper_uid: String,
    /// The last observation of the local PostgreSQL (`None` before the first pass).
    pub state: Option<PostgresState>,
    /// `pg_is_in_recovery()` at that observation, when postgres answered.
    pub in_recovery: Option<bool>,
    /// When the loop took the observation.
    pub refreshed: Instant,
    /// The cluster's `sleepInterval`.
    pub sleep_interval: Duration,
    /// The last clusterdata the keeper read.
    pub cd: Option<ClusterData>,
}

/// Where the keeper loop puts its snapshots and the HTTP server reads them.
pub fn channel(
    keeper_uid: &str,
    sleep_interval: Duration,
) -> (
    watch::Sender<HealthSnapshot>,
    watch::Receiver<HealthSnapshot>,
) {
    watch::channel(HealthSnapshot {
        keeper_uid: keeper_uid.to_string(),
        state: None,
        in_recovery: None,
        refreshed: Instant::now(),
        sleep_interval,
        cd: None,
    })
}

/// The answer to the request target `target` (path and query), or `None` when it is not a
/// health check. A malformed query answers 400 with the reason.
pub fn respond(snapshot: &HealthSnapshot, target: &str, now: Instant) -> Option<Answer> {
    let check = match health::parse_check(target) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(reason) => {
            return Some(Answer {
                status: 400,
                body: serde_json::json!({ "error": reason }).to_string(),
            });
        }
    };
    let view = LocalView {
        keeper_uid: &snapshot.keeper_uid,
        state: snapshot.state.as_ref(),
        in_recovery: snapshot.in_recovery,
        since_refresh: now.saturating_duration_since(snapshot.refreshed),
        sleep_interval: snapshot.sleep_interval,
        cd: snapshot.cd.as_ref(),
    };
    Some(health::answer(check, &view))
}
