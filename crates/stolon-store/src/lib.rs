//! stolon-store: where the cluster's shared state lives.
//!
//! The [`Store`] trait holds the domain operations every component needs (clusterdata read and
//! compare-and-swap write, infos published under TTL leases, change notifications) and the
//! [`Election`] trait the sentinels' leadership. Backends: etcd v3 (real) and in-memory (unit and
//! simulation tests, injectable clock) here; Kubernetes in the stolon-kube crate, which implements
//! the same traits. One conformance suite ([`testing::suite`]) runs against every backend.
//!
//! Decision: the traits are object-safe (`async_trait`) and components hold `Arc<dyn Store>`. The
//! style guide suggests generic runtimes over an enum; with several backends chosen at run time
//! and many helpers writing code in parallel, one trait object type kept the seams simpler.

pub mod config;
mod election;
pub mod error;
pub mod etcd;
pub mod infos;
pub mod keys;
mod kv;
pub mod mem;
pub mod repeat;
pub mod tls;
pub mod unreliable;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use tokio::sync::watch;

pub use config::{CommonArgs, StoreBackend, StoreConfig, apply_env_prefix};
pub use election::DEFAULT_ELECTION_TTL;
pub use error::StoreError;
pub use etcd::{BackendOptions, EtcdElection, EtcdStore};
pub use mem::{MemElection, MemKv, MemStore};
pub use unreliable::{FaultHandle, Unreliable, UnreliableElection};

/// An opaque version of the clusterdata key, used for compare-and-swap (etcd: mod revision;
/// Kubernetes: resourceVersion).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(pub String);

/// Clusterdata as read, with the revision to compare against when writing it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterDataRead {
    /// The document; `None` when the key is absent or holds JSON `null`.
    pub data: Option<ClusterData>,
    /// The key's revision; `None` when the key is absent.
    pub revision: Option<Revision>,
}

/// The domain operations on the cluster's store. All operations are bounded by the store timeout.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads clusterdata. A value that is not valid clusterdata JSON is [`StoreError::Format`].
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError>;

    /// Writes clusterdata only if the key is still at `expected` (`None`: only if absent).
    /// A mismatch is [`StoreError::Conflict`]. Returns the new revision.
    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError>;

    /// Writes clusterdata unconditionally (`stolonctl init`, `clusterdata write`).
    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError>;

    /// Publishes a keeper's info; it disappears after `ttl` unless republished.
    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError>;
    /// All live keeper infos by keeper UID. Undecodable entries are skipped with a warning.
    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError>;
    /// For each keeper whose info is in the store: a lower bound of how long ago it published
    /// it, measured by the store from the info's lease (no clock of ours, so no clock
    /// synchronisation is trusted). A sentinel that takes over leadership uses it to judge
    /// keepers that were already silent before. Default: nothing known (every keeper is then
    /// judged from when the new leader first looks).
    async fn keeper_info_ages(&self) -> Result<BTreeMap<String, Duration>, StoreError> {
        Ok(BTreeMap::new())
    }
    /// Withdraws the keeper info this store published for `uid` (a keeper stopping cleanly), so
    /// the sentinel stops seeing it at once instead of after its TTL. Nothing published: no-op.
    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError>;

    /// Publishes a sentinel's info under a TTL.
    async fn put_sentinel_info(&self, info: &SentinelInfo, ttl: Duration)
    -> Result<(), StoreError>;
    /// All live sentinel infos, sorted by UID.
    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError>;

    /// Publishes a proxy's info under a TTL.
    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError>;
    /// For each proxy whose info is in the store: a lower bound of how long ago it published it,
    /// as [`Store::keeper_info_ages`] for keepers. A sentinel that takes over leadership uses it
    /// to stop waiting sooner for a proxy that was already silent before. Default: nothing known
    /// (every proxy is then judged from when the new leader first looks).
    async fn proxy_info_ages(&self) -> Result<BTreeMap<String, Duration>, StoreError> {
        Ok(BTreeMap::new())
    }
    /// All live proxy infos by proxy UID.
    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError>;

    /// A receiver whose value changes whenever anything under the cluster's prefix changes
    /// (clusterdata, infos written or expired, election). Components re-read the full state on a
    /// change; the counter value itself means nothing. The backend keeps the underlying watch
    /// alive (re-establishing it after errors) for as long as the store exists.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Hands the leader sentinel's decision events to the backend, which may publish them where
    /// operators look (the kubernetes backend: Events on the keeper pods). Must return at once
    /// and never fail: publishing is best effort, done in the background, and its failures are
    /// logged. Default: nothing (etcd, in-memory).
    fn publish_events(&self, events: &[stolon_core::sentinel::Event]) {
        let _ = events;
    }
}

/// Leader election among sentinels.
#[async_trait]
pub trait Election: Send + Sync + 'static {
    /// Starts campaigning as `candidate` (the sentinel UID) in the background. The receiver is
    /// `true` while this candidate leads; on lost leadership (lease expired, store errors) it turns
    /// `false` and the campaign starts again by itself.
    async fn campaign(&self, candidate: &str) -> Result<watch::Receiver<bool>, StoreError>;

    /// The current leader's candidate value, if any.
    async fn leader(&self) -> Result<Option<String>, StoreError>;

    /// Stops campaigning and gives up leadership (deletes our election key).
    async fn resign(&self) -> Result<(), StoreError>;

    /// Sets the lease TTL of the next [`Election::campaign`] (a running campaign keeps its
    /// lease). Returns false when the backend has no such setting (its TTL is configured
    /// otherwise, e.g. the Kubernetes lock's lease duration).
    fn set_ttl(&self, _ttl: Duration) -> bool {
        false
    }

    /// Makes leadership hold by heartbeats (stolon_core::sentinel::leadership): from the next
    /// campaign on, this candidate leads only while [`Election::heartbeat`] reports publishes of
    /// its sentinel info within their hold, and while it does not lead it deposes a leader whose
    /// info announced a hold and then stayed unchanged for longer. Returns false when the
    /// backend's election keeps its own lock (the Kubernetes lease): nothing changes then, and
    /// the caller must not announce a hold in its info.
    fn use_heartbeats(&self) -> bool {
        false
    }

    /// Reports a successful publish of this candidate's info announcing `hold`: `started` taken
    /// before it was sent, `completed` after its success came back. No-op unless
    /// [`Election::use_heartbeats`] returned true.
    fn heartbeat(
        &self,
        started: tokio::time::Instant,
        completed: tokio::time::Instant,
        hold: Duration,
    ) {
        let _ = (started, completed, hold);
    }
}

/// Connects to the configured store: etcd v3 (the store and its sentinel election share the
/// connections; election TTL 20 s). The Kubernetes backend is not built yet.
///
/// Connecting is lazy: a bad or unreachable endpoint shows up on the first request, not here;
/// unreadable TLS files and bad flags are reported here.
pub async fn connect(cfg: &StoreConfig) -> Result<(Arc<dyn Store>, Arc<dyn Election>), StoreError> {
    connect_with(cfg, &BackendOptions::default()).await
}

/// [`connect`] with non-flag options (e.g. a short election TTL for tests).
pub async fn connect_with(
    cfg: &StoreConfig,
    opts: &BackendOptions,
) -> Result<(Arc<dyn Store>, Arc<dyn Election>), StoreError> {
    match cfg.backend {
        StoreBackend::EtcdV3 => {
            let store = EtcdStore::connect(cfg).await?;
            let election = store.election(opts.election_ttl);
            Ok((Arc::new(store), Arc::new(election)))
        }
        StoreBackend::Kubernetes => Err(StoreError::Config(
            "store backend kubernetes is not built yet".into(),
        )),
    }
}
