//! The key layout of KV stores (stolon-behaviour.md §3.1), shared by the etcd and in-memory
//! backends so both lay data out identically.

/// Keys of one cluster under `<prefix>/<cluster name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    cluster_path: String,
}

impl KeyLayout {
    /// Layout for `prefix` (e.g. `stolon/cluster`) and `cluster_name`. The prefix is kept
    /// literally (no leading `/` is added), trailing slashes are dropped.
    pub fn new(prefix: &str, cluster_name: &str) -> Self {
        KeyLayout {
            cluster_path: format!("{}/{}", prefix.trim_end_matches('/'), cluster_name),
        }
    }

    /// `<prefix>/<cluster>`.
    pub fn cluster_path(&self) -> &str {
        &self.cluster_path
    }

    /// `<cluster path>/`: everything of this cluster (and nothing of `<cluster>2`).
    pub fn cluster_prefix(&self) -> String {
        format!("{}/", self.cluster_path)
    }

    /// `<cluster path>/clusterdata`.
    pub fn cluster_data(&self) -> String {
        format!("{}/clusterdata", self.cluster_path)
    }

    /// `<cluster path>/keepers/info/` (listing prefix).
    pub fn keepers_info_dir(&self) -> String {
        format!("{}/keepers/info/", self.cluster_path)
    }

    /// `<cluster path>/keepers/info/<uid>`.
    pub fn keeper_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.keepers_info_dir())
    }

    /// `<cluster path>/sentinels/info/` (listing prefix).
    pub fn sentinels_info_dir(&self) -> String {
        format!("{}/sentinels/info/", self.cluster_path)
    }

    /// `<cluster path>/sentinels/info/<uid>`.
    pub fn sentinel_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.sentinels_info_dir())
    }

    /// `<cluster path>/proxies/info/` (listing prefix).
    pub fn proxies_info_dir(&self) -> String {
        format!("{}/proxies/info/", self.cluster_path)
    }

    /// `<cluster path>/proxies/info/<uid>`.
    pub fn proxy_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.proxies_info_dir())
    }

    /// `<cluster path>/sentinel-leader/`: the election prefix; candidates' keys are
    /// `<cluster path>/sentinel-leader/<lease id in hex>`.
    pub fn election_prefix(&self) -> String {
        format!("{}/sentinel-leader/", self.cluster_path)
    }

    /// The election key of the candidate holding lease `lease`.
    pub fn election_key(&self, lease: i64) -> String {
        format!("{}{lease:x}", self.election_prefix())
    }
}

/// Whole seconds for a TTL lease: rounded up, at least 1 (never nanoseconds: stolon-behaviour.md
/// §7.11).
pub fn ttl_secs(ttl: std::time::Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn layout_matches_stolon() {
        let k = KeyLayout::new("stolon/cluster/", "c1");
        assert_eq!(k.cluster_path(), "stolon/cluster/c1");
        assert_eq!(k.cluster_data(), "stolon/cluster/c1/clusterdata");
        assert_eq!(k.keeper_info("k1"), "stolon/cluster/c1/keepers/info/k1");
        assert_eq!(k.sentinel_info("s1"), "stolon/cluster/c1/sentinels/info/s1");
        assert_eq!(k.proxy_info("p1"), "stolon/cluster/c1/proxies/info/p1");
        assert_eq!(
            k.election_key(0x1234abcd),
            "stolon/cluster/c1/sentinel-leader/1234abcd"
        );
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(20)), 20);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
