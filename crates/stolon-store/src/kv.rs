//! The small KV-with-leases interface both backends provide (etcd, in-memory), and the domain
//! [`Store`] built once on top of it, so key layout, encoding and TTL handling are identical on
//! every backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::keys::KeyLayout;
use crate::{ClusterDataRead, Revision, Store};

/// One key as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// Primitive operations of a revisioned KV store with leases (etcd v3's model).
#[async_trait]
pub(crate) trait KvBackend: Send + Sync + 'static {
    /// Value and mod revision of `key`.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError>;
    /// Unconditional put, optionally attached to a lease. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<i64, StoreError>;
    /// Put if the key's mod revision is `expected` (`None`: if the key is absent). `Ok(None)`
    /// when the comparison failed.
    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;
    /// Deletes `key` if `guard`'s mod revision is `expected` (`0`: if `guard` is absent), in one
    /// transaction. `Ok(false)` when the comparison failed; deleting an absent key succeeds.
    async fn delete_if(&self, key: &str, guard: &str, expected: i64) -> Result<bool, StoreError>;
    /// All keys under `prefix`, by ascending create revision.
    async fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, StoreError>;
    /// A new lease of `ttl` (whole seconds, rounded up).
    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError>;
    /// Refreshes a lease; `Ok(false)` when the lease no longer exists.
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError>;
    /// Revokes a lease, deleting its keys. Revoking an unknown lease is not an error.
    async fn revoke(&self, lease: i64) -> Result<(), StoreError>;
    /// Change counter for everything under the cluster prefix.
    fn changes(&self) -> watch::Receiver<u64>;
    /// For each key under `prefix` bound to a lease: a lower bound of how long ago that lease
    /// was granted or last refreshed, measured by the store itself (no clock of ours involved).
    async fn lease_ages(&self, prefix: &str) -> Result<Vec<(String, Duration)>, StoreError>;
}

/// The lower bound of a lease's age from the store's whole-second answer: granted `granted`
/// seconds, `remaining` left (the lease expires in under `remaining + 1` s). `None` for a lease
/// that is gone.
pub(crate) fn lease_age(granted: i64, remaining: i64) -> Option<Duration> {
    if remaining < 0 || granted <= 0 {
        return None;
    }
    let secs = granted.saturating_sub(remaining).saturating_sub(1).max(0);
    Some(Duration::from_secs(secs.unsigned_abs()))
}

/// The domain store over a [`KvBackend`].
pub(crate) struct KvStore<B: KvBackend> {
    pub backend: Arc<B>,
    pub layout: KeyLayout,
    /// Lease currently attached to each info key we wrote (so the previous one can be revoked:
    /// at most one live lease per key per store).
    info_leases: Mutex<HashMap<String, i64>>,
}

impl<B: KvBackend> KvStore<B> {
    pub fn new(backend: Arc<B>, layout: KeyLayout) -> Self {
        KvStore {
            backend,
            layout,
            info_leases: Mutex::new(HashMap::new()),
        }
    }

    /// A lower bound of the age of each info under `prefix`, by the UID after the prefix, from
    /// its lease.
    async fn info_ages(&self, prefix: String) -> Result<BTreeMap<String, Duration>, StoreError> {
        let ages = self.backend.lease_ages(&prefix).await?;
        Ok(ages
            .into_iter()
            .filter_map(|(key, age)| {
                let uid = key.strip_prefix(&prefix)?.trim_start_matches('/');
                (!uid.is_empty()).then(|| (uid.to_string(), age))
            })
            .collect())
    }

    async fn put_ttl<T: Serialize>(
        &self,
        key: String,
        what: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let bytes = encode(what, value)?;
        let lease = self.backend.grant(ttl).await?;
        if let Err(e) = self.backend.put(&key, bytes, Some(lease)).await {
            let _ = self.backend.revoke(lease).await;
            return Err(e);
        }
        let old = self
            .info_leases
            .lock()
            .expect("info lease map poisoned")
            .insert(key.clone(), lease);
        if let Some(old) = old.filter(|old| *old != lease) {
            // The key moved to the new lease; revoking the old one only frees it. Failure just
            // leaves it to expire on its own after its TTL.
            if let Err(e) = self.backend.revoke(old).await {
                tracing::debug!(key, error = %e, "cannot revoke previous info lease");
            }
        }
        Ok(())
    }

    async fn list_decoded<T: DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for e in self.backend.list(prefix).await? {
            let name = e.key.strip_prefix(prefix).unwrap_or(&e.key).to_string();
            match stolon_core::model::json::from_slice::<T>(&e.value) {
                Ok(v) => out.push((name, v)),
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "skipping undecodable {what}");
                }
            }
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Format {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// Decodes a clusterdata value: JSON `null` is "no clusterdata".
pub(crate) fn decode_cluster_data(bytes: &[u8]) -> Result<Option<ClusterData>, StoreError> {
    stolon_core::model::json::from_slice::<Option<ClusterData>>(bytes).map_err(|e| {
        StoreError::Format {
            what: "clusterdata".into(),
            detail: e.to_string(),
        }
    })
}

pub(crate) fn parse_revision(rev: &Revision) -> Option<i64> {
    rev.0.parse::<i64>().ok().filter(|r| *r > 0)
}

fn revision(rev: i64) -> Revision {
    Revision(rev.to_string())
}

#[async_trait]
impl<B: KvBackend> Store for KvStore<B> {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        match self.backend.get(&self.layout.cluster_data()).await? {
            None => Ok(ClusterDataRead {
                data: None,
                revision: None,
            }),
            Some((bytes, rev)) => Ok(ClusterDataRead {
                data: decode_cluster_data(&bytes)?,
                revision: Some(revision(rev)),
            }),
        }
    }

    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        let expected = match expected {
            None => None,
            // A revision that is not ours can never match the key's revision.
            Some(r) => Some(parse_revision(r).ok_or(StoreError::Conflict)?),
        };
        let bytes = encode("clusterdata", cd)?;
        match self
            .backend
            .put_if(&self.layout.cluster_data(), bytes, expected)
            .await?
        {
            Some(rev) => Ok(revision(rev)),
            None => Err(StoreError::Conflict),
        }
    }

    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        let bytes = encode("clusterdata", cd)?;
        let rev = self
            .backend
            .put(&self.layout.cluster_data(), bytes, None)
            .await?;
        Ok(revision(rev))
    }

    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.put_ttl(self.layout.keeper_info(&info.uid), "keeper info", info, ttl)
            .await
    }

    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError> {
        let key = self.layout.keeper_info(uid);
        let lease = self
            .info_leases
            .lock()
            .expect("info lease map poisoned")
            .remove(&key);
        match lease {
            // The key lives on its lease: revoking it deletes the key.
            Some(lease) => self.backend.revoke(lease).await,
            None => Ok(()),
        }
    }

    // Every publish writes the info under a fresh lease: its age is the info's.
    async fn keeper_info_ages(&self) -> Result<BTreeMap<String, Duration>, StoreError> {
        self.info_ages(self.layout.keepers_info_dir()).await
    }

    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError> {
        let prefix = self.layout.keepers_info_dir();
        let list = self
            .list_decoded::<KeeperInfo>(&prefix, "keeper info")
            .await?;
        Ok(crate::infos::keepers_by_uid(list))
    }

    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_ttl(
            self.layout.sentinel_info(&info.uid),
            "sentinel info",
            info,
            ttl,
        )
        .await
    }

    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        let prefix = self.layout.sentinels_info_dir();
        let list = self
            .list_decoded::<SentinelInfo>(&prefix, "sentinel info")
            .await?;
        Ok(crate::infos::sentinels_sorted(list))
    }

    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        self.put_ttl(self.layout.proxy_info(&info.uid), "proxy info", info, ttl)
            .await
    }

    // As for keepers: the lease is granted just before the write, so its age is at most the
    // info's, itself at most the time since the proxy started the check that published it.
    async fn proxy_info_ages(&self) -> Result<BTreeMap<String, Duration>, StoreError> {
        self.info_ages(self.layout.proxies_info_dir()).await
    }

    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError> {
        let prefix = self.layout.proxies_info_dir();
        let list = self
            .list_decoded::<ProxyInfo>(&prefix, "proxy info")
            .await?;
        Ok(crate::infos::proxies_by_uid(list))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.backend.changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_clusterdata_is_none_and_garbage_is_format() {
        assert_eq!(decode_cluster_data(b"null").expect("null decodes"), None);
        assert!(matches!(
            decode_cluster_data(b"{not json"),
            Err(StoreError::Format { .. })
        ));
        assert!(matches!(
            decode_cluster_data(b"{\"formatVersion\":\"x\"}"),
            Err(StoreError::Format { .. })
        ));
    }

    #[test]
    fn foreign_revisions_do_not_parse() {
        assert_eq!(parse_revision(&Revision("12".into())), Some(12));
        assert_eq!(parse_revision(&Revision("abc".into())), None);
        assert_eq!(parse_revision(&Revision("0".into())), None);
    }
}
