//! Prometheus metrics of the proxy, served as text on `GET /metrics` at
//! `--metrics-listen-address` (docs/architecture.md §10: Stolon's proxy exports only
//! `stolon_cluster_identifier`; the engine counters here are additions).
//!
//! The HTTP side is deliberately tiny: one request per connection, `GET /metrics` and the
//! readiness check `/health` (200 while the primary listener routes, else 503) answered,
//! anything else 404, bounded request size and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use stolon_core::proxy::machine::ConfirmAnswer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::engine::Forwarder;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time allowed to send the request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics endpoint reports.
pub struct Metrics {
    cluster_name: String,
    forwarders: Vec<Forwarder>,
    /// Unix time (seconds) of the last successful check; 0 = never.
    last_check_success: AtomicI64,
    /// Routing on a failsafe confirmation now.
    routing_on_confirmation: AtomicBool,
    /// Failsafe confirmation requests answered with a grant, a refusal, or not at all.
    confirmations: [AtomicU64; 3],
}

impl Metrics {
    /// Metrics of `forwarders` for cluster `cluster_name`.
    pub fn new(cluster_name: &str, forwarders: Vec<Forwarder>) -> Arc<Self> {
        Arc::new(Self {
            cluster_name: cluster_name.to_string(),
            forwarders,
            last_check_success: AtomicI64::new(0),
            routing_on_confirmation: AtomicBool::new(false),
            confirmations: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The proxy starts or stops routing on a failsafe confirmation.
    pub fn set_routing_on_confirmation(&self, on: bool) {
        self.routing_on_confirmation.store(on, Ordering::Relaxed);
    }

    /// Counts the answer to a failsafe confirmation request.
    pub fn confirmation_answered(&self, answer: &ConfirmAnswer) {
        let i = match answer {
            ConfirmAnswer::Granted(_) => 0,
            ConfirmAnswer::Refused(_) => 1,
            ConfirmAnswer::Failed(_) => 2,
        };
        self.confirmations[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a successful check now.
    pub fn check_succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.last_check_success.store(now, Ordering::Relaxed);
    }

    /// The readiness check (`/health`): whether the primary listener routes new connections
    /// (enabled, store fresh, a master named), with its destination, as one JSON line.
    pub fn health(&self) -> (bool, String) {
        let primary = self
            .forwarders
            .iter()
            .find(|f| f.name() == "primary")
            .and_then(|f| {
                let (targets, fallback) = f.destinations();
                targets.first().copied().or(fallback)
            });
        // A socket address needs no JSON escaping.
        match primary {
            Some(a) => (true, format!("{{\"ok\":true,\"primary\":\"{a}\"}}\n")),
            None => (false, "{\"ok\":false,\"primary\":null}\n".to_string()),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP stolon_cluster_identifier Set to 1, labelled with the cluster name and component.\n# TYPE stolon_cluster_identifier gauge\n");
        out.push_str(&format!(
            "stolon_cluster_identifier{{cluster_name=\"{}\",component=\"proxy\"}} 1\n",
            escape(&self.cluster_name)
        ));
        out.push_str("# HELP stolon_proxy_last_check_success_seconds Unix time of the last successful store check (0: never).\n# TYPE stolon_proxy_last_check_success_seconds gauge\n");
        out.push_str(&format!(
            "stolon_proxy_last_check_success_seconds {}\n",
            self.last_check_success.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP stolon_proxy_failsafe_routing 1 while the store cannot be read and the proxy routes on the master keeper's failsafe confirmation.\n# TYPE stolon_proxy_failsafe_routing gauge\n");
        out.push_str(&format!(
            "stolon_proxy_failsafe_routing {}\n",
            u8::from(self.routing_on_confirmation.load(Ordering::Relaxed))
        ));
        out.push_str("# HELP stolon_proxy_failsafe_confirmations_total Failsafe confirmation requests, by answer (granted, refused, failed: no usable answer).\n# TYPE stolon_proxy_failsafe_confirmations_total counter\n");
        for (result, n) in ["granted", "refused", "failed"]
            .iter()
            .zip(&self.confirmations)
        {
            out.push_str(&format!(
                "stolon_proxy_failsafe_confirmations_total{{result=\"{result}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        type Pick = fn(&crate::engine::Stats) -> u64;
        let series: [(&str, &str, &str, Pick); 8] = [
            (
                "stolon_proxy_listening",
                "gauge",
                "1 while the listening socket is open.",
                |s| u64::from(s.listening),
            ),
            (
                "stolon_proxy_connections_active",
                "gauge",
                "Proxied connections open now.",
                |s| s.active as u64,
            ),
            (
                "stolon_proxy_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |s| s.accepted,
            ),
            (
                "stolon_proxy_connections_refused_total",
                "counter",
                "Client connections closed at once for lack of a destination.",
                |s| s.refused,
            ),
            (
                "stolon_proxy_connections_closed_by_route_change_total",
                "counter",
                "Proxied connections closed because their destination was withdrawn.",
                |s| s.closed_by_route_change,
            ),
            (
                "stolon_proxy_connections_held",
                "gauge",
                "Client connections waiting for a destination now (planned switchover).",
                |s| s.held_now as u64,
            ),
            (
                "stolon_proxy_startups_replayed_total",
                "counter",
                "Connections whose destination was withdrawn before the server answered their startup, sent with it to the next destination.",
                |s| s.startups_replayed,
            ),
            (
                "stolon_proxy_route_changes_total",
                "counter",
                "Times the routed destinations changed.",
                |s| s.route_changes,
            ),
        ];
        let stats: Vec<_> = self
            .forwarders
            .iter()
            .map(|f| (f.name(), f.stats()))
            .collect();
        for (name, kind, help, pick) in series {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (listener, s) in &stats {
                out.push_str(&format!("{name}{{listener=\"{listener}\"}} {}\n", pick(s)));
            }
        }
        out.push_str(&stolon_obs::process::render_text());
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((sock, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(sock, &metrics).await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut sock: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read_head).await {
        Ok(res) => res?,
        Err(_) => return Ok(()),
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split('?').next().unwrap_or(p));
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (Some("GET" | "HEAD" | "OPTIONS"), Some("/health")) => {
            let (ok, body) = metrics.health();
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", body)
        }
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "404 page not found\n".to_string(),
        ),
    };
    let shown = if method == Some("HEAD") { "" } else { &body };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{shown}",
        body.len()
    );
    sock.write_all(response.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {

    #[test]
    fn exports_the_process_metrics() {
        let text = &super::Metrics::new("c", Vec::new()).render();
        let missing = stolon_obs::process::missing_metrics(text);
        assert!(
            missing.is_empty(),
            "{missing:?} missing in:
{text}"
        );
    }
    use super::*;
    use crate::engine::EngineConfig;

    #[test]
    fn failsafe_routing_gauge_and_confirmation_counters() {
        let m = Metrics::new("c", Vec::new());
        m.set_routing_on_confirmation(true);
        for a in [
            ConfirmAnswer::Granted(Duration::from_secs(7)),
            ConfirmAnswer::Granted(Duration::from_secs(7)),
            ConfirmAnswer::Refused("no".into()),
        ] {
            m.confirmation_answered(&a);
        }
        let text = m.render();
        for line in [
            "stolon_proxy_failsafe_routing 1\n",
            "stolon_proxy_failsafe_confirmations_total{result=\"granted\"} 2\n",
            "stolon_proxy_failsafe_confirmations_total{result=\"refused\"} 1\n",
            "stolon_proxy_failsafe_confirmations_total{result=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        m.set_routing_on_confirmation(false);
        assert!(m.render().contains("stolon_proxy_failsafe_routing 0\n"));
    }

    #[tokio::test]
    async fn serves_metrics_and_404() {
        let fwd = Forwarder::new("primary", EngineConfig::default());
        let metrics = Metrics::new("my\"cluster", vec![fwd.clone()]);
        fwd.set_destination(Some("127.0.0.1:1".parse().unwrap()));
        metrics.check_succeeded();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, metrics, cancel.clone()));

        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains(
            "stolon_cluster_identifier{cluster_name=\"my\\\"cluster\",component=\"proxy\"} 1"
        ));
        assert!(ok.contains("stolon_proxy_route_changes_total{listener=\"primary\"} 1"));
        assert!(ok.contains("stolon_proxy_listening{listener=\"primary\"} 0"));
        assert!(ok.contains("stolon_proxy_connections_held{listener=\"primary\"} 0"));
        assert!(ok.contains("stolon_proxy_startups_replayed_total{listener=\"primary\"} 0"));
        assert!(!ok.contains("stolon_proxy_last_check_success_seconds 0\n"));
        assert!(ok.contains("stolon_proxy_failsafe_routing 0\n"), "{ok}");
        assert!(ok.contains("stolon_proxy_failsafe_confirmations_total{result=\"granted\"} 0\n"));
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        let routing = get("/health").await;
        assert!(routing.starts_with("HTTP/1.1 200 OK"), "{routing}");
        assert!(
            routing.ends_with("\r\n\r\n{\"ok\":true,\"primary\":\"127.0.0.1:1\"}\n"),
            "{routing}"
        );
        fwd.set_destination(None);
        let closed = get("/health").await;
        assert!(closed.starts_with("HTTP/1.1 503"), "{closed}");
        assert!(
            closed.ends_with("{\"ok\":false,\"primary\":null}\n"),
            "{closed}"
        );
        cancel.cancel();
    }
}
