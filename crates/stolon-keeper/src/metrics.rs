//! The keeper's Prometheus metrics (docs/architecture.md §10) and the tiny HTTP server that
//! serves them on `--metrics-listen-address` (`GET /metrics`), with the health checks of
//! [`crate::health`] and, with a failsafe secret, the failsafe routes (`POST /failsafe/ack`,
//! `POST /failsafe/confirm`, docs/failsafe.md).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stolon_core::failsafe::wire::{AckRequestMsg, AuthError, ConfirmRequestMsg, Kind, Secret};
use stolon_failsafe::{ACK_PATH, CONFIRM_PATH, MAX_BODY_BYTES, Responder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::health::HealthSnapshot;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

/// Every keeper metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `stolon_keeper_clusterdata_last_valid_update_seconds`.
    pub clusterdata_last_valid_update: FGauge,
    /// `stolon_keeper_target_role{role}`.
    pub target_role: Family<Labels, Gauge>,
    /// `stolon_keeper_local_role{role}`.
    pub local_role: Family<Labels, Gauge>,
    /// `stolon_keeper_needs_reload`.
    pub needs_reload: Gauge,
    /// `stolon_keeper_needs_restart`.
    pub needs_restart: Gauge,
    /// `stolon_keeper_last_sync_success_seconds`.
    pub last_sync_success: FGauge,
    /// `stolon_keeper_sleep_interval`.
    pub sleep_interval: FGauge,
    /// `stolon_keeper_shutdown_seconds`.
    pub shutdown_seconds: FGauge,
}

const ROLES: [&str; 3] = ["undefined", "master", "standby"];

fn role_label(r: &str) -> Labels {
    vec![("role".to_string(), r.to_string())]
}

impl Metrics {
    /// Registers every metric; `cluster_name` labels `stolon_cluster_identifier`.
    pub fn new(cluster_name: &str) -> Self {
        let mut r = Registry::default();
        r.register_collector(stolon_obs::process::ProcessCollector::boxed());
        let ident: Family<Labels, Gauge> = Family::default();
        r.register(
            "stolon_cluster_identifier",
            "set to 1, labelled with the cluster name and component",
            ident.clone(),
        );
        ident
            .get_or_create(&vec![
                ("cluster_name".into(), cluster_name.into()),
                ("component".into(), "keeper".into()),
            ])
            .set(1);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            clusterdata_last_valid_update: FGauge::default(),
            target_role: Family::default(),
            local_role: Family::default(),
            needs_reload: Gauge::default(),
            needs_restart: Gauge::default(),
            last_sync_success: FGauge::default(),
            sleep_interval: FGauge::default(),
            shutdown_seconds: FGauge::default(),
        };
        r.register(
            "stolon_keeper_clusterdata_last_valid_update_seconds",
            "Last time we received a valid clusterdata from our store as seconds since unix epoch",
            m.clusterdata_last_valid_update.clone(),
        );
        r.register(
            "stolon_keeper_target_role",
            "Keeper last requested target role",
            m.target_role.clone(),
        );
        r.register(
            "stolon_keeper_local_role",
            "Keeper current local role",
            m.local_role.clone(),
        );
        r.register(
            "stolon_keeper_needs_reload",
            "Set to 1 if Postgres requires reload",
            m.needs_reload.clone(),
        );
        r.register(
            "stolon_keeper_needs_restart",
            "Set to 1 if Postgres requires restart",
            m.needs_restart.clone(),
        );
        r.register(
            "stolon_keeper_last_sync_success_seconds",
            "Last time we successfully synced our keeper",
            m.last_sync_success.clone(),
        );
        r.register(
            "stolon_keeper_sleep_interval",
            "Seconds to sleep between sync loops",
            m.sleep_interval.clone(),
        );
        r.register(
            "stolon_keeper_shutdown_seconds",
            "Shutdown time (received termination signal) since unix epoch in seconds",
            m.shutdown_seconds.clone(),
        );
        for role in ROLES {
            m.target_role.get_or_create(&role_label(role)).set(0);
            m.local_role.get_or_create(&role_label(role)).set(0);
        }
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Sets the `role` series of `family` to 1 and the others to 0.
    pub fn set_role(family: &Family<Labels, Gauge>, role: &str) {
        for r in ROLES {
            family
                .get_or_create(&role_label(r))
                .set(i64::from(r == role));
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Seconds since the unix epoch, as metrics report times.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the failsafe routes need: the cluster's shared secret and the keeper's answers.
#[derive(Clone)]
pub struct FailsafeRoutes {
    /// Authenticates requests and seals answers.
    pub secret: Secret,
    /// The keeper's answers.
    pub responder: Arc<dyn Responder>,
}

impl std::fmt::Debug for FailsafeRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailsafeRoutes")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Answers one failsafe request body: 200 with the sealed answer; 401 (and a warning naming
/// only the kind of problem, never the body) when it is malformed or not authenticated; 404
/// when the keeper has no failsafe secret.
fn failsafe_answer(routes: Option<&FailsafeRoutes>, confirm: bool, body: &[u8]) -> Response {
    let Some(r) = routes else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let sealed = if confirm {
        stolon_failsafe::answer(
            &r.secret,
            Kind::ConfirmRequest,
            Kind::ConfirmAnswer,
            body,
            |req: ConfirmRequestMsg| r.responder.confirm(&req),
        )
    } else {
        stolon_failsafe::answer(
            &r.secret,
            Kind::AckRequest,
            Kind::AckAnswer,
            body,
            |req: AckRequestMsg| r.responder.ack(&req),
        )
    };
    let what = if confirm {
        "confirmation"
    } else {
        "acknowledgement"
    };
    match sealed
        .and_then(|env| serde_json::to_vec(&env).map_err(|e| AuthError::Malformed(e.to_string())))
    {
        Ok(json) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            let why = match e {
                AuthError::Malformed(_) => "malformed",
                AuthError::BadMac => "not authenticated",
                AuthError::NonceMismatch => "answer to another request",
            };
            tracing::warn!("failsafe {what} request refused: {why}");
            (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response()
        }
    }
}

/// Serves `GET /metrics`, the failsafe routes (`POST`, authenticated with `failsafe`'s secret;
/// 404 without it) and the health checks of [`crate::health`] (any method; a `HEAD` answer has
/// no body) on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: watch::Receiver<HealthSnapshot>,
    failsafe: Option<FailsafeRoutes>,
    cancel: CancellationToken,
) {
    let (ack_routes, confirm_routes) = (failsafe.clone(), failsafe);
    let app = Router::new()
        .route(
            ACK_PATH,
            post(move |body: Bytes| {
                let r = ack_routes.clone();
                async move { failsafe_answer(r.as_ref(), false, &body) }
            }),
        )
        .route(
            CONFIRM_PATH,
            post(move |body: Bytes| {
                let r = confirm_routes.clone();
                async move { failsafe_answer(r.as_ref(), true, &body) }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], m.encode()) }
            }),
        )
        .fallback(move |uri: Uri| {
            let health = health.clone();
            async move {
                let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
                let answer = {
                    let snapshot = health.borrow();
                    crate::health::respond(&snapshot, target, tokio::time::Instant::now())
                };
                match answer {
                    Some(a) => (
                        StatusCode::from_u16(a.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        [(CONTENT_TYPE, "application/json")],
                        a.body + "\n",
                    )
                        .into_response(),
                    None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
                }
            }
        });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics http server failed");
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn exports_the_process_metrics() {
        let text = &super::Metrics::new("c").encode();
        let missing = stolon_obs::process::missing_metrics(text);
        assert!(
            missing.is_empty(),
            "{missing:?} missing in:
{text}"
        );
    }
}
