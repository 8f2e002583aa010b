//! `stolonctl switchover [--to KEEPER] [--timeout D] [-y]` (docs/switchover.md): checks that a
//! switchover can start now (the same pure check the leader sentinel runs), asks for
//! confirmation, writes the request into clusterdata by compare-and-swap, then waits for the
//! sentinel's outcome and prints it in one line.
//!
//! A refusal is one line, a non-zero exit and no write.

use std::time::Duration;

use anyhow::{anyhow, bail};
use stolon_core::duration::GoDuration;
use stolon_core::model::{ClusterData, Switchover, SwitchoverPhase};
use stolon_core::sentinel::keeper_of;
use stolon_core::sentinel::switchover::switchover_target;
use stolon_store::{Store, StoreError};

use crate::app::{Env, Io};
use crate::cli::SwitchoverArgs;
use crate::confirm;

/// Compare-and-swap attempts of the request. More than the other commands' three: the leader
/// sentinel rewrites clusterdata often while a cluster settles (health times, synchronous
/// standbys), and each attempt re-runs the whole check on what it read.
const CAS_ATTEMPTS: usize = 20;

/// How often the outcome is polled.
const POLL: Duration = Duration::from_millis(200);
/// How long to wait for the outcome beyond `--timeout` (the proxies' handshake after the
/// promotion is not bounded by it).
const GRACE: Duration = Duration::from_secs(60);

/// The request to write: `cd` with a new switchover record, or the one-line refusal.
pub fn request(
    cd: &ClusterData,
    to: &str,
    timeout: GoDuration,
    uid: String,
    now: stolon_core::Timestamp,
) -> anyhow::Result<ClusterData> {
    switchover_target(cd, to).map_err(|e| anyhow!(e))?;
    let mut next = cd.clone();
    next.switchover = Some(Switchover::request(uid, to.to_string(), timeout, now));
    Ok(next)
}

/// The keeper running `db` in `cd` (or the DB UID when unknown).
fn keeper_name(cd: &ClusterData, db: &str) -> String {
    cd.dbs
        .get(db)
        .map(|d| keeper_of(d).to_string())
        .unwrap_or_else(|| db.to_string())
}

/// The outcome of switchover `uid` as read in `cd`: `None` while in progress.
pub fn outcome(cd: &ClusterData, uid: &str) -> Option<anyhow::Result<String>> {
    let Some(sw) = cd.switchover.as_ref().filter(|s| s.uid == uid) else {
        return Some(Err(anyhow!(
            "switchover {uid}: the request is no longer in the cluster data"
        )));
    };
    match sw.phase {
        SwitchoverPhase::Completed => Some(Ok(format!(
            "switchover completed: keeper {} is the master (was keeper {}), old master's final WAL position {:X}/{:X}",
            keeper_name(cd, &sw.target_db),
            keeper_name(cd, &sw.old_master_db),
            sw.final_xlog_pos >> 32,
            sw.final_xlog_pos & 0xffff_ffff
        ))),
        SwitchoverPhase::Failed => Some(Err(anyhow!("switchover failed: {}", sw.reason))),
        _ => None,
    }
}

/// Runs the command.
pub async fn run(
    a: &SwitchoverArgs,
    store: &dyn Store,
    io: &mut Io<'_>,
    env: &mut Env<'_>,
) -> anyhow::Result<()> {
    if !a.args.is_empty() {
        bail!("too many arguments");
    }
    let timeout = GoDuration::parse(&a.timeout)
        .map_err(|e| anyhow!("invalid --timeout {:?}: {e}", a.timeout))?;
    if timeout.0 <= 0 {
        bail!("invalid --timeout {:?}: must be positive", a.timeout);
    }
    let uid = (env.new_uid)();
    // Check first, so a refusal needs no confirmation.
    let (cd, _) = crate::app::get_checked(store).await?;
    let target = switchover_target(&cd, &a.to).map_err(|e| anyhow!(e))?;
    writeln!(
        io.stdout,
        "WARNING: the master on keeper {} will be stopped and keeper {} promoted; new connections wait meanwhile",
        cd.master_db().map(keeper_of).unwrap_or(""),
        keeper_name(&cd, &target)
    )?;
    if !a.yes && !confirm::ask(io.stdin, io.stdout, confirm::PROMPT)? {
        writeln!(io.stdout, "exiting")?;
        return Ok(());
    }
    let mut written = false;
    for _ in 0..CAS_ATTEMPTS {
        let (cd, rev) = crate::app::get_checked(store).await?;
        let next = request(&cd, &a.to, timeout, uid.clone(), (env.now)())?;
        match store.put_cluster_data(&next, Some(&rev)).await {
            Ok(_) => {
                written = true;
                break;
            }
            Err(StoreError::Conflict) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => bail!("cannot update cluster data: {e}"),
        }
    }
    if !written {
        bail!("failed to update cluster data after {CAS_ATTEMPTS} attempts");
    }
    let polls = (timeout.to_std() + GRACE).as_millis() / POLL.as_millis();
    let mut phase = SwitchoverPhase::Requested;
    for _ in 0..polls {
        tokio::time::sleep(POLL).await;
        let cd = match store.get_cluster_data().await {
            Ok(r) => r.data,
            // Transient store errors: the sentinel goes on; keep waiting.
            Err(_) => continue,
        };
        let Some(cd) = cd else { continue };
        if let Some(sw) = cd.switchover.as_ref().filter(|s| s.uid == uid) {
            phase = sw.phase;
        }
        if let Some(done) = outcome(&cd, &uid) {
            let line = done?;
            writeln!(io.stdout, "{line}")?;
            return Ok(());
        }
    }
    bail!(
        "switchover {uid} still in progress (phase {}) after {}; see stolonctl status",
        phase.as_str(),
        GoDuration::from_std(timeout.to_std() + GRACE)
    )
}

#[cfg(test)]
mod tests {
    use stolon_core::Timestamp;
    use stolon_core::sentinel::testing::{ClusterFixture, db_uid};
    use stolon_store::MemStore;

    use super::*;
    use crate::cli;

    async fn run_cmd(store: &MemStore, args: &[&str], stdin: &str) -> (anyhow::Result<()>, String) {
        let mut argv = vec!["stolonctl", "switchover"];
        argv.extend_from_slice(args);
        let cli = cli::parse(argv).expect("parse args");
        let Some(cli::Cmd::Switchover(a)) = cli.command else {
            panic!("switchover")
        };
        let mut input = stdin.as_bytes();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut io = Io {
            stdin: &mut input,
            stdout: &mut stdout,
            stderr: &mut stderr,
        };
        let mut new_uid = || "sw000001".to_string();
        let now = || Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let mut env = Env {
            new_uid: &mut new_uid,
            now: &now,
        };
        let r = run(&a, store, &mut io, &mut env).await;
        (r, String::from_utf8(stdout).expect("utf8"))
    }

    async fn store_with(cd: &ClusterData) -> MemStore {
        let store = MemStore::new("c");
        store.force_put_cluster_data(cd).await.expect("put");
        store
    }

    async fn read(store: &MemStore) -> ClusterData {
        store
            .get_cluster_data()
            .await
            .expect("get")
            .data
            .expect("clusterdata")
    }

    fn cluster() -> ClusterFixture {
        ClusterFixture::new().master("k1").standby("k2").proxy("p1")
    }

    #[tokio::test]
    async fn refusals_are_one_line_and_write_nothing() {
        let f = cluster().can_be_master("k2", false);
        let store = store_with(&f.cd).await;
        for (args, line) in [
            (
                vec!["--to", "k2", "-y"],
                "cannot switch over: keeper k2: keeper cannot be master",
            ),
            (
                vec!["--to", "k9", "-y"],
                "cannot switch over: keeper k9 does not exist",
            ),
            (
                vec!["--timeout", "soon", "-y"],
                "invalid --timeout \"soon\": invalid duration \"soon\"",
            ),
            (vec!["x"], "too many arguments"),
        ] {
            let (r, _) = run_cmd(&store, &args, "").await;
            assert_eq!(format!("{:#}", r.expect_err("refused")), line, "{args:?}");
            assert_eq!(read(&store).await, f.cd, "{args:?}");
        }
        // "no" at the prompt writes nothing either.
        let f = cluster();
        let store = store_with(&f.cd).await;
        let (r, out) = run_cmd(&store, &[], "no\n").await;
        r.expect("declined");
        assert!(out.ends_with("exiting\n"), "{out}");
        assert_eq!(read(&store).await, f.cd);
    }

    #[tokio::test]
    async fn writes_the_request_and_prints_the_sentinels_outcome() {
        let f = cluster();
        let store = std::sync::Arc::new(store_with(&f.cd).await);
        // A stand-in for the leader sentinel: completes the request once it sees it.
        let sentinel = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let read = store.get_cluster_data().await.expect("get");
                    let (Some(mut cd), Some(rev)) = (read.data, read.revision) else {
                        continue;
                    };
                    let Some(sw) = cd.switchover.as_mut() else {
                        continue;
                    };
                    assert_eq!(sw.phase, SwitchoverPhase::Requested);
                    assert_eq!(sw.uid, "sw000001");
                    assert_eq!(sw.timeout, GoDuration::from_secs(10));
                    sw.phase = SwitchoverPhase::Completed;
                    sw.target_db = db_uid("k2");
                    sw.old_master_db = db_uid("k1");
                    sw.final_xlog_pos = 0x1_0000_0028;
                    store.put_cluster_data(&cd, Some(&rev)).await.expect("put");
                    return;
                }
                panic!("no request written");
            })
        };
        let (r, out) = run_cmd(&store, &["--timeout", "10s"], "yes\n").await;
        r.expect("completed");
        sentinel.await.expect("sentinel task");
        assert_eq!(
            out,
            "WARNING: the master on keeper k1 will be stopped and keeper k2 promoted; new connections wait meanwhile\n\
             Are you sure you want to continue? [yes/no] \
             switchover completed: keeper k2 is the master (was keeper k1), old master's final WAL position 1/28\n"
        );
    }

    #[tokio::test]
    async fn a_failed_switchover_is_a_one_line_error() {
        let mut f = cluster();
        let mut sw = Switchover::request(
            "sw1".into(),
            String::new(),
            GoDuration::from_secs(1),
            Timestamp::zero(),
        );
        sw.phase = SwitchoverPhase::Failed;
        sw.reason = "timed out after 1s in phase stopping".into();
        f.cd.switchover = Some(sw);
        let e = outcome(&f.cd, "sw1").expect("done").expect_err("failed");
        assert_eq!(
            e.to_string(),
            "switchover failed: timed out after 1s in phase stopping"
        );
        assert!(outcome(&f.cd, "other").expect("done").is_err());
    }
}
