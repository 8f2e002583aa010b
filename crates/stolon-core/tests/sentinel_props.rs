//! Property test: random sequences of observations (keepers appearing, dying, reporting WAL
//! positions, convergence and sync states; proxies appearing and acknowledging; leadership
//! changes; time passing) fed to `decide`, with the safety invariants of docs/invariants.md
//! (1, 2, 3, 5, 6) checked after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use stolon_core::duration::GoDuration;
use stolon_core::model::{
    ClusterData, ClusterInitMode, ClusterSpec, KeeperInfo, PostgresBinaryVersion, PostgresState,
    ProxyInfo,
};
use stolon_core::sentinel::{
    DecideInput, Event, SentinelMemory, decide, validate_handshake, validate_invariants,
};
use stolon_core::timestamp::Timestamp;
use stolon_core::uid::SeqUids;

const KEEPERS: usize = 4;
const PROXIES: usize = 2;
const PROXY_TIMEOUT: Duration = Duration::from_secs(4);
/// The proxy whose info carries `fencesFromCheckStart`: it routes at most `PROXY_TIMEOUT` after
/// its last publish (the others, as Stolon's, are counted for twice that).
const MARKED_PROXY: usize = 1;

#[derive(Debug, Clone)]
enum Op {
    KeeperStart(usize),
    KeeperStop(usize),
    KeeperInfoExpires(usize),
    KeeperWal(usize, u32),
    KeeperConverges(usize),
    KeeperStuck(usize),
    KeeperCatchesUp(usize),
    MasterReportsSync(u8),
    ProxyStart(usize),
    ProxyStop(usize),
    /// The proxy is cut off from the store: it stops publishing, its info stays.
    ProxySilent(usize),
    ProxyAck(usize),
    Tick(u16),
    NewLeader,
    WriteLost,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KEEPERS).prop_map(Op::KeeperStart),
        1 => (0..KEEPERS).prop_map(Op::KeeperStop),
        1 => (0..KEEPERS).prop_map(Op::KeeperInfoExpires),
        3 => ((0..KEEPERS), 0u32..3_000_000).prop_map(|(k, d)| Op::KeeperWal(k, d)),
        2 => (0..KEEPERS).prop_map(Op::KeeperConverges),
        1 => (0..KEEPERS).prop_map(Op::KeeperStuck),
        2 => (0..KEEPERS).prop_map(Op::KeeperCatchesUp),
        2 => any::<u8>().prop_map(Op::MasterReportsSync),
        1 => (0..PROXIES).prop_map(Op::ProxyStart),
        1 => (0..PROXIES).prop_map(Op::ProxyStop),
        1 => (0..PROXIES).prop_map(Op::ProxySilent),
        2 => (0..PROXIES).prop_map(Op::ProxyAck),
        5 => (100u16..4000).prop_map(Op::Tick),
        1 => Just(Op::NewLeader),
        1 => Just(Op::WriteLost),
    ]
}

#[derive(Debug, Clone, Default)]
struct SimKeeper {
    alive: bool,
    /// A stuck keeper stops applying new DB specs.
    stuck: bool,
    xlog: u64,
    /// DB UID and generation the keeper last applied.
    applied: Option<(String, i64)>,
    sync_reported: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct SimProxy {
    alive: bool,
    /// Cut off from the store: no publish, but it may route until it fences itself.
    silent: bool,
    generation: i64,
    last_publish: Duration,
    /// The info this proxy's last publish replaced: what a read that started before that
    /// publish may still return.
    replaced: Option<ProxyInfo>,
}

struct Sim {
    cd: Option<ClusterData>,
    keepers: Vec<SimKeeper>,
    keepers_info: BTreeMap<String, KeeperInfo>,
    proxies: Vec<SimProxy>,
    proxies_info: BTreeMap<String, ProxyInfo>,
    memory: SentinelMemory,
    now: Duration,
    seq: u64,
    uids: SeqUids,
    spec: ClusterSpec,
    seen: Vec<Event>,
    /// How long before `now` the sentinel's read of the proxies' infos started (a slow store):
    /// the infos returned may have been written at any time before `now`.
    proxies_read_lag: Duration,
}

fn kname(i: usize) -> String {
    format!("k{i}")
}

impl Sim {
    fn new(sync: bool, min_sync: u16, max_sync: u16, max_lag: u32) -> Self {
        let mut spec = ClusterSpec::new_init(ClusterInitMode::New);
        spec.sleep_interval = Some(GoDuration::from_secs(1));
        spec.fail_interval = Some(GoDuration::from_secs(3));
        spec.convergence_timeout = Some(GoDuration::from_secs(8));
        spec.init_timeout = Some(GoDuration::from_secs(8));
        spec.proxy_check_interval = Some(GoDuration::from_secs(1));
        spec.proxy_timeout = Some(GoDuration::from_secs(4));
        spec.dead_keeper_removal_interval = Some(GoDuration::from_secs(30));
        spec.synchronous_replication = Some(sync);
        spec.min_synchronous_standbys = Some(min_sync.min(max_sync));
        spec.max_synchronous_standbys = Some(max_sync);
        spec.max_standby_lag = Some(max_lag);
        spec.max_standbys_per_sender = Some(2);
        Sim {
            cd: None,
            keepers: vec![SimKeeper::default(); KEEPERS],
            keepers_info: BTreeMap::new(),
            proxies: vec![SimProxy::default(); PROXIES],
            proxies_info: BTreeMap::new(),
            memory: SentinelMemory::default(),
            now: Duration::from_secs(100),
            seq: 0,
            uids: SeqUids::new("db"),
            spec,
            seen: Vec::new(),
            proxies_read_lag: Duration::ZERO,
        }
    }

    fn wall(&self) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + self.now.as_nanos() as i128)
    }

    fn next_uid(&mut self) -> String {
        self.seq += 1;
        format!("i{}", self.seq)
    }

    /// Publishes keeper `i`'s info as a keeper following clusterdata would.
    fn publish_keeper(&mut self, i: usize) {
        let Some(cd) = &self.cd else { return };
        let cluster_uid = cd
            .cluster
            .as_ref()
            .map(|c| c.uid.clone())
            .unwrap_or_default();
        let k = &self.keepers[i];
        let ps = k.applied.as_ref().map(|(uid, generation)| PostgresState {
            uid: uid.clone(),
            generation: *generation,
            listen_address: "127.0.0.1".into(),
            port: format!("{}", 5000 + i),
            healthy: true,
            system_id: "sys1".into(),
            timeline_id: 1,
            xlog_pos: k.xlog,
            synchronous_standbys: Some(k.sync_reported.clone()),
            ..Default::default()
        });
        let info_uid = self.next_uid();
        self.keepers_info.insert(
            kname(i),
            KeeperInfo {
                info_uid,
                uid: kname(i),
                cluster_uid,
                boot_uuid: format!("boot{i}"),
                postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                postgres_state: ps,
                ..Default::default()
            },
        );
    }

    fn publish_proxy(&mut self, j: usize) {
        let info_uid = self.next_uid();
        self.proxies[j].last_publish = self.now;
        self.proxies[j].replaced = self.proxies_info.insert(
            format!("p{j}"),
            ProxyInfo {
                info_uid,
                uid: format!("p{j}"),
                generation: self.proxies[j].generation,
                proxy_timeout: PROXY_TIMEOUT.as_nanos() as i64,
                fences_from_check_start: j == MARKED_PROXY,
            },
        );
    }

    fn master_keeper(&self) -> Option<usize> {
        let cd = self.cd.as_ref()?;
        let k = cd.master_db()?.spec.as_ref()?.keeper_uid.clone();
        (0..KEEPERS).find(|i| kname(*i) == k)
    }

    fn converge(&mut self, i: usize) {
        let db = self
            .cd
            .as_ref()
            .and_then(|cd| cd.db_of_keeper(&kname(i)))
            .map(|db| (db.uid.clone(), db.generation));
        if let Some((uid, generation)) = db {
            let k = &mut self.keepers[i];
            if k.applied.as_ref().map(|a| &a.0) != Some(&uid) {
                k.sync_reported.clear();
            }
            k.applied = Some((uid, generation));
        }
    }

    fn apply(&mut self, op: &Op) -> bool {
        let mut write = true;
        match *op {
            Op::KeeperStart(i) => {
                self.keepers[i].alive = true;
                self.publish_keeper(i);
            }
            Op::KeeperStop(i) => self.keepers[i].alive = false,
            Op::KeeperInfoExpires(i) => {
                if !self.keepers[i].alive {
                    self.keepers_info.remove(&kname(i));
                }
            }
            Op::KeeperWal(i, d) => {
                self.keepers[i].xlog += u64::from(d);
                if self.keepers[i].alive {
                    self.publish_keeper(i);
                }
            }
            Op::KeeperStuck(i) => self.keepers[i].stuck = !self.keepers[i].stuck,
            Op::KeeperCatchesUp(i) => {
                let master_keeper = self.master_keeper();
                if let Some(m) = master_keeper {
                    self.keepers[i].xlog = self.keepers[i].xlog.max(self.keepers[m].xlog);
                }
            }
            Op::KeeperConverges(i) => {
                if self.keepers[i].alive {
                    let db = self
                        .cd
                        .as_ref()
                        .and_then(|cd| cd.db_of_keeper(&kname(i)))
                        .map(|db| (db.uid.clone(), db.generation));
                    if let Some((uid, generation)) = db {
                        let k = &mut self.keepers[i];
                        if k.applied.as_ref().map(|a| &a.0) != Some(&uid) {
                            k.sync_reported.clear();
                        }
                        k.applied = Some((uid, generation));
                    }
                    self.publish_keeper(i);
                }
            }
            Op::MasterReportsSync(mask) => {
                // The master reports a subset of the standbys it was told to wait for.
                let Some(cd) = &self.cd else { return true };
                let Some(master) = cd.master_db() else {
                    return true;
                };
                let keeper = master
                    .spec
                    .as_ref()
                    .map(|s| s.keeper_uid.clone())
                    .unwrap_or_default();
                let wanted = master
                    .spec
                    .as_ref()
                    .and_then(|s| s.synchronous_standbys.clone())
                    .unwrap_or_default();
                let reported: Vec<String> = wanted
                    .into_iter()
                    .enumerate()
                    .filter(|(n, _)| mask & (1 << (n % 8)) != 0)
                    .map(|(_, u)| u)
                    .collect();
                if let Some(i) = (0..KEEPERS).find(|i| kname(*i) == keeper)
                    && self.keepers[i].alive
                {
                    self.keepers[i].sync_reported = reported;
                    self.publish_keeper(i);
                }
            }
            Op::ProxyStart(j) => {
                self.proxies[j].alive = true;
                self.proxies[j].silent = false;
                self.publish_proxy(j);
                // A proxy coming back (started, or reconnected after its silence) publishes the
                // generation it last knew. If the decision's read missed that publish, the proxy
                // may route to the old master once more: the case docs/invariants.md lists
                // under "What these do not cover". Its comeback is therefore always seen here.
                self.proxies[j].replaced = None;
            }
            Op::ProxySilent(j) => self.proxies[j].silent = true,
            Op::ProxyStop(j) => {
                self.proxies[j].alive = false;
                self.proxies_info.remove(&format!("p{j}"));
            }
            Op::ProxyAck(j) => {
                if self.proxies[j].alive && !self.proxies[j].silent {
                    self.proxies[j].generation = self
                        .cd
                        .as_ref()
                        .and_then(|c| c.proxy.as_ref())
                        .map(|p| p.generation)
                        .unwrap_or(0);
                    self.publish_proxy(j);
                }
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                // Keepers that are alive and not stuck apply their DB; the master reports the
                // wanted sync standbys that are alive as in sync.
                for i in 0..KEEPERS {
                    if self.keepers[i].alive && !self.keepers[i].stuck {
                        self.converge(i);
                    }
                }
                if let Some(m) = self.master_keeper()
                    && self.keepers[m].alive
                    && !self.keepers[m].stuck
                {
                    let wanted = self
                        .cd
                        .as_ref()
                        .and_then(|cd| cd.master_db())
                        .and_then(|db| db.spec.as_ref())
                        .and_then(|s| s.synchronous_standbys.clone())
                        .unwrap_or_default();
                    let live: Vec<String> = wanted
                        .into_iter()
                        .filter(|u| {
                            (0..KEEPERS).any(|i| {
                                self.keepers[i].alive
                                    && self.keepers[i].applied.as_ref().map(|a| &a.0) == Some(u)
                            })
                        })
                        .collect();
                    self.keepers[m].sync_reported = live;
                }
                for i in 0..KEEPERS {
                    if self.keepers[i].alive {
                        self.publish_keeper(i);
                    }
                }
                for j in 0..PROXIES {
                    if self.proxies[j].alive && !self.proxies[j].silent {
                        self.publish_proxy(j);
                    }
                }
            }
            Op::NewLeader => self.memory = SentinelMemory::default(),
            Op::WriteLost => write = false,
        }
        write
    }

    fn step(&mut self, write: bool) -> Result<(), TestCaseError> {
        let spec = self.spec.clone();
        let wall = self.wall();
        // The read of the proxies' infos started at `read_at`: a publish after it may be missing
        // from the answer (the read returns the info it replaced), one before it may not.
        let read_at = self.now.saturating_sub(self.proxies_read_lag);
        let proxies_read: BTreeMap<String, ProxyInfo> = self
            .proxies_info
            .iter()
            .map(|(uid, info)| {
                let p = uid
                    .strip_prefix('p')
                    .and_then(|j| j.parse::<usize>().ok())
                    .and_then(|j| self.proxies.get(j));
                let shown = match p {
                    Some(p) if p.last_publish > read_at => p.replaced.as_ref().unwrap_or(info),
                    _ => info,
                };
                (uid.clone(), shown.clone())
            })
            .collect();
        let input = DecideInput {
            cluster_data: self.cd.as_ref(),
            keepers_info: &self.keepers_info,
            proxies_info: &proxies_read,
            memory: &self.memory,
            initial_spec: Some(&spec),
            now_mono: self.now,
            proxies_read_at: read_at,
            now_wall: wall,
        };
        let mut choose_last = |n: usize| n - 1;
        let d = decide(&input, &mut self.uids, &mut choose_last);
        // The test's own view of the proxies that may still route (a subset of what a fresh
        // leader assumes): the marked one fences itself PROXY_TIMEOUT after its last publish.
        let active: Vec<String> = self
            .proxies
            .iter()
            .enumerate()
            .filter(|(j, p)| {
                let routes_for = if *j == MARKED_PROXY {
                    PROXY_TIMEOUT
                } else {
                    2 * PROXY_TIMEOUT
                };
                p.alive && self.now.saturating_sub(p.last_publish) <= routes_for
            })
            .map(|(j, _)| format!("p{j}"))
            .collect();
        if let Some(next) = &d.next {
            validate_invariants(self.cd.as_ref(), next)
                .map_err(|e| TestCaseError::fail(format!("{e}\nevents: {:?}", d.events)))?;
            if let Some(prev) = &self.cd {
                validate_handshake(prev, next, &self.proxies_info, &active)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert!(
                !d.events
                    .iter()
                    .any(|e| matches!(e, Event::CannotDecide { .. })),
                "decide failed: {:?}",
                d.events
            );
            if write {
                self.cd = Some(next.clone());
            }
        }
        self.memory = d.memory;
        self.seen.extend(d.events);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn decide_keeps_the_safety_invariants(
        sync in any::<bool>(),
        min_sync in 0u16..3,
        max_sync in 1u16..3,
        max_lag in prop_oneof![Just(1_048_576u32), Just(100_000u32), Just(5_000_000u32)],
        read_lag_ms in prop_oneof![Just(0u64), 1u64..2_500],
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(sync, min_sync, max_sync, max_lag);
        sim.proxies_read_lag = Duration::from_millis(read_lag_ms);
        for op in &ops {
            let write = sim.apply(op);
            sim.step(write)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// The same random runs with quorum commit (docs/synchronous-replication.md): elections only
    /// through the final-positions phase, never two masters, the handshake kept.
    #[test]
    fn decide_keeps_the_safety_invariants_with_quorum_commit(
        min_sync in 0u16..3,
        max_sync in 1u16..3,
        read_lag_ms in prop_oneof![Just(0u64), 1u64..2_500],
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(true, min_sync, max_sync, 1_048_576);
        sim.spec.quorum_commit = Some(true);
        sim.proxies_read_lag = Duration::from_millis(read_lag_ms);
        for op in &ops {
            let write = sim.apply(op);
            sim.step(write)?;
        }
    }
}

/// The quorum-mode generator reaches its failover phases and elects.
#[test]
fn random_quorum_sequences_reach_every_failover_phase() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let strategy = prop::collection::vec(op(), 1..80);
    for _ in 0..1500 {
        let ops = strategy.new_tree(&mut runner).expect("tree").current();
        let mut sim = Sim::new(true, 1, 2, 1_048_576);
        sim.spec.quorum_commit = Some(true);
        for op in &ops {
            let write = sim.apply(op);
            sim.step(write).expect("invariants");
        }
        for e in &sim.seen {
            *counts.entry(e.message()).or_default() += 1;
        }
    }
    for msg in [
        "quorum failover: proxies' target cleared, waiting for them to be fenced",
        "quorum failover: proxies fenced, requesting the synchronous standbys' final positions",
        "electing db as the new master",
        "synchronous standbys known to hold every commit changed",
    ] {
        assert!(
            counts.get(msg).copied().unwrap_or(0) > 0,
            "never saw {msg:?}; saw {counts:#?}"
        );
    }
}

/// The generator reaches the interesting states: failovers in both modes, the proxy handshake,
/// synchronous set changes, refusals for lag and for the sync sets.
#[test]
fn random_sequences_reach_failovers_and_handshakes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut counts: BTreeMap<(&'static str, bool), usize> = BTreeMap::new();
    let strategy = (any::<bool>(), prop::collection::vec(op(), 1..80));
    for _ in 0..1500 {
        let (sync, ops) = strategy.new_tree(&mut runner).expect("tree").current();
        let mut sim = Sim::new(sync, 1, 1, 1_048_576);
        for op in &ops {
            let write = sim.apply(op);
            sim.step(write).expect("invariants");
        }
        for e in &sim.seen {
            *counts.entry((e.message(), sync)).or_default() += 1;
        }
    }
    for (msg, sync) in [
        ("electing db as the new master", false),
        ("electing db as the new master", true),
        ("proxies converged: routing to the master db", false),
        (
            "waiting for proxies to be converged to the current generation",
            false,
        ),
        ("removing old master db", false),
        ("removing old master db", true),
        ("synchronousStandbys changed", true),
        ("no eligible masters", false),
    ] {
        assert!(
            counts.get(&(msg, sync)).copied().unwrap_or(0) > 0,
            "never saw {msg:?} (sync={sync}); saw {counts:#?}"
        );
    }
}
