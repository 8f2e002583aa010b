//! `stolonctl pause`, `resume` and `history` (docs/operations.md).
//!
//! The pure parts (the clusterdata `pause`/`resume` write, the history's text and JSON forms)
//! are functions of what was read; [`run`] does the reads and writes.

use anyhow::{anyhow, bail};
use serde::Serialize;
use stolon_core::model::ClusterData;
use stolon_core::model::history::format_lsn;
use stolon_store::Store;

use crate::app::{Io, cas_loop, get_checked};
use crate::cli::{Cmd, HistoryArgs};
use crate::ops;
use crate::tabwriter::TabWriter;

/// The first line of `stolonctl status` while the cluster is paused.
pub const PAUSED_LINE: &str =
    "Cluster PAUSED: no automatic failover, no keeper-driven restart (stolonctl resume ends it)";

/// Runs `pause`, `resume` or `history`; any other command is refused.
pub async fn run(cmd: &Cmd, store: &dyn Store, io: &mut Io<'_>) -> anyhow::Result<()> {
    match cmd {
        Cmd::Pause(a) | Cmd::Resume(a) => {
            if !a.args.is_empty() {
                bail!("too many arguments");
            }
            let pause = matches!(cmd, Cmd::Pause(_));
            let mut unchanged = false;
            cas_loop(store, |cd| {
                let next = set_paused(cd, pause)?;
                unchanged = next.is_none();
                Ok(next)
            })
            .await?;
            let msg = match (pause, unchanged) {
                (true, false) => "cluster paused: no automatic failover until `stolonctl resume`",
                (true, true) => "cluster already paused",
                (false, false) => "cluster resumed: automatic failover enabled",
                (false, true) => "cluster not paused",
            };
            writeln!(io.stdout, "{msg}")?;
            Ok(())
        }
        Cmd::History(a) => {
            let text = output_is_text(a)?;
            let (cd, _) = get_checked(store).await?;
            if text {
                write!(io.stdout, "{}", render_history_text(&cd))?;
            } else {
                writeln!(io.stdout, "{}", render_history_json(&cd)?)?;
            }
            Ok(())
        }
        _ => bail!("not an operations command"),
    }
}

fn output_is_text(a: &HistoryArgs) -> anyhow::Result<bool> {
    match a.format.as_str() {
        "" | "text" => Ok(true),
        "json" => Ok(false),
        other => bail!("unrecognised output format {other}"),
    }
}

/// The clusterdata `pause` (`paused` true) or `resume` (`paused` false) writes: the spec's
/// `paused` set to true, or removed. `None` when the cluster already is in that state.
pub fn set_paused(cd: &ClusterData, paused: bool) -> anyhow::Result<Option<ClusterData>> {
    let spec = cd
        .cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .ok_or_else(|| anyhow!("no cluster spec available"))?;
    if spec.is_paused() == paused {
        return Ok(None);
    }
    let mut new = spec.clone();
    new.paused = paused.then_some(true);
    ops::update_spec(cd, new).map(Some)
}

/// One history row as `history -f json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    /// RFC 3339 time of the election.
    pub time: String,
    /// `failed`, `switchover` or `forced`.
    pub reason: String,
    /// Old master DB UID.
    pub old_master_db_uid: String,
    /// Old master keeper UID.
    pub old_master_keeper_uid: String,
    /// New master DB UID.
    pub new_master_db_uid: String,
    /// New master keeper UID.
    pub new_master_keeper_uid: String,
    /// The old master's last WAL position as an LSN, `null` when unknown.
    pub old_master_last_lsn: Option<String>,
    /// Write pause in seconds, `null` when unknown.
    pub write_pause_seconds: Option<f64>,
}

/// The history rows, oldest first.
pub fn history_rows(cd: &ClusterData) -> Vec<HistoryRow> {
    cd.history
        .iter()
        .map(|h| HistoryRow {
            time: h.time.to_string(),
            reason: h.reason.as_str().to_string(),
            old_master_db_uid: h.old_master_db_uid.clone(),
            old_master_keeper_uid: h.old_master_keeper_uid.clone(),
            new_master_db_uid: h.new_master_db_uid.clone(),
            new_master_keeper_uid: h.new_master_keeper_uid.clone(),
            old_master_last_lsn: (h.old_master_xlog_pos != 0)
                .then(|| format_lsn(h.old_master_xlog_pos)),
            write_pause_seconds: h.write_pause.map(|d| d.to_std().as_secs_f64()),
        })
        .collect()
}

/// `history -f json`: the rows as a tab-indented JSON array.
pub fn render_history_json(cd: &ClusterData) -> anyhow::Result<String> {
    crate::json::tab_indented(&history_rows(cd))
}

/// `history` text form: a table, oldest first (ends with a newline).
pub fn render_history_text(cd: &ClusterData) -> String {
    let rows = history_rows(cd);
    if rows.is_empty() {
        return "No master changes recorded\n".to_string();
    }
    let mut tw = TabWriter::new();
    tw.line("TIME\tREASON\tOLD MASTER KEEPER\tOLD MASTER DB\tNEW MASTER KEEPER\tNEW MASTER DB\tOLD MASTER LAST LSN\tWRITE PAUSE");
    for r in rows {
        tw.line(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.time,
            r.reason,
            r.old_master_keeper_uid,
            r.old_master_db_uid,
            r.new_master_keeper_uid,
            r.new_master_db_uid,
            r.old_master_last_lsn.as_deref().unwrap_or("-"),
            r.write_pause_seconds
                .map_or_else(|| "-".to_string(), |s| format!("{s:.3}s")),
        ));
    }
    tw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stolon_core::duration::GoDuration;
    use stolon_core::model::{
        Cluster, ClusterInitMode, ClusterSpec, MasterChange, MasterChangeReason,
    };
    use stolon_core::timestamp::Timestamp;

    fn cd() -> ClusterData {
        let now = Timestamp::parse("2026-01-02T03:04:05Z").expect("time");
        ClusterData::new(
            Cluster {
                uid: "c1".into(),
                generation: 1,
                change_time: now,
                spec: Some(ClusterSpec::new_init(ClusterInitMode::New)),
                ..Default::default()
            },
            now,
        )
    }

    fn spec(cd: &ClusterData) -> &ClusterSpec {
        cd.cluster
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .expect("spec")
    }

    #[test]
    fn pause_sets_the_spec_field_and_resume_removes_it() {
        let c = cd();
        let paused = set_paused(&c, true).expect("ok").expect("a write");
        assert_eq!(spec(&paused).paused, Some(true));
        let mut expected = c.clone();
        expected
            .cluster
            .as_mut()
            .expect("c")
            .spec
            .as_mut()
            .expect("s")
            .paused = Some(true);
        assert_eq!(paused, expected);
        assert_eq!(set_paused(&paused, true).expect("ok"), None);
        let resumed = set_paused(&paused, false).expect("ok").expect("a write");
        assert_eq!(resumed, c);
        assert_eq!(set_paused(&c, false).expect("ok"), None);
    }

    #[test]
    fn pause_without_a_spec_is_refused() {
        let mut c = cd();
        c.cluster.as_mut().expect("c").spec = None;
        let e = set_paused(&c, true).expect_err("refused");
        assert_eq!(e.to_string(), "no cluster spec available");
    }

    fn with_history() -> ClusterData {
        let mut c = cd();
        c.history = vec![
            MasterChange {
                time: Timestamp::parse("2026-01-02T03:04:05Z").expect("time"),
                reason: MasterChangeReason::Failed,
                old_master_db_uid: "db1".into(),
                old_master_keeper_uid: "keeper0".into(),
                new_master_db_uid: "db2".into(),
                new_master_keeper_uid: "keeper1".into(),
                old_master_xlog_pos: 0x1_3000_0060,
                write_pause: None,
            },
            MasterChange {
                time: Timestamp::parse("2026-01-02T04:00:00.5Z").expect("time"),
                reason: MasterChangeReason::Switchover,
                old_master_db_uid: "db2".into(),
                old_master_keeper_uid: "keeper1".into(),
                new_master_db_uid: "db3".into(),
                new_master_keeper_uid: "keeper2".into(),
                old_master_xlog_pos: 0,
                write_pause: Some(GoDuration::from_std(std::time::Duration::from_millis(750))),
            },
        ];
        c
    }

    #[test]
    fn history_text_is_a_table_oldest_first() {
        assert_eq!(render_history_text(&cd()), "No master changes recorded\n");
        let text = render_history_text(&with_history());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[1]),
            [
                "2026-01-02T03:04:05Z",
                "failed",
                "keeper0",
                "db1",
                "keeper1",
                "db2",
                "1/30000060",
                "-"
            ]
        );
        assert_eq!(
            cols(lines[2]),
            [
                "2026-01-02T04:00:00.5Z",
                "switchover",
                "keeper1",
                "db2",
                "keeper2",
                "db3",
                "-",
                "0.750s"
            ]
        );
    }

    #[test]
    fn history_json_lists_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&render_history_json(&with_history()).expect("json"))
                .expect("valid json");
        assert_eq!(
            v,
            serde_json::json!([
                {
                    "time": "2026-01-02T03:04:05Z",
                    "reason": "failed",
                    "oldMasterDbUid": "db1",
                    "oldMasterKeeperUid": "keeper0",
                    "newMasterDbUid": "db2",
                    "newMasterKeeperUid": "keeper1",
                    "oldMasterLastLsn": "1/30000060",
                    "writePauseSeconds": null
                },
                {
                    "time": "2026-01-02T04:00:00.5Z",
                    "reason": "switchover",
                    "oldMasterDbUid": "db2",
                    "oldMasterKeeperUid": "keeper1",
                    "newMasterDbUid": "db3",
                    "newMasterKeeperUid": "keeper2",
                    "oldMasterLastLsn": null,
                    "writePauseSeconds": 0.75
                }
            ])
        );
        assert_eq!(render_history_json(&cd()).expect("json"), "[]");
    }
}
