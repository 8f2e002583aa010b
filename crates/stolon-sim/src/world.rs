//! The simulated world: components, the step loop, faults and the invariant checker.
//!
//! One step (default 100 ms of virtual time): advance the paused clock by the step in ten
//! slices (every component task runs meanwhile, its timers firing as the clock passes them), then apply due and random faults, let
//! the client write through the route of a proxy, replicate between the fake instances, settle
//! the writes waiting for synchronous standbys, observe clusterdata and check every invariant.
//!
//! Determinism: faults and client writes come from the seeded [`SimRng`], so one seed always
//! gives the same fault schedule in steps. The components are the real ones and draw their own
//! randomness (sentinel DB UIDs and tie-breaks, keeper info UIDs, tokio's `select!` fairness), so
//! two runs of one seed can interleave differently; a violation's report carries the seed and the
//! event trace, which is what reproduces it in practice.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::keeper::KeeperLocalState;
use stolon_core::model::{ClusterData, ClusterSpec, DbRole};
use stolon_core::proxy::machine;
use stolon_core::uid::SeqUids;
use stolon_keeper::Keeper;
use stolon_keeper::config::KeeperConfig;
use stolon_keeper::metrics::Metrics;
use stolon_pg::fake::FakePg;
use stolon_store::{
    Election, FaultHandle, MemKv, MemStore, Store, StoreConfig, Unreliable, UnreliableElection,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fsnet::{FailsafeNet, Party};
use crate::pgmodel::{self, PgView};
use crate::rng::SimRng;
use stolon_core::failsafe::Refusal;
use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, ConfirmRequestMsg};
use stolon_failsafe::Responder;

const PREFIX: &str = "stolon/cluster";
const CLUSTER: &str = "sim";
const TRACE_LEN: usize = 80;
/// Writes waiting for their commit to be acknowledged, at most (a client's concurrency).
const MAX_PENDING: usize = 64;
/// Clock advances per step.
const SLICES: u32 = 10;

/// A deliberately injected bug, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bug {
    /// No bug.
    #[default]
    None,
    /// The primary acknowledges commits without waiting for its synchronous standbys.
    AckBeforeSync,
    /// The checker holds failovers to this `maxStandbyLag` instead of the spec's (as if the
    /// sentinel ignored the spec's limit).
    CheckerMaxLag(u64),
    /// The proxies' check machine keeps routing when `proxyTimeout` expires (no fail-closed:
    /// `stolon_core::proxy::machine::Bug::NoFailClosed`).
    ProxyNoFailClosed,
    /// The master's keeper confirms to proxies without holding every other keeper's
    /// acknowledgement (failsafe mode's rule broken).
    FailsafeConfirmWithoutAcks,
    /// A quorum-mode failover elects the most advanced standby with a final position without
    /// checking that enough synchronous standbys reported one
    /// (`stolon_core::sentinel::testing::set_quorum_bug`).
    QuorumElectWithoutEnoughPositions,
}

/// Parameters of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the fault schedule and the client.
    pub seed: u64,
    /// `synchronousReplication` in the cluster spec.
    pub sync: bool,
    /// Quorum commit (docs/synchronous-replication.md): with `sync`, the spec's `quorumCommit`
    /// with `minSynchronousStandbys: 1, maxSynchronousStandbys: 2` (any 1 of 2 standbys
    /// acknowledges a commit); without it both are 1.
    pub quorum: bool,
    /// Number of keepers (each with its own fake PostgreSQL).
    pub keepers: usize,
    /// Number of sentinels.
    pub sentinels: usize,
    /// Number of simulated proxies.
    pub proxies: usize,
    /// Virtual time per step.
    pub step: Duration,
    /// Most WAL bytes a standby replays per step.
    pub replication_rate: u64,
    /// WAL bytes per client write.
    pub write_bytes: u64,
    /// Random faults on (after `warmup`).
    pub random_faults: bool,
    /// A random fault comes with probability 1/`fault_one_in` per step.
    pub fault_one_in: u64,
    /// No random faults before this much virtual time.
    pub warmup: Duration,
    /// `maxStandbyLag` in the cluster spec (None: the default, 1 MiB).
    pub max_standby_lag: Option<u32>,
    /// `usePgrewind` in the cluster spec.
    pub use_pg_rewind: bool,
    /// Fail on any acknowledged write the routed primary does not hold (default: with `sync`).
    pub require_no_lost_writes: bool,
    /// How long an injected store failure takes (see [`stolon_store::FaultHandle::set_latency`]).
    /// Zero makes failures instant; the sentinel loop can then spin without yielding to the
    /// paused clock when its decision timer is past and every check fails at the first read.
    pub store_fail_latency: Duration,
    /// How long after the store every successful call of a sentinel is answered (see
    /// [`stolon_store::FaultHandle::set_answer_delay`]): infos written meanwhile are missing from
    /// what the sentinel read, and it decides that much later.
    pub sentinel_answer_delay: Duration,
    /// Injected bug.
    pub bug: Bug,
    /// Failsafe mode (docs/failsafe.md): the spec's `failsafeMode`, the keepers and proxies on
    /// the simulated failsafe network ([`crate::fsnet`]), and, with random faults, its own fault
    /// kinds (a store outage for every component at once, cuts between two keepers or between a
    /// proxy and a keeper) among the others.
    pub failsafe: bool,
}

impl SimConfig {
    /// Three keepers, two sentinels, two proxies, 100 ms steps, no random faults.
    pub fn new(seed: u64, sync: bool) -> Self {
        SimConfig {
            seed,
            sync,
            quorum: false,
            keepers: 3,
            sentinels: 2,
            proxies: 2,
            step: Duration::from_millis(100),
            replication_rate: 64 * 1024,
            write_bytes: 0x2000,
            random_faults: false,
            fault_one_in: 40,
            warmup: Duration::from_secs(15),
            max_standby_lag: None,
            use_pg_rewind: (seed / 2).is_multiple_of(2),
            require_no_lost_writes: sync,
            store_fail_latency: Duration::from_millis(500),
            sentinel_answer_delay: Duration::ZERO,
            bug: Bug::None,
            failsafe: false,
        }
    }

    fn spec(&self) -> ClusterSpec {
        let mut v = serde_json::json!({
            "initMode": "new",
            "sleepInterval": "2s",
            "failInterval": "6s",
            "requestTimeout": "2s",
            "proxyCheckInterval": "2s",
            "proxyTimeout": "6s",
            "convergenceTimeout": "20s",
            "synchronousReplication": self.sync,
            "minSynchronousStandbys": 1,
            "maxSynchronousStandbys": 1,
            "usePgrewind": self.use_pg_rewind,
            "failsafeMode": self.failsafe,
        });
        if self.quorum {
            v["quorumCommit"] = serde_json::json!(true);
            v["maxSynchronousStandbys"] = serde_json::json!(2);
        }
        if let Some(lag) = self.max_standby_lag {
            v["maxStandbyLag"] = serde_json::json!(lag);
        }
        serde_json::from_value(v).expect("the simulation's cluster spec is valid")
    }
}

/// A component whose store access can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Keeper by index.
    Keeper(usize),
    /// Sentinel by index.
    Sentinel(usize),
    /// Proxy by index.
    Proxy(usize),
}

/// A fault the world can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The keeper process dies (its task is aborted) and its PostgreSQL with it.
    KillKeeper(usize),
    /// The keeper process starts again over the same data directory, with a new boot id.
    RestartKeeper(usize),
    /// The keeper's PostgreSQL dies on its own.
    CrashPg(usize),
    /// The component loses (`true`) or regains (`false`) the store.
    StoreDown(Component, bool),
    /// The component's next `n` store calls fail.
    StoreFailNext(Component, u64),
    /// The sentinel process dies.
    KillSentinel(usize),
    /// The sentinel process starts again (new UID, new election).
    RestartSentinel(usize),
    /// The keeper's PostgreSQL loses (`true`) or regains (`false`) its replication connection
    /// to its upstream, while the keeper still reaches the store (a network cut between the two
    /// database hosts only).
    CutReplication(usize, bool),
    /// Every component loses (`true`) or regains (`false`) the store at once.
    StoreOutage(bool),
    /// The failsafe network between two parties is cut (`true`) or restored (`false`); the
    /// store and replication are not affected.
    FailsafeCut(Party, Party, bool),
}

/// A broken invariant (or an unreached goal in a scenario), with what led to it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Seed of the run.
    pub seed: u64,
    /// Virtual time since the start.
    pub at: Duration,
    /// What is wrong.
    pub what: String,
    /// The last events, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} at {:.1}s: {}",
            self.seed,
            self.at.as_secs_f64(),
            self.what
        )?;
        writeln!(f, "last events:")?;
        for e in &self.trace {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps run.
    pub steps: u64,
    /// Writes the client issued to a running primary.
    pub writes: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes that failed before acknowledgement (primary gone).
    pub failed_writes: u64,
    /// Acknowledged writes the routed primary did not hold (allowed only without `require_no_lost_writes`).
    pub lost_acked: u64,
    /// Changes of the master named in clusterdata (initial election excluded).
    pub failovers: u64,
    /// Faults injected.
    pub faults: u64,
    /// Steps in which some proxy routed to a running primary.
    pub routed_steps: u64,
    /// Of those, steps during a store outage for every component.
    pub outage_routed_steps: u64,
    /// Steps with a store outage for every component.
    pub outage_steps: u64,
}

#[derive(Debug, Clone)]
struct Write {
    server: usize,
    /// The proxy the client's connection went through: it closes the connection (the commit
    /// is never acknowledged) once it no longer routes to `server`.
    proxy: usize,
    system_id: u64,
    timeline: u32,
    lsn: u64,
}

struct KeeperSlot {
    uid: String,
    addr: (String, String),
    data_dir: PathBuf,
    pg: Arc<FakePg>,
    faults: FaultHandle,
    store: Arc<dyn Store>,
    task: Option<(JoinHandle<()>, CancellationToken)>,
    boots: u32,
}

struct SentinelSlot {
    faults: FaultHandle,
    task: Option<(JoinHandle<()>, CancellationToken)>,
    boots: u32,
    /// The running sentinel's election, for the checker: whether it says it leads. Weak: the
    /// sentinel owns it, and a stopped sentinel's election ends with it.
    election: std::sync::Weak<UnreliableElection>,
}

/// What a proxy's check loop last set, recorded instead of forwarding.
#[derive(Debug, Default)]
struct ProxyView {
    /// Where new connections go (`host`, `port`); `None` = nowhere.
    destination: Option<(String, String)>,
}

/// The recorder standing in for a proxy's forwarding engine.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<ProxyView>>);

impl stolon_proxy::daemon::Forwarding for Recorder {
    async fn start_listening(&self) -> Result<(), String> {
        Ok(())
    }

    async fn stop_listening(&self) {}

    fn set_destination(&self, dest: Option<SocketAddr>) {
        self.0.lock().expect("proxy view poisoned").destination =
            dest.map(|a| (a.ip().to_string(), a.port().to_string()));
    }

    fn set_read_only_destinations(&self, _: Vec<SocketAddr>, _: Option<SocketAddr>) {}
}

struct ProxySlot {
    view: Recorder,
    task: (JoinHandle<()>, CancellationToken),
}

/// The simulated cluster (see the module docs). Create and run it inside a current-thread tokio
/// runtime with paused time (`#[tokio::test(start_paused = true)]`): each step advances the
/// paused clock itself.
pub struct World {
    cfg: SimConfig,
    rng: SimRng,
    kv: MemKv,
    observer: MemStore,
    obs_changes: tokio::sync::watch::Receiver<u64>,
    spec: ClusterSpec,
    _dir: tempfile::TempDir,
    keepers: Vec<KeeperSlot>,
    sentinels: Vec<SentinelSlot>,
    proxies: Vec<ProxySlot>,
    proxy_faults: Vec<FaultHandle>,
    elapsed: Duration,
    trace: VecDeque<String>,
    scheduled: Vec<(u64, Fault)>,
    client_on: bool,
    pending: Vec<Write>,
    acked: Vec<Write>,
    prev_lsn: Vec<u64>,
    last_cd: Option<ClusterData>,
    proxy_generation: i64,
    db_generations: BTreeMap<String, i64>,
    last_routes: Vec<Option<(String, String)>>,
    last_primaries: Vec<bool>,
    replication_cut: Vec<bool>,
    /// The failsafe network (used when `cfg.failsafe`).
    fsnet: FailsafeNet,
    /// A store outage for every component is in force.
    store_outage: bool,
    stats: Stats,
}

impl World {
    /// Starts every component. Must run inside a tokio runtime (paused time recommended).
    pub fn start(cfg: SimConfig) -> World {
        // The sentinels run on this thread (the simulation's runtime is single-threaded).
        stolon_core::sentinel::testing::set_quorum_bug(
            cfg.bug == Bug::QuorumElectWithoutEnoughPositions,
        );
        let dir = tempfile::tempdir().expect("temp dir for the simulated data dirs");
        let kv = MemKv::new();
        let observer = kv.store(PREFIX, CLUSTER);
        let obs_changes = observer.changes();
        let spec = cfg.spec();
        let keepers = (0..cfg.keepers)
            .map(|i| {
                let uid = format!("keeper{i}");
                let data_dir = dir.path().join(&uid);
                std::fs::create_dir_all(&data_dir).expect("create keeper data dir");
                let pg = Arc::new(FakePg::new(data_dir.join("postgres")));
                // Distinct system ids: a DB initialised twice is visibly another system.
                pg.state().next_system_id = 7_000_000_000_000_000_000 + 1000 * (i as u64 + 1);
                let faults = FaultHandle::new();
                faults.set_latency(cfg.store_fail_latency);
                let store: Arc<dyn Store> = Arc::new(Unreliable::new(
                    Arc::new(kv.store(PREFIX, CLUSTER)),
                    faults.clone(),
                ));
                KeeperSlot {
                    uid,
                    addr: ("127.0.0.1".into(), (25432 + i).to_string()),
                    data_dir,
                    pg,
                    faults,
                    store,
                    task: None,
                    boots: 0,
                }
            })
            .collect();
        let mut w = World {
            rng: SimRng::new(cfg.seed),
            kv,
            observer,
            obs_changes,
            spec,
            _dir: dir,
            keepers,
            sentinels: Vec::new(),
            proxies: Vec::new(),
            proxy_faults: Vec::new(),
            elapsed: Duration::ZERO,
            trace: VecDeque::new(),
            scheduled: Vec::new(),
            client_on: true,
            pending: Vec::new(),
            acked: Vec::new(),
            prev_lsn: vec![0; cfg.keepers],
            last_cd: None,
            proxy_generation: 0,
            db_generations: BTreeMap::new(),
            last_routes: vec![None; cfg.proxies],
            last_primaries: vec![false; cfg.keepers],
            replication_cut: vec![false; cfg.keepers],
            fsnet: FailsafeNet::new(Duration::from_millis(5)),
            store_outage: false,
            stats: Stats::default(),
            cfg,
        };
        for i in 0..w.cfg.sentinels {
            let faults = FaultHandle::new();
            faults.set_latency(w.cfg.store_fail_latency);
            faults.set_answer_delay(w.cfg.sentinel_answer_delay);
            w.sentinels.push(SentinelSlot {
                faults,
                task: None,
                boots: 0,
                election: std::sync::Weak::new(),
            });
            w.spawn_sentinel(i);
        }
        for i in 0..w.cfg.keepers {
            w.spawn_keeper(i);
        }
        for i in 0..w.cfg.proxies {
            let faults = FaultHandle::new();
            faults.set_latency(w.cfg.store_fail_latency);
            let store: Arc<dyn Store> = Arc::new(Unreliable::new(
                Arc::new(w.kv.store(PREFIX, CLUSTER)),
                faults.clone(),
            ));
            let view = Recorder::default();
            let cancel = CancellationToken::new();
            let mut machine = machine::Config::new(
                format!("proxy{i}"),
                stolon_proxy::daemon::DEFAULT_CHECK_INTERVAL,
                stolon_proxy::daemon::DEFAULT_PROXY_TIMEOUT,
            );
            if w.cfg.bug == Bug::ProxyNoFailClosed {
                machine.bug = machine::Bug::NoFailClosed;
            }
            let transport = w.cfg.failsafe.then(|| w.fsnet.transport(Party::Proxy(i)));
            let task = {
                let (view, cancel) = (view.clone(), cancel.clone());
                tokio::spawn(async move {
                    let mut uids = SeqUids::new(&format!("{i:02}"));
                    stolon_proxy::daemon::drive_with_failsafe(
                        &machine, store, transport, &view, &mut uids, &cancel,
                    )
                    .await;
                })
            };
            w.proxies.push(ProxySlot {
                view,
                task: (task, cancel),
            });
            w.proxy_faults.push(faults);
        }
        w.event(format!(
            "start: seed {} sync {} keepers {} sentinels {} proxies {} rewind {}",
            w.cfg.seed,
            w.cfg.sync,
            w.cfg.keepers,
            w.cfg.sentinels,
            w.cfg.proxies,
            w.cfg.use_pg_rewind
        ));
        w
    }

    fn event(&mut self, e: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{:7.1}s] {e}", self.elapsed.as_secs_f64()));
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.cfg.seed,
            at: self.elapsed,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn keeper_config(&self, i: usize) -> KeeperConfig {
        let k = &self.keepers[i];
        let mut cfg = KeeperConfig::for_tests(
            store_config(),
            &k.uid,
            k.data_dir.clone(),
            &k.addr.0,
            k.addr.1.parse().expect("numeric port"),
        );
        cfg.disable_data_dir_locking = true;
        cfg
    }

    fn spawn_keeper(&mut self, i: usize) {
        let cfg = self.keeper_config(i);
        let confirm_lifetime = self.failsafe_confirm_lifetime();
        let k = &mut self.keepers[i];
        k.boots += 1;
        let boot = format!("boot-{}-{}", k.uid, k.boots);
        let local = stolon_keeper::state::load_keeper_state(&k.data_dir)
            .ok()
            .flatten()
            .unwrap_or_else(|| KeeperLocalState {
                uid: k.uid.clone(),
                cluster_uid: String::new(),
            });
        let keeper = Keeper::new(
            cfg,
            k.store.clone(),
            k.pg.clone(),
            Metrics::new(CLUSTER),
            local,
            boot.clone(),
        )
        .expect("keeper state in the simulated data dir is readable");
        let keeper = if self.cfg.failsafe {
            let addr = failsafe_addr(i);
            let keeper = keeper.with_failsafe(self.fsnet.transport(Party::Keeper(i)), addr.clone());
            if let Some(r) = keeper.failsafe_responder() {
                let r: Arc<dyn Responder> = if self.cfg.bug == Bug::FailsafeConfirmWithoutAcks {
                    Arc::new(ConfirmWithoutAcks {
                        inner: r,
                        lifetime: confirm_lifetime,
                    })
                } else {
                    r
                };
                self.fsnet.register(i, &addr, r);
            }
            keeper
        } else {
            keeper
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(keeper.run(cancel.clone()));
        k.task = Some((task, cancel));
        self.event(format!("keeper{i} started ({boot})"));
    }

    /// The longest confirmation a master's keeper gives in this world's spec.
    fn failsafe_confirm_lifetime(&self) -> Duration {
        stolon_core::failsafe::Timers::from_spec(&self.spec.effective())
            .map(|t| t.confirm_lifetime)
            .unwrap_or_default()
    }

    fn spawn_sentinel(&mut self, i: usize) {
        let s = &mut self.sentinels[i];
        s.boots += 1;
        let uid = format!("sentinel{i}-{}", s.boots);
        let faults = s.faults.clone();
        let mem = self.kv.store(PREFIX, CLUSTER);
        let watched = Arc::new(UnreliableElection::new(
            Arc::new(mem.election_with_ttl(Duration::from_secs(5))),
            faults.clone(),
        ));
        s.election = Arc::downgrade(&watched);
        let election: Arc<dyn Election> = watched;
        let store: Arc<dyn Store> = Arc::new(Unreliable::new(Arc::new(mem), faults));
        let cfg = stolon_sentinel::Config {
            uid: uid.clone(),
            store: store_config(),
            initial_spec: Some(self.spec.clone()),
            metrics_addr: None,
        };
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            // Without a metrics address `run` cannot fail.
            let _ = stolon_sentinel::run(cfg, store, election, c).await;
        });
        s.task = Some((task, cancel));
        self.event(format!("{uid} started"));
    }

    fn faults_of(&self, c: Component) -> Option<FaultHandle> {
        match c {
            Component::Keeper(i) => self.keepers.get(i).map(|k| k.faults.clone()),
            Component::Sentinel(i) => self.sentinels.get(i).map(|s| s.faults.clone()),
            Component::Proxy(i) => self.proxy_faults.get(i).cloned(),
        }
    }

    /// Injects `fault` now.
    pub fn inject(&mut self, fault: Fault) {
        self.stats.faults += 1;
        match fault {
            Fault::KillKeeper(i) => {
                if let Some((task, _)) = self.keepers[i].task.take() {
                    task.abort();
                }
                self.fsnet.unregister(i);
                self.keepers[i].pg.crash();
                self.event(format!("FAULT keeper{i} killed (with its postgres)"));
            }
            Fault::RestartKeeper(i) => {
                if self.keepers[i].task.is_none() {
                    self.spawn_keeper(i);
                }
            }
            Fault::CrashPg(i) => {
                self.keepers[i].pg.crash();
                self.event(format!("FAULT postgres of keeper{i} crashed"));
            }
            Fault::StoreDown(c, down) => {
                if let Some(f) = self.faults_of(c) {
                    f.set_down(down);
                }
                self.event(format!(
                    "FAULT store {} for {c:?}",
                    if down { "DOWN" } else { "back up" }
                ));
            }
            Fault::StoreFailNext(c, n) => {
                if let Some(f) = self.faults_of(c) {
                    f.fail_next(n);
                }
                self.event(format!("FAULT next {n} store calls of {c:?} fail"));
            }
            Fault::KillSentinel(i) => {
                if let Some((task, _)) = self.sentinels[i].task.take() {
                    task.abort();
                }
                self.event(format!("FAULT sentinel{i} killed"));
            }
            Fault::RestartSentinel(i) => {
                if self.sentinels[i].task.is_none() {
                    self.spawn_sentinel(i);
                }
            }
            Fault::CutReplication(i, cut) => {
                self.replication_cut[i] = cut;
                self.event(format!(
                    "FAULT replication of keeper{i} {}",
                    if cut { "CUT" } else { "restored" }
                ));
            }
            Fault::StoreOutage(down) => {
                let all: Vec<FaultHandle> = self
                    .keepers
                    .iter()
                    .map(|k| k.faults.clone())
                    .chain(self.sentinels.iter().map(|s| s.faults.clone()))
                    .chain(self.proxy_faults.iter().cloned())
                    .collect();
                for f in all {
                    f.set_down(down);
                }
                self.store_outage = down;
                self.event(format!(
                    "FAULT store {} for every component",
                    if down { "DOWN" } else { "back up" }
                ));
            }
            Fault::FailsafeCut(a, b, cut) => {
                self.fsnet.set_cut(a, b, cut);
                self.event(format!(
                    "FAULT failsafe link {a:?} <-> {b:?} {}",
                    if cut { "CUT" } else { "restored" }
                ));
            }
        }
    }

    /// Injects `fault` after `after` of virtual time.
    pub fn schedule(&mut self, after: Duration, fault: Fault) {
        let steps = (after.as_millis() / self.cfg.step.as_millis().max(1)) as u64;
        self.scheduled
            .push((self.stats.steps + steps.max(1), fault));
    }

    fn steps_of(&self, d: Duration) -> u64 {
        (d.as_millis() / self.cfg.step.as_millis().max(1)) as u64
    }

    fn random_fault(&mut self) {
        if self.cfg.failsafe && self.rng.below(3) == 0 {
            self.random_failsafe_fault();
            return;
        }
        let n = self.cfg.keepers as u64;
        let choice = self.rng.below(100);
        let secs =
            |rng: &mut SimRng, lo: u64, hi: u64| Duration::from_secs(lo + rng.below(hi - lo));
        match choice {
            0..=24 => {
                let i = self.rng.below(n) as usize;
                if self.keepers[i].task.is_some() {
                    self.inject(Fault::KillKeeper(i));
                    let d = secs(&mut self.rng, 3, 25);
                    self.schedule(d, Fault::RestartKeeper(i));
                }
            }
            25..=44 => {
                let i = self.rng.below(n) as usize;
                self.inject(Fault::CrashPg(i));
            }
            45..=74 => {
                let c = self.random_component();
                self.inject(Fault::StoreDown(c, true));
                let d = secs(&mut self.rng, 1, 12);
                self.schedule(d, Fault::StoreDown(c, false));
            }
            75..=89 => {
                let c = self.random_component();
                let k = 1 + self.rng.below(5);
                self.inject(Fault::StoreFailNext(c, k));
            }
            90..=94 => {
                let i = self.rng.below(n) as usize;
                if !self.replication_cut[i] {
                    self.inject(Fault::CutReplication(i, true));
                    let d = secs(&mut self.rng, 2, 20);
                    self.schedule(d, Fault::CutReplication(i, false));
                }
            }
            _ => {
                let i = self.rng.below(self.cfg.sentinels as u64) as usize;
                if self.sentinels[i].task.is_some() {
                    self.inject(Fault::KillSentinel(i));
                    let d = secs(&mut self.rng, 2, 15);
                    self.schedule(d, Fault::RestartSentinel(i));
                }
            }
        }
    }

    /// A fault of failsafe mode's own kinds: a store outage for everyone (the case failsafe mode
    /// is for), a cut between two keepers, or between a proxy and a keeper.
    fn random_failsafe_fault(&mut self) {
        let secs =
            |rng: &mut SimRng, lo: u64, hi: u64| Duration::from_secs(lo + rng.below(hi - lo));
        let n = self.cfg.keepers as u64;
        match self.rng.below(3) {
            0 => {
                if !self.store_outage {
                    self.inject(Fault::StoreOutage(true));
                    let d = secs(&mut self.rng, 5, 40);
                    self.schedule(d, Fault::StoreOutage(false));
                }
            }
            1 => {
                let a = self.rng.below(n) as usize;
                let b = (a + 1 + self.rng.below(n - 1) as usize) % self.cfg.keepers;
                let (a, b) = (Party::Keeper(a), Party::Keeper(b));
                if !self.fsnet.is_cut(a, b) {
                    self.inject(Fault::FailsafeCut(a, b, true));
                    let d = secs(&mut self.rng, 2, 20);
                    self.schedule(d, Fault::FailsafeCut(a, b, false));
                }
            }
            _ => {
                let p = Party::Proxy(self.rng.below(self.cfg.proxies as u64) as usize);
                let k = Party::Keeper(self.rng.below(n) as usize);
                if !self.fsnet.is_cut(p, k) {
                    self.inject(Fault::FailsafeCut(p, k, true));
                    let d = secs(&mut self.rng, 2, 20);
                    self.schedule(d, Fault::FailsafeCut(p, k, false));
                }
            }
        }
    }

    fn random_component(&mut self) -> Component {
        let total = (self.cfg.keepers + self.cfg.sentinels + self.cfg.proxies) as u64;
        let mut x = self.rng.below(total) as usize;
        if x < self.cfg.keepers {
            return Component::Keeper(x);
        }
        x -= self.cfg.keepers;
        if x < self.cfg.sentinels {
            return Component::Sentinel(x);
        }
        Component::Proxy(x - self.cfg.sentinels)
    }

    /// Turns the simulated client's writes on or off.
    pub fn set_client(&mut self, on: bool) {
        self.client_on = on;
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Clusterdata as last observed.
    pub fn cluster_data(&self) -> Option<&ClusterData> {
        self.last_cd.as_ref()
    }

    /// Index of the keeper whose DB clusterdata names master, as last observed.
    pub fn master_keeper(&self) -> Option<usize> {
        let cd = self.last_cd.as_ref()?;
        let uid = &cd.master_db()?.spec.as_ref()?.keeper_uid;
        self.keepers.iter().position(|k| &k.uid == uid)
    }

    /// Index of the keeper proxy `p` routes to, if any.
    pub fn routed_keeper(&self, p: usize) -> Option<usize> {
        let d = self
            .proxies
            .get(p)?
            .view
            .0
            .lock()
            .expect("view")
            .destination
            .clone()?;
        self.keepers.iter().position(|k| k.addr == d)
    }

    /// The master keeper, when every proxy routes to it.
    pub fn routed_master(&self) -> Option<usize> {
        let m = self.master_keeper()?;
        (0..self.proxies.len())
            .all(|p| self.routed_keeper(p) == Some(m))
            .then_some(m)
    }

    /// The index of the sentinel leading now, if any.
    pub async fn leader_sentinel(&self) -> Option<usize> {
        let leader = self
            .kv
            .store(PREFIX, CLUSTER)
            .election()
            .leader()
            .await
            .ok()??;
        leader
            .strip_prefix("sentinel")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }

    /// Whether keeper `i`'s PostgreSQL runs as a primary.
    pub fn is_primary(&self, i: usize) -> bool {
        PgView::of(&self.keepers[i].pg.state()).is_primary()
    }

    /// WAL position of keeper `i`'s PostgreSQL.
    pub fn lsn(&self, i: usize) -> u64 {
        self.keepers[i].pg.state().lsn.0
    }

    /// The largest acknowledged write position so far.
    pub fn max_acked_lsn(&self) -> Option<u64> {
        self.acked.iter().map(|w| w.lsn).max()
    }

    /// Runs steps for `d` of virtual time.
    pub async fn run_for(&mut self, d: Duration) -> Result<(), Violation> {
        for _ in 0..self.steps_of(d).max(1) {
            self.step().await?;
        }
        Ok(())
    }

    /// Runs steps until `goal` holds, for at most `limit` of virtual time; an unreached goal is a
    /// [`Violation`] naming `what`.
    pub async fn run_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut goal: impl FnMut(&World) -> bool,
    ) -> Result<(), Violation> {
        for _ in 0..self.steps_of(limit).max(1) {
            if goal(self) {
                self.event(format!("reached: {what}"));
                return Ok(());
            }
            self.step().await?;
        }
        if goal(self) {
            return Ok(());
        }
        Err(self.violation(format!(
            "not reached within {limit:?}: {what}; clusterdata master {:?}, routes {:?}",
            self.master_keeper(),
            (0..self.proxies.len())
                .map(|p| self.routed_keeper(p))
                .collect::<Vec<_>>()
        )))
    }

    /// One step (see the module docs).
    pub async fn step(&mut self) -> Result<(), Violation> {
        // The world drives the paused clock itself, in slices, rather than sleeping and letting
        // tokio auto-advance when idle: components that keep each other busy without ever
        // waiting on a timer (a ping-pong over store changes) would otherwise stop virtual time
        // for good, while in a real deployment time passes and ends such a phase.
        for _ in 0..SLICES {
            tokio::time::advance(self.cfg.step / SLICES).await;
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.elapsed += self.cfg.step;
        self.stats.steps += 1;

        let now = self.stats.steps;
        let due: Vec<Fault> = self
            .scheduled
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, f)| *f)
            .collect();
        self.scheduled.retain(|(at, _)| *at > now);
        for f in due {
            self.inject(f);
        }
        if self.cfg.random_faults
            && self.elapsed >= self.cfg.warmup
            && self.rng.one_in(self.cfg.fault_one_in)
        {
            self.random_fault();
        }

        self.client_write();
        let addrs: Vec<(String, String)> = self.keepers.iter().map(|k| k.addr.clone()).collect();
        let pgs: Vec<Arc<FakePg>> = self.keepers.iter().map(|k| k.pg.clone()).collect();
        let source = self.master_keeper().filter(|&i| self.is_primary(i));
        let streams = pgmodel::replicate(
            &pgs,
            &addrs,
            &self.prev_lsn,
            self.cfg.replication_rate,
            source,
            &self.replication_cut,
        );
        let views: Vec<PgView> = pgs.iter().map(|p| PgView::of(&p.state())).collect();
        self.settle_writes(&views, &streams);
        self.prev_lsn = views.iter().map(|v| v.lsn).collect();
        for (i, v) in views.iter().enumerate() {
            if v.is_primary() != self.last_primaries[i] {
                self.last_primaries[i] = v.is_primary();
                self.event(format!(
                    "postgres of keeper{i} {} (timeline {}, lsn {:#x})",
                    if v.is_primary() {
                        "is now a running PRIMARY"
                    } else {
                        "is no longer a running primary"
                    },
                    v.timeline,
                    v.lsn
                ));
            }
        }

        // Decode clusterdata only when something in the store changed (decoding is most of a
        // step's own cost).
        let cd = if self.obs_changes.has_changed().unwrap_or(true) || self.last_cd.is_none() {
            self.obs_changes.borrow_and_update();
            match self.observer.get_cluster_data().await {
                Ok(r) => r.data,
                Err(e) => {
                    return Err(self.violation(format!("observer cannot read the store: {e}")));
                }
            }
        } else {
            self.last_cd.clone()
        };
        self.check(cd, &views)
    }

    fn client_write(&mut self) {
        if !self.client_on || self.pending.len() >= MAX_PENDING || self.proxies.is_empty() {
            return;
        }
        let p = self.rng.below(self.proxies.len() as u64) as usize;
        let Some(i) = self.routed_keeper(p) else {
            return;
        };
        let mut s = self.keepers[i].pg.state();
        if !(s.initialized && s.running && !s.in_recovery) {
            return;
        }
        s.lsn.0 += self.cfg.write_bytes;
        let w = Write {
            server: i,
            proxy: p,
            system_id: s.system_id,
            timeline: s.timeline,
            lsn: s.lsn.0,
        };
        drop(s);
        self.stats.writes += 1;
        self.pending.push(w);
    }

    fn settle_writes(&mut self, views: &[PgView], streams: &[pgmodel::Stream]) {
        let bug = self.cfg.bug;
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.pending) {
            let v = &views[w.server];
            if !v.is_primary() || v.timeline != w.timeline || v.system_id != w.system_id {
                self.stats.failed_writes += 1;
                continue;
            }
            // The proxy closed the client's connection on a change of target (or fenced
            // itself): whatever happens to the commit, the client never hears it acknowledged.
            if self.routed_keeper(w.proxy) != Some(w.server) {
                self.stats.failed_writes += 1;
                continue;
            }
            let names = v.sync_names();
            let needed = sync_count(v.conf.get("synchronous_standby_names"), names.len());
            let have = names
                .iter()
                .filter(|n| {
                    streams.iter().any(|st| {
                        st.upstream == w.server
                            && &st.application_name == *n
                            && views[st.standby].holds(w.system_id, w.timeline, w.lsn)
                    })
                })
                .count();
            if have >= needed || bug == Bug::AckBeforeSync {
                self.stats.acked += 1;
                self.acked.push(w);
            } else {
                still.push(w);
            }
        }
        self.pending = still;
    }

    fn check(&mut self, cd: Option<ClusterData>, views: &[PgView]) -> Result<(), Violation> {
        // One leader sentinel at a time (invariant 7, docs/invariants.md).
        let leading: Vec<usize> = self
            .sentinels
            .iter()
            .enumerate()
            .filter(|(_, s)| s.task.is_some() && s.election.upgrade().is_some_and(|e| e.leads()))
            .map(|(i, _)| i)
            .collect();
        if leading.len() > 1 {
            return Err(self.violation(format!("sentinels {leading:?} lead at the same time")));
        }
        // Routes.
        let routes: Vec<Option<(String, String)>> = self
            .proxies
            .iter()
            .map(|p| p.view.0.lock().expect("view").destination.clone())
            .collect();
        for (p, r) in routes.iter().enumerate() {
            if *r != self.last_routes[p] {
                self.last_routes[p] = r.clone();
                let k = r
                    .as_ref()
                    .and_then(|d| self.keepers.iter().position(|k| &k.addr == d));
                self.event(format!(
                    "proxy{p} routes to {}",
                    k.map(|k| format!("keeper{k}"))
                        .unwrap_or_else(|| "NOTHING".into())
                ));
            }
        }

        // Clusterdata changes.
        if let Some(cd) = &cd {
            let prev_master = self.last_cd.as_ref().and_then(master_uid);
            let master = master_uid(cd);
            let target = cd
                .proxy
                .as_ref()
                .map(|p| (p.generation, p.spec.master_db_uid.clone()));
            let prev_target = self
                .last_cd
                .as_ref()
                .and_then(|c| c.proxy.as_ref())
                .map(|p| (p.generation, p.spec.master_db_uid.clone()));
            if master != prev_master {
                self.event(format!(
                    "clusterdata master {:?} -> {:?} (keeper {:?})",
                    prev_master,
                    master,
                    cd.master_db()
                        .and_then(|d| d.spec.as_ref())
                        .map(|s| s.keeper_uid.clone())
                ));
            }
            if target != prev_target {
                self.event(format!("clusterdata proxy generation/target {target:?}"));
            }
        }

        // Invariant 1: at most one master-typed DB.
        if let Some(cd) = &cd {
            let masters: Vec<&String> = cd
                .dbs
                .values()
                .filter(|d| d.spec.as_ref().and_then(|s| s.role) == Some(DbRole::Master))
                .map(|d| &d.uid)
                .collect();
            if masters.len() > 1 {
                return Err(self.violation(format!("two master DBs in clusterdata: {masters:?}")));
            }
        }

        // Invariant 1 (routing): one destination; only the named target; one routed primary.
        let mut dests: Vec<&(String, String)> = routes.iter().flatten().collect();
        dests.sort();
        dests.dedup();
        if dests.len() > 1 {
            return Err(self.violation(format!("proxies route to different places: {dests:?}")));
        }
        if let (Some(d), Some(cd)) = (dests.first(), &cd) {
            let target = cd
                .proxy
                .as_ref()
                .map(|p| p.spec.master_db_uid.as_str())
                .unwrap_or("");
            if !target.is_empty() {
                let addr = cd
                    .dbs
                    .get(target)
                    .map(|db| (db.status.listen_address.clone(), db.status.port.clone()));
                if addr.as_ref() != Some(*d) {
                    return Err(self.violation(format!(
                        "a proxy routes to {d:?} while clusterdata names {target} at {addr:?}"
                    )));
                }
            }
        }
        let routed_primaries: Vec<usize> = dests
            .iter()
            .filter_map(|d| self.keepers.iter().position(|k| &k.addr == *d))
            .filter(|&i| views[i].is_primary())
            .collect();
        if routed_primaries.len() > 1 {
            return Err(self.violation(format!(
                "proxies route to several running primaries: {routed_primaries:?}"
            )));
        }
        if self.store_outage {
            self.stats.outage_steps += 1;
        }
        if !routed_primaries.is_empty() {
            self.stats.routed_steps += 1;
            if self.store_outage {
                self.stats.outage_routed_steps += 1;
            }
        }

        // Invariant 5: generations only grow.
        if let Some(cd) = &cd {
            if let Some(p) = &cd.proxy {
                if p.generation < self.proxy_generation {
                    return Err(self.violation(format!(
                        "proxy generation went back from {} to {}",
                        self.proxy_generation, p.generation
                    )));
                }
                self.proxy_generation = p.generation;
            }
            for (uid, db) in &cd.dbs {
                if let Some(&g) = self.db_generations.get(uid)
                    && db.generation < g
                {
                    return Err(self.violation(format!(
                        "generation of db {uid} went back from {g} to {}",
                        db.generation
                    )));
                }
                self.db_generations.insert(uid.clone(), db.generation);
            }
        }

        // Invariant 6 (and 3, by the lost-write check below): the elected standby.
        if let (Some(prev), Some(cd)) = (&self.last_cd, &cd) {
            let old = master_uid(prev);
            let new = master_uid(cd);
            if let (Some(old), Some(new)) = (old, new)
                && old != new
            {
                self.stats.failovers += 1;
                let old_prev = prev.dbs.get(&old);
                let old_now = cd.dbs.get(&old);
                let sync = old_prev
                    .and_then(|d| d.spec.as_ref())
                    .is_some_and(|s| s.synchronous_replication);
                let new_db = cd.dbs.get(&new);
                if sync {
                    // Listed, or (quorum commit) known to share the promise: a standby just
                    // dropped from the list stays known until the others caught up.
                    let listed = [old_prev, old_now].iter().flatten().any(|d| {
                        d.spec
                            .as_ref()
                            .and_then(|s| s.synchronous_standbys.as_ref())
                            .is_some_and(|l| l.contains(&new))
                            || (d.status.synchronous_quorum.is_some()
                                && d.status
                                    .synchronous_standbys
                                    .as_ref()
                                    .is_some_and(|l| l.contains(&new)))
                    });
                    if !listed {
                        return Err(self.violation(format!(
                            "failover elected {new}, not a synchronous standby of {old}"
                        )));
                    }
                } else if let Some(new_db) = new_db {
                    let max_lag = match self.cfg.bug {
                        Bug::CheckerMaxLag(l) => l,
                        _ => u64::from(
                            cd.cluster
                                .as_ref()
                                .and_then(|c| c.spec.as_ref())
                                .map(|s| s.effective().max_standby_lag)
                                .unwrap_or_default(),
                        ),
                    };
                    let old_pos = [old_prev, old_now]
                        .iter()
                        .flatten()
                        .map(|d| d.status.xlog_pos)
                        .max()
                        .unwrap_or(0);
                    let lag = old_pos.saturating_sub(new_db.status.xlog_pos);
                    if lag > max_lag {
                        return Err(self.violation(format!(
                            "failover elected {new} reported {lag} bytes behind {old} (maxStandbyLag {max_lag})"
                        )));
                    }
                }
            }
        }

        // Invariant 3 / acknowledged writes: the routed primary holds every acknowledged write.
        for &i in &routed_primaries {
            let v = &views[i];
            let lost: Vec<Write> = self
                .acked
                .iter()
                .filter(|w| !v.holds(w.system_id, w.timeline, w.lsn))
                .cloned()
                .collect();
            if lost.is_empty() {
                continue;
            }
            if self.cfg.require_no_lost_writes {
                let w = &lost[0];
                return Err(self.violation(format!(
                    "{} acknowledged write(s) lost: e.g. lsn {:#x} on timeline {} (written on keeper{}), routed primary keeper{i} is at timeline {} lsn {:#x}",
                    lost.len(),
                    w.lsn,
                    w.timeline,
                    w.server,
                    v.timeline,
                    v.lsn
                )));
            }
            self.stats.lost_acked += lost.len() as u64;
            self.event(format!(
                "{} acknowledged async write(s) lost on failover to keeper{i}",
                lost.len()
            ));
            self.acked
                .retain(|w| v.holds(w.system_id, w.timeline, w.lsn));
        }

        if cd.is_some() {
            self.last_cd = cd;
        }
        Ok(())
    }

    /// Stops every component.
    pub async fn shutdown(mut self) {
        for k in &mut self.keepers {
            if let Some((task, cancel)) = k.task.take() {
                cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
        }
        for s in &mut self.sentinels {
            if let Some((task, cancel)) = s.task.take() {
                cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
        }
        for p in self.proxies.drain(..) {
            p.task.1.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), p.task.0).await;
        }
    }
}

/// Where simulated keeper `i` answers failsafe requests.
fn failsafe_addr(i: usize) -> String {
    format!("keeper{i}.failsafe:8089")
}

/// [`Bug::FailsafeConfirmWithoutAcks`]: a keeper's responder that grants a confirmation the real
/// rule refused only for missing acknowledgements.
struct ConfirmWithoutAcks {
    inner: Arc<dyn Responder>,
    lifetime: Duration,
}

impl Responder for ConfirmWithoutAcks {
    fn ack(&self, req: &AckRequestMsg) -> AnswerMsg {
        self.inner.ack(req)
    }

    fn confirm(&self, req: &ConfirmRequestMsg) -> AnswerMsg {
        let a = self.inner.confirm(req);
        let missing_acks = a.refusal.as_deref() == Some(Refusal::MissingAcks(Vec::new()).code());
        if missing_acks {
            AnswerMsg::from_decision(&Ok(self.lifetime))
        } else {
            a
        }
    }
}

fn master_uid(cd: &ClusterData) -> Option<String> {
    cd.cluster
        .as_ref()
        .map(|c| c.status.master.clone())
        .filter(|m| !m.is_empty())
}

/// How many listed standbys must hold a commit: `N` of `N (a,b)`, `FIRST N (a,b)` or
/// `ANY N (a,b)` (any N of the listed ones), else 1 (a plain list is `FIRST 1`), 0 if none.
fn sync_count(value: Option<&String>, listed: usize) -> usize {
    if listed == 0 {
        return 0;
    }
    value
        .and_then(|v| v.split_once('('))
        .and_then(|(head, _)| {
            let head = head.trim();
            let n = head
                .strip_prefix("ANY ")
                .or_else(|| head.strip_prefix("FIRST "))
                .unwrap_or(head);
            n.trim().parse::<usize>().ok()
        })
        .unwrap_or(1)
        .min(listed)
}

fn store_config() -> StoreConfig {
    StoreConfig::in_memory(CLUSTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_count_reads_the_number() {
        assert_eq!(sync_count(Some(&"2 (a,b)".to_string()), 2), 2);
        assert_eq!(sync_count(Some(&"a".to_string()), 1), 1);
        assert_eq!(sync_count(Some(&String::new()), 0), 0);
        assert_eq!(sync_count(Some(&"ANY 1 (a,b)".to_string()), 2), 1);
        assert_eq!(sync_count(Some(&"ANY 2 (a,b,c)".to_string()), 3), 2);
        assert_eq!(sync_count(Some(&"FIRST 2 (a,b,c)".to_string()), 3), 2);
        assert_eq!(sync_count(Some(&"ANY 3 (a,b)".to_string()), 2), 2);
    }

    #[test]
    fn spec_is_valid_in_both_modes() {
        for sync in [false, true] {
            let s = SimConfig::new(1, sync).spec();
            s.validate().expect("valid spec");
        }
        let mut cfg = SimConfig::new(1, true);
        cfg.quorum = true;
        let s = cfg.spec();
        s.validate().expect("valid spec");
        assert!(s.effective().quorum());
        assert_eq!(s.effective().quorum_size(), 1);
    }
}
