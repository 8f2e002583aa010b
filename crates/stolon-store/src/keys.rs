//! The key layout of KV stores (docs/architecture.md §4.1), shared by the etcd and in-memory
//! backends so both lay data out identically.

/// Keys of one cluster under `<prefix>/<cluster name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    cluster_path: String,
}

impl KeyLayout {
    /// Layout for `prefix` (e.g. `stolon/cluster`) and `cluster_name`: the cluster path is
    /// `path.Join(prefix, cluster_name)` exactly as Stolon computes it in Go (no leading `/` is
    /// added; empty elements, `//`, `.` and `..` are resolved), so an existing cluster's keys are
    /// found whatever spelling of the prefix it was created with.
    pub fn new(prefix: &str, cluster_name: &str) -> Self {
        KeyLayout {
            cluster_path: go_path_join(&[prefix, cluster_name]),
        }
    }

    /// `path.Join(<cluster path>, rel)`.
    fn under(&self, rel: &str) -> String {
        go_path_join(&[&self.cluster_path, rel])
    }

    /// `path.Join(<cluster path>, rel)` with one trailing `/` (a listing prefix).
    fn dir(&self, rel: &str) -> String {
        let mut p = self.under(rel);
        if !p.ends_with('/') {
            p.push('/');
        }
        p
    }

    /// `<prefix>/<cluster>`.
    pub fn cluster_path(&self) -> &str {
        &self.cluster_path
    }

    /// `<cluster path>/`: everything of this cluster (and nothing of `<cluster>2`).
    pub fn cluster_prefix(&self) -> String {
        self.dir("")
    }

    /// `<cluster path>/clusterdata`.
    pub fn cluster_data(&self) -> String {
        self.under("clusterdata")
    }

    /// `<cluster path>/keepers/info/` (listing prefix).
    pub fn keepers_info_dir(&self) -> String {
        self.dir("keepers/info")
    }

    /// `<cluster path>/keepers/info/<uid>`.
    pub fn keeper_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.keepers_info_dir())
    }

    /// `<cluster path>/sentinels/info/` (listing prefix).
    pub fn sentinels_info_dir(&self) -> String {
        self.dir("sentinels/info")
    }

    /// `<cluster path>/sentinels/info/<uid>`.
    pub fn sentinel_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.sentinels_info_dir())
    }

    /// `<cluster path>/proxies/info/` (listing prefix).
    pub fn proxies_info_dir(&self) -> String {
        self.dir("proxies/info")
    }

    /// `<cluster path>/proxies/info/<uid>`.
    pub fn proxy_info(&self, uid: &str) -> String {
        format!("{}{uid}", self.proxies_info_dir())
    }

    /// `<cluster path>/sentinel-leader/`: the election prefix; candidates' keys are
    /// `<cluster path>/sentinel-leader/<lease id in hex>`.
    pub fn election_prefix(&self) -> String {
        self.dir("sentinel-leader")
    }

    /// The election key of the candidate holding lease `lease`.
    pub fn election_key(&self, lease: i64) -> String {
        format!("{}{lease:x}", self.election_prefix())
    }
}

/// Go's `path.Join`: the non-empty elements joined with `/`, then [`go_path_clean`]ed; `""` when
/// every element is empty.
pub fn go_path_join(elems: &[&str]) -> String {
    let parts: Vec<&str> = elems.iter().copied().filter(|e| !e.is_empty()).collect();
    if parts.is_empty() {
        return String::new();
    }
    go_path_clean(&parts.join("/"))
}

/// Go's `path.Clean`: the shortest equivalent path, purely lexically: repeated slashes become one,
/// `.` elements go, `..` removes the element before it (at the root it is dropped; in a relative
/// path that has nothing left to remove it stays), no trailing slash; `""` becomes `.`.
pub fn go_path_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    // How many leading `..` of a relative path must stay.
    let mut dotdot = 0usize;
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if out.len() > dotdot {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                    dotdot += 1;
                }
            }
            e => out.push(e),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// Whole seconds for a TTL lease: rounded up, at least 1 (never nanoseconds: docs/differences.md).
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
    fn prefix_is_joined_like_go_path_join() {
        // Expected values are what Go's path.Join returns for the same arguments.
        let cases = [
            ("stolon/cluster", "c", "stolon/cluster/c"),
            ("stolon/cluster/", "c", "stolon/cluster/c"),
            ("", "c", "c"),
            ("/", "c", "/c"),
            ("/stolon//cluster/", "c", "/stolon/cluster/c"),
            ("a//b", "c", "a/b/c"),
            ("./a/./b/", "c", "a/b/c"),
            ("a/b/..", "c", "a/c"),
            ("../a", "c", "../a/c"),
            ("..", "..", "../.."),
            ("/..", "c", "/c"),
            ("a", "", "a"),
            ("a", "b/../../..", ".."),
            ("", "", ""),
        ];
        for (prefix, name, want) in cases {
            assert_eq!(
                KeyLayout::new(prefix, name).cluster_path(),
                want,
                "path.Join({prefix:?}, {name:?})"
            );
        }
        assert_eq!(go_path_clean(""), ".");
        assert_eq!(go_path_clean("a/.."), ".");
        assert_eq!(
            KeyLayout::new("", "c").cluster_data(),
            "c/clusterdata",
            "no leading slash for an empty prefix"
        );
        let root = KeyLayout::new("/", "..");
        assert_eq!(root.cluster_data(), "/clusterdata");
        assert_eq!(root.keepers_info_dir(), "/keepers/info/");
        assert_eq!(root.cluster_prefix(), "/");
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(20)), 20);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
