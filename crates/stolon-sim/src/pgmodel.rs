//! What the fake PostgreSQL instances do to each other: streaming replication, the primary's view
//! of its synchronous standbys, `pg_file_settings`, the source of base backups and rewinds, and
//! which writes an instance holds. `FakePg` models one instance only; this module connects them.
//!
//! The model reads what the keepers wrote into each `FakePg` (its `postgresql.conf` text) the way
//! PostgreSQL would: `primary_conninfo` says whom a standby streams from (`host`, `port`,
//! `application_name`), `synchronous_standby_names` which standbys a primary waits for. Reloads are
//! not modelled: the file as last written is the configuration in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use stolon_pg::Lsn;
use stolon_pg::fake::{FakePg, FakeSource, FakeState};

/// Parses `key = 'value'` lines (values single-quoted, `''` for a quote); other lines are skipped.
pub fn parse_conf(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(|v| v.replace("''", "'"))
            .unwrap_or_else(|| v.to_string());
        out.insert(k.trim().to_string(), v);
    }
    out
}

/// `key=value` pairs of a conninfo string (backslash escapes undone).
pub fn parse_conninfo(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        val.push(n);
                    }
                }
                ' ' => break,
                c => val.push(c),
            }
        }
        out.insert(key, val);
    }
    out
}

/// The names in `synchronous_standby_names` (`a`, `a,b`, `N (a,b)`, `FIRST N (a,b)` or
/// `ANY N (a,b)`).
pub fn sync_names(value: &str) -> Vec<String> {
    let inner = match (value.find('('), value.rfind(')')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    inner
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// One instance's facts at the start of a replication step.
#[derive(Debug, Clone)]
pub struct PgView {
    /// Data directory initialised.
    pub initialized: bool,
    /// Postmaster running.
    pub running: bool,
    /// Running in recovery (a standby).
    pub in_recovery: bool,
    /// System id.
    pub system_id: u64,
    /// Timeline.
    pub timeline: u32,
    /// WAL position (flushed and replayed: the model does not tell them apart).
    pub lsn: u64,
    /// Timeline history of the current timeline: (old timeline, switch point) per ancestor.
    pub history: Vec<(u32, u64)>,
    /// The configuration file as last written.
    pub conf: BTreeMap<String, String>,
}

impl PgView {
    /// Reads the view out of a `FakePg` state.
    pub fn of(s: &FakeState) -> Self {
        PgView {
            initialized: s.initialized,
            running: s.running,
            in_recovery: s.in_recovery,
            system_id: s.system_id,
            timeline: s.timeline,
            lsn: s.lsn.0,
            history: s
                .history
                .get(&s.timeline)
                .map(|h| h.iter().map(|e| (e.timeline, e.switch_point.0)).collect())
                .unwrap_or_default(),
            conf: s
                .postgresql_conf
                .as_deref()
                .map(parse_conf)
                .unwrap_or_default(),
        }
    }

    /// A running primary.
    pub fn is_primary(&self) -> bool {
        self.initialized && self.running && !self.in_recovery
    }

    /// Whether this instance's data holds the WAL position `lsn` written on `timeline` of
    /// `system_id`: on its own timeline up to its position, or on an ancestor timeline up to where
    /// its history left that timeline.
    pub fn holds(&self, system_id: u64, timeline: u32, lsn: u64) -> bool {
        if !self.initialized || self.system_id != system_id || lsn > self.lsn {
            return false;
        }
        timeline == self.timeline
            || self
                .history
                .iter()
                .any(|&(tl, switch)| tl == timeline && lsn <= switch)
    }

    /// Whether a standby with this view can stream from `upstream` without a rewind: same system,
    /// and either the same timeline at or behind it, or an ancestor timeline not past the fork.
    pub fn can_follow(&self, upstream: &PgView) -> bool {
        self.initialized
            && upstream.initialized
            && self.system_id == upstream.system_id
            && upstream.holds(self.system_id, self.timeline, self.lsn)
    }

    /// `(host, port, application_name)` of `primary_conninfo`, if any.
    pub fn upstream(&self) -> Option<(String, String, String)> {
        let ci = parse_conninfo(self.conf.get("primary_conninfo")?);
        Some((
            ci.get("host")?.clone(),
            ci.get("port")?.clone(),
            ci.get("application_name").cloned().unwrap_or_default(),
        ))
    }

    /// The names in this instance's `synchronous_standby_names`.
    pub fn sync_names(&self) -> Vec<String> {
        self.conf
            .get("synchronous_standby_names")
            .map(|v| sync_names(v))
            .unwrap_or_default()
    }
}

/// A standby streaming from a primary after a replication step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Index of the standby.
    pub standby: usize,
    /// Index of the upstream.
    pub upstream: usize,
    /// The standby's `application_name`.
    pub application_name: String,
}

/// One replication step over `pgs` (advertised at `addrs`, index-aligned):
/// - every running standby whose `primary_conninfo` names a running, compatible instance (and
///   whose replication is not `cut`) catches
///   up towards that instance's position at the end of the previous step (`prev_lsn`), at most
///   `rate` bytes, and takes over its timeline and history;
/// - every running instance's `file_settings` become its configuration file;
/// - every primary's `in_sync_standbys` become the streaming standbys it lists as synchronous;
/// - every instance but `source` gets `source`'s state as what a base backup or rewind copies.
///
/// Returns the streams.
pub fn replicate(
    pgs: &[Arc<FakePg>],
    addrs: &[(String, String)],
    prev_lsn: &[u64],
    rate: u64,
    source: Option<usize>,
    cut: &[bool],
) -> Vec<Stream> {
    let views: Vec<PgView> = pgs.iter().map(|p| PgView::of(&p.state())).collect();
    let mut streams = Vec::new();
    for (i, v) in views.iter().enumerate() {
        if !v.running || !v.in_recovery || cut.get(i).copied().unwrap_or(false) {
            continue;
        }
        let Some((host, port, app)) = v.upstream() else {
            continue;
        };
        let Some(j) = addrs.iter().position(|(h, p)| *h == host && *p == port) else {
            continue;
        };
        let up = &views[j];
        if j == i || !up.running || !v.can_follow(up) {
            continue;
        }
        let target = prev_lsn.get(j).copied().unwrap_or(0).min(up.lsn);
        let mut s = pgs[i].state();
        if target > s.lsn.0 {
            s.lsn = Lsn(s.lsn.0.saturating_add(rate).min(target));
        }
        if up.timeline != s.timeline {
            let history = pgs[j].state().history.clone();
            s.timeline = up.timeline;
            s.history = history;
        }
        streams.push(Stream {
            standby: i,
            upstream: j,
            application_name: app,
        });
    }
    let source_state = source.map(|j| {
        let s = pgs[j].state();
        FakeSource {
            system_id: s.system_id,
            timeline: s.timeline,
            lsn: s.lsn,
            history: s.history.clone(),
        }
    });
    for (j, pg) in pgs.iter().enumerate() {
        let mut s = pg.state();
        s.file_settings = views[j].conf.clone();
        if views[j].is_primary() {
            let wanted = views[j].sync_names();
            let mut in_sync: Vec<String> = streams
                .iter()
                .filter(|st| st.upstream == j && wanted.contains(&st.application_name))
                .filter_map(|st| {
                    stolon_core::pgconf::strip_stolon_name(&st.application_name).map(str::to_string)
                })
                .collect();
            in_sync.sort();
            in_sync.dedup();
            s.in_sync_standbys = in_sync;
        } else {
            s.in_sync_standbys.clear();
        }
        if source != Some(j) {
            s.clone_source = source_state.clone();
        }
    }
    streams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_keeper_writes() {
        let conf = parse_conf(
            "# Generated\nport = '5432'\nsynchronous_standby_names = '2 (stolon_a,stolon_b)'\nprimary_conninfo = 'application_name=stolon_c host=127.0.0.1 password=a\\ b port=5433'\nx = 'it''s'\n",
        );
        assert_eq!(conf["port"], "5432");
        assert_eq!(conf["x"], "it's");
        assert_eq!(
            sync_names(&conf["synchronous_standby_names"]),
            vec!["stolon_a", "stolon_b"]
        );
        assert_eq!(sync_names("stolon_a"), vec!["stolon_a"]);
        assert_eq!(
            sync_names("ANY 1 (stolon_a,stolon_b)"),
            vec!["stolon_a", "stolon_b"]
        );
        assert_eq!(sync_names("FIRST 2 (a,b,c)"), vec!["a", "b", "c"]);
        assert!(sync_names("").is_empty());
        let ci = parse_conninfo(&conf["primary_conninfo"]);
        assert_eq!(ci["host"], "127.0.0.1");
        assert_eq!(ci["password"], "a b");
        assert_eq!(ci["port"], "5433");
        assert_eq!(ci["application_name"], "stolon_c");
    }

    #[test]
    fn holds_follows_timeline_history() {
        let v = PgView {
            initialized: true,
            running: true,
            in_recovery: false,
            system_id: 1,
            timeline: 3,
            lsn: 500,
            history: vec![(1, 100), (2, 300)],
            conf: BTreeMap::new(),
        };
        assert!(v.holds(1, 3, 500));
        assert!(!v.holds(1, 3, 501));
        assert!(v.holds(1, 1, 100));
        assert!(!v.holds(1, 1, 101), "written on timeline 1 after the fork");
        assert!(v.holds(1, 2, 300));
        assert!(!v.holds(2, 3, 10), "other system");
    }
}
