//! Shaping listed infos the same way on every backend: keyed (or sorted) by the UID inside the
//! info, falling back to the name it was listed under (key suffix or pod name) when the info has none.

use std::collections::BTreeMap;

use stolon_core::model::{KeeperInfo, ProxyInfo, SentinelInfo};

/// Listed `(name, info)` pairs keyed by `uid(info)`, or by `name` when that is empty.
fn by_uid<T>(list: Vec<(String, T)>, uid: impl Fn(&T) -> &str) -> BTreeMap<String, T> {
    list.into_iter()
        .map(|(name, info)| {
            let key = if uid(&info).is_empty() {
                name
            } else {
                uid(&info).to_string()
            };
            (key, info)
        })
        .collect()
}

/// Keeper infos by keeper UID.
pub fn keepers_by_uid(list: Vec<(String, KeeperInfo)>) -> BTreeMap<String, KeeperInfo> {
    by_uid(list, |k| &k.uid)
}

/// Proxy infos by proxy UID.
pub fn proxies_by_uid(list: Vec<(String, ProxyInfo)>) -> BTreeMap<String, ProxyInfo> {
    by_uid(list, |p| &p.uid)
}

/// Sentinel infos sorted by UID (a missing UID is taken from the listed name).
pub fn sentinels_sorted(list: Vec<(String, SentinelInfo)>) -> Vec<SentinelInfo> {
    by_uid(list, |s| &s.uid)
        .into_iter()
        .map(|(uid, mut s)| {
            s.uid = uid;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_inner_uid_else_listed_name() {
        let k = |uid: &str| KeeperInfo {
            uid: uid.into(),
            ..Default::default()
        };
        let m = keepers_by_uid(vec![("a".into(), k("k2")), ("k1".into(), k(""))]);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["k1", "k2"]);

        let s = |uid: &str| SentinelInfo {
            uid: uid.into(),
            ..Default::default()
        };
        let v = sentinels_sorted(vec![("x".into(), s("s2")), ("s1".into(), s(""))]);
        assert_eq!(v, vec![s("s1"), s("s2")]);
    }
}
