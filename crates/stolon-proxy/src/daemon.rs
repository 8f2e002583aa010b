//! The proxy daemon: it executes the pure check machine of `stolon_core::proxy::machine`. It
//! reads clusterdata, resolves addresses, publishes this proxy's `ProxyInfo` and drives the
//! forwarding engine exactly as the machine's steps say, calling the machine with the current
//! monotonic time after every result, store change and wake-up. Every decision (when to check,
//! when to publish, where to route, the `proxyTimeout` fencing) is the machine's.
//!
//! Failsafe mode: the machine's confirmation requests go through a [`Transport`] (authenticated
//! HTTP to the master's keeper in the daemon, an in-process one in a simulation), each in its own
//! task bounded by the request's deadline, beside the check loop and the forwarding engine; the
//! answer comes back to the machine with the instant the request was sent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::failsafe::wire::ConfirmRequestMsg;
use stolon_core::proxy::machine::{
    self, Action, ClusterRead, Config, ConfirmAnswer, Fallback, Log, Memory, Observation,
    ReadError, Request,
};
use stolon_core::proxy::{Destination, proxy_info};
use stolon_core::uid::{UidSource, uid_from_bytes};
use stolon_failsafe::Transport;
use stolon_store::{Store, StoreError};
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
#[derive(Clone)]
pub struct RunOptions {
    /// This proxy's UID (random per process start in Stolon).
    pub uid: String,
    /// `proxyCheckInterval` until clusterdata says otherwise.
    pub initial_check_interval: Duration,
    /// `proxyTimeout` until clusterdata says otherwise.
    pub initial_proxy_timeout: Duration,
    /// How failsafe confirmation requests reach the keepers (`None`: this proxy has no failsafe
    /// secret, and fences at `proxyTimeout` whatever the clusterdata says).
    pub failsafe: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("uid", &self.uid)
            .field("initial_check_interval", &self.initial_check_interval)
            .field("initial_proxy_timeout", &self.initial_proxy_timeout)
            .field("failsafe", &self.failsafe.is_some())
            .finish()
    }
}

impl RunOptions {
    /// Options with Stolon's default timings, without failsafe confirmations.
    pub fn new(uid: String) -> Self {
        Self {
            uid,
            initial_check_interval: DEFAULT_CHECK_INTERVAL,
            initial_proxy_timeout: DEFAULT_PROXY_TIMEOUT,
            failsafe: None,
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

/// What the machine's actions act on: the forwarding engine in the daemon, a recorder in the
/// simulation.
pub trait Forwarding: Sync {
    /// Starts listening (the primary listener, and the read-only one when configured), where
    /// not listening yet. The error is one line.
    fn start_listening(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Closes the listening sockets.
    fn stop_listening(&self) -> impl Future<Output = ()> + Send;
    /// Sets the read-write destination (`None`: refuse, close everything).
    fn set_destination(&self, dest: Option<SocketAddr>);
    /// Sets the read-only destinations.
    fn set_read_only_destinations(&self, standbys: Vec<SocketAddr>, fallback: Option<SocketAddr>);
    /// A check succeeded.
    fn check_succeeded(&self) {}
    /// Holds new read-write connections without a destination for at most `limit` each
    /// (`None`: stop holding).
    fn set_hold(&self, _limit: Option<std::time::Duration>) {}
    /// The proxy starts (`true`) or stops routing on a failsafe confirmation.
    fn routing_on_confirmation(&self, _on: bool) {}
    /// A failsafe confirmation request got this answer.
    fn confirmation_answered(&self, _answer: &ConfirmAnswer) {}
    /// Before a publish: during a planned switchover, waits (bounded) until connections still
    /// authenticating with the old master have finished, so the acknowledgement that lets the
    /// old master stop comes after them.
    fn withdrawn_startups_finished(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Random info UIDs, one per publish.
#[derive(Debug, Default)]
pub struct RandomUids;

impl UidSource for RandomUids {
    fn new_uid(&mut self) -> String {
        uid_from_bytes(rand::random::<[u8; 4]>())
    }
}

/// The IO a step asked for, in flight.
type InFlight<'a> = Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;

/// Runs the check machine `cfg` over `store` and `fwd` until `cancel` is cancelled, without
/// failsafe confirmations. Every branch here executes what a step returned.
pub async fn drive<F: Forwarding>(
    cfg: &Config,
    store: Arc<dyn Store>,
    fwd: &F,
    info_uids: &mut (dyn UidSource + Send),
    cancel: &CancellationToken,
) {
    drive_with_failsafe(cfg, store, None, fwd, info_uids, cancel).await;
}

/// [`drive`], with the failsafe confirmation requests sent through `failsafe` (`None`: the
/// proxy asks for none, and fences at `proxyTimeout` whatever the clusterdata says). The
/// machine's `confirmations` setting follows whether a transport is given.
pub async fn drive_with_failsafe<F: Forwarding>(
    cfg: &Config,
    store: Arc<dyn Store>,
    failsafe: Option<Arc<dyn Transport>>,
    fwd: &F,
    info_uids: &mut (dyn UidSource + Send),
    cancel: &CancellationToken,
) {
    let cfg = &Config {
        confirmations: failsafe.is_some(),
        ..cfg.clone()
    };
    // Confirmation requests in flight; dropped (aborted) when the loop ends.
    let mut confirmations: tokio::task::JoinSet<Observation> = tokio::task::JoinSet::new();
    let origin = Instant::now();
    let mut memory = Memory::new(cfg, Duration::ZERO);
    let mut obs = Observation::Wake;
    let mut changes = store.changes();
    changes.borrow_and_update();
    let mut watching = true;
    let mut in_flight: Option<InFlight<'_>> = None;
    loop {
        let d = machine::step(cfg, obs, memory, origin.elapsed());
        memory = d.memory;
        for action in d.actions {
            match action {
                Action::AskConfirmation {
                    address,
                    master_db,
                    deadline,
                } => {
                    if let Some(transport) = &failsafe {
                        // Taken before the request leaves: the confirmation counts from here.
                        let sent_at = origin.elapsed();
                        confirmations.spawn(ask_confirmation(
                            transport.clone(),
                            address,
                            master_db,
                            deadline,
                            sent_at,
                        ));
                    }
                }
                other => execute(fwd, other).await,
            }
        }
        if let Some(request) = d.request {
            in_flight = Some(start(request, &store, fwd, &cfg.uid, info_uids));
        }
        let wake_at = d.wake_at.map(|w| origin + w);
        let (finished, next) = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                o = async {
                    match in_flight.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if in_flight.is_some() => break (true, o),
                done = confirmations.join_next(), if !confirmations.is_empty() => {
                    if let Some(Ok(answer)) = done {
                        if let Observation::Confirmation { answer: a, .. } = &answer {
                            fwd.confirmation_answered(a);
                        }
                        break (false, answer);
                    }
                }
                _ = sleep_until(wake_at.unwrap_or(origin)), if wake_at.is_some() => {
                    break (false, Observation::Wake);
                }
                res = changes.changed(), if watching => match res {
                    Ok(()) => break (false, Observation::StoreChanged),
                    Err(_) => {
                        // The store dropped its watch: the periodic checks still run.
                        tracing::warn!("store watch closed, relying on periodic checks");
                        watching = false;
                    }
                },
            }
        };
        if finished {
            in_flight = None;
        }
        obs = next;
    }
}

async fn execute<F: Forwarding>(fwd: &F, action: Action) {
    match action {
        Action::SetDestination(dest) => fwd.set_destination(dest),
        Action::SetReadOnlyDestinations { standbys, fallback } => {
            fwd.set_read_only_destinations(standbys, fallback);
        }
        Action::SetHold(limit) => fwd.set_hold(limit),
        Action::StopListening => fwd.stop_listening().await,
        Action::CheckSucceeded => fwd.check_succeeded(),
        Action::RoutingOnConfirmation(on) => fwd.routing_on_confirmation(on),
        // Sent by the loop itself (it owns the transport).
        Action::AskConfirmation { .. } => {}
        Action::Log(line) => log(&line),
    }
}

/// Asks the keeper at `address` to confirm `master_db`, within `deadline` whatever the
/// transport does; the answer as the machine's observation.
async fn ask_confirmation(
    transport: Arc<dyn Transport>,
    address: String,
    master_db: String,
    deadline: Duration,
    sent_at: Duration,
) -> Observation {
    let req = ConfirmRequestMsg {
        master_db: master_db.clone(),
    };
    let answer =
        match tokio::time::timeout(deadline, transport.confirm(&address, &req, deadline)).await {
            Err(_) => {
                ConfirmAnswer::Failed(format!("failsafe request to {address}: no answer in time"))
            }
            Ok(Err(e)) => ConfirmAnswer::Failed(e.to_string()),
            Ok(Ok(a)) => match a.granted() {
                Some(lifetime) => ConfirmAnswer::Granted(lifetime),
                None => ConfirmAnswer::Refused(
                    a.refused
                        .unwrap_or_else(|| "no reason given".to_string())
                        .replace(['\n', '\r'], " "),
                ),
            },
        };
    Observation::Confirmation {
        master_db,
        sent_at,
        answer,
    }
}

fn log(line: &Log) {
    match line {
        Log::CheckFailed(error) => tracing::error!(%error, "check function error"),
        Log::NotProxying(reason) => tracing::info!(%reason, "not proxying"),
        Log::ProxyingTo(master) => tracing::info!(%master, "proxying to master address"),
        Log::TimedOut => tracing::warn!("proxy check timed out: closing all connections"),
        Log::PublishFailed(error) => tracing::warn!(%error, "failed to update proxyInfo"),
        Log::SkippingStandby { host, error } => tracing::warn!(%host, %error, "skipping standby"),
        Log::RoutingOnConfirmation { master_db, master } => tracing::warn!(
            %master_db,
            %master,
            "store unreachable for proxyTimeout: routing on the master keeper's failsafe confirmation"
        ),
        Log::StoppedRoutingOnConfirmation(reason) => {
            tracing::info!(%reason, "stopped routing on failsafe confirmations");
        }
        Log::ConfirmationFailed(error) => {
            tracing::warn!(%error, "no failsafe confirmation");
        }
    }
}

/// Starts the IO of `request`; its future yields the observation to step with.
fn start<'a, F: Forwarding>(
    request: Request,
    store: &Arc<dyn Store>,
    fwd: &'a F,
    uid: &str,
    info_uids: &mut (dyn UidSource + Send),
) -> InFlight<'a> {
    let store = store.clone();
    match request {
        Request::ReadClusterData => Box::pin(async move {
            Observation::Read(match store.get_cluster_data().await {
                Ok(read) => Ok(ClusterRead {
                    data: read.data.map(Box::new),
                    revision: read.revision.map(|r| r.0),
                }),
                Err(e @ StoreError::Format { .. }) => Err(ReadError::Malformed(e.to_string())),
                Err(e) => Err(ReadError::Unavailable(error_chain(&e))),
            })
        }),
        Request::Listen => {
            Box::pin(async move { Observation::Listened(fwd.start_listening().await) })
        }
        Request::Resolve(dests) => Box::pin(async move {
            let mut out = Vec::with_capacity(dests.len());
            for dest in &dests {
                out.push(resolve_destination(dest).await.map_err(|e| e.to_string()));
            }
            Observation::Resolved(out)
        }),
        Request::Publish {
            generation,
            proxy_timeout,
            ttl,
        } => {
            let info = proxy_info(uid, info_uids.new_uid(), generation, proxy_timeout);
            Box::pin(async move {
                fwd.withdrawn_startups_finished().await;
                Observation::Published(
                    store
                        .put_proxy_info(&info, ttl)
                        .await
                        .map_err(|e| error_chain(&e)),
                )
            })
        }
    }
}

/// The daemon's forwarding engine: the primary listener and the optional read-only one.
struct Forwarders {
    primary: (Forwarder, ListenAddr),
    read_only: Option<(Forwarder, ListenAddr)>,
    metrics: Arc<Metrics>,
}

impl Forwarding for Forwarders {
    async fn start_listening(&self) -> Result<(), String> {
        for (fwd, addr) in std::iter::once(&self.primary).chain(&self.read_only) {
            listen(fwd, addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    async fn stop_listening(&self) {
        for (fwd, _) in std::iter::once(&self.primary).chain(&self.read_only) {
            fwd.stop_listening().await;
        }
    }

    fn set_destination(&self, dest: Option<SocketAddr>) {
        self.primary.0.set_destination(dest);
    }

    fn set_hold(&self, limit: Option<std::time::Duration>) {
        self.primary.0.set_hold(limit);
    }

    async fn withdrawn_startups_finished(&self) {
        if !self
            .primary
            .0
            .withdrawn_startups_finished(crate::engine::MAX_STARTUP_FINISH)
            .await
        {
            tracing::warn!(
                "connections still authenticating with the old master: acknowledging anyway"
            );
        }
    }

    fn set_read_only_destinations(&self, standbys: Vec<SocketAddr>, fallback: Option<SocketAddr>) {
        if let Some((ro, _)) = &self.read_only {
            ro.set_read_only_destinations(standbys, fallback);
        }
    }

    fn check_succeeded(&self) {
        self.metrics.check_succeeded();
    }

    fn routing_on_confirmation(&self, on: bool) {
        self.metrics.set_routing_on_confirmation(on);
    }

    fn confirmation_answered(&self, answer: &ConfirmAnswer) {
        self.metrics.confirmation_answered(answer);
    }
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
    let primary = Forwarder::new("primary", engine);
    let read_only = cfg
        .read_only
        .as_ref()
        .map(|ro| (Forwarder::new("read-only", engine), ro.listen.clone()));
    let mut forwarders = vec![primary.clone()];
    forwarders.extend(read_only.as_ref().map(|(f, _)| f.clone()));
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
    let mut machine = Config::new(
        opts.uid,
        opts.initial_check_interval,
        opts.initial_proxy_timeout,
    );
    machine.stop_listening = cfg.stop_listening;
    machine.read_only = cfg.read_only.as_ref().map(|ro| match ro.fallback {
        ReadOnlyFallback::Primary => Fallback::Master,
        ReadOnlyFallback::Refuse => Fallback::Refuse,
    });
    let fwd = Forwarders {
        primary: (primary, cfg.listen.clone()),
        read_only,
        metrics,
    };
    drive_with_failsafe(
        &machine,
        store,
        opts.failsafe,
        &fwd,
        &mut RandomUids,
        &cancel,
    )
    .await;
    tracing::info!("stopping");
    fwd.primary.0.shutdown().await;
    if let Some((ro, _)) = &fwd.read_only {
        ro.shutdown().await;
    }
    Ok(())
}

async fn listen(fwd: &Forwarder, addr: &ListenAddr) -> Result<(), ListenError> {
    if fwd.listening_addr().await.is_some() {
        return Ok(());
    }
    let sock = resolve(&addr.host, addr.port).await?;
    fwd.start_listening(sock).await?;
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
