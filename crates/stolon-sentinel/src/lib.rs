//! stolon-sentinel: campaigns for leadership and, while leading, turns the observed cluster into
//! the next clusterdata with the pure [`stolon_core::sentinel::decide`], written only by
//! compare-and-swap on the revision read.
//!
//! Owns the IO loop: store reads, the election, change notifications, timers, logging of the
//! decision's events and the metrics. Judges nothing itself.

pub mod config;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stolon_core::model::{ClusterData, SentinelInfo};
use stolon_core::sentinel::{
    DecideInput, Event, SentinelMemory, Severity, Sightings, TakeoverRead, decide,
    expired_info_silence, takeover_memory, validate_invariants,
};
use stolon_core::timestamp::Timestamp;
use stolon_core::uid::{UidSource, uid_from_bytes};
use stolon_store::{Election, Store, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config, ConfigError};
pub use metrics::Metrics;

/// Minimum TTL of published infos (Stolon's `MinTTL`).
const MIN_TTL: Duration = Duration::from_secs(20);
/// Default resync period until clusterdata says otherwise.
const DEFAULT_SLEEP: Duration = Duration::from_secs(5);
/// Pause before campaigning again after an election error.
const ELECTION_RETRY: Duration = Duration::from_secs(2);

/// Shortest and longest sentinel election lease TTL.
const ELECTION_TTL_MIN: Duration = Duration::from_secs(4);
const ELECTION_TTL_MAX: Duration = Duration::from_secs(20);

/// The election lease TTL for a `sleepInterval`: three intervals, between 4 s and 20 s (15 s at
/// the default interval of 5 s, 4 s at 1 s). A lost leader is replaced about the TTL after it
/// died, and etcd adds the TTL again from a new etcd leader's election when the lost host held
/// the etcd leader too, so the TTL should stay below `failInterval`. The leader refreshes its
/// lease every third of the TTL and steps down after three quarters of it without a refresh,
/// so even the shortest TTL leaves it two refresh attempts before it gives up.
pub fn election_ttl(sleep_interval: Duration) -> Duration {
    sleep_interval
        .saturating_mul(3)
        .clamp(ELECTION_TTL_MIN, ELECTION_TTL_MAX)
}

/// How long a leader acts after starting a publish of its info, at most, with an election lease
/// of `ttl`: three quarters of it, when the leader would also step down for want of a lease
/// refresh. Announced in the info; the other candidates depose a leader whose info stays
/// unchanged for longer (stolon_core::sentinel::leadership).
pub fn leader_hold(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

/// The resync period a clusterdata read gives (`None`: no usable clusterdata).
fn sleep_of(read: &stolon_store::ClusterDataRead) -> Option<Duration> {
    let cd = read.data.as_ref()?;
    let spec = cd.check_usable().ok()?;
    Some(
        spec.effective()
            .sleep_interval
            .to_std()
            .max(Duration::from_millis(100)),
    )
}

/// A new random UID in Stolon's form (8 hex characters).
pub fn random_uid() -> String {
    uid_from_bytes(rand::random::<[u8; 4]>())
}

/// Random UIDs for new DBs and clusters.
#[derive(Debug, Default)]
struct RandomUids;

impl UidSource for RandomUids {
    fn new_uid(&mut self) -> String {
        random_uid()
    }
}

/// Why the sentinel stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Logs one decision event with Stolon's message and the `db` / `keeper` fields.
fn log_event(ev: &Event) {
    let msg = ev.message();
    let db = ev.db().unwrap_or("");
    let keeper = ev.keeper().unwrap_or("");
    let detail = ev.detail().unwrap_or_default();
    macro_rules! at {
        ($lvl:ident) => {
            // Only the fields an event has: no `detail=""` noise on every line.
            match (!db.is_empty(), !keeper.is_empty(), !detail.is_empty()) {
                (true, true, true) => tracing::$lvl!(db, keeper, detail, "{msg}"),
                (true, true, false) => tracing::$lvl!(db, keeper, "{msg}"),
                (true, false, true) => tracing::$lvl!(db, detail, "{msg}"),
                (true, false, false) => tracing::$lvl!(db, "{msg}"),
                (false, true, true) => tracing::$lvl!(keeper, detail, "{msg}"),
                (false, true, false) => tracing::$lvl!(keeper, "{msg}"),
                (false, false, true) => tracing::$lvl!(detail, "{msg}"),
                (false, false, false) => tracing::$lvl!("{msg}"),
            }
        };
    }
    match ev.severity() {
        Severity::Debug => at!(debug),
        Severity::Info => at!(info),
        Severity::Warn => at!(warn),
    }
}

/// The loop's state between wake-ups.
struct Sentinel {
    cfg: Config,
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    /// Whether leadership holds by heartbeats (our info announces a hold).
    heartbeats: bool,
    /// What we saw of the keepers' and proxies' infos, leading or not.
    sightings: Sightings,
    metrics: Metrics,
    origin: Instant,
    memory: SentinelMemory,
    sleep: Duration,
    last_info_publish: Option<Instant>,
    /// Failed clusterdata reads (logged once per change, retried with a bounded backoff).
    cd_errors: stolon_store::repeat::Repeated,
    wake_at: Option<Instant>,
    /// Leadership was just gained: the next check seeds the memory from the ages of the
    /// keepers' and proxies' infos and this sentinel's sightings
    /// (stolon_core::sentinel::takeover_memory).
    takeover: bool,
}

impl Sentinel {
    fn now_wall() -> Timestamp {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Timestamp::from_unix_nanos(ns)
    }

    /// Our SentinelInfo's publish when one is due, at most once per sleepInterval (a publish is
    /// itself a store change and would otherwise wake us forever). The future resolves to the
    /// instant the publish completed, after reporting it to the election as a heartbeat; it
    /// borrows nothing, so it runs next to the check's reads.
    fn info_publish(
        &self,
    ) -> Option<impl std::future::Future<Output = Result<Instant, StoreError>> + use<>> {
        let due = self
            .last_info_publish
            .is_none_or(|t| t.elapsed() >= self.sleep);
        if !due {
            return None;
        }
        let ttl = (2 * self.sleep).max(MIN_TTL);
        let hold = leader_hold(election_ttl(self.sleep));
        let info = SentinelInfo {
            uid: self.cfg.uid.clone(),
            leader_hold_ms: self
                .heartbeats
                .then(|| u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)),
        };
        let store = self.store.clone();
        let election = self.heartbeats.then(|| self.election.clone());
        Some(async move {
            let started = Instant::now();
            store.put_sentinel_info(&info, ttl).await?;
            let completed = Instant::now();
            if let Some(election) = election {
                election.heartbeat(started, completed, hold);
            }
            Ok(completed)
        })
    }

    /// One check (docs/architecture.md §6.1). Errors are logged; the next wake retries.
    /// `leading` is asked again just before a write: leadership may end during the check.
    async fn check(&mut self, leader: bool, leading: &tokio::sync::watch::Receiver<bool>) {
        let read = match stolon_store::repeat::read_cluster_data(
            self.store.as_ref(),
            &mut self.cd_errors,
            "error retrieving cluster data",
        )
        .await
        {
            Ok(r) => r,
            Err(_) => return,
        };
        if let Some(cd) = &read.data {
            match cd.check_usable() {
                Ok(spec) => {
                    self.metrics.paused.set(i64::from(spec.is_paused()));
                    self.sleep = spec
                        .effective()
                        .sleep_interval
                        .to_std()
                        .max(Duration::from_millis(100))
                }
                Err(e) => {
                    tracing::error!(error = %e, "invalid cluster data");
                    return;
                }
            }
        } else if self.cfg.initial_spec.is_none() {
            tracing::info!("no cluster data available, waiting for it to appear");
            return;
        }
        // The publish (our heartbeat while we lead) runs next to the reads, so a slow store
        // delays the decision by one round trip, not two. Proxies are judged at the instant
        // taken before their infos are requested: any info committed before it is in the
        // answer (stolon_core::sentinel::DecideInput).
        let publish = self.info_publish();
        let store = self.store.clone();
        let proxies_read_at = Instant::now();
        let (published, keepers, proxies) = tokio::join!(
            async {
                match publish {
                    Some(p) => p.await.map(Some),
                    None => Ok(None),
                }
            },
            store.get_keepers_info(),
            store.get_proxies_info(),
        );
        match published {
            Ok(Some(at)) => self.last_info_publish = Some(at),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "failed to update sentinel info");
                return;
            }
        }
        let keepers = match keepers {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot get keepers info");
                return;
            }
        };
        let proxies = match proxies {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot get proxies info");
                return;
            }
        };
        // Every sentinel watches the infos, so one that takes over knows how long each has been
        // silent from its own clock (stolon_core::sentinel::Sightings).
        self.sightings.observe(
            &keepers,
            &proxies,
            Instant::now().duration_since(self.origin),
        );
        if !leader {
            self.metrics.last_check_success.set(unix_seconds());
            return;
        }
        if std::mem::take(&mut self.takeover) {
            self.take_over(read.data.as_ref(), &keepers, &proxies).await;
        }
        let now = Instant::now();
        let input = DecideInput {
            cluster_data: read.data.as_ref(),
            keepers_info: &keepers,
            proxies_info: &proxies,
            memory: &self.memory,
            initial_spec: self.cfg.initial_spec.as_ref(),
            now_mono: now.duration_since(self.origin),
            proxies_read_at: proxies_read_at.duration_since(self.origin),
            now_wall: Self::now_wall(),
        };
        let mut chooser = |n: usize| rand::random::<usize>() % n.max(1);
        let decision = decide(&input, &mut RandomUids, &mut chooser);
        // Best effort and in the background (the kubernetes backend's Events).
        self.store.publish_events(&decision.events);
        for ev in &decision.events {
            log_event(ev);
            if matches!(ev, Event::ElectingNewMaster { .. }) {
                self.metrics.failovers.inc();
            }
            if let Event::Switchover { phase, .. } = ev
                && !phase.in_progress()
            {
                self.metrics.switchover_ended(phase.as_str());
            }
        }
        self.memory = decision.memory;
        self.wake_at = decision.wake_at.map(|t| self.origin + t);
        if let Some(next) = decision.next {
            if let Err(v) = validate_invariants(read.data.as_ref(), &next) {
                tracing::error!(error = %v, "refusing to write clusterdata breaking a safety invariant");
                return;
            }
            if !*leading.borrow() {
                tracing::info!("leadership ended during the check, not writing its decision");
                return;
            }
            if !self.write(&next, read.revision.as_ref()).await {
                return;
            }
            if let Some(entry) =
                stolon_core::model::history::newly_recorded(read.data.as_ref(), &next)
            {
                self.metrics.master_changed(entry.reason.as_str());
            }
        }
        self.metrics.last_check_success.set(unix_seconds());
    }

    /// Seeds the memory of a leadership just gained: reads the ages of the infos where the store
    /// reports them and leaves the rest to stolon_core::sentinel::takeover_memory, with what
    /// this sentinel saw itself while it followed. With neither, the first decision starts every
    /// clock afresh.
    async fn take_over(
        &mut self,
        cd: Option<&ClusterData>,
        keepers: &BTreeMap<String, stolon_core::model::KeeperInfo>,
        proxies: &BTreeMap<String, stolon_core::model::ProxyInfo>,
    ) {
        let ages = match self.store.keeper_info_ages().await {
            Ok(ages) => ages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read keeper info ages at takeover");
                BTreeMap::new()
            }
        };
        // Read after the infos: an info replaced since only looks younger.
        let proxy_ages = if ages.is_empty() {
            BTreeMap::new()
        } else {
            match self.store.proxy_info_ages().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read proxy info ages at takeover");
                    BTreeMap::new()
                }
            }
        };
        let now = Instant::now().duration_since(self.origin);
        tracing::info!(?ages, ?proxy_ages, "keeper and proxy info ages at takeover");
        let read = TakeoverRead {
            cluster_keepers: cd.map(|cd| &cd.keepers),
            keepers_info: keepers,
            proxies_info: proxies,
            keeper_ages: &ages,
            proxy_ages: &proxy_ages,
        };
        let Some(memory) = takeover_memory(&read, &self.sightings, now) else {
            return;
        };
        if !memory.keeper_error_since.is_empty() {
            tracing::info!(
                expired = ?memory.keeper_error_since.keys().collect::<Vec<_>>(),
                "keepers without an info at takeover: silent for at least {:?}",
                expired_info_silence()
            );
        }
        self.memory = memory;
    }

    async fn write(&self, next: &ClusterData, rev: Option<&stolon_store::Revision>) -> bool {
        match self.store.put_cluster_data(next, rev).await {
            Ok(_) => true,
            Err(StoreError::Conflict) => {
                tracing::warn!("clusterdata changed since it was read, deciding again");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to update cluster data");
                false
            }
        }
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Campaigns until it works or `cancel` fires.
async fn campaign(
    election: &Arc<dyn Election>,
    uid: &str,
    cancel: &CancellationToken,
) -> Option<tokio::sync::watch::Receiver<bool>> {
    loop {
        match election.campaign(uid).await {
            Ok(rx) => return Some(rx),
            Err(e) => tracing::error!(error = %e, "election error, retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(ELECTION_RETRY) => {}
        }
    }
}

/// Runs the sentinel until `cancel`: campaign, then check on every store change, leadership
/// change, decision timer and `sleepInterval`. Resigns before returning.
pub async fn run(
    cfg: Config,
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Metrics::new(&cfg.store.cluster_name);
    let mut server = None;
    if let Some(addr) = cfg.metrics_addr {
        server = Some(
            metrics
                .clone()
                .serve(addr, cancel.child_token())
                .await
                .map_err(|source| RunError::Metrics { addr, source })?,
        );
    }
    tracing::info!(uid = %cfg.uid, "sentinel uid");
    let uid = cfg.uid.clone();
    let mut changes = store.changes();
    // The election lease follows the cluster's sleepInterval: read it once before campaigning
    // (on any error the default interval's TTL is used until a check reads it).
    let mut sleep = DEFAULT_SLEEP;
    if let Ok(read) = store.get_cluster_data().await
        && let Some(d) = sleep_of(&read)
    {
        sleep = d;
    } else if let Some(d) = cfg
        .initial_spec
        .as_ref()
        .and_then(|spec| spec.sleep_interval)
    {
        // No clusterdata yet: the cluster this sentinel will create.
        sleep = d.to_std().max(Duration::from_millis(100));
    }
    let mut ttl = election_ttl(sleep);
    if election.set_ttl(ttl) {
        tracing::info!(ttl = ?ttl, "election lease TTL");
    }
    let heartbeats = election.use_heartbeats();
    let Some(mut leader_rx) = campaign(&election, &uid, &cancel).await else {
        return Ok(());
    };
    let mut s = Sentinel {
        cfg,
        store,
        election: election.clone(),
        heartbeats,
        sightings: Sightings::new(),
        metrics,
        origin: Instant::now(),
        memory: SentinelMemory::default(),
        sleep,
        last_info_publish: None,
        cd_errors: Default::default(),
        wake_at: None,
        takeover: false,
    };
    let mut was_leader = false;
    // What ended the last wait, logged with each check (debug) so a late reaction can be traced
    // to its wake-up: a store change reacts at once, a tick or timer means no change was seen.
    let mut woke_by = "start";
    loop {
        let leader = *leader_rx.borrow_and_update();
        if leader && !was_leader {
            tracing::info!("sentinel leadership acquired");
            s.memory = SentinelMemory::default();
            s.takeover = true;
            s.metrics.leader_count.inc();
        } else if !leader && was_leader {
            tracing::info!("sentinel leadership lost");
        }
        was_leader = leader;
        s.metrics.is_leader.set(i64::from(leader));
        changes.borrow_and_update();
        tracing::debug!(woke_by, leader, "check");
        s.check(leader, &leader_rx).await;
        // sleepInterval changed: campaign again with a lease of the new TTL. The leader steps
        // down for it (before its key goes, as on any resignation), and the next leader, which
        // may be this sentinel again, takes over with the keepers' info ages: a leader must
        // never keep a lease longer than the interval asks for.
        if election_ttl(s.sleep) != ttl {
            ttl = election_ttl(s.sleep);
            if election.set_ttl(ttl) {
                tracing::info!(ttl = ?ttl, leader, "election lease TTL changed, campaigning again");
                match campaign(&election, &uid, &cancel).await {
                    Some(rx) => leader_rx = rx,
                    None => break,
                }
            }
        }

        // A decision time already past (a check that failed before deciding leaves the old one)
        // must not wake us at once, or a failing store would make the leader spin; the resync
        // period retries instead.
        let wake = s.wake_at.filter(|t| leader && *t > Instant::now());
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = changes.changed() => {
                woke_by = "store change";
                if r.is_err() {
                    // The store dropped its notifier: fall back to the resync period.
                    tokio::time::sleep(s.sleep).await;
                }
            }
            r = leader_rx.changed() => {
                woke_by = "leadership change";
                if r.is_err() {
                    tracing::warn!("election ended, campaigning again");
                    match campaign(&election, &uid, &cancel).await {
                        Some(rx) => leader_rx = rx,
                        None => break,
                    }
                }
            }
            _ = tokio::time::sleep(s.sleep) => woke_by = "resync tick",
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => woke_by = "decision timer",
        }
    }
    s.metrics.is_leader.set(0);
    if let Err(e) = election.resign().await {
        tracing::warn!(error = %e, "cannot resign leadership");
    }
    if let Some(h) = server {
        let _ = h.await;
    }
    tracing::info!("sentinel stopped");
    Ok(())
}

#[cfg(test)]
mod election_ttl_tests {
    use super::*;

    #[test]
    fn election_ttl_is_three_sleep_intervals_between_4_and_20_seconds() {
        let s = Duration::from_secs;
        assert_eq!(election_ttl(s(5)), s(15));
        assert_eq!(election_ttl(s(2)), s(6));
        assert_eq!(election_ttl(s(1)), s(4));
        assert_eq!(election_ttl(Duration::from_millis(100)), s(4));
        assert_eq!(election_ttl(s(7)), s(20));
        assert_eq!(election_ttl(s(30)), s(20));
        assert_eq!(election_ttl(Duration::MAX), s(20));
    }
}
