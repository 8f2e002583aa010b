//! The etcd v3 backend: [`EtcdStore`] and [`EtcdElection`] (docs/architecture.md §4.1, §4.2).
//!
//! Endpoint failover ([`run_attempts`]): the store keeps one etcd client per endpoint (each on
//! its own HTTP/2 connection) and sends every request to the endpoint that last answered. When
//! an attempt fails with a transport-level error (connection refused or reset, `Unavailable`,
//! "no leader" under `require-leader`, "leader changed"), the request is tried on the next
//! endpoint at once; every endpoint is tried at least once, and failed rounds are repeated
//! (short pauses) until the store timeout has elapsed, which rides out an etcd leader election.
//!
//! An attempt that gets no answer is hedged: while a request is unanswered it is also sent to
//! the next endpoint after every hedging pause ([`HEDGE_AFTER`], 100 ms, while the endpoints
//! answer fast; up to 1 s when they have been answering slowly, see [`Pace`], and never more than
//! a quarter of the store timeout), the earlier
//! attempts keep running, and the first answer wins. The first attempt may run for the whole store timeout, so a cluster that
//! is merely slow still answers it. So a dead member costs a request nothing measurable (its
//! connection is refused), a frozen or partitioned one about 100 ms, and a write that a member
//! forwarded to a raft leader that just died, which etcd never answers, is sent again within
//! 100 ms of the new leader's election. Compare-and-swap is not hedged (a duplicate could
//! answer "compare failed" for the swap its twin made): it makes one attempt at a time, with a
//! deadline that is short in the first round over the endpoints (1 s, or the store timeout when
//! that is shorter) and doubles each later round, capped by what is left of the store timeout
//! (but never below the first round's); with a single endpoint the one attempt gets the whole
//! store timeout.
//!
//! HTTP/2 keepalive pings with a ping timeout of two first-round deadlines also close a
//! connection to a member that stopped answering. The change watch does not wait for them: after
//! a second without a message it asks its member for a progress report, and re-establishes
//! itself elsewhere when none comes within a first-round deadline.
//!
//! Compare-and-swap is a transaction on the key's mod revision (create revision 0 when the key
//! must be absent). Infos get a fresh lease per write; the lease the key had before is revoked
//! so at most one lease per key is alive. `changes()` is fed by a watch on `<cluster>/` run by
//! a background task that re-establishes it (from the last seen revision) after any error.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::config::{StoreConfig, split_host_port};
use crate::election::{DEFAULT_ELECTION_TTL, LeaseElection};
use crate::error::StoreError;
use crate::keys::{KeyLayout, ttl_secs};
use crate::kv::{KvBackend, KvEntry, KvStore};
use crate::tls::{Connector, TlsFlags, client_config};
use crate::{ClusterDataRead, Revision, Store};
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};

/// HTTP/2 keepalive ping interval on store connections (etcd refuses pings more often than
/// every 5 s by default); the ping timeout is two attempt deadlines.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Bound of the attempt deadline of the first round over the endpoints.
const ATTEMPT_MAX: Duration = Duration::from_secs(1);
/// A hedged request still unanswered this long after its last attempt started is sent again
/// (a healthy member answers in a few milliseconds), unless the endpoints have been answering
/// slowly (see [`Pace`]).
const HEDGE_AFTER: Duration = Duration::from_millis(100);
/// The longest pause between the hedges of one request, whatever the endpoints' pace.
const HEDGE_AFTER_MAX: Duration = Duration::from_secs(1);
/// A request is hedged at the latest after this fraction of its store timeout, whatever the
/// endpoints' pace.
const HEDGES_PER_BUDGET: u32 = 4;
/// How many times the recent answer time a request waits before it is hedged.
const HEDGE_PACE_FACTOR: u32 = 4;
/// How long a hedge (an attempt sent while an earlier one still runs) may run, in hedging
/// pauses (at most a first-round deadline).
const HEDGE_LIFETIME_PAUSES: u32 = 5;
/// Pause between failed rounds over all endpoints.
const ROUND_PAUSE_MIN: Duration = Duration::from_millis(50);
const ROUND_PAUSE_MAX: Duration = Duration::from_millis(500);
/// A change watch silent this long is asked for a progress report; a watch that then stays
/// silent for a first-round attempt deadline is on a member that stopped answering, and is
/// re-established elsewhere (the connection's keepalive would notice only after
/// [`KEEPALIVE_INTERVAL`]).
const WATCH_PROBE_AFTER: Duration = Duration::from_secs(1);
/// Watch re-establishment back-off bounds.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How an etcd error is handled.
enum Failure {
    /// Try the next endpoint.
    Retry(StoreError),
    /// Give up: the request itself is wrong or was refused for good.
    Fatal(StoreError),
}

fn classify(e: etcd_client::Error) -> Failure {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = format!("{}: {}", code_name(status.code()), status.message());
            match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Internal => Failure::Retry(StoreError::Unavailable(msg)),
                _ => Failure::Fatal(StoreError::Unavailable(msg)),
            }
        }
        etcd_client::Error::TransportError(e) => {
            Failure::Retry(StoreError::Unavailable(format!("transport error: {e}")))
        }
        etcd_client::Error::IoError(e) => {
            Failure::Retry(StoreError::Unavailable(format!("io error: {e}")))
        }
        etcd_client::Error::WatchError(e) => {
            Failure::Retry(StoreError::Unavailable(format!("watch error: {e}")))
        }
        other => Failure::Fatal(StoreError::Unavailable(other.to_string())),
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// One client per endpoint, with the index of the last endpoint that answered.
pub(crate) struct EndpointPool {
    clients: Vec<(String, Client)>,
    current: AtomicUsize,
    timeout: Duration,
    pace: Pace,
}

impl EndpointPool {
    async fn new(cfg: &StoreConfig) -> Result<Self, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Config("no store endpoints".into()));
        }
        let tls = if cfg.uses_tls() {
            let flags = TlsFlags {
                ca_file: cfg.ca_file.clone(),
                cert_file: cfg.cert_file.clone(),
                key_file: cfg.key_file.clone(),
                skip_verify: cfg.skip_tls_verify,
            };
            Some(Arc::new(client_config(&flags, &[b"h2"])?))
        } else {
            None
        };
        let mut clients = Vec::new();
        for ep in &cfg.endpoints {
            let (scheme, authority) = ep
                .split_once("://")
                .ok_or_else(|| StoreError::Config(format!("endpoint {ep:?} has no scheme")))?;
            let (host, _) = split_host_port(authority).ok_or_else(|| {
                StoreError::Config(format!("endpoint {ep:?}: expected host:port"))
            })?;
            let connector = Connector {
                authority: authority.to_string(),
                host: host.to_string(),
                tls: if scheme == "https" { tls.clone() } else { None },
            };
            // The URI only names the endpoint for tonic; the connector does the dialing (and TLS).
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|e| StoreError::Config(format!("endpoint {ep:?}: {e}")))?
                .connect_timeout(cfg.timeout)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(first_attempt_deadline(cfg.timeout) * 2)
                .keep_alive_while_idle(false);
            let channel = endpoint.connect_with_connector_lazy(connector);
            let client = Client::from_channel(
                etcd_client::Channel::Tonic(channel),
                Some(ConnectOptions::new().with_require_leader(true)),
            )
            .await
            .map_err(|e| StoreError::Config(format!("endpoint {ep:?}: {e}")))?;
            clients.push((ep.clone(), client));
        }
        Ok(EndpointPool {
            clients,
            current: AtomicUsize::new(0),
            timeout: cfg.timeout,
            pace: Pace::default(),
        })
    }

    /// Runs `op` on the endpoints as [`run_attempts`] says (hedged unless `hedge` is
    /// [`Hedge::Off`]).
    async fn call<T, F, Fut>(&self, what: &str, hedge: Hedge, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let endpoints = Endpoints {
            clients: &self.clients,
            current: &self.current,
            pace: &self.pace,
        };
        run_attempts(endpoints, self.timeout, hedge, what, op).await
    }
}

/// How fast the endpoints have been answering: a moving average (weight 1/8) of the time
/// answered attempts took. It sets the hedging pause: [`HEDGE_PACE_FACTOR`] times the average,
/// between [`HEDGE_AFTER`] and [`HEDGE_AFTER_MAX`]. So a healthy cluster gets a hedge after
/// 100 ms, and a cluster that is slow because it is overloaded is not sent many duplicates of
/// requests it would have answered anyway.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// Microseconds; 0 until the first answer.
    average_us: AtomicU64,
}

impl Pace {
    /// Counts one answered attempt that took `took`.
    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .average_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    sample
                } else {
                    // avg + (sample - avg) / 8, in signed arithmetic.
                    let next = avg as i128 + (sample as i128 - avg as i128) / 8;
                    next.clamp(1, u64::MAX as i128) as u64
                })
            });
    }

    /// The pause between the hedges of a request.
    fn hedge_after(&self) -> Duration {
        let avg = Duration::from_micros(self.average_us.load(Ordering::Relaxed));
        avg.saturating_mul(HEDGE_PACE_FACTOR)
            .clamp(HEDGE_AFTER, HEDGE_AFTER_MAX)
    }
}

/// Whether a request may be sent again while an earlier attempt is still unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hedge {
    /// Yes: the request is idempotent, or a duplicate is harmless (a lease granted twice: the
    /// unused one expires after its TTL).
    On,
    /// No: a compare-and-swap, whose duplicate could answer "compare failed" for a swap its
    /// twin made.
    Off,
}

/// The endpoints a request can go to.
pub(crate) struct Endpoints<'a, C> {
    /// Name and client of each.
    pub clients: &'a [(String, C)],
    /// The index of the last one that answered.
    pub current: &'a AtomicUsize,
    /// How fast they have been answering.
    pub pace: &'a Pace,
}

/// Runs `op` on the endpoints, starting with the last one that answered, until one answers;
/// returns that answer, or the last error once the store timeout has elapsed and every endpoint
/// was tried at least once.
///
/// An attempt that fails with a transport-level error, "no leader" or "leader changed" ends at
/// once and the next endpoint is tried; a full round of such failures is followed by a short
/// pause.
///
/// With [`Hedge::Off`] there is one attempt at a time, each bounded by [`attempt_deadline`].
///
/// With [`Hedge::On`], the first attempt (and, when it failed, the next one) may run until the
/// store timeout has elapsed (at least one first-round deadline), so a cluster that is merely
/// slow has the whole store timeout to answer. While it runs, the request is also sent to the
/// next endpoint after each hedging pause (the [`Pace`]'s: [`HEDGE_AFTER`] while the endpoints
/// answer fast); such a hedge runs for at most [`HEDGE_LIFETIME_PAUSES`] pauses (so at most
/// about six attempts are in flight at once). The first answer wins and the other attempts are
/// cancelled. Hedges are what make a lost request cheap: a member that hangs or is cut off
/// costs one pause, and a write sent to a member in the second or so before it notices that its
/// raft leader died, which it forwards to the dead leader and etcd never answers (it does not
/// fail it when a new leader is elected), is sent again within one pause of the new leader's
/// election.
///
/// The whole call lasts at most about the store timeout plus one first-round attempt deadline.
pub(crate) async fn run_attempts<C, T, F, Fut>(
    endpoints: Endpoints<'_, C>,
    timeout: Duration,
    hedge: Hedge,
    what: &str,
    op: F,
) -> Result<T, StoreError>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let Endpoints {
        clients,
        current,
        pace,
    } = endpoints;
    let n = clients.len();
    if n == 0 {
        return Err(StoreError::Config("no store endpoints".into()));
    }
    // However slow the pace, a request is hedged within a quarter of its budget, so a member
    // that stops answering costs at most that much of it.
    let hedge_after = pace.hedge_after().min(timeout / HEDGES_PER_BUDGET);
    let hedge_lifetime = hedge_after.saturating_mul(HEDGE_LIFETIME_PAUSES);
    let started = Instant::now();
    let first = current.load(Ordering::Relaxed) % n;
    let first_deadline = first_attempt_deadline(timeout);
    let max_pause = match hedge {
        Hedge::On => hedge_after,
        Hedge::Off => ROUND_PAUSE_MAX,
    };
    let mut idx = first;
    let mut launched = 0usize;
    // Attempts that ended without an answer since the last one started on the hedging pace
    // (not right after a failure): a full round of them is followed by a pause.
    let mut failed_in_row = 0usize;
    let mut after_failure = false;
    let mut pause = ROUND_PAUSE_MIN;
    let mut last = StoreError::Timeout(timeout);
    // When the next attempt may start (with `Hedge::Off`: once the running one has ended).
    let mut launch_at = started;
    let mut in_flight = FuturesUnordered::new();
    // Whether an attempt with the long deadline is running.
    let mut long_running = false;
    loop {
        let now = Instant::now();
        let elapsed = now.duration_since(started);
        // Every endpoint gets one try; beyond that, new attempts only within the store timeout.
        let may_launch =
            (launched < n || elapsed < timeout) && (hedge == Hedge::On || in_flight.is_empty());
        if may_launch && now >= launch_at {
            let long = hedge == Hedge::On && !long_running;
            let deadline = match hedge {
                Hedge::Off => attempt_deadline(timeout, elapsed, n, launched / n),
                Hedge::On if long => timeout.saturating_sub(elapsed).max(first_deadline),
                Hedge::On => hedge_lifetime.min(first_deadline),
            };
            long_running |= long;
            let attempt = op(clients[idx].1.clone());
            let at = idx;
            in_flight.push(async move {
                (
                    at,
                    long,
                    now,
                    deadline,
                    tokio::time::timeout(deadline, attempt).await,
                )
            });
            launched += 1;
            idx = (idx + 1) % n;
            launch_at = now + hedge_after;
            if !after_failure {
                failed_in_row = 0;
            }
            after_failure = false;
            continue;
        }
        if in_flight.is_empty() && !may_launch {
            return Err(last);
        }
        let wake = may_launch.then_some(launch_at);
        tokio::select! {
            Some((at, long, sent, deadline, outcome)) = in_flight.next() => {
                let name = &clients[at].0;
                if long {
                    long_running = false;
                }
                let timed_out = match outcome {
                    Ok(Ok(v)) => {
                        if at != first {
                            tracing::info!(endpoint = %name, "store: switched to endpoint");
                        }
                        pace.record(sent.elapsed());
                        current.store(at, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Ok(Err(e)) => match classify(e) {
                        Failure::Retry(err) => {
                            tracing::debug!(endpoint = %name, error = %err, "store: {what} failed, trying next endpoint");
                            last = with_endpoint(err, name);
                            false
                        }
                        Failure::Fatal(err) => return Err(with_endpoint(err, name)),
                    },
                    Err(_) => {
                        tracing::debug!(endpoint = %name, ?deadline, "store: {what} timed out, trying next endpoint");
                        last = StoreError::Timeout(timeout);
                        true
                    }
                };
                // Later requests start from an endpoint that has not just failed.
                let _ = current.compare_exchange(at, (at + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
                if timed_out && !in_flight.is_empty() {
                    // A hedge ran out while others still run: the hedging pace goes on.
                    continue;
                }
                failed_in_row += 1;
                after_failure = true;
                let now = Instant::now();
                launch_at = if failed_in_row.is_multiple_of(n) {
                    let left = timeout.saturating_sub(now.duration_since(started));
                    let wait = pause.min(left);
                    pause = (pause * 2).min(max_pause);
                    now + wait
                } else {
                    now
                };
            }
            _ = sleep_until(wake.unwrap_or(started)), if wake.is_some() => {}
            else => return Err(last),
        }
    }
}

/// The attempt deadline of the first round over several endpoints: the store timeout, at most
/// [`ATTEMPT_MAX`]. (Shorter store timeouts keep their whole value per attempt: a round over
/// the endpoints then lasts long enough for etcd to elect a new leader when the old one hangs.)
fn first_attempt_deadline(timeout: Duration) -> Duration {
    timeout.min(ATTEMPT_MAX)
}

/// The deadline of one attempt in round `round` (0-based) over `endpoints` endpoints, `elapsed`
/// into a request whose budget is `timeout`. With one endpoint there is nowhere else to go: the
/// attempt gets whatever is left (at least [`ROUND_PAUSE_MIN`]). With several, the first
/// round's deadline is [`first_attempt_deadline`] and it doubles each later round, capped by
/// what is left but never below the first round's (a round started late still gives each
/// endpoint a fair try, e.g. while etcd elects a new leader).
fn attempt_deadline(
    timeout: Duration,
    elapsed: Duration,
    endpoints: usize,
    round: usize,
) -> Duration {
    let left = timeout.saturating_sub(elapsed);
    if endpoints <= 1 {
        return left.max(ROUND_PAUSE_MIN);
    }
    let first = first_attempt_deadline(timeout);
    if round == 0 {
        return first;
    }
    let factor = 1u32 << round.min(16);
    first.saturating_mul(factor).min(left.max(first))
}

fn with_endpoint(e: StoreError, endpoint: &str) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{endpoint}: {m}")),
        other => other,
    }
}

/// Cancels a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The etcd [`KvBackend`]: the endpoint pool plus the change counter fed by the watch task.
pub(crate) struct EtcdBackend {
    pool: Arc<EndpointPool>,
    tx: Arc<watch::Sender<u64>>,
    _watch_task: AbortOnDrop,
}

impl EtcdBackend {
    fn new(pool: Arc<EndpointPool>, prefix: String) -> Self {
        let tx = Arc::new(watch::channel(0u64).0);
        let task = tokio::spawn(watch_loop(pool.clone(), prefix, tx.clone()));
        EtcdBackend {
            pool,
            tx,
            _watch_task: AbortOnDrop(task),
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|c| *c = c.wrapping_add(1));
}

/// Whether a change watch's member still answers: after [`WATCH_PROBE_AFTER`] of silence the
/// watch asks for a progress report, and after a further `answer_within` of silence it moves.
#[derive(Debug, Clone, Copy)]
struct WatchLiveness {
    answer_within: Duration,
    probed: bool,
}

/// What the change watch does after a wait on its stream ended in silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// Ask the member for a progress report.
    Probe,
    /// The member did not answer the report: re-establish the watch elsewhere.
    Move,
}

impl WatchLiveness {
    fn new(answer_within: Duration) -> Self {
        WatchLiveness {
            answer_within,
            probed: false,
        }
    }

    /// How long to wait for the next message.
    fn wait(&self) -> Duration {
        if self.probed {
            self.answer_within
        } else {
            WATCH_PROBE_AFTER
        }
    }

    /// A message arrived: the member answers.
    fn message(&mut self) {
        self.probed = false;
    }

    /// The wait ended without a message.
    fn silence(&mut self) -> Silence {
        if std::mem::replace(&mut self.probed, true) {
            Silence::Move
        } else {
            Silence::Probe
        }
    }
}

/// Keeps a watch on `prefix` alive for ever, bumping the counter on every event and whenever
/// the watch is (re-)established (changes may have been missed meanwhile).
async fn watch_loop(pool: Arc<EndpointPool>, prefix: String, tx: Arc<watch::Sender<u64>>) {
    let mut last_rev: i64 = 0;
    let mut backoff = WATCH_BACKOFF_MIN;
    loop {
        let start = last_rev;
        let opened = pool
            .call("watch", Hedge::On, |mut c| {
                let prefix = prefix.clone();
                async move {
                    let mut opts = WatchOptions::new().with_prefix();
                    if start > 0 {
                        opts = opts.with_start_revision(start + 1);
                    }
                    c.watch(prefix, Some(opts)).await
                }
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "store watch: cannot establish");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                continue;
            }
        };
        bump(&tx);
        let mut liveness = WatchLiveness::new(first_attempt_deadline(pool.timeout));
        loop {
            let message = match tokio::time::timeout(liveness.wait(), stream.message()).await {
                Ok(m) => m,
                Err(_) => match liveness.silence() {
                    Silence::Move => {
                        tracing::debug!("store watch: no answer to a progress request, moving");
                        break;
                    }
                    Silence::Probe => {
                        if let Err(e) = stream.request_progress().await {
                            tracing::debug!(error = %e, "store watch: cannot request progress");
                            break;
                        }
                        continue;
                    }
                },
            };
            liveness.message();
            match message {
                Ok(Some(resp)) => {
                    backoff = WATCH_BACKOFF_MIN;
                    if resp.created()
                        && last_rev == 0
                        && let Some(h) = resp.header()
                    {
                        last_rev = h.revision();
                    }
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            // History we wanted is gone: restart from now (the bump on
                            // re-establishment covers whatever was missed).
                            last_rev = 0;
                        }
                        tracing::debug!(reason = resp.cancel_reason(), "store watch canceled");
                        break;
                    }
                    let events = resp.events();
                    if !events.is_empty() {
                        for ev in events {
                            if let Some(kv) = ev.kv() {
                                last_rev = last_rev.max(kv.mod_revision());
                            }
                        }
                        bump(&tx);
                    }
                }
                Ok(None) => {
                    tracing::debug!("store watch: stream ended");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "store watch: stream error");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

#[async_trait]
impl KvBackend for EtcdBackend {
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let resp = self
            .pool
            .call(
                "get",
                Hedge::On,
                |mut c| async move { c.get(key, None).await },
            )
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64, StoreError> {
        let resp = self
            .pool
            .call("put", Hedge::On, |mut c| {
                let value = value.clone();
                async move {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    c.put(key, value, opts).await
                }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let cmp = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let resp = self
            .pool
            .call("compare-and-swap", Hedge::Off, |mut c| {
                let txn =
                    Txn::new()
                        .when([cmp.clone()])
                        .and_then([TxnOp::put(key, value.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            Ok(Some(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ))
        } else {
            Ok(None)
        }
    }

    async fn delete_if(&self, key: &str, guard: &str, expected: i64) -> Result<bool, StoreError> {
        let cmp = Compare::mod_revision(guard, CompareOp::Equal, expected);
        let resp = self
            .pool
            .call("compare-and-delete", Hedge::Off, |mut c| {
                let txn = Txn::new()
                    .when([cmp.clone()])
                    .and_then([TxnOp::delete(key, None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
        let resp = self
            .pool
            .call("list", Hedge::On, |mut c| async move {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend);
                c.get(prefix, Some(opts)).await
            })
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            out.push(KvEntry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
            });
        }
        Ok(out)
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl_secs(ttl);
        let resp = self
            .pool
            .call("lease grant", Hedge::On, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let r = self
            .pool
            .call("lease keepalive", Hedge::On, |mut c| async move {
                match c.lease_keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    // etcd-client reports a TTL <= 0 answer (lease unknown) this way.
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(r)
    }

    async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.pool
            .call("lease revoke", Hedge::On, |mut c| async move {
                match c.lease_revoke(lease).await {
                    Ok(_) => Ok(()),
                    Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    async fn lease_ages(&self, prefix: &str) -> Result<Vec<(String, Duration)>, StoreError> {
        let resp = self
            .pool
            .call("list", Hedge::On, |mut c| async move {
                let opts = GetOptions::new().with_prefix().with_keys_only();
                c.get(prefix, Some(opts)).await
            })
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let lease = kv.lease();
            if lease == 0 {
                continue;
            }
            let ttl = self
                .pool
                .call("lease time-to-live", Hedge::On, |mut c| async move {
                    c.lease_time_to_live(lease, None).await
                })
                .await?;
            if let Some(age) = crate::kv::lease_age(ttl.granted_ttl(), ttl.ttl()) {
                out.push((String::from_utf8_lossy(kv.key()).into_owned(), age));
            }
        }
        Ok(out)
    }
}

/// Options of [`connect_with`] beyond the flags.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Lease TTL of the sentinel election (Stolon: 20 s). Tests shorten it.
    pub election_ttl: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            election_ttl: DEFAULT_ELECTION_TTL,
        }
    }
}

/// The etcd v3 [`Store`].
pub struct EtcdStore {
    inner: KvStore<EtcdBackend>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("cluster_path", &self.inner.layout.cluster_path())
            .finish()
    }
}

impl EtcdStore {
    /// Connects (lazily: no request is sent yet) to the configured endpoints and starts the
    /// change watch. Must run inside a Tokio runtime.
    pub async fn connect(cfg: &StoreConfig) -> Result<EtcdStore, StoreError> {
        let pool = Arc::new(EndpointPool::new(cfg).await?);
        let layout = KeyLayout::new(&cfg.prefix, &cfg.cluster_name);
        let backend = Arc::new(EtcdBackend::new(pool, layout.cluster_prefix()));
        Ok(EtcdStore {
            inner: KvStore::new(backend, layout),
        })
    }

    /// The key layout.
    pub fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    /// An election for this store's cluster, sharing its connections.
    pub fn election(&self, ttl: Duration) -> EtcdElection {
        EtcdElection {
            inner: LeaseElection::new(self.inner.backend.clone(), self.inner.layout.clone(), ttl),
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl EtcdStore {
    /// Test support: writes raw bytes at `key` (no lease), e.g. malformed clusterdata.
    pub async fn raw_put(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        self.inner.backend.put(key, value.to_vec(), None).await
    }

    /// Test support: the raw value at `key`.
    pub async fn raw_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.backend.get(key).await?.map(|(v, _)| v))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        self.inner.get_cluster_data().await
    }
    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        self.inner.put_cluster_data(cd, expected).await
    }
    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        self.inner.force_put_cluster_data(cd).await
    }
    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_keeper_info(info, ttl).await
    }
    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError> {
        self.inner.delete_keeper_info(uid).await
    }
    async fn get_keepers_info(
        &self,
    ) -> Result<std::collections::BTreeMap<String, KeeperInfo>, StoreError> {
        self.inner.get_keepers_info().await
    }
    async fn keeper_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.inner.keeper_info_ages().await
    }
    async fn proxy_info_ages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Duration>, StoreError> {
        self.inner.proxy_info_ages().await
    }
    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.put_sentinel_info(info, ttl).await
    }
    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        self.inner.get_sentinels_info().await
    }
    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_proxy_info(info, ttl).await
    }
    async fn get_proxies_info(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ProxyInfo>, StoreError> {
        self.inner.get_proxies_info().await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }
}

/// The etcd v3 [`Election`] (etcd `concurrency` election semantics, key
/// `<cluster>/sentinel-leader/<lease hex>`). Dropping it without [`Election::resign`] behaves
/// like a crashed candidate: the lease runs out after its TTL.
pub struct EtcdElection {
    inner: LeaseElection<EtcdBackend>,
}

crate::election::delegate_to_lease_election!(EtcdElection);

#[cfg(test)]
mod tests {
    use super::*;

    const S5: Duration = Duration::from_secs(5);

    #[test]
    fn first_round_attempts_are_short_with_several_endpoints() {
        // Default store timeout: 1 s per attempt, whatever has elapsed.
        assert_eq!(
            attempt_deadline(S5, Duration::ZERO, 3, 0),
            Duration::from_secs(1)
        );
        assert_eq!(
            attempt_deadline(S5, Duration::from_secs(2), 3, 0),
            Duration::from_secs(1)
        );
        // A store timeout under 1 s: the whole of it.
        assert_eq!(
            attempt_deadline(Duration::from_millis(400), Duration::ZERO, 2, 0),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn later_rounds_double_up_to_what_is_left() {
        assert_eq!(
            attempt_deadline(S5, Duration::from_millis(3100), 3, 1),
            Duration::from_millis(1900)
        );
        assert_eq!(
            attempt_deadline(S5, Duration::from_millis(500), 3, 1),
            Duration::from_secs(2)
        );
        assert_eq!(
            attempt_deadline(S5, Duration::from_millis(500), 3, 2),
            Duration::from_secs(4)
        );
        assert_eq!(
            attempt_deadline(S5, Duration::from_millis(500), 3, 3),
            Duration::from_millis(4500)
        );
        // Little or nothing left: still the first round's deadline.
        assert_eq!(
            attempt_deadline(S5, Duration::from_millis(4500), 3, 1),
            Duration::from_secs(1)
        );
        assert_eq!(
            attempt_deadline(S5, Duration::from_secs(6), 3, 3),
            Duration::from_secs(1)
        );
        // Huge round numbers do not overflow.
        assert_eq!(
            attempt_deadline(S5, Duration::from_secs(1), 3, 100),
            Duration::from_secs(4)
        );
    }

    /// A fake cluster of three endpoints for [`run_attempts`], on Tokio's paused clock: how each
    /// endpoint treats a request depends on when it was sent. Records every attempt.
    struct Fake {
        /// Per endpoint: what it does with a request sent at a given instant (since `origin`).
        behaviour: Box<dyn Fn(usize, Duration) -> Answer + Send + Sync>,
        origin: Instant,
        sent: std::sync::Mutex<Vec<(usize, Duration)>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    #[derive(Clone, Copy)]
    enum Answer {
        /// Answers `Ok(endpoint)` after this long.
        After(Duration),
        /// Refuses at once (connection refused, "no leader").
        Refuse,
        /// Never answers (a request lost on its way to a dead leader, a frozen member).
        Never,
        /// Rejects the request for good.
        Reject,
    }

    struct InFlight<'a>(&'a Fake);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Fake {
        fn new(behaviour: impl Fn(usize, Duration) -> Answer + Send + Sync + 'static) -> Fake {
            Fake {
                behaviour: Box::new(behaviour),
                origin: Instant::now(),
                sent: std::sync::Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            }
        }

        async fn request(&self, endpoint: usize) -> Result<usize, etcd_client::Error> {
            let at = self.origin.elapsed();
            self.sent.lock().unwrap().push((endpoint, at));
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let _guard = InFlight(self);
            match (self.behaviour)(endpoint, at) {
                Answer::After(d) => {
                    tokio::time::sleep(d).await;
                    Ok(endpoint)
                }
                Answer::Refuse => Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                    "etcdserver: no leader",
                ))),
                Answer::Never => std::future::pending().await,
                Answer::Reject => Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::invalid_argument("etcdserver: bad request"),
                )),
            }
        }

        /// One request over the three endpoints with a store timeout of `timeout`, from a
        /// client that has seen no answer yet.
        async fn call(
            &self,
            timeout: Duration,
            hedge: Hedge,
            current: &AtomicUsize,
        ) -> Result<usize, StoreError> {
            self.call_paced(timeout, hedge, current, &Pace::default())
                .await
        }

        async fn call_paced(
            &self,
            timeout: Duration,
            hedge: Hedge,
            current: &AtomicUsize,
            pace: &Pace,
        ) -> Result<usize, StoreError> {
            let clients: Vec<(String, usize)> = (0..3).map(|i| (format!("m{i}"), i)).collect();
            let endpoints = Endpoints {
                clients: &clients,
                current,
                pace,
            };
            run_attempts(endpoints, timeout, hedge, "test", |i| self.request(i)).await
        }

        fn sent(&self) -> Vec<(usize, Duration)> {
            self.sent.lock().unwrap().clone()
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// The long attempt, the hedges of the last hedge lifetime, and one just started.
    const MOST_IN_FLIGHT: usize = 2 + HEDGE_LIFETIME_PAUSES as usize;

    /// The raft leader (member 1) died at 0 and a new one is elected at 1.2 s: member 1 refuses
    /// everything, and members 0 and 2 never answer a write sent before the election (it went to
    /// the dead leader) but answer one sent after it at once.
    fn leader_died(endpoint: usize, sent: Duration) -> Answer {
        match endpoint {
            1 => Answer::Refuse,
            _ if sent < MS(1200) => Answer::Never,
            _ => Answer::After(MS(5)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_lost_to_a_dead_leader_is_sent_again_after_the_election() {
        let fake = Fake::new(leader_died);
        let current = AtomicUsize::new(0);
        let r = fake.call(Duration::from_secs(2), Hedge::On, &current).await;
        let answered_by = r.expect("the write succeeds once a leader is elected");
        let took = fake.origin.elapsed();
        // Paused clock: these instants are exact, not measured.
        assert!(
            took <= MS(1200) + HEDGE_AFTER + MS(5),
            "answered {took:?} after the request, the election was at 1.2 s"
        );
        assert_eq!(current.load(Ordering::SeqCst), answered_by);
        assert!(
            fake.most_in_flight.load(Ordering::SeqCst) <= MOST_IN_FLIGHT,
            "too many attempts at once"
        );
        assert_eq!(
            fake.in_flight.load(Ordering::SeqCst),
            0,
            "the losing attempts are cancelled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_hedging_the_same_write_fails_after_the_store_timeout() {
        // The contrast that shows what hedging buys: one attempt at a time, each waiting out its
        // 1 s deadline on a member that will never answer it.
        let fake = Fake::new(leader_died);
        let r = fake
            .call(Duration::from_secs(2), Hedge::Off, &AtomicUsize::new(0))
            .await;
        assert!(matches!(r, Err(StoreError::Timeout(_))), "got {r:?}");
        assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_member_is_waited_for_not_abandoned() {
        // Every member answers after 600 ms: the hedges do not cancel the first attempt, which
        // answers first.
        let fake = Fake::new(|_, _| Answer::After(MS(600)));
        let r = fake
            .call(Duration::from_secs(2), Hedge::On, &AtomicUsize::new(0))
            .await;
        assert_eq!(r.expect("slow but alive"), 0);
        assert_eq!(fake.origin.elapsed(), MS(600));
        let sent = fake.sent();
        assert!(sent.len() > 1, "no hedge was sent: {sent:?}");
        assert!(sent.len() <= MOST_IN_FLIGHT, "{sent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_cluster_gets_fewer_hedges() {
        // Every member answers after 600 ms (an overloaded cluster). The first request is
        // hedged every 100 ms; its answer sets the pace, and the next request waits for it
        // without sending a duplicate.
        let fake = Fake::new(|_, _| Answer::After(MS(600)));
        let pace = Pace::default();
        let current = AtomicUsize::new(0);
        let timeout = Duration::from_secs(5);
        fake.call_paced(timeout, Hedge::On, &current, &pace)
            .await
            .expect("first");
        let first = fake.sent().len();
        assert!(first > 1, "the first request was not hedged");
        assert_eq!(pace.hedge_after(), HEDGE_AFTER_MAX);
        fake.call_paced(timeout, Hedge::On, &current, &pace)
            .await
            .expect("second");
        assert_eq!(fake.sent().len(), first + 1, "{:?}", fake.sent());
    }

    #[test]
    fn the_hedging_pause_follows_the_answer_times() {
        let pace = Pace::default();
        assert_eq!(pace.hedge_after(), HEDGE_AFTER, "nothing answered yet");
        pace.record(MS(2));
        assert_eq!(pace.hedge_after(), HEDGE_AFTER, "fast answers");
        for _ in 0..40 {
            pace.record(MS(200));
        }
        let slow = pace.hedge_after();
        assert!(slow > MS(600) && slow <= HEDGE_AFTER_MAX, "{slow:?}");
        for _ in 0..40 {
            pace.record(MS(3));
        }
        assert_eq!(pace.hedge_after(), HEDGE_AFTER, "fast again");
        pace.record(Duration::from_secs(100_000));
        assert_eq!(pace.hedge_after(), HEDGE_AFTER_MAX, "bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_compare_and_swap_is_never_sent_twice_at_once() {
        let fake = Fake::new(|endpoint, _| match endpoint {
            0 => Answer::Never,
            _ => Answer::After(MS(5)),
        });
        let r = fake
            .call(Duration::from_secs(5), Hedge::Off, &AtomicUsize::new(0))
            .await;
        assert_eq!(r.expect("the next member answers"), 1);
        assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 1);
        // Member 0 was given its whole first-round deadline before member 1 was tried.
        assert_eq!(
            fake.sent(),
            vec![(0, Duration::ZERO), (1, Duration::from_secs(1))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_member_costs_one_hedge_interval() {
        let fake = Fake::new(|endpoint, _| match endpoint {
            0 => Answer::Never,
            _ => Answer::After(MS(5)),
        });
        let current = AtomicUsize::new(0);
        let r = fake.call(Duration::from_secs(5), Hedge::On, &current).await;
        assert_eq!(r.expect("the next member answers"), 1);
        assert_eq!(fake.origin.elapsed(), HEDGE_AFTER + MS(5));
        // The next request goes straight to the member that answered.
        assert_eq!(current.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_member_is_skipped_at_once() {
        let fake = Fake::new(|endpoint, _| match endpoint {
            0 => Answer::Refuse,
            _ => Answer::After(MS(5)),
        });
        let current = AtomicUsize::new(0);
        let r = fake.call(Duration::from_secs(2), Hedge::On, &current).await;
        assert_eq!(r.expect("member 1 answers"), 1);
        assert_eq!(fake.origin.elapsed(), MS(5));
        assert_eq!(current.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_everywhere_are_retried_until_the_store_timeout() {
        let fake = Fake::new(|_, _| Answer::Refuse);
        let r = fake
            .call(Duration::from_secs(2), Hedge::On, &AtomicUsize::new(0))
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "got {r:?}");
        assert!(fake.origin.elapsed() >= Duration::from_secs(2));
        let sent = fake.sent();
        for endpoint in 0..3 {
            assert!(
                sent.iter().filter(|(e, _)| *e == endpoint).count() >= 2,
                "endpoint {endpoint} not retried: {sent:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_everywhere_ends_within_the_timeout_plus_one_attempt() {
        let fake = Fake::new(|_, _| Answer::Never);
        let timeout = Duration::from_secs(2);
        let r = fake.call(timeout, Hedge::On, &AtomicUsize::new(0)).await;
        assert!(matches!(r, Err(StoreError::Timeout(_))), "got {r:?}");
        assert!(fake.origin.elapsed() <= timeout + first_attempt_deadline(timeout));
        assert!(fake.most_in_flight.load(Ordering::SeqCst) <= MOST_IN_FLIGHT);
        assert_eq!(fake.in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_request_is_not_retried() {
        let fake = Fake::new(|_, _| Answer::Reject);
        let r = fake
            .call(Duration::from_secs(2), Hedge::On, &AtomicUsize::new(0))
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "got {r:?}");
        assert_eq!(fake.sent().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_pace_still_hedges_within_the_budget() {
        // The endpoints have been answering slowly (pace at its 1 s bound), the store timeout is
        // 1 s, and member 0 freezes: the request still reaches member 1 within a quarter of the
        // budget and succeeds.
        let fake = Fake::new(|endpoint, _| match endpoint {
            0 => Answer::Never,
            _ => Answer::After(MS(5)),
        });
        let pace = Pace::default();
        pace.record(Duration::from_secs(100_000));
        assert_eq!(pace.hedge_after(), HEDGE_AFTER_MAX);
        let timeout = Duration::from_secs(1);
        let r = fake
            .call_paced(timeout, Hedge::On, &AtomicUsize::new(0), &pace)
            .await;
        assert_eq!(r.expect("hedged to a live member"), 1);
        assert_eq!(fake.origin.elapsed(), timeout / HEDGES_PER_BUDGET + MS(5));
    }

    #[test]
    fn a_silent_watch_is_probed_then_moved_and_a_message_resets_it() {
        let mut l = WatchLiveness::new(MS(700));
        assert_eq!(l.wait(), WATCH_PROBE_AFTER);
        assert_eq!(l.silence(), Silence::Probe);
        assert_eq!(
            l.wait(),
            MS(700),
            "the probe's answer is awaited for the given time"
        );
        // The member answers the probe (or sends an event): back to waiting for silence.
        l.message();
        assert_eq!(l.wait(), WATCH_PROBE_AFTER);
        assert_eq!(l.silence(), Silence::Probe);
        assert_eq!(l.silence(), Silence::Move, "no answer to the probe");
    }

    #[test]
    fn a_single_endpoint_gets_the_whole_timeout() {
        assert_eq!(attempt_deadline(S5, Duration::ZERO, 1, 0), S5);
        assert_eq!(
            attempt_deadline(S5, Duration::from_secs(2), 1, 1),
            Duration::from_secs(3)
        );
    }
}
