//! What the sentinel decided or noticed, as typed values the runtime logs.
//!
//! Pure data. [`Event::message`] returns Stolon's log message texts (the integration tests and
//! users grep for them); `db` and `keeper` are the structured fields.

use std::fmt;

/// How loudly the runtime should log an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Repeated waits (logged at debug).
    Debug,
    /// Decisions and waits.
    Info,
    /// Something is wrong and needs attention.
    Warn,
}

/// One decision or observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No clusterdata and no initial cluster spec.
    NoClusterData,
    /// Clusterdata created from the initial cluster spec.
    ClusterDataCreated {
        /// The new cluster UID.
        cluster_uid: String,
    },
    /// Clusterdata unusable (format version, missing or invalid spec, inconsistent).
    InvalidClusterData {
        /// Why.
        error: String,
    },
    /// No fresh keeper info for a DB's keeper.
    NoKeeperInfo {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The keeper info carries no PostgreSQL state.
    NoDbState {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The keeper reports a state for another DB UID.
    UnexpectedDbUid {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
        /// Reported DB UID.
        reported: String,
    },
    /// A keeper is declared unhealthy.
    KeeperUnhealthy {
        /// Keeper UID.
        keeper: String,
    },
    /// `forceFail` consumed for a keeper.
    KeeperForceFailed {
        /// Keeper UID.
        keeper: String,
    },
    /// Initialising: no keeper to choose.
    NoKeepersForInitialMaster,
    /// Initialising: the keeper named by `existingConfig` is not registered.
    ExistingKeeperNotAvailable {
        /// Keeper UID.
        keeper: String,
    },
    /// Initialising: a DB was created for the initial master.
    InitializingCluster {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// Initialising: waiting for the initial DB.
    WaitingForDb {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The initial DB is ready; the cluster is now normal.
    DbInitialized {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The initial DB did not converge in time.
    DbInitFailed {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// A dead keeper without DB removed.
    RemovingDeadKeeper {
        /// Keeper UID.
        keeper: String,
    },
    /// The master DB is unhealthy.
    MasterDbFailed {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The master DB did not converge in time.
    MasterDbNotConverged {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// Looking for a replacement.
    FindingNewMaster {
        /// Failed master DB UID.
        db: String,
    },
    /// No eligible standby.
    NoEligibleMasters {
        /// Why each other DB was left out (`db (keeper): reason; ...`).
        reasons: String,
    },
    /// Synchronous replication: no standby in both sync sets.
    NoEligibleSyncMasters {
        /// The failed master DB.
        db: String,
    },
    /// A new master elected.
    ElectingNewMaster {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The handshake waits for every active proxy.
    WaitingForProxies,
    /// Every active proxy has the current generation; the handshake now waits for the new
    /// master to report that it converged (promoted) before naming it.
    WaitingForMasterConvergence {
        /// Master DB UID.
        db: String,
    },
    /// Proxies told to route to the master.
    ProxiesRouteToMaster {
        /// DB UID.
        db: String,
    },
    /// The set of enabled proxies changed.
    EnabledProxiesChanged {
        /// The new set, comma separated.
        proxies: String,
    },
    /// The old master DB is removed (fencing).
    RemovingOldMasterDb {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// A DB on another system or forked timeline is removed.
    RemovingInvalidDb {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// A standby missing WAL the master removed is recreated.
    RemovingDbCannotSync {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// A surplus or bad standby is removed.
    RemovingStandby {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// A standby DB created on a free keeper.
    AddingStandby {
        /// DB UID.
        db: String,
        /// Keeper UID.
        keeper: String,
    },
    /// The synchronous set changes only once the reported set equals the wanted one.
    WaitingForSyncStandbys {
        /// Master DB UID.
        db: String,
    },
    /// The master's synchronous standbys changed.
    SyncStandbysChanged {
        /// Master DB UID.
        db: String,
        /// Previous list.
        previous: String,
        /// New list (fake standby included).
        current: String,
    },
    /// The master failed but the cluster is paused: no new master is elected.
    FailoverPaused {
        /// Master DB UID.
        db: String,
        /// Its keeper UID.
        keeper: String,
    },
    /// The decision could not be made (inconsistent clusterdata).
    CannotDecide {
        /// Why.
        error: String,
    },
    /// A planned switchover moved to `phase` (docs/switchover.md).
    Switchover {
        /// The phase it moved to.
        phase: crate::model::SwitchoverPhase,
        /// The target DB UID ("" before one is chosen).
        db: String,
        /// The request's UID and the phase's facts.
        detail: String,
    },
    /// The old master of a switchover stopped cleanly; its final WAL position is recorded.
    SwitchoverOldMasterStopped {
        /// Old master DB UID.
        db: String,
        /// Its keeper.
        keeper: String,
        /// Its final WAL position.
        final_xlog_pos: String,
    },
    /// Quorum commit: the synchronous standbys known to hold every acknowledged commit changed
    /// (docs/synchronous-replication.md).
    QuorumSetKnown {
        /// Master DB UID.
        db: String,
        /// The known set.
        standbys: String,
        /// How many of them hold every acknowledged commit.
        quorum: u16,
    },
    /// Quorum-mode failover: the proxies' target is cleared; waiting for them to acknowledge.
    QuorumFailoverFencing {
        /// The failed master DB.
        db: String,
    },
    /// Quorum-mode failover: the proxies are fenced; the synchronous standbys are asked for
    /// their final positions (a generation bump).
    QuorumFailoverRequestingPositions {
        /// The failed master DB.
        db: String,
        /// The standbys asked.
        standbys: String,
    },
    /// Quorum-mode failover: not enough final positions yet to know which standby holds every
    /// acknowledged commit.
    WaitingForQuorumPositions {
        /// The failed master DB.
        db: String,
        /// What is there (`set: have/need`).
        have: String,
        /// What is missing.
        need: String,
    },
    /// Quorum-mode failover abandoned: the master is good again.
    QuorumFailoverAborted {
        /// The master DB.
        db: String,
    },
}

impl Event {
    /// Stolon's log message for the event.
    pub fn message(&self) -> &'static str {
        use Event::*;
        match self {
            NoClusterData => "no cluster data available, waiting for it to appear",
            ClusterDataCreated { .. } => "initializing cluster data with the initial cluster spec",
            InvalidClusterData { .. } => "invalid cluster data",
            NoKeeperInfo { .. } => "no keeper info available",
            NoDbState { .. } => "no db state available",
            UnexpectedDbUid { .. } => "received db state for unexpected db uid",
            KeeperUnhealthy { .. } => "keeper is not healthy",
            KeeperForceFailed { .. } => "keeper forced as failed",
            NoKeepersForInitialMaster => "cannot choose initial master: no keepers registered",
            ExistingKeeperNotAvailable { .. } => "keeper state not available",
            InitializingCluster { .. } => "initializing cluster",
            WaitingForDb { .. } => "waiting for db",
            DbInitialized { .. } => "db initialized",
            DbInitFailed { .. } => "db failed to initialize",
            RemovingDeadKeeper { .. } => "removing old dead keeper",
            MasterDbFailed { .. } => "master db is failed",
            MasterDbNotConverged { .. } => "db not converged",
            FindingNewMaster { .. } => "trying to find a new master to replace failed master",
            NoEligibleMasters { .. } => "no eligible masters",
            NoEligibleSyncMasters { .. } => {
                "cannot choose synchronous standby as new master: no eligible synchronous standby"
            }
            ElectingNewMaster { .. } => "electing db as the new master",
            WaitingForProxies => "waiting for proxies to be converged to the current generation",
            WaitingForMasterConvergence { .. } => {
                "proxies converged, waiting for the master db to converge before routing to it"
            }
            ProxiesRouteToMaster { .. } => "proxies converged: routing to the master db",
            EnabledProxiesChanged { .. } => "enabled proxies changed",
            RemovingOldMasterDb { .. } => "removing old master db",
            RemovingInvalidDb { .. } => "removing invalid db",
            RemovingDbCannotSync { .. } => "removing db that cannot sync",
            RemovingStandby { .. } => "removing standby db",
            AddingStandby { .. } => "adding new standby db",
            WaitingForSyncStandbys { .. } => {
                "waiting for new defined synchronous standbys to be in sync"
            }
            SyncStandbysChanged { .. } => "synchronousStandbys changed",
            QuorumSetKnown { .. } => "synchronous standbys known to hold every commit changed",
            QuorumFailoverFencing { .. } => {
                "quorum failover: proxies' target cleared, waiting for them to be fenced"
            }
            QuorumFailoverRequestingPositions { .. } => {
                "quorum failover: proxies fenced, requesting the synchronous standbys' final positions"
            }
            WaitingForQuorumPositions { .. } => {
                "quorum failover: waiting for enough final positions of the synchronous standbys"
            }
            QuorumFailoverAborted { .. } => "quorum failover abandoned: the master is good again",
            CannotDecide { .. } => "cannot update cluster data",
            FailoverPaused { .. } => "cluster paused: not replacing the failed master",
            Switchover { phase, .. } => {
                use crate::model::SwitchoverPhase as P;
                match phase {
                    P::Requested => "switchover requested",
                    P::Holding => "switchover accepted: proxies hold new connections",
                    P::Stopping => "switchover: proxies fenced, stopping the old master",
                    P::Promoted => "switchover: the target caught up, promoting it",
                    P::Completed => "switchover completed: proxies route to the new master",
                    P::Failed => "switchover failed, the old master stays",
                }
            }
            SwitchoverOldMasterStopped { .. } => {
                "switchover: the old master stopped, final position recorded"
            }
        }
    }

    /// The DB UID the event is about, if any.
    pub fn db(&self) -> Option<&str> {
        use Event::*;
        match self {
            NoKeeperInfo { db, .. }
            | NoDbState { db, .. }
            | UnexpectedDbUid { db, .. }
            | InitializingCluster { db, .. }
            | WaitingForDb { db, .. }
            | DbInitialized { db, .. }
            | DbInitFailed { db, .. }
            | MasterDbFailed { db, .. }
            | MasterDbNotConverged { db, .. }
            | FindingNewMaster { db }
            | NoEligibleSyncMasters { db }
            | ElectingNewMaster { db, .. }
            | ProxiesRouteToMaster { db }
            | WaitingForMasterConvergence { db }
            | RemovingOldMasterDb { db, .. }
            | RemovingInvalidDb { db, .. }
            | RemovingDbCannotSync { db, .. }
            | RemovingStandby { db, .. }
            | AddingStandby { db, .. }
            | WaitingForSyncStandbys { db }
            | SyncStandbysChanged { db, .. }
            | QuorumSetKnown { db, .. }
            | QuorumFailoverFencing { db }
            | QuorumFailoverRequestingPositions { db, .. }
            | WaitingForQuorumPositions { db, .. }
            | QuorumFailoverAborted { db }
            | FailoverPaused { db, .. }
            | SwitchoverOldMasterStopped { db, .. } => Some(db),
            Switchover { db, .. } if !db.is_empty() => Some(db),
            _ => None,
        }
    }

    /// The keeper UID the event is about, if any.
    pub fn keeper(&self) -> Option<&str> {
        use Event::*;
        match self {
            NoKeeperInfo { keeper, .. }
            | NoDbState { keeper, .. }
            | UnexpectedDbUid { keeper, .. }
            | KeeperUnhealthy { keeper }
            | KeeperForceFailed { keeper }
            | ExistingKeeperNotAvailable { keeper }
            | InitializingCluster { keeper, .. }
            | WaitingForDb { keeper, .. }
            | DbInitialized { keeper, .. }
            | DbInitFailed { keeper, .. }
            | RemovingDeadKeeper { keeper }
            | MasterDbFailed { keeper, .. }
            | MasterDbNotConverged { keeper, .. }
            | ElectingNewMaster { keeper, .. }
            | RemovingOldMasterDb { keeper, .. }
            | RemovingInvalidDb { keeper, .. }
            | RemovingDbCannotSync { keeper, .. }
            | RemovingStandby { keeper, .. }
            | AddingStandby { keeper, .. }
            | FailoverPaused { keeper, .. }
            | SwitchoverOldMasterStopped { keeper, .. } => Some(keeper),
            _ => None,
        }
    }

    /// Any further detail worth logging (error text, lists).
    pub fn detail(&self) -> Option<String> {
        use Event::*;
        match self {
            ClusterDataCreated { cluster_uid } => Some(format!("cluster={cluster_uid}")),
            InvalidClusterData { error } | CannotDecide { error } => Some(error.clone()),
            UnexpectedDbUid { reported, .. } => Some(format!("reported={reported}")),
            NoEligibleMasters { reasons } => Some(reasons.clone()),
            EnabledProxiesChanged { proxies } => Some(format!("proxies=[{proxies}]")),
            Switchover { detail, .. } => Some(detail.clone()),
            SwitchoverOldMasterStopped { final_xlog_pos, .. } => {
                Some(format!("final_xlog_pos={final_xlog_pos}"))
            }
            SyncStandbysChanged {
                previous, current, ..
            } => Some(format!("previous=[{previous}] current=[{current}]")),
            QuorumSetKnown {
                standbys, quorum, ..
            } => Some(format!("standbys=[{standbys}] quorum={quorum}")),
            QuorumFailoverRequestingPositions { standbys, .. } => {
                Some(format!("standbys=[{standbys}]"))
            }
            WaitingForQuorumPositions { have, need, .. } => {
                Some(format!("have=[{have}] need=[{need}]"))
            }
            _ => None,
        }
    }

    /// How loudly to log it.
    pub fn severity(&self) -> Severity {
        use Event::*;
        match self {
            WaitingForDb { .. } => Severity::Debug,
            InvalidClusterData { .. }
            | UnexpectedDbUid { .. }
            | NoEligibleMasters { .. }
            | NoEligibleSyncMasters { .. }
            | CannotDecide { .. }
            | NoKeepersForInitialMaster
            | ExistingKeeperNotAvailable { .. }
            | FailoverPaused { .. } => Severity::Warn,
            Switchover {
                phase: crate::model::SwitchoverPhase::Failed,
                ..
            } => Severity::Warn,
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())?;
        if let Some(db) = self.db() {
            write!(f, " db={db}")?;
        }
        if let Some(k) = self.keeper() {
            write!(f, " keeper={k}")?;
        }
        if let Some(d) = self.detail() {
            write!(f, " {d}")?;
        }
        Ok(())
    }
}
