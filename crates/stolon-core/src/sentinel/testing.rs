//! A fixture builder for decision tests and simulations: a consistent clusterdata with keepers,
//! DBs, keeper infos, proxy infos and a leader memory, plus time that passes.
//!
//! Pure test support (no IO). Keeper `k1` gets DB `db_k1`, every DB reports system `sys1` on
//! timeline 1, and the leader has been leading for a while (memory initialised) unless
//! [`ClusterFixture::first_run`] is called.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::duration::GoDuration;
use crate::model::{
    CURRENT_FORMAT_VERSION, Cluster, ClusterData, ClusterInitMode, ClusterPhase, ClusterSpec,
    ClusterStatus, Db, DbInitMode, DbRole, DbSpec, DbStatus, FollowConfig, FollowType, Keeper,
    KeeperInfo, KeeperSpec, KeeperStatus, PostgresBinaryVersion, PostgresState, Proxy, ProxyInfo,
    ProxySpec,
};
use crate::timestamp::Timestamp;
use crate::uid::SeqUids;

use super::classify::{DbKind, db_kind};
use super::decide::{DecideInput, Decision, FirstChoice, decide};
use super::memory::{InfoHistory, SentinelMemory};

thread_local! {
    static QUORUM_BUG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Breaks the quorum failover rule on this thread (simulation checker tests only): with `true`,
/// a quorum-mode failover elects the most advanced standby with a final report as soon as it
/// has one, without checking that enough of the synchronous sets reported (the pigeonhole rule
/// of `quorum.rs`). Every decision made on this thread afterwards is affected.
pub fn set_quorum_bug(on: bool) {
    QUORUM_BUG.with(|b| b.set(on));
}

/// Whether [`set_quorum_bug`] is on for this thread.
pub(crate) fn quorum_bug() -> bool {
    QUORUM_BUG.with(|b| b.get())
}

/// The DB UID the fixture gives a keeper's DB.
pub fn db_uid(keeper: &str) -> String {
    format!("db_{keeper}")
}

/// A cluster under test.
#[derive(Debug, Clone)]
pub struct ClusterFixture {
    /// Clusterdata as stored.
    pub cd: ClusterData,
    /// Live keeper infos.
    pub keepers_info: BTreeMap<String, KeeperInfo>,
    /// Live proxy infos.
    pub proxies_info: BTreeMap<String, ProxyInfo>,
    /// Leader memory.
    pub memory: SentinelMemory,
    /// Monotonic now.
    pub now_mono: Duration,
    /// How long before `now_mono` the proxy infos were requested (the store read's duration).
    pub proxies_read_lag: Duration,
    /// Wall now.
    pub now_wall: Timestamp,
    /// UIDs for new DBs (`new0001`, ...).
    pub uids: SeqUids,
    seq: u64,
}

impl Default for ClusterFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterFixture {
    /// A normal-phase cluster `cluster1` with spec `{initMode: new}`, no keepers yet.
    pub fn new() -> Self {
        let now_wall = Timestamp::parse("2024-01-01T00:00:00Z").expect("valid time literal");
        let cluster = Cluster {
            uid: "cluster1".into(),
            generation: 1,
            change_time: now_wall,
            spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
            status: ClusterStatus {
                phase: Some(ClusterPhase::Normal),
                ..Default::default()
            },
        };
        let mut cd = ClusterData::new(cluster, now_wall);
        cd.proxy = Some(Proxy {
            generation: 1,
            change_time: now_wall,
            ..Default::default()
        });
        ClusterFixture {
            cd,
            keepers_info: BTreeMap::new(),
            proxies_info: BTreeMap::new(),
            memory: SentinelMemory {
                initialized: true,
                ..Default::default()
            },
            now_mono: Duration::from_secs(1000),
            proxies_read_lag: Duration::ZERO,
            now_wall,
            uids: SeqUids::new("new"),
            seq: 0,
        }
    }

    /// Edits the cluster spec (then re-propagates it to the DB specs).
    pub fn spec(mut self, f: impl FnOnce(&mut ClusterSpec)) -> Self {
        if let Some(s) = self.cd.cluster.as_mut().and_then(|c| c.spec.as_mut()) {
            f(s);
        }
        self.refresh_db_specs();
        self
    }

    /// Short timings: sleepInterval 1s, failInterval 3s, convergenceTimeout 10s.
    pub fn fast(self) -> Self {
        self.spec(|s| {
            s.sleep_interval = Some(GoDuration::from_secs(1));
            s.fail_interval = Some(GoDuration::from_secs(3));
            s.convergence_timeout = Some(GoDuration::from_secs(10));
        })
    }

    /// Puts the cluster in the initialising phase (no master).
    pub fn initializing(mut self) -> Self {
        if let Some(c) = self.cd.cluster.as_mut() {
            c.status.phase = Some(ClusterPhase::Initializing);
        }
        self
    }

    /// The leader just gained leadership (fresh memory).
    pub fn first_run(mut self) -> Self {
        self.memory = SentinelMemory::default();
        self
    }

    fn next_info_uid(&mut self) -> String {
        self.seq += 1;
        format!("info{:04}", self.seq)
    }

    /// Adds a healthy keeper without DB, publishing an info with no PostgreSQL state.
    pub fn keeper(mut self, uid: &str) -> Self {
        self.add_keeper(uid);
        self
    }

    fn add_keeper(&mut self, uid: &str) {
        self.cd.keepers.insert(
            uid.into(),
            Keeper {
                uid: uid.into(),
                generation: 1,
                change_time: self.now_wall,
                spec: Some(KeeperSpec {}),
                status: KeeperStatus {
                    healthy: true,
                    last_healthy_time: self.now_wall,
                    boot_uuid: format!("boot_{uid}"),
                    postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                    ..Default::default()
                },
            },
        );
        let info_uid = self.next_info_uid();
        self.keepers_info.insert(
            uid.into(),
            KeeperInfo {
                info_uid: info_uid.clone(),
                uid: uid.into(),
                cluster_uid: "cluster1".into(),
                boot_uuid: format!("boot_{uid}"),
                postgres_binary_version: PostgresBinaryVersion { maj: 15, min: 0 },
                ..Default::default()
            },
        );
        self.memory.keeper_infos.insert(
            uid.into(),
            InfoHistory {
                info_uid,
                seen: true,
                first_seen: self.now_mono,
            },
        );
    }

    fn add_db(&mut self, keeper: &str, role: DbRole, follow: Option<String>) {
        self.add_keeper(keeper);
        let uid = db_uid(keeper);
        let db = Db {
            uid: uid.clone(),
            generation: 1,
            change_time: self.now_wall,
            spec: Some(DbSpec {
                keeper_uid: keeper.into(),
                init_mode: Some(DbInitMode::None),
                role: Some(role),
                followers: Some(Vec::new()),
                follow_config: follow.map(|m| FollowConfig {
                    kind: Some(FollowType::Internal),
                    db_uid: m,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: DbStatus {
                healthy: true,
                current_generation: 1,
                listen_address: "127.0.0.1".into(),
                port: "5432".into(),
                system_id: "sys1".into(),
                timeline_id: 1,
                xlog_pos: 0x1000,
                ..Default::default()
            },
        };
        self.cd.dbs.insert(uid.clone(), db);
        self.report_db(keeper);
    }

    /// Recomputes the keeper's published PostgreSQL state from its DB (converged, healthy).
    fn report_db(&mut self, keeper: &str) {
        let Some(db) = self.cd.db_of_keeper(keeper).cloned() else {
            return;
        };
        if let Some(info) = self.keepers_info.get_mut(keeper) {
            info.postgres_state = Some(PostgresState {
                uid: db.uid.clone(),
                generation: db.generation,
                listen_address: db.status.listen_address.clone(),
                port: db.status.port.clone(),
                healthy: true,
                system_id: db.status.system_id.clone(),
                timeline_id: db.status.timeline_id,
                xlog_pos: db.status.xlog_pos,
                synchronous_standbys: Some(db.status.cur_synchronous_standbys.clone()),
                ..Default::default()
            });
        }
    }

    /// Adds keeper `uid` running the master DB; proxies route to it.
    pub fn master(mut self, uid: &str) -> Self {
        self.add_db(uid, DbRole::Master, None);
        let db = db_uid(uid);
        if let Some(c) = self.cd.cluster.as_mut() {
            c.status.master = db.clone();
        }
        if let Some(p) = self.cd.proxy.as_mut() {
            p.spec.master_db_uid = db;
        }
        self.refresh_db_specs();
        self
    }

    /// Adds keeper `uid` running a standby DB of the master.
    pub fn standby(mut self, uid: &str) -> Self {
        let master = self
            .cd
            .cluster
            .as_ref()
            .map(|c| c.status.master.clone())
            .unwrap_or_default();
        self.add_db(uid, DbRole::Standby, Some(master));
        self.refresh_db_specs();
        self
    }

    /// Sets the WAL position of `keeper`'s DB (status and published state).
    pub fn xlog(mut self, keeper: &str, pos: u64) -> Self {
        let uid = db_uid(keeper);
        if let Some(db) = self.cd.dbs.get_mut(&uid) {
            db.status.xlog_pos = pos;
        }
        self.report_db(keeper);
        self
    }

    /// Makes the master use synchronous replication with `keepers`' DBs, listed in the spec and
    /// the status, and reported in sync.
    pub fn sync_standbys(mut self, keepers: &[&str]) -> Self {
        let dbs: Vec<String> = keepers.iter().map(|k| db_uid(k)).collect();
        let master = self
            .cd
            .cluster
            .as_ref()
            .map(|c| c.status.master.clone())
            .unwrap_or_default();
        if let Some(c) = self.cd.cluster.as_mut().and_then(|c| c.spec.as_mut()) {
            c.synchronous_replication = Some(true);
        }
        if let Some(db) = self.cd.dbs.get_mut(&master) {
            if let Some(s) = db.spec.as_mut() {
                s.synchronous_replication = true;
                s.synchronous_standbys = Some(dbs.clone());
                s.external_synchronous_standbys = Some(Vec::new());
            }
            db.status.synchronous_standbys = Some(dbs.clone());
            db.status.cur_synchronous_standbys = dbs;
        }
        if let Some(k) = self
            .cd
            .dbs
            .get(&master)
            .map(|d| super::classify::keeper_of(d).to_string())
        {
            self.report_db(&k);
            if let Some(db) = self.cd.dbs.get_mut(&master) {
                db.status.cur_synchronous_standbys.clear();
            }
        }
        self
    }

    /// Sets what the master reports as in sync (published state only).
    pub fn reported_sync(mut self, keepers: &[&str]) -> Self {
        let master = self.master_keeper();
        if let Some(ps) = self
            .keepers_info
            .get_mut(&master)
            .and_then(|i| i.postgres_state.as_mut())
        {
            ps.synchronous_standbys = Some(keepers.iter().map(|k| db_uid(k)).collect());
        }
        self
    }

    /// The keeper running the master DB.
    pub fn master_keeper(&self) -> String {
        self.cd
            .master_db()
            .map(|d| super::classify::keeper_of(d).to_string())
            .unwrap_or_default()
    }

    /// Sets a keeper flag in both the info and the stored status.
    pub fn can_be_master(mut self, keeper: &str, v: bool) -> Self {
        if let Some(i) = self.keepers_info.get_mut(keeper) {
            i.can_be_master = Some(v);
        }
        if let Some(k) = self.cd.keepers.get_mut(keeper) {
            k.status.can_be_master = Some(v);
        }
        self
    }

    /// Sets the keeper's `--priority` in both the info and the stored status.
    pub fn priority(mut self, keeper: &str, p: i64) -> Self {
        if let Some(i) = self.keepers_info.get_mut(keeper) {
            i.priority = Some(p);
        }
        if let Some(k) = self.cd.keepers.get_mut(keeper) {
            k.status.priority = Some(p);
        }
        self
    }

    /// Sets `canBeSynchronousReplica` in both the info and the stored status.
    pub fn can_be_sync(mut self, keeper: &str, v: bool) -> Self {
        if let Some(i) = self.keepers_info.get_mut(keeper) {
            i.can_be_synchronous_replica = Some(v);
        }
        if let Some(k) = self.cd.keepers.get_mut(keeper) {
            k.status.can_be_synchronous_replica = Some(v);
        }
        self
    }

    /// Adds a proxy that acknowledged the current proxy generation and is enabled.
    pub fn proxy(mut self, uid: &str) -> Self {
        let generation = self.cd.proxy.as_ref().map(|p| p.generation).unwrap_or(0);
        let info_uid = self.next_info_uid();
        self.proxies_info.insert(
            uid.into(),
            ProxyInfo {
                info_uid: info_uid.clone(),
                uid: uid.into(),
                generation,
                proxy_timeout: 15_000_000_000,
                fences_from_check_start: false,
            },
        );
        self.memory.proxy_infos.insert(
            uid.into(),
            InfoHistory {
                info_uid,
                seen: true,
                first_seen: self.now_mono,
            },
        );
        if let Some(p) = self.cd.proxy.as_mut()
            && !p.spec.enabled_proxies.iter().any(|u| u == uid)
        {
            p.spec.enabled_proxies.push(uid.into());
            p.spec.enabled_proxies.sort();
        }
        self
    }

    /// Adds a proxy like [`ClusterFixture::proxy`] whose info carries `fencesFromCheckStart`
    /// (a stolon-rs proxy, which counts its timeout from the start of its last published check).
    pub fn marked_proxy(self, uid: &str) -> Self {
        let mut f = self.proxy(uid);
        if let Some(i) = f.proxies_info.get_mut(uid) {
            i.fences_from_check_start = true;
        }
        f
    }

    /// Stops `keeper` publishing (its info stays until removed, like a TTL not yet expired).
    pub fn kill(&mut self, keeper: &str) {
        self.keepers_info.remove(keeper);
    }

    /// Lets `d` pass; every keeper and proxy with an info republishes it (new infoUID, current
    /// DB generation), except those in `silent`.
    pub fn tick(&mut self, d: Duration, silent: &[&str]) {
        self.now_mono += d;
        self.now_wall =
            Timestamp::from_unix_nanos(self.now_wall.unix_nanos() + d.as_nanos() as i128);
        let keepers: Vec<String> = self.keepers_info.keys().cloned().collect();
        for k in keepers {
            if silent.contains(&k.as_str()) {
                continue;
            }
            let uid = self.next_info_uid();
            if let Some(i) = self.keepers_info.get_mut(&k) {
                i.info_uid = uid;
            }
            // A perfect keeper: applies its DB's current generation at once.
            let db = self.cd.db_of_keeper(&k).cloned();
            if let (Some(db), Some(ps)) = (
                db,
                self.keepers_info
                    .get_mut(&k)
                    .and_then(|i| i.postgres_state.as_mut()),
            ) && ps.uid == db.uid
            {
                ps.generation = db.generation;
            }
        }
        let proxies: Vec<String> = self.proxies_info.keys().cloned().collect();
        for p in proxies {
            if silent.contains(&p.as_str()) {
                continue;
            }
            let uid = self.next_info_uid();
            if let Some(i) = self.proxies_info.get_mut(&p) {
                i.info_uid = uid;
            }
        }
    }

    /// Proxies acknowledge the current proxy generation.
    pub fn proxies_ack(&mut self) {
        let generation = self.cd.proxy.as_ref().map(|p| p.generation).unwrap_or(0);
        for i in self.proxies_info.values_mut() {
            i.generation = generation;
        }
    }

    /// Runs one decision (UIDs `new0001`..., first keeper chosen).
    pub fn decide(&mut self) -> Decision {
        let input = DecideInput {
            cluster_data: Some(&self.cd),
            keepers_info: &self.keepers_info,
            proxies_info: &self.proxies_info,
            memory: &self.memory,
            initial_spec: None,
            now_mono: self.now_mono,
            proxies_read_at: self.now_mono.saturating_sub(self.proxies_read_lag),
            now_wall: self.now_wall,
        };
        decide(&input, &mut self.uids, &mut FirstChoice)
    }

    /// Applies a decision as the runtime would (write succeeded).
    pub fn apply(&mut self, d: &Decision) {
        if let Some(next) = &d.next {
            self.cd = next.clone();
        }
        self.memory = d.memory.clone();
    }

    /// Decides and applies; returns the decision.
    pub fn step(&mut self) -> Decision {
        let d = self.decide();
        self.apply(&d);
        d
    }

    /// Applies the cluster spec to the DB specs exactly as the sentinel does, and recomputes the
    /// master's followers, so a fresh fixture is a fixed point of `decide`.
    pub fn refresh_db_specs(&mut self) {
        let Some(spec) = self.cd.cluster.as_ref().and_then(|c| c.spec.clone()) else {
            return;
        };
        let e = spec.effective();
        let master = self
            .cd
            .cluster
            .as_ref()
            .map(|c| c.status.master.clone())
            .unwrap_or_default();
        let followers: Vec<String> = self
            .cd
            .dbs
            .values()
            .filter(|d| {
                d.spec
                    .as_ref()
                    .and_then(|s| s.follow_config.as_ref())
                    .is_some_and(|f| f.db_uid == master)
            })
            .map(|d| d.uid.clone())
            .collect();
        for db in self.cd.dbs.values_mut() {
            let kind = db_kind(db);
            let is_master = db.uid == master;
            let Some(s) = db.spec.as_mut() else { continue };
            s.request_timeout = e.request_timeout;
            s.max_standbys = e.max_standbys;
            s.use_pgrewind = e.use_pgrewind;
            s.pg_parameters = spec.pg_parameters.clone().unwrap_or_default();
            s.pg_hba = spec.pg_hba.clone();
            s.additional_wal_senders = e.additional_wal_senders;
            s.additional_replication_slots = if kind == DbKind::Master && is_master {
                spec.additional_master_replication_slots.clone()
            } else {
                None
            };
            if is_master {
                s.followers = Some(followers.clone());
            }
        }
    }

    /// The current format version check helper (always 1).
    pub fn format_version(&self) -> u64 {
        CURRENT_FORMAT_VERSION
    }

    /// A copy of the proxy spec.
    pub fn proxy_spec(&self) -> ProxySpec {
        self.cd.proxy.clone().map(|p| p.spec).unwrap_or_default()
    }
}
