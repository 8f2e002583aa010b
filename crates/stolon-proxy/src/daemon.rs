//! The proxy daemon: the check loop that reads clusterdata, asks the pure `route()` where to
//! send connections, drives the forwarding engine, publishes this proxy's `ProxyInfo`, and
//! fails closed when the store cannot be read for `proxyTimeout` (stolon-behaviour.md §4.10).
//!
//! Event-driven: a check runs at once on any store change (watch) and at least every
//! `proxyCheckInterval`. A wake-up that finds the same clusterdata revision as the last
//! successful check does nothing more (our own `ProxyInfo` write also wakes us up; answering it
//! with another write would loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::proxy::{ClosedReason, Destination, Route, proxy_info, proxy_info_ttl, route};
use stolon_store::{Revision, Store, StoreError};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::{ListenAddr, ProxyConfig, ReadOnlyFallback};
use crate::engine::{EngineConfig, EngineError, Forwarder};
use crate::metrics::{self, Metrics};

/// Stolon's default `proxyCheckInterval`, used until clusterdata is read.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Stolon's default `proxyTimeout`, used until clusterdata is read.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on resolving a host name (listen address or advertised DB address).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Process-level inputs of the daemon that are not flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This proxy's UID (random per process start in Stolon).
    pub uid: String,
    /// `proxyCheckInterval` until clusterdata says otherwise.
    pub initial_check_interval: Duration,
    /// `proxyTimeout` until clusterdata says otherwise.
    pub initial_proxy_timeout: Duration,
}

impl RunOptions {
    /// Options with Stolon's default timings.
    pub fn new(uid: String) -> Self {
        Self {
            uid,
            initial_check_interval: DEFAULT_CHECK_INTERVAL,
            initial_proxy_timeout: DEFAULT_PROXY_TIMEOUT,
        }
    }
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metrics endpoint could not listen (fatal, as in Stolon).
    #[error("cannot listen on metrics address {addr}")]
    Metrics {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why a check failed (logged, then retried on the next wake-up or tick).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Clusterdata could not be read.
    #[error("cannot get cluster data")]
    Read(#[source] StoreError),
    /// Clusterdata is present but cannot be used (undecodable, wrong format, invalid spec).
    #[error("unusable cluster data: {0}")]
    Unusable(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: ListenError,
    },
    /// Publishing our ProxyInfo failed while routing to a master (the sentinel must know every
    /// proxy that routes).
    #[error("failed to update proxyInfo")]
    Publish(#[source] StoreError),
}

/// Why a listening socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address did not resolve.
    #[error("cannot resolve address: {0}")]
    Resolve(String),
    /// Binding failed.
    #[error(transparent)]
    Bind(#[from] EngineError),
}

/// Result of a successful check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Clusterdata read and applied; the timeout is reset.
    Applied,
    /// Woken up by a store change that did not touch clusterdata: nothing done.
    Unchanged,
}

/// The engine handles the timeout acts on (cloneable, so they can be used while a check runs).
#[derive(Clone)]
struct Forwarders {
    primary: Forwarder,
    read_only: Option<Forwarder>,
    stop_listening: bool,
}

impl Forwarders {
    /// `proxyTimeout` expired: close every connection, and the listeners if so configured.
    async fn time_out(&self) {
        tracing::warn!("proxy check timed out: closing all connections");
        self.primary.set_destination(None);
        if let Some(ro) = &self.read_only {
            ro.set_read_only_destinations(Vec::new(), None);
        }
        if self.stop_listening {
            self.primary.stop_listening().await;
            if let Some(ro) = &self.read_only {
                ro.stop_listening().await;
            }
        }
    }

    async fn shutdown(&self) {
        self.primary.shutdown().await;
        if let Some(ro) = &self.read_only {
            ro.shutdown().await;
        }
    }
}

/// The daemon's state between checks.
struct Proxy {
    cfg: ProxyConfig,
    store: Arc<dyn Store>,
    uid: String,
    fwd: Forwarders,
    check_interval: Duration,
    proxy_timeout: Duration,
    /// Clusterdata revision of the last fully successful check (`None` inside: key absent);
    /// `None`: the last check did not succeed, or the proxy timed out since.
    applied_revision: Option<Option<Revision>>,
    /// Last reason for routing nowhere, to log changes only.
    last_closed: Option<String>,
}

/// Runs the proxy until `cancel` is cancelled, then closes every connection and listener.
/// Fails only when the metrics endpoint cannot listen; store and routing errors are logged and
/// retried.
pub async fn run(
    cfg: ProxyConfig,
    store: Arc<dyn Store>,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let engine = EngineConfig {
        keepalive: cfg.keepalive,
        ..EngineConfig::default()
    };
    let fwd = Forwarders {
        primary: Forwarder::new("primary", engine),
        read_only: cfg
            .read_only
            .as_ref()
            .map(|_| Forwarder::new("read-only", engine)),
        stop_listening: cfg.stop_listening,
    };
    let mut forwarders = vec![fwd.primary.clone()];
    forwarders.extend(fwd.read_only.clone());
    let metrics = Metrics::new(&cfg.store.cluster_name, forwarders);
    if let Some(addr) = &cfg.metrics_listen {
        // Go accepts ":8080" for every address.
        let bind = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr.clone()
        };
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|source| RunError::Metrics {
                addr: addr.clone(),
                source,
            })?;
        tokio::spawn(metrics::serve(listener, metrics.clone(), cancel.clone()));
    }
    tracing::info!(uid = %opts.uid, "proxy uid");
    let mut proxy = Proxy {
        cfg,
        store,
        uid: opts.uid,
        fwd: fwd.clone(),
        check_interval: opts.initial_check_interval,
        proxy_timeout: opts.initial_proxy_timeout,
        applied_revision: None,
        last_closed: None,
    };

    let mut changes = proxy.store.changes();
    changes.borrow_and_update();
    let mut watching = true;
    let mut deadline = Instant::now() + proxy.proxy_timeout;
    let mut timed_out = false;
    let mut full = true;
    // A failing check (e.g. undecodable clusterdata) is logged once per distinct error.
    let mut check_errors = stolon_store::repeat::Repeated::default();
    // The resync tick moves only when clusterdata was applied or a full check ran: frequent
    // unrelated store changes (keeper infos) must not postpone it, or the timeout would fire.
    let mut next_tick = Instant::now();

    'run: loop {
        // One check, while still honouring the timeout and shutdown: a hung store must not
        // delay closing connections.
        let mut timed_out_during_check = false;
        let outcome = {
            let check = proxy.check(full);
            tokio::pin!(check);
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'run,
                    res = &mut check => break res,
                    _ = sleep_until(deadline), if !timed_out => {
                        timed_out = true;
                        timed_out_during_check = true;
                        fwd.time_out().await;
                    }
                }
            }
        };
        match outcome {
            Ok(Checked::Applied) => {
                check_errors.succeed();
                metrics.check_succeeded();
                deadline = Instant::now() + proxy.proxy_timeout;
                timed_out = false;
                next_tick = Instant::now() + proxy.check_interval;
            }
            Ok(Checked::Unchanged) => {}
            Err(e) => {
                let text = error_chain(&e);
                if check_errors.fail(&text).log {
                    tracing::error!(error = %text, "check function error");
                }
                if full {
                    next_tick = Instant::now() + proxy.check_interval;
                }
            }
        }
        if timed_out_during_check {
            // What the check applied may predate the timeout: check again at once.
            proxy.applied_revision = None;
            next_tick = Instant::now();
        }

        // Wait for a store change, the resync tick, the timeout or shutdown.
        full = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'run,
                _ = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    proxy.applied_revision = None;
                    fwd.time_out().await;
                }
                _ = sleep_until(next_tick) => break true,
                res = changes.changed(), if watching => match res {
                    Ok(()) => break false,
                    Err(_) => {
                        // The store dropped its watch: the resync tick still drives checks.
                        tracing::warn!("store watch closed, relying on periodic checks");
                        watching = false;
                    }
                },
            }
        };
    }
    tracing::info!("stopping");
    fwd.shutdown().await;
    Ok(())
}

impl Proxy {
    /// One check (§4.10 `Check()`). `full`: periodic resync (always applies and publishes);
    /// otherwise a watch wake-up that stops early when clusterdata did not change.
    async fn check(&mut self, full: bool) -> Result<Checked, CheckError> {
        let read = match self.store.get_cluster_data().await {
            Ok(read) => read,
            Err(e @ StoreError::Format { .. }) => {
                // Stolon leaves the old destination until the timeout; undecodable clusterdata
                // means we do not know the master, so fail closed now.
                self.route_nowhere(&format!("unusable clusterdata: {e}"));
                self.applied_revision = None;
                return Err(CheckError::Unusable(e.to_string()));
            }
            Err(e) => return Err(CheckError::Read(e)),
        };
        if !full && self.applied_revision.as_ref() == Some(&read.revision) {
            return Ok(Checked::Unchanged);
        }
        self.applied_revision = None;
        self.ensure_listening().await?;

        let route = route(read.data.as_ref(), &self.uid);
        self.apply(&route).await?;
        self.applied_revision = Some(read.revision);
        Ok(Checked::Applied)
    }

    /// Steps 3-9 of §4.10 on the routing decision.
    async fn apply(&mut self, route: &Route) -> Result<(), CheckError> {
        // Step 4: publish the larger of our current and the spec's timeout, so the sentinel does
        // not declare us inactive while we still run on the older, longer timeout.
        let publish_timeout = route.publish_timeout(self.proxy_timeout);
        let (routed, generation) = match (&route.primary, route.publish_generation) {
            // No clusterdata, or unusable: route nowhere, publish nothing.
            (Err(reason), None) => {
                self.route_nowhere(&reason.to_string());
                return match reason {
                    ClosedReason::Unusable(e) => Err(CheckError::Unusable(e.clone())),
                    _ => Ok(()),
                };
            }
            (Ok(dest), Some(generation)) => (Some(dest), generation),
            (Err(ClosedReason::NotEnabled), Some(generation)) => (None, generation),
            // No proxy object, no master, or no master address: close first, then acknowledge
            // the generation (errors ignored: we route nothing, so nothing is unsafe).
            (Err(reason), Some(generation)) => {
                self.route_nowhere(&reason.to_string());
                if self.publish(generation, publish_timeout).await.is_ok() {
                    self.adopt_timings(route);
                }
                return Ok(());
            }
            (Ok(_), None) => {
                // route() never yields this; treat as closed.
                self.route_nowhere("route without generation");
                return Ok(());
            }
        };

        let target = match routed {
            Some(dest) => match resolve_destination(dest).await {
                Ok(addr) => Some(addr),
                Err(e) => {
                    // Step 7: an unresolvable master address routes nothing, and is not a
                    // check failure.
                    self.route_nowhere(&format!("cannot resolve master address: {e}"));
                    if self.publish(generation, publish_timeout).await.is_ok() {
                        self.adopt_timings(route);
                    }
                    return Ok(());
                }
            },
            None => None,
        };

        // Step 8: routing to a master requires the sentinel to know about us.
        if let Err(e) = self.publish(generation, publish_timeout).await {
            let (current, _) = self.fwd.primary.destinations();
            if current.first().copied() != target {
                // Never switch to a new master unannounced; keep an unchanged route (the
                // timeout closes it if the store stays unreachable).
                self.route_nowhere("cannot publish proxy info");
            }
            return Err(CheckError::Publish(e));
        }
        self.adopt_timings(route);

        // Step 9.
        match target {
            Some(addr) => {
                self.fwd.primary.set_destination(Some(addr));
                if self.last_closed.take().is_some() {
                    tracing::info!(master = %addr, "proxying to master address");
                }
                self.route_read_only(route, addr).await;
            }
            None => self.route_nowhere(&ClosedReason::NotEnabled.to_string()),
        }
        Ok(())
    }

    /// Closes everything: no master, no read-only routing.
    fn route_nowhere(&mut self, reason: &str) {
        self.fwd.primary.set_destination(None);
        if let Some(ro) = &self.fwd.read_only {
            ro.set_read_only_destinations(Vec::new(), None);
        }
        if self.last_closed.as_deref() != Some(reason) {
            tracing::info!(reason, "not proxying");
            self.last_closed = Some(reason.to_string());
        }
    }

    /// Read-only listener: the qualifying standbys, falling back to the master or to nothing.
    async fn route_read_only(&self, route: &Route, master: SocketAddr) {
        let (Some(ro), Some(ro_cfg)) = (&self.fwd.read_only, &self.cfg.read_only) else {
            return;
        };
        let mut standbys = Vec::with_capacity(route.standbys.len());
        for dest in &route.standbys {
            match resolve_destination(dest).await {
                Ok(addr) => standbys.push(addr),
                Err(e) => tracing::warn!(host = %dest.host, error = %e, "skipping standby"),
            }
        }
        let fallback = match ro_cfg.fallback {
            ReadOnlyFallback::Primary => Some(master),
            ReadOnlyFallback::Refuse => None,
        };
        ro.set_read_only_destinations(standbys, fallback);
    }

    /// Publishes our ProxyInfo with a fresh info UID, under a TTL of twice the timeout.
    async fn publish(&self, generation: i64, proxy_timeout: Duration) -> Result<(), StoreError> {
        let info = proxy_info(
            &self.uid,
            stolon_core::uid::uid_from_bytes(rand::random::<[u8; 4]>()),
            generation,
            proxy_timeout,
        );
        let res = self
            .store
            .put_proxy_info(&info, proxy_info_ttl(proxy_timeout))
            .await;
        if let Err(e) = &res {
            tracing::warn!(error = %e, "failed to update proxyInfo");
        }
        res
    }

    /// After a successful publish, take the spec's check interval and timeout.
    fn adopt_timings(&mut self, route: &Route) {
        if let Some(t) = route.spec_proxy_timeout {
            self.proxy_timeout = t;
        }
        if let Some(i) = route.spec_check_interval {
            self.check_interval = i;
        }
    }

    /// Step 2: listen (primary, and read-only if configured) if not listening yet.
    async fn ensure_listening(&self) -> Result<(), CheckError> {
        listen(&self.fwd.primary, &self.cfg.listen).await?;
        if let (Some(ro), Some(ro_cfg)) = (&self.fwd.read_only, &self.cfg.read_only) {
            listen(ro, &ro_cfg.listen).await?;
        }
        Ok(())
    }
}

async fn listen(fwd: &Forwarder, addr: &ListenAddr) -> Result<(), CheckError> {
    if fwd.listening_addr().await.is_some() {
        return Ok(());
    }
    let err = |source| CheckError::Listen {
        addr: addr.to_string(),
        source,
    };
    let sock = resolve(&addr.host, addr.port).await.map_err(err)?;
    fwd.start_listening(sock)
        .await
        .map_err(|e| err(ListenError::Bind(e)))?;
    Ok(())
}

/// Resolves an advertised `host:port` (IP literal or host name).
async fn resolve_destination(dest: &Destination) -> Result<SocketAddr, ListenError> {
    let port = dest
        .port
        .parse::<u16>()
        .map_err(|_| ListenError::Resolve(format!("invalid port {:?}", dest.port)))?;
    resolve(&dest.host, port).await
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ListenError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => Err(ListenError::Resolve(format!(
            "timed out resolving {host:?}"
        ))),
        Ok(Err(e)) => Err(ListenError::Resolve(format!("{host:?}: {e}"))),
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| ListenError::Resolve(format!("{host:?}: no address"))),
    }
}

/// `error: cause: cause` on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
