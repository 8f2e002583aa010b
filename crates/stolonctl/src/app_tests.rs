//! Tests of [`super::run`] against the in-memory store (the real etcd runs in `tests/`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use stolon_core::model::{ClusterData, KeeperInfo, ProxyInfo, SentinelInfo};
use stolon_store::{ClusterDataRead, Election, MemStore, Revision, Store, StoreError};
use tokio::sync::watch;

use super::*;
use crate::cli;

struct Out {
    result: anyhow::Result<()>,
    stdout: String,
    stderr: String,
}

async fn run_cmd(store: &dyn Store, election: &dyn Election, args: &[&str], stdin: &str) -> Out {
    let mut argv = vec!["stolonctl"];
    argv.extend_from_slice(args);
    let cli = cli::parse(argv).expect("parse args");
    let cmd = cli.command.expect("a subcommand");
    let mut input = stdin.as_bytes();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut io = Io {
        stdin: &mut input,
        stdout: &mut stdout,
        stderr: &mut stderr,
    };
    let mut n = 0;
    let mut new_uid = || {
        n += 1;
        format!("0000000{n}")
    };
    let now = || Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
    let mut env = Env {
        new_uid: &mut new_uid,
        now: &now,
    };
    let result = run(&cmd, store, election, &mut io, &mut env).await;
    Out {
        result,
        stdout: String::from_utf8(stdout).expect("utf8"),
        stderr: String::from_utf8(stderr).expect("utf8"),
    }
}

fn raw(store: &MemStore) -> Option<Value> {
    store
        .kv()
        .raw_get(&store.layout().cluster_data())
        .map(|b| serde_json::from_slice(&b).expect("stored JSON"))
}

fn err(out: &Out) -> String {
    let e = out.result.as_ref().expect_err("expected a refusal");
    format!("{e:#}")
}

#[tokio::test]
async fn init_writes_a_fresh_cluster_after_confirmation() {
    let store = MemStore::new("c");
    let el = store.election();
    // "no" leaves the store untouched.
    let out = run_cmd(&store, &el, &["init"], "maybe\nno\n").await;
    out.result.unwrap();
    assert_eq!(
        out.stdout,
        "WARNING: The databases managed by the keepers will be overwritten depending on the provided cluster spec.\n\
         Are you sure you want to continue? [yes/no] Please enter 'yes' or 'no'\n\
         Are you sure you want to continue? [yes/no] exiting\n"
    );
    assert_eq!(raw(&store), None);

    let out = run_cmd(&store, &el, &["init"], "yes\n").await;
    out.result.unwrap();
    let v = raw(&store).expect("written");
    assert_eq!(v["formatVersion"], 1);
    assert_eq!(v["cluster"]["uid"], "00000001");
    assert_eq!(v["cluster"]["generation"], 1);
    assert_eq!(v["cluster"]["status"]["phase"], "initializing");
    assert_eq!(v["cluster"]["spec"], json!({"initMode": "new"}));

    // A second init warns that the current data goes, and replaces it (new uid).
    let out = run_cmd(
        &store,
        &el,
        &["init", "-y", r#"{"initMode":"new","maxStandbys":2}"#],
        "",
    )
    .await;
    out.result.unwrap();
    assert!(
        out.stdout
            .starts_with("WARNING: The current cluster data will be removed\n")
    );
    let v = raw(&store).expect("written");
    assert_eq!(
        v["cluster"]["spec"],
        json!({"initMode": "new", "maxStandbys": 2})
    );

    // End of input at the prompt is a refusal.
    let out = run_cmd(&store, &el, &["init"], "").await;
    assert_eq!(err(&out), "error reading input: EOF");
}

#[tokio::test]
async fn init_refusals_write_nothing() {
    let store = MemStore::new("c");
    let el = store.election();
    let out = run_cmd(&store, &el, &["init", "-y", "{}", "{}"], "").await;
    assert_eq!(err(&out), "too many arguments");
    let out = run_cmd(&store, &el, &["init", "-y", "{"], "").await;
    assert!(err(&out).starts_with("failed to unmarshal cluster spec: "));
    let out = run_cmd(
        &store,
        &el,
        &["init", "-y", r#"{"initMode":"new","role":"standby"}"#],
        "",
    )
    .await;
    assert_eq!(
        err(&out),
        "invalid cluster spec: invalid cluster role standby when initMode is \"new\""
    );
    let out = run_cmd(
        &store,
        &el,
        &["init", "-y", "-f", "/nonexistent/spec.json"],
        "",
    )
    .await;
    assert!(err(&out).starts_with("cannot read file: /nonexistent/spec.json: "));
    assert_eq!(raw(&store), None);
    // -f - reads the spec from stdin.
    let out = run_cmd(
        &store,
        &el,
        &["init", "-y", "-f", "-"],
        r#"{"initMode":"new","usePgrewind":true}"#,
    )
    .await;
    out.result.unwrap();
    assert_eq!(raw(&store).unwrap()["cluster"]["spec"]["usePgrewind"], true);
}

#[tokio::test]
async fn update_patch_spec_and_refusals() {
    let store = MemStore::new("c");
    let el = store.election();
    // Missing cluster.
    let out = run_cmd(&store, &el, &["update", "--patch", "{}"], "").await;
    assert_eq!(err(&out), "nil cluster data");
    run_cmd(&store, &el, &["init", "-y"], "")
        .await
        .result
        .unwrap();

    let out = run_cmd(
        &store,
        &el,
        &["update", "-p", r#"{"synchronousReplication":true}"#],
        "",
    )
    .await;
    out.result.unwrap();
    let out = run_cmd(&store, &el, &["spec"], "").await;
    assert_eq!(
        out.stdout,
        "{\n\t\"synchronousReplication\": true,\n\t\"initMode\": \"new\"\n}\n"
    );
    run_cmd(
        &store,
        &el,
        &["update", "-p", r#"{"pgParameters":{"work_mem":"8MB"}}"#],
        "",
    )
    .await
    .result
    .unwrap();
    assert_eq!(
        raw(&store).unwrap()["cluster"]["spec"]["pgParameters"],
        json!({"work_mem": "8MB"})
    );
    run_cmd(
        &store,
        &el,
        &["update", "-p", r#"{"pgParameters":{"work_mem":null}}"#],
        "",
    )
    .await
    .result
    .unwrap();
    // The key is gone; the (now empty) map stays, as the merge patch leaves it.
    assert_eq!(
        raw(&store).unwrap()["cluster"]["spec"]["pgParameters"],
        json!({})
    );

    let before = raw(&store);
    for (args, want) in [
        (
            vec!["update", "-p", r#"{"initMode":"existing","existingConfig":{"keeperUID":"k"}}"#],
            "Cannot update cluster spec: cannot change cluster init mode".to_string(),
        ),
        (
            vec!["update", "-p", r#"{"maxStandbys":0}"#],
            "Cannot update cluster spec: invalid cluster spec: maxStandbys must be at least 1"
                .to_string(),
        ),
        (vec!["update"], "no cluster spec provided as argument and no file provided (--file/-f option)".to_string()),
        (
            vec!["update", "-f", "x", "{}"],
            "only one of cluster spec provided as argument or file must provided (--file/-f option)"
                .to_string(),
        ),
        (vec!["update", "{}", "{}"], "too many arguments".to_string()),
    ] {
        let out = run_cmd(&store, &el, &args, "").await;
        assert_eq!(err(&out), want, "{args:?}");
    }
    let out = run_cmd(&store, &el, &["update", "-p", "{bad"], "").await;
    assert!(
        err(&out).starts_with("failed to patch cluster spec: "),
        "{}",
        err(&out)
    );
    assert_eq!(raw(&store), before, "refusals write nothing");

    // Full replace from stdin: unspecified fields go back to unset.
    run_cmd(
        &store,
        &el,
        &["update", "-f", "-"],
        r#"{"initMode":"new","maxStandbys":4}"#,
    )
    .await
    .result
    .unwrap();
    assert_eq!(
        raw(&store).unwrap()["cluster"]["spec"],
        json!({"initMode": "new", "maxStandbys": 4})
    );
    let out = run_cmd(&store, &el, &["spec", "--defaults"], "").await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["maxStandbys"], 4);
    assert_eq!(v["maxStandbyLag"], 1048576);
    assert_eq!(v.as_object().unwrap().len(), 23);
}

/// A store whose first `conflicts` compare-and-swaps lose; later ones go through.
struct Conflicting {
    inner: MemStore,
    conflicts: usize,
    cas: AtomicUsize,
}

#[async_trait]
impl Store for Conflicting {
    async fn get_cluster_data(&self) -> Result<ClusterDataRead, StoreError> {
        self.inner.get_cluster_data().await
    }
    async fn put_cluster_data(
        &self,
        cd: &ClusterData,
        expected: Option<&Revision>,
    ) -> Result<Revision, StoreError> {
        if self.cas.fetch_add(1, Ordering::SeqCst) < self.conflicts {
            return Err(StoreError::Conflict);
        }
        self.inner.put_cluster_data(cd, expected).await
    }
    async fn force_put_cluster_data(&self, cd: &ClusterData) -> Result<Revision, StoreError> {
        self.inner.force_put_cluster_data(cd).await
    }
    async fn put_keeper_info(&self, info: &KeeperInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_keeper_info(info, ttl).await
    }
    async fn delete_keeper_info(&self, uid: &str) -> Result<(), StoreError> {
        self.inner.delete_keeper_info(uid).await
    }
    async fn get_keepers_info(&self) -> Result<BTreeMap<String, KeeperInfo>, StoreError> {
        self.inner.get_keepers_info().await
    }
    async fn put_sentinel_info(
        &self,
        info: &SentinelInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.put_sentinel_info(info, ttl).await
    }
    async fn get_sentinels_info(&self) -> Result<Vec<SentinelInfo>, StoreError> {
        self.inner.get_sentinels_info().await
    }
    async fn put_proxy_info(&self, info: &ProxyInfo, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_proxy_info(info, ttl).await
    }
    async fn get_proxies_info(&self) -> Result<BTreeMap<String, ProxyInfo>, StoreError> {
        self.inner.get_proxies_info().await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }
}

#[tokio::test]
async fn update_retries_conflicts_up_to_three_times() {
    for (conflicts, ok) in [(0, true), (2, true), (3, false)] {
        let mem = MemStore::new("c");
        let el = mem.election();
        run_cmd(&mem, &el, &["init", "-y"], "")
            .await
            .result
            .unwrap();
        let store = Conflicting {
            inner: mem,
            conflicts,
            cas: AtomicUsize::new(0),
        };
        let out = run_cmd(
            &store,
            &el,
            &["update", "-p", r#"{"usePgrewind":true}"#],
            "",
        )
        .await;
        let attempts = store.cas.load(Ordering::SeqCst);
        let stored = raw(&store.inner).unwrap()["cluster"]["spec"]["usePgrewind"].clone();
        if ok {
            out.result.unwrap();
            assert_eq!(attempts, conflicts + 1);
            assert_eq!(stored, true);
        } else {
            assert_eq!(err(&out), "failed to update cluster data after 3 retries");
            assert_eq!(attempts, 3);
            assert_eq!(stored, Value::Null);
        }
    }
}

/// failkeeper and removekeeper re-read and re-apply on a conflict (a sentinel writing between
/// the read and the write), like `update`; Stolon gives up at the first conflict.
#[tokio::test]
async fn keeper_commands_retry_conflicts_up_to_three_times() {
    for cmd in ["failkeeper", "removekeeper"] {
        for (conflicts, ok) in [(1, true), (2, true), (3, false)] {
            let mem = MemStore::new("c");
            let el = mem.election();
            mem.force_put_cluster_data(&testdata_cd()).await.unwrap();
            let before = raw(&mem).unwrap();
            let store = Conflicting {
                inner: mem,
                conflicts,
                cas: AtomicUsize::new(0),
            };
            let out = run_cmd(&store, &el, &[cmd, "keeper2"], "").await;
            let attempts = store.cas.load(Ordering::SeqCst);
            let after = raw(&store.inner).unwrap();
            if ok {
                out.result.unwrap();
                assert_eq!(attempts, conflicts + 1, "{cmd}");
                let keeper = &after["keepers"]["keeper2"];
                match cmd {
                    "failkeeper" => assert_eq!(keeper["status"]["forceFail"], true),
                    _ => assert!(keeper.is_null(), "{cmd}: keeper2 still there"),
                }
            } else {
                assert_eq!(err(&out), "failed to update cluster data after 3 retries");
                assert_eq!(attempts, 3, "{cmd}");
                assert_eq!(after, before, "{cmd}: a failed command changed clusterdata");
            }
        }
    }
}

fn testdata_cd() -> ClusterData {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../stolon-core/testdata/clusterdata-stolon.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("testdata")).expect("parse")
}

#[tokio::test]
async fn keeper_commands_and_promote() {
    let store = MemStore::new("c");
    let el = store.election();
    store.force_put_cluster_data(&testdata_cd()).await.unwrap();
    let before = raw(&store).unwrap();

    for (args, want) in [
        (vec!["failkeeper"], "keeper uid required"),
        (vec!["failkeeper", "a", "b"], "too many arguments"),
        (vec!["failkeeper", "nope"], "keeper doesn't exist"),
        (vec!["removekeeper", "nope"], "keeper doesn't exist"),
        (
            vec!["removekeeper", "keeper0"],
            "keeper assigned db is the current cluster master db.",
        ),
        (vec!["promote", "x"], "too many arguments"),
    ] {
        let out = run_cmd(&store, &el, &args, "").await;
        assert_eq!(err(&out), want, "{args:?}");
    }
    assert_eq!(raw(&store).unwrap(), before);

    run_cmd(&store, &el, &["failkeeper", "keeper2"], "")
        .await
        .result
        .unwrap();
    let v = raw(&store).unwrap();
    assert_eq!(v["keepers"]["keeper2"]["status"]["forceFail"], true);
    let mut back = v.clone();
    back["keepers"]["keeper2"]["status"]
        .as_object_mut()
        .unwrap()
        .remove("forceFail");
    assert_eq!(back, before, "only forceFail changed");

    run_cmd(&store, &el, &["removekeeper", "keeper2"], "")
        .await
        .result
        .unwrap();
    let v = raw(&store).unwrap();
    assert!(v["keepers"].get("keeper2").is_none());
    assert!(v["dbs"].get("db2c2c2c").is_none());
    assert!(v["dbs"].get("db1b1b1b").is_some());

    // Already master: a notice on stderr, success, nothing written.
    let before = raw(&store).unwrap();
    let out = run_cmd(&store, &el, &["promote", "-y"], "").await;
    out.result.unwrap();
    assert_eq!(out.stderr, "cluster spec role already set to master\n");
    assert_eq!(raw(&store).unwrap(), before);

    // A standby cluster: refused at the prompt, then promoted.
    let mut cd = testdata_cd();
    let spec = cd.cluster.as_mut().unwrap().spec.as_mut().unwrap();
    spec.role = Some(stolon_core::model::ClusterRole::Standby);
    spec.pitr_config.as_mut().unwrap().recovery_target_settings = None;
    store.force_put_cluster_data(&cd).await.unwrap();
    let out = run_cmd(&store, &el, &["promote"], "no\n").await;
    out.result.unwrap();
    assert!(out.stdout.ends_with("exiting\n"));
    assert_eq!(raw(&store).unwrap()["cluster"]["spec"]["role"], "standby");
    run_cmd(&store, &el, &["promote"], "yes\n")
        .await
        .result
        .unwrap();
    assert_eq!(raw(&store).unwrap()["cluster"]["spec"]["role"], "master");
}

#[tokio::test]
async fn clusterdata_write_and_read() {
    let store = MemStore::new("c");
    let el = store.election();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../stolon-core/testdata/clusterdata-stolon.json"
    );
    let original: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let out = run_cmd(&store, &el, &["clusterdata", "write", "-f", path], "").await;
    out.result.unwrap();
    assert_eq!(
        out.stdout,
        "successfully wrote cluster data into the new store\n"
    );
    let out = run_cmd(&store, &el, &["clusterdata", "read"], "").await;
    out.result.unwrap();
    assert_eq!(out.stdout.lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        original
    );
    let out = run_cmd(&store, &el, &["clusterdata", "read", "--pretty"], "").await;
    assert!(out.stdout.starts_with("{\n\t\"formatVersion\": 1,\n"));
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        original
    );

    // Overwrite needs --yes; stdin is the default input.
    let text = std::fs::read_to_string(path).unwrap();
    let out = run_cmd(&store, &el, &["clusterdata", "write"], &text).await;
    assert_eq!(
        err(&out),
        "WARNING: cluster data already available use --yes to override"
    );
    let out = run_cmd(
        &store,
        &el,
        &["clusterdata", "write", "-y", "-f", "-"],
        &text,
    )
    .await;
    out.result.unwrap();
    assert_eq!(
        out.stdout,
        "WARNING: The current cluster data will be removed\nsuccessfully wrote cluster data into the new store\n"
    );
    let out = run_cmd(
        &store,
        &el,
        &["clusterdata", "write", "-y"],
        "{\"formatVersion\":",
    )
    .await;
    assert!(err(&out).starts_with("invalid cluster data: "));
    assert_eq!(raw(&store).unwrap(), original);

    // read -f writes a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cd.json");
    let out = run_cmd(
        &store,
        &el,
        &["clusterdata", "read", "-f", file.to_str().unwrap()],
        "",
    )
    .await;
    out.result.unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, original);
}

#[tokio::test]
async fn status_from_infos_and_election() {
    let store = MemStore::new("c");
    let el = store.election();
    store.force_put_cluster_data(&testdata_cd()).await.unwrap();
    let ttl = Duration::from_secs(60);
    for uid in ["s2", "s1"] {
        store
            .put_sentinel_info(
                &SentinelInfo {
                    uid: uid.into(),
                    ..Default::default()
                },
                ttl,
            )
            .await
            .unwrap();
    }
    store
        .put_proxy_info(
            &ProxyInfo {
                uid: "p1".into(),
                generation: 12,
                ..Default::default()
            },
            ttl,
        )
        .await
        .unwrap();
    let mut rx = el.campaign("s2").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l))
        .await
        .expect("elected in time")
        .unwrap();

    let out = run_cmd(&store, &el, &["status", "-f", "json"], "").await;
    out.result.unwrap();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["sentinels"],
        json!([{"uid": "s1", "leader": false}, {"uid": "s2", "leader": true}])
    );
    assert_eq!(v["proxies"], json!([{"uid": "p1", "generation": 12}]));
    assert_eq!(
        v["cluster"],
        json!({"available": true, "master_keeper_uid": "keeper0", "master_db_uid": "db0a0a0a"})
    );
    assert_eq!(v["keepers"][0]["listen_address"], "10.0.0.1:5432");

    let out = run_cmd(&store, &el, &["status"], "").await;
    out.result.unwrap();
    assert!(out.stdout.contains("s2\ttrue\n"), "{}", out.stdout);
    assert!(out.stdout.contains("Master Keeper: keeper0\n"));
    assert!(
        out.stdout
            .contains("keeper0 (master)\n├─keeper1\n└─keeper2\n"),
        "{}",
        out.stdout
    );
    let out = run_cmd(&store, &el, &["status", "-f", "yaml"], "").await;
    assert_eq!(err(&out), "unrecognised output format yaml");
    el.resign().await.unwrap();
}

#[tokio::test]
async fn init_if_absent_creates_once_and_never_overwrites() {
    let store = MemStore::new("c");
    let el = store.election();
    // Nothing there: written without a prompt.
    let out = run_cmd(
        &store,
        &el,
        &["init", "--if-absent", r#"{"initMode":"new"}"#],
        "",
    )
    .await;
    out.result.unwrap();
    assert_eq!(out.stdout, "cluster data initialised\n");
    let first = raw(&store).expect("written");
    assert_eq!(first["cluster"]["uid"], "00000001");
    assert_eq!(first["cluster"]["spec"], json!({"initMode": "new"}));

    // There already: left exactly as it was, exit status 0, whatever the spec says.
    let out = run_cmd(
        &store,
        &el,
        &[
            "init",
            "--if-absent",
            r#"{"initMode":"new","maxStandbys":2}"#,
        ],
        "",
    )
    .await;
    out.result.unwrap();
    assert_eq!(
        out.stdout,
        "cluster data already present: left unchanged (--if-absent)\n"
    );
    assert_eq!(raw(&store), Some(first));

    // Undecodable data is left alone too (plain init -y would replace it).
    store
        .kv()
        .raw_put(&store.layout().cluster_data(), b"{not json");
    let out = run_cmd(&store, &el, &["init", "--if-absent"], "").await;
    out.result.unwrap();
    assert_eq!(
        store.kv().raw_get(&store.layout().cluster_data()),
        Some(b"{not json".to_vec())
    );

    // A bad spec is refused before the store is touched; --yes makes no sense with it.
    let empty = MemStore::new("c");
    let out = run_cmd(&empty, &el, &["init", "--if-absent", "{"], "").await;
    assert!(err(&out).starts_with("failed to unmarshal cluster spec: "));
    assert_eq!(raw(&empty), None);
    assert!(cli::parse(["stolonctl", "init", "--if-absent", "-y"]).is_err());
}

#[tokio::test]
async fn pause_resume_status_and_history() {
    let store = MemStore::new("c");
    let el = store.election();
    run_cmd(&store, &el, &["init", "-y"], "")
        .await
        .result
        .unwrap();
    let first_line = |out: &Out| out.stdout.lines().next().unwrap_or("").to_string();

    let out = run_cmd(&store, &el, &["status"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(first_line(&out), "=== Active sentinels ===");

    let out = run_cmd(&store, &el, &["pause"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(
        out.stdout,
        "cluster paused: no automatic failover until `stolonctl resume`\n"
    );
    assert_eq!(
        raw(&store).unwrap()["cluster"]["spec"]["paused"],
        json!(true)
    );
    let out = run_cmd(&store, &el, &["pause"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(out.stdout, "cluster already paused\n");

    let out = run_cmd(&store, &el, &["status"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(first_line(&out), crate::operations::PAUSED_LINE);
    let out = run_cmd(&store, &el, &["status", "-f", "json"], "").await;
    out.result.as_ref().unwrap();
    let lines: Vec<&str> = out.stdout.lines().take(2).collect();
    assert_eq!(lines, ["{", "\t\"paused\": true,"]);

    let out = run_cmd(&store, &el, &["resume"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(out.stdout, "cluster resumed: automatic failover enabled\n");
    assert_eq!(raw(&store).unwrap()["cluster"]["spec"].get("paused"), None);
    let out = run_cmd(&store, &el, &["resume"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(out.stdout, "cluster not paused\n");
    let out = run_cmd(&store, &el, &["status", "-f", "json"], "").await;
    out.result.as_ref().unwrap();
    assert!(!out.stdout.contains("paused"), "{}", out.stdout);

    let out = run_cmd(&store, &el, &["pause", "now"], "").await;
    assert_eq!(err(&out), "too many arguments");

    let out = run_cmd(&store, &el, &["history"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(out.stdout, "No master changes recorded\n");
    let out = run_cmd(&store, &el, &["history", "--format", "json"], "").await;
    out.result.as_ref().unwrap();
    assert_eq!(out.stdout, "[]\n");
    let out = run_cmd(&store, &el, &["history", "-f", "yaml"], "").await;
    assert_eq!(err(&out), "unrecognised output format yaml");
}

#[tokio::test]
async fn pause_without_cluster_data_is_refused_with_one_line() {
    let store = MemStore::new("c");
    let el = store.election();
    let out = run_cmd(&store, &el, &["pause"], "").await;
    assert_eq!(err(&out), "nil cluster data");
    assert_eq!(raw(&store), None);
}
