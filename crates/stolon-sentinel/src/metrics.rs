//! The sentinel's Prometheus metrics (docs/architecture.md §10) and the `/metrics` server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Every sentinel metric, registered once at start.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Unix time of the last fully successful check (leader or not).
    pub last_check_success: Gauge<f64, AtomicU64>,
    /// 1 while leading.
    pub is_leader: Gauge,
    /// Times leadership was gained (a gauge so the name stays Stolon's, without `_total`).
    pub leader_count: Gauge,
    /// Failovers decided (new master elected).
    pub failovers: Counter,
    /// Master changes this sentinel recorded in the history, by reason (`failed`, `forced`,
    /// `switchover`).
    pub master_changes: Family<Vec<(String, String)>, Counter>,
    /// 1 while the cluster is paused (`stolonctl pause`).
    pub paused: Gauge,
    /// Planned switchovers that ended, by `outcome` (`completed`, `failed`).
    pub switchovers: Family<Vec<(String, String)>, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the metrics for `cluster_name`.
    pub fn new(cluster_name: &str) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(stolon_obs::process::ProcessCollector::boxed());
        let ident = Family::<Vec<(String, String)>, Gauge>::default();
        ident
            .get_or_create(&vec![
                ("cluster_name".to_string(), cluster_name.to_string()),
                ("component".to_string(), "sentinel".to_string()),
            ])
            .set(1);
        registry.register(
            "stolon_cluster_identifier",
            "Set to 1, labelled with the cluster name and component",
            ident,
        );
        let last_check_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "stolon_sentinel_last_cluster_check_success_seconds",
            "Last time we successfully performed a cluster check",
            last_check_success.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "stolon_sentinel_is_leader",
            "Set to 1 if the sentinel is the elected leader",
            is_leader.clone(),
        );
        let leader_count = Gauge::default();
        registry.register(
            "stolon_sentinel_leader_count",
            "Number of times this sentinel was elected leader",
            leader_count.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "stolon_sentinel_failovers",
            "Number of new masters elected by this sentinel",
            failovers.clone(),
        );
        let master_changes = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "stolon_sentinel_master_changes",
            "Number of master changes recorded by this sentinel, by reason (failed, forced, switchover)",
            master_changes.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "stolon_sentinel_paused",
            "Set to 1 while the cluster is paused (no automatic failover)",
            paused.clone(),
        );
        let switchovers = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "stolon_sentinel_switchovers",
            "Planned switchovers that ended, by outcome (completed or failed)",
            switchovers.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            last_check_success,
            is_leader,
            leader_count,
            failovers,
            master_changes,
            paused,
            switchovers,
        }
    }

    /// Counts one master change of `reason`.
    pub fn master_changed(&self, reason: &str) {
        self.master_changes
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Counts a switchover that ended with `outcome`.
    pub fn switchover_ended(&self, outcome: &str) {
        self.switchovers
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Binds `addr` and serves `GET /metrics` until `cancel`.
    pub async fn serve(
        self,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let m = self.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        );
        Ok(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        }))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn exports_the_process_metrics() {
        let text = &super::Metrics::new("c").render();
        let missing = stolon_obs::process::missing_metrics(text);
        assert!(
            missing.is_empty(),
            "{missing:?} missing in:
{text}"
        );
    }
    use super::*;

    #[test]
    fn renders_the_stolon_metric_names() {
        let m = Metrics::new("c1");
        m.is_leader.set(1);
        m.leader_count.inc();
        m.paused.set(1);
        m.master_changed("forced");
        m.switchover_ended("completed");
        let text = m.render();
        for needle in [
            "stolon_cluster_identifier{cluster_name=\"c1\",component=\"sentinel\"} 1",
            "stolon_sentinel_is_leader 1",
            "stolon_sentinel_leader_count 1",
            "stolon_sentinel_last_cluster_check_success_seconds",
            "stolon_sentinel_failovers_total 0",
            "stolon_sentinel_paused 1",
            "stolon_sentinel_master_changes_total{reason=\"forced\"} 1",
            "stolon_sentinel_switchovers_total{outcome=\"completed\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
