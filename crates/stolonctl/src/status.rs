//! `stolonctl status`: the status document (JSON keys as Stolon's) and its text rendering.
//!
//! Pure: built from what was read (sentinel infos, the election's leader, proxy infos,
//! clusterdata) and rendered to a string.

use std::collections::BTreeMap;

use serde::Serialize;
use stolon_core::model::{ClusterData, ProxyInfo, SentinelInfo};

use crate::tabwriter::TabWriter;

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The cluster is paused (`stolonctl pause`); only present when true, as the first key.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Active sentinels, sorted by UID.
    pub sentinels: Vec<SentinelStatus>,
    /// Active proxies, sorted by UID.
    pub proxies: Vec<ProxyStatus>,
    /// Keepers of clusterdata, sorted by UID.
    pub keepers: Vec<KeeperStatus>,
    /// Cluster summary.
    pub cluster: ClusterStatus,
}

/// One sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentinelStatus {
    /// Sentinel UID.
    pub uid: String,
    /// Whether it is the elected leader.
    pub leader: bool,
}

/// One proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    /// Proxy UID.
    pub uid: String,
    /// Proxy generation it applied.
    pub generation: i64,
}

/// One keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeeperStatus {
    /// Keeper UID.
    pub uid: String,
    /// `host:port` of its DB, `(unknown)` if not reported, `(no db assigned)` without a DB.
    pub listen_address: String,
    /// Keeper healthy (sentinel's view).
    pub healthy: bool,
    /// Its DB healthy.
    pub pg_healthy: bool,
    /// DB generation wanted.
    pub pg_wanted_generation: i64,
    /// DB generation applied.
    pub pg_current_generation: i64,
}

/// Cluster summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// Clusterdata has a cluster.
    pub available: bool,
    /// Keeper running the master DB ("" if none).
    pub master_keeper_uid: String,
    /// Master DB UID ("" if none).
    pub master_db_uid: String,
}

/// Builds the status from what was read.
pub fn build(
    sentinels: &[SentinelInfo],
    leader: Option<&str>,
    proxies: &BTreeMap<String, ProxyInfo>,
    cd: &ClusterData,
) -> Status {
    let mut sentinels: Vec<SentinelStatus> = sentinels
        .iter()
        .map(|s| SentinelStatus {
            uid: s.uid.clone(),
            leader: leader.is_some_and(|l| !l.is_empty() && l == s.uid),
        })
        .collect();
    sentinels.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut proxies: Vec<ProxyStatus> = proxies
        .values()
        .map(|p| ProxyStatus {
            uid: p.uid.clone(),
            generation: p.generation,
        })
        .collect();
    proxies.sort_by(|a, b| a.uid.cmp(&b.uid));
    let keepers = cd
        .keepers
        .iter()
        .map(|(uid, k)| {
            let db = cd.db_of_keeper(uid);
            let listen_address = match db {
                None => "(no db assigned)".to_string(),
                Some(db) if db.status.listen_address.is_empty() => "(unknown)".to_string(),
                Some(db) => format!("{}:{}", db.status.listen_address, db.status.port),
            };
            KeeperStatus {
                uid: uid.clone(),
                listen_address,
                healthy: k.status.healthy,
                pg_healthy: db.is_some_and(|d| d.status.healthy),
                pg_wanted_generation: db.map_or(0, |d| d.generation),
                pg_current_generation: db.map_or(0, |d| d.status.current_generation),
            }
        })
        .collect();
    let mut cluster = ClusterStatus {
        available: cd.cluster.is_some(),
        master_keeper_uid: String::new(),
        master_db_uid: String::new(),
    };
    if let Some(db) = cd.master_db() {
        cluster.master_db_uid = db.uid.clone();
        let keeper_uid = db.spec.as_ref().map_or("", |s| s.keeper_uid.as_str());
        if let Some(k) = cd.keepers.get(keeper_uid) {
            cluster.master_keeper_uid = k.uid.clone();
        }
    }
    Status {
        paused: cd
            .cluster
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .is_some_and(|s| s.is_paused()),
        sentinels,
        proxies,
        keepers,
        cluster,
    }
}

/// `status -f json`: tab-indented JSON.
pub fn render_json(status: &Status) -> anyhow::Result<String> {
    crate::json::tab_indented(status)
}

/// `status` text form, exactly Stolon's layout (ends with a newline).
pub fn render_text(status: &Status, cd: &ClusterData) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    if status.paused {
        line(&mut out, crate::operations::PAUSED_LINE);
        line(&mut out, "");
    }
    line(&mut out, "=== Active sentinels ===");
    line(&mut out, "");
    if status.sentinels.is_empty() {
        line(&mut out, "No active sentinels");
    } else {
        // One block: every row aligns with the header (Stolon flushes after every row, so only
        // its first row does; docs/differences.md).
        let mut tw = TabWriter::new();
        tw.line("ID\tLEADER");
        for s in &status.sentinels {
            tw.line(&format!("{}\t{}", s.uid, s.leader));
        }
        out.push_str(&tw.finish());
    }
    line(&mut out, "");
    line(&mut out, "=== Active proxies ===");
    line(&mut out, "");
    if status.proxies.is_empty() {
        line(&mut out, "No active proxies");
    } else {
        let mut tw = TabWriter::new();
        tw.line("ID");
        for p in &status.proxies {
            tw.line(&p.uid);
        }
        out.push_str(&tw.finish());
    }
    line(&mut out, "");
    line(&mut out, "=== Keepers ===");
    line(&mut out, "");
    if status.keepers.is_empty() {
        line(&mut out, "No keepers available");
        line(&mut out, "");
    } else {
        let mut tw = TabWriter::new();
        tw.line(
            "UID\tHEALTHY\tPG LISTENADDRESS\tPG HEALTHY\tPG WANTEDGENERATION\tPG CURRENTGENERATION",
        );
        for k in &status.keepers {
            tw.line(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t",
                k.uid,
                k.healthy,
                k.listen_address,
                k.pg_healthy,
                k.pg_wanted_generation,
                k.pg_current_generation
            ));
        }
        out.push_str(&tw.finish());
    }
    if status.cluster.master_keeper_uid.is_empty() {
        line(&mut out, "No cluster available");
    } else {
        line(&mut out, "");
        line(&mut out, "=== Cluster Info ===");
        line(&mut out, "");
        line(
            &mut out,
            &format!("Master Keeper: {}", status.cluster.master_keeper_uid),
        );
    }
    if !status.cluster.master_db_uid.is_empty() {
        line(&mut out, "");
        line(&mut out, "===== Keepers/DB tree =====");
        line(&mut out, "");
        let mut seen = std::collections::BTreeSet::new();
        tree(
            cd,
            &status.cluster.master_db_uid,
            0,
            "",
            true,
            &mut seen,
            &mut out,
        );
    }
    line(&mut out, "");
    out
}

/// Prints `db_uid`'s keeper and, recursively, its followers' keepers; missing DBs are skipped,
/// and so is a DB already printed (followers lists of broken clusterdata could form a cycle).
fn tree<'a>(
    cd: &'a ClusterData,
    db_uid: &'a str,
    level: usize,
    prefix: &str,
    tail: bool,
    seen: &mut std::collections::BTreeSet<&'a str>,
    out: &mut String,
) {
    let Some(db) = cd.dbs.get(db_uid) else {
        return;
    };
    if !seen.insert(db_uid) {
        return;
    }
    let spec = db.spec.as_ref();
    out.push_str(prefix);
    if level > 0 {
        out.push_str(if tail { "└─" } else { "├─" });
    }
    out.push_str(spec.map_or("", |s| s.keeper_uid.as_str()));
    if cd
        .cluster
        .as_ref()
        .is_some_and(|c| c.status.master == db_uid)
    {
        out.push_str(" (master)");
    }
    out.push('\n');
    let followers: &[String] = spec
        .and_then(|s| s.followers.as_deref())
        .unwrap_or_default();
    let child_prefix = if tail {
        format!("{prefix}{}", if level > 0 { "  " } else { "" })
    } else {
        format!("{prefix}│ ")
    };
    for (i, f) in followers.iter().enumerate() {
        tree(
            cd,
            f,
            level + 1,
            &child_prefix,
            i + 1 == followers.len(),
            seen,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cd() -> ClusterData {
        serde_json::from_value(json!({
            "formatVersion": 1,
            "cluster": {
                "uid": "c1", "generation": 1,
                "spec": {"initMode": "new"},
                "status": {"phase": "normal", "master": "dbm"}
            },
            "keepers": {
                "keeper0": {"uid": "keeper0", "status": {"healthy": true}},
                "keeper1": {"uid": "keeper1", "status": {"healthy": true}},
                "keeper2": {"uid": "keeper2", "status": {}},
                "keeper3": {"uid": "keeper3", "status": {"healthy": true}},
                "keeper4": {"uid": "keeper4", "status": {}}
            },
            "dbs": {
                "dbm": {"uid": "dbm", "generation": 4,
                        "spec": {"keeperUID": "keeper0", "followers": ["db1", "db2", "gone"]},
                        "status": {"healthy": true, "currentGeneration": 4,
                                   "listenAddress": "127.0.0.1", "port": "5432"}},
                "db1": {"uid": "db1", "generation": 2,
                        "spec": {"keeperUID": "keeper1", "followers": ["db3"]},
                        "status": {"healthy": true, "currentGeneration": 1,
                                   "listenAddress": "127.0.0.1", "port": "5433"}},
                "db2": {"uid": "db2", "generation": 1,
                        "spec": {"keeperUID": "keeper2"},
                        "status": {}},
                "db3": {"uid": "db3", "generation": 1,
                        "spec": {"keeperUID": "keeper3"},
                        "status": {"listenAddress": "::1", "port": "5435"}}
            },
            "proxy": {"spec": {}}
        }))
        .unwrap()
    }

    fn infos() -> (Vec<SentinelInfo>, BTreeMap<String, ProxyInfo>) {
        let sentinels = vec![
            SentinelInfo {
                uid: "s2".into(),
                ..Default::default()
            },
            SentinelInfo {
                uid: "s1".into(),
                ..Default::default()
            },
        ];
        let mut proxies = BTreeMap::new();
        for (uid, generation) in [("p2", 3), ("p1", 4)] {
            proxies.insert(
                uid.to_string(),
                ProxyInfo {
                    uid: uid.into(),
                    generation,
                    ..Default::default()
                },
            );
        }
        (sentinels, proxies)
    }

    #[test]
    fn json_has_stolons_keys_and_values() {
        let (s, p) = infos();
        let st = build(&s, Some("s2"), &p, &cd());
        let v: serde_json::Value = serde_json::from_str(&render_json(&st).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "sentinels": [{"uid": "s1", "leader": false}, {"uid": "s2", "leader": true}],
                "proxies": [{"uid": "p1", "generation": 4}, {"uid": "p2", "generation": 3}],
                "keepers": [
                    {"uid": "keeper0", "listen_address": "127.0.0.1:5432", "healthy": true,
                     "pg_healthy": true, "pg_wanted_generation": 4, "pg_current_generation": 4},
                    {"uid": "keeper1", "listen_address": "127.0.0.1:5433", "healthy": true,
                     "pg_healthy": true, "pg_wanted_generation": 2, "pg_current_generation": 1},
                    {"uid": "keeper2", "listen_address": "(unknown)", "healthy": false,
                     "pg_healthy": false, "pg_wanted_generation": 1, "pg_current_generation": 0},
                    {"uid": "keeper3", "listen_address": "::1:5435", "healthy": true,
                     "pg_healthy": false, "pg_wanted_generation": 1, "pg_current_generation": 0},
                    {"uid": "keeper4", "listen_address": "(no db assigned)", "healthy": false,
                     "pg_healthy": false, "pg_wanted_generation": 0, "pg_current_generation": 0}
                ],
                "cluster": {"available": true, "master_keeper_uid": "keeper0", "master_db_uid": "dbm"}
            })
        );
        assert!(
            render_json(&st)
                .unwrap()
                .starts_with("{\n\t\"sentinels\": [\n\t\t{\n\t\t\t\"uid\": \"s1\",")
        );
    }

    #[test]
    fn text_layout() {
        let (s, p) = infos();
        let cd = cd();
        let st = build(&s, Some("s2"), &p, &cd);
        // "gone" (last follower of the master) is missing and skipped, so keeper2 is drawn as a
        // middle entry, as Stolon does.
        let want = "\
=== Active sentinels ===

ID\tLEADER
s1\tfalse
s2\ttrue

=== Active proxies ===

ID
p1
p2

=== Keepers ===

UID\tHEALTHY\tPG LISTENADDRESS\tPG HEALTHY\tPG WANTEDGENERATION\tPG CURRENTGENERATION
keeper0\ttrue\t127.0.0.1:5432\t\ttrue\t\t4\t\t\t4\t
keeper1\ttrue\t127.0.0.1:5433\t\ttrue\t\t2\t\t\t1\t
keeper2\tfalse\t(unknown)\t\tfalse\t\t1\t\t\t0\t
keeper3\ttrue\t::1:5435\t\tfalse\t\t1\t\t\t0\t
keeper4\tfalse\t(no db assigned)\tfalse\t\t0\t\t\t0\t

=== Cluster Info ===

Master Keeper: keeper0

===== Keepers/DB tree =====

keeper0 (master)
├─keeper1
│ └─keeper3
├─keeper2

";
        pretty_assertions::assert_eq!(render_text(&st, &cd), want);
    }

    #[test]
    fn text_without_anything() {
        let mut cd = cd();
        cd.keepers.clear();
        cd.dbs.clear();
        cd.cluster.as_mut().unwrap().status.master.clear();
        let st = build(&[], None, &BTreeMap::new(), &cd);
        assert!(!st.cluster.master_db_uid.is_empty() || st.cluster.available);
        let want = "\
=== Active sentinels ===

No active sentinels

=== Active proxies ===

No active proxies

=== Keepers ===

No keepers available

No cluster available

";
        assert_eq!(render_text(&st, &cd), want);
    }

    #[test]
    fn tree_nested_non_tail_prefixes() {
        // A follower that is not the last one keeps the "│ " rail for its own children.
        let mut cd = cd();
        let db2 = cd.dbs.get_mut("db1").unwrap();
        db2.spec.as_mut().unwrap().followers = Some(vec!["db3".into(), "db2".into()]);
        let dbm = cd.dbs.get_mut("dbm").unwrap();
        dbm.spec.as_mut().unwrap().followers = Some(vec!["db1".into(), "missing".into()]);
        let mut out = String::new();
        tree(&cd, "dbm", 0, "", true, &mut Default::default(), &mut out);
        // "missing" is the last follower but skipped, so db1 is drawn as a non-tail entry.
        assert_eq!(
            out,
            "keeper0 (master)\n├─keeper1\n│ ├─keeper3\n│ └─keeper2\n"
        );
    }

    #[test]
    fn tree_survives_follower_cycles() {
        let mut cd = cd();
        for (db, f) in [("dbm", ["db1", "db1"]), ("db1", ["dbm", "db1"])] {
            let spec = cd.dbs.get_mut(db).unwrap().spec.as_mut().unwrap();
            spec.followers = Some(f.iter().map(|s| s.to_string()).collect());
        }
        let mut out = String::new();
        tree(&cd, "dbm", 0, "", true, &mut Default::default(), &mut out);
        assert_eq!(out, "keeper0 (master)\n├─keeper1\n");
    }

    #[test]
    fn leader_matching_needs_a_leader() {
        let s = vec![SentinelInfo {
            uid: String::new(),
            ..Default::default()
        }];
        let st = build(&s, Some(""), &BTreeMap::new(), &cd());
        assert!(!st.sentinels[0].leader);
    }
}
