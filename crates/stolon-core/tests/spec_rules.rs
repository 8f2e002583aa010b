//! Cluster spec rules: defaults (`with_defaults`), every validation rule of docs/architecture.md §5
//! and every update rule of §5 with Stolon's message, and Go duration strings in specs.

use serde_json::{Value, json};
use stolon_core::GoDuration;
use stolon_core::model::{ClusterInitMode, ClusterRole, ClusterSpec, SuReplAccessMode};

fn spec(v: Value) -> ClusterSpec {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("parse {v}: {e}"))
}

/// The validation message for `v`, or "" when valid.
fn check(v: Value) -> String {
    match spec(v).validate() {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn with(base: Value, extra: Value) -> Value {
    let mut b = base;
    let (Value::Object(m), Value::Object(e)) = (&mut b, extra) else {
        panic!("objects expected")
    };
    m.extend(e);
    b
}

fn new_spec() -> Value {
    json!({"initMode": "new"})
}

#[test]
fn with_defaults_lists_every_defaulted_field() {
    let d = spec(new_spec()).with_defaults();
    let want = json!({
        "sleepInterval": "5s",
        "requestTimeout": "10s",
        "convergenceTimeout": "30s",
        "initTimeout": "5m0s",
        "syncTimeout": "0s",
        "dbWaitReadyTimeout": "1m0s",
        "failInterval": "20s",
        "deadKeeperRemovalInterval": "48h0m0s",
        "proxyCheckInterval": "5s",
        "proxyTimeout": "15s",
        "maxStandbys": 20,
        "maxStandbysPerSender": 3,
        "maxStandbyLag": 1048576,
        "synchronousReplication": false,
        "minSynchronousStandbys": 1,
        "maxSynchronousStandbys": 1,
        "additionalWalSenders": 5,
        "usePgrewind": false,
        "initMode": "new",
        "mergePgParameters": true,
        "role": "master",
        "defaultSUReplAccessMode": "all",
        "automaticPgRestart": false
    });
    pretty_assertions::assert_eq!(serde_json::to_value(&d).expect("ser"), want);

    // Key order is Stolon's struct order (what `stolonctl spec --defaults` prints).
    let text = serde_json::to_string(&d).expect("ser");
    let keys: Vec<&str> = want
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\"")).expect("key present"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");

    // The effective view agrees.
    let e = spec(new_spec()).effective();
    assert_eq!(e.max_standby_lag, 1_048_576);
    assert_eq!(e.sleep_interval, GoDuration::from_secs(5));
    assert_eq!(
        e.dead_keeper_removal_interval,
        GoDuration::from_secs(48 * 3600)
    );
    assert_eq!(e.role, ClusterRole::Master);
    assert_eq!(e.default_su_repl_access_mode, SuReplAccessMode::All);
    assert!(e.merge_pg_parameters);
    assert!(!e.sync_repl());
}

#[test]
fn with_defaults_keeps_specified_values() {
    let s = spec(json!({
        "initMode": "new",
        "sleepInterval": "1s",
        "maxStandbyLag": 7,
        "synchronousReplication": true,
        "mergePgParameters": false,
        "defaultSUReplAccessMode": "strict",
        "pgHBA": [],
        "automaticPgRestart": true
    }));
    let v = serde_json::to_value(s.with_defaults()).expect("ser");
    assert_eq!(v["sleepInterval"], "1s");
    assert_eq!(v["maxStandbyLag"], 7);
    assert_eq!(v["synchronousReplication"], true);
    assert_eq!(v["mergePgParameters"], false);
    assert_eq!(v["defaultSUReplAccessMode"], "strict");
    assert_eq!(v["pgHBA"], json!([]));
    assert_eq!(v["automaticPgRestart"], true);
    // Defaults are applied on a copy: the spec itself is unchanged.
    assert_eq!(s.proxy_timeout, None);
}

#[test]
fn minimal_and_full_specs_are_valid() {
    assert_eq!(check(new_spec()), "");
    // The testdata spec (every field set) validates.
    let path = format!(
        "{}/testdata/clusterdata-stolon.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let cd: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    assert_eq!(check(cd["cluster"]["spec"].clone()), "");
    // minSynchronousStandbys may be 0.
    assert_eq!(
        check(with(new_spec(), json!({"minSynchronousStandbys": 0}))),
        ""
    );
}

#[test]
fn rule_1_durations_must_not_be_negative() {
    for name in [
        "sleepInterval",
        "requestTimeout",
        "convergenceTimeout",
        "initTimeout",
        "syncTimeout",
        "dbWaitReadyTimeout",
        "failInterval",
        "deadKeeperRemovalInterval",
        "proxyCheckInterval",
        "proxyTimeout",
    ] {
        let mut extra = serde_json::Map::new();
        extra.insert(name.to_string(), json!("-1s"));
        assert_eq!(
            check(with(new_spec(), Value::Object(extra))),
            format!("{name} must be positive")
        );
    }
    // Zero is allowed (syncTimeout 0 = unbounded).
    assert_eq!(check(with(new_spec(), json!({"syncTimeout": "0s"}))), "");
}

#[test]
fn rule_2_proxy_check_interval_below_proxy_timeout() {
    let msg = "proxyCheckInterval should be less than proxyTimeout";
    assert_eq!(
        check(with(new_spec(), json!({"proxyCheckInterval": "15s"}))),
        msg
    );
    assert_eq!(check(with(new_spec(), json!({"proxyTimeout": "4s"}))), msg);
    assert_eq!(
        check(with(
            new_spec(),
            json!({"proxyCheckInterval": "1s", "proxyTimeout": "2s"})
        )),
        ""
    );
}

#[test]
fn rule_3_standby_counts() {
    assert_eq!(
        check(with(new_spec(), json!({"maxStandbys": 0}))),
        "maxStandbys must be at least 1"
    );
    assert_eq!(
        check(with(new_spec(), json!({"maxStandbysPerSender": 0}))),
        "maxStandbysPerSender must be at least 1"
    );
    assert_eq!(
        check(with(new_spec(), json!({"maxSynchronousStandbys": 0}))),
        "maxSynchronousStandbys must be at least 1"
    );
    assert_eq!(
        check(with(
            new_spec(),
            json!({"minSynchronousStandbys": 3, "maxSynchronousStandbys": 2})
        )),
        "maxSynchronousStandbys must be greater or equal to minSynchronousStandbys"
    );
    assert_eq!(
        check(with(new_spec(), json!({"minSynchronousStandbys": 2}))),
        "maxSynchronousStandbys must be greater or equal to minSynchronousStandbys",
        "default max (1) is below min 2"
    );
}

#[test]
fn rule_4_init_mode_and_slot_names() {
    assert_eq!(check(json!({})), "initMode undefined");
    assert_eq!(
        check(with(
            new_spec(),
            json!({"additionalMasterReplicationSlots": ["good_1", "Bad-Slot"]})
        )),
        "wrong replication slot name: \"Bad-Slot\""
    );
    assert_eq!(
        check(with(
            new_spec(),
            json!({"additionalMasterReplicationSlots": [""]})
        )),
        "wrong replication slot name: \"\""
    );
    assert_eq!(
        check(with(
            new_spec(),
            json!({"additionalMasterReplicationSlots": ["stolon_x"]})
        )),
        "replication slot name is reserved: \"stolon_x\""
    );
    assert_eq!(
        check(with(
            new_spec(),
            json!({"additionalMasterReplicationSlots": ["stolonx", "a_1"]})
        )),
        ""
    );
}

#[test]
fn rule_5_pg_hba_lines_have_no_newline() {
    assert_eq!(
        check(with(
            new_spec(),
            json!({"pgHBA": ["host all all 0.0.0.0/0 md5\nhost all all ::0/0 md5"]})
        )),
        "pgHBA entries cannot contain newline characters"
    );
    assert_eq!(
        check(with(
            new_spec(),
            json!({"pgHBA": ["host all all 0.0.0.0/0 md5"]})
        )),
        ""
    );
}

#[test]
fn rule_6_init_mode_requirements() {
    let standby_config = json!({"standbySettings": {"primaryConninfo": "host=h"}});
    assert_eq!(
        check(json!({"initMode": "new", "role": "standby", "standbyConfig": standby_config})),
        "invalid cluster role standby when initMode is \"new\""
    );
    assert_eq!(
        check(json!({"initMode": "existing"})),
        "existingConfig undefined. Required when initMode is \"existing\""
    );
    assert_eq!(
        check(json!({"initMode": "existing", "existingConfig": {}})),
        "existingConfig.keeperUID undefined"
    );
    assert_eq!(
        check(json!({"initMode": "existing", "existingConfig": {"keeperUID": "k1"}})),
        ""
    );
    assert_eq!(
        check(json!({"initMode": "pitr"})),
        "pitrConfig undefined. Required when initMode is \"pitr\""
    );
    assert_eq!(
        check(json!({"initMode": "pitr", "pitrConfig": {}})),
        "pitrConfig.DataRestoreCommand undefined"
    );
    assert_eq!(
        check(json!({
            "initMode": "pitr",
            "role": "standby",
            "standbyConfig": standby_config,
            "pitrConfig": {"dataRestoreCommand": "x", "recoveryTargetSettings": {"recoveryTarget": "immediate"}}
        })),
        "cannot define pitrConfig.RecoveryTargetSettings when required cluster role is standby"
    );
    assert_eq!(
        check(json!({
            "initMode": "pitr",
            "role": "standby",
            "standbyConfig": standby_config,
            "pitrConfig": {"dataRestoreCommand": "x"}
        })),
        ""
    );
    // An unknown initMode cannot even be parsed; the error names the value.
    let e = serde_json::from_value::<ClusterSpec>(json!({"initMode": "clone"}))
        .expect_err("unknown initMode");
    assert!(e.to_string().contains("clone"), "{e}");
}

#[test]
fn rule_7_access_mode_and_role() {
    assert_eq!(
        check(
            json!({"initMode": "existing", "existingConfig": {"keeperUID": "k1"}, "role": "standby"})
        ),
        "standbyConfig undefined. Required when cluster role is \"standby\""
    );
    assert_eq!(
        check(json!({
            "initMode": "existing",
            "existingConfig": {"keeperUID": "k1"},
            "role": "standby",
            "standbyConfig": {}
        })),
        ""
    );
    for (key, bad) in [("defaultSUReplAccessMode", "some"), ("role", "leader")] {
        let mut v = new_spec();
        v[key] = json!(bad);
        let e = serde_json::from_value::<ClusterSpec>(v).expect_err("unknown value");
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn update_rules() {
    let old = spec(new_spec());
    // A valid change is accepted.
    old.check_update(&spec(
        json!({"initMode": "new", "synchronousReplication": true}),
    ))
    .expect("valid update");
    // New spec must validate, with the validation message wrapped.
    assert_eq!(
        old.check_update(&spec(json!({"initMode": "new", "maxStandbys": 0})))
            .expect_err("invalid")
            .to_string(),
        "invalid cluster spec: maxStandbys must be at least 1"
    );
    // initMode cannot change.
    assert_eq!(
        old.check_update(&spec(
            json!({"initMode": "existing", "existingConfig": {"keeperUID": "k"}})
        ))
        .expect_err("init mode change")
        .to_string(),
        "cannot change cluster init mode"
    );
    // master -> standby is refused (unset role defaults to master on both sides).
    let existing_master =
        spec(json!({"initMode": "existing", "existingConfig": {"keeperUID": "k"}}));
    let existing_standby = spec(json!({
        "initMode": "existing",
        "existingConfig": {"keeperUID": "k"},
        "role": "standby",
        "standbyConfig": {}
    }));
    assert_eq!(
        existing_master
            .check_update(&existing_standby)
            .expect_err("master to standby")
            .to_string(),
        "cannot update a cluster from master role to standby role"
    );
    // standby -> master is a promotion: allowed.
    existing_standby
        .check_update(&existing_master)
        .expect("promote");
    // standby -> standby allowed.
    existing_standby
        .check_update(&existing_standby)
        .expect("unchanged");
    let _ = ClusterInitMode::New;
}

#[test]
fn go_durations_in_specs() {
    let s = spec(json!({
        "initMode": "new",
        "sleepInterval": "2h45m",
        "requestTimeout": "300ms",
        "convergenceTimeout": "1.5s",
        "initTimeout": "90s",
        "syncTimeout": "0",
        "failInterval": "1m",
        "dbWaitReadyTimeout": "10us",
        "deadKeeperRemovalInterval": "1h0m0.5s"
    }));
    assert_eq!(
        s.sleep_interval,
        Some(GoDuration::from_secs(2 * 3600 + 45 * 60))
    );
    assert_eq!(s.request_timeout, Some(GoDuration::from_millis(300)));
    let v = serde_json::to_value(&s).expect("ser");
    assert_eq!(v["sleepInterval"], "2h45m0s");
    assert_eq!(v["requestTimeout"], "300ms");
    assert_eq!(v["convergenceTimeout"], "1.5s");
    assert_eq!(v["initTimeout"], "1m30s");
    assert_eq!(v["syncTimeout"], "0s");
    assert_eq!(v["failInterval"], "1m0s");
    assert_eq!(v["dbWaitReadyTimeout"], "10µs");
    assert_eq!(v["deadKeeperRemovalInterval"], "1h0m0.5s");
    // What we write parses back to the same spec.
    assert_eq!(spec(v), s);

    for bad in ["5", "five seconds", "", "5d", "1h-5m"] {
        let r =
            serde_json::from_value::<ClusterSpec>(json!({"initMode": "new", "sleepInterval": bad}));
        assert!(r.is_err(), "{bad:?} must be refused");
    }
    // A number is not a duration (Go's Duration unmarshals strings only).
    assert!(
        serde_json::from_value::<ClusterSpec>(json!({"initMode": "new", "sleepInterval": 5}))
            .is_err()
    );
}

#[test]
fn quorum_commit_is_opt_in_round_trips_and_is_ignored_without_synchronous_replication() {
    // Off when unset, and not printed by `with_defaults` (like the other non-Stolon fields).
    let d = spec(new_spec());
    assert!(!d.effective().quorum_commit);
    assert!(!d.effective().quorum());
    let v = serde_json::to_value(d.with_defaults()).expect("ser");
    assert!(v.get("quorumCommit").is_none(), "{v}");

    // Set: kept under its exact name, through the Go-like decoder too.
    let s = spec(json!({
        "initMode": "new",
        "synchronousReplication": true,
        "minSynchronousStandbys": 1,
        "maxSynchronousStandbys": 2,
        "quorumCommit": true
    }));
    assert_eq!(s.quorum_commit, Some(true));
    let v = serde_json::to_value(&s).expect("ser");
    assert_eq!(v["quorumCommit"], true);
    let back: ClusterSpec = stolon_core::model::json::from_value(v).expect("decode");
    assert_eq!(back, s);
    assert_eq!(check(serde_json::to_value(&s).expect("ser")), "");
    let e = s.effective();
    assert!(e.quorum());
    assert_eq!(e.quorum_size(), 1);

    // k is max(1, minSynchronousStandbys).
    let e = spec(json!({"initMode": "new", "synchronousReplication": true,
        "minSynchronousStandbys": 0, "maxSynchronousStandbys": 2, "quorumCommit": true}))
    .effective();
    assert_eq!(e.quorum_size(), 1);
    let e = spec(json!({"initMode": "new", "synchronousReplication": true,
        "minSynchronousStandbys": 2, "maxSynchronousStandbys": 3, "quorumCommit": true}))
    .effective();
    assert_eq!(e.quorum_size(), 2);

    // Without synchronous replication it is valid and has no effect.
    let v = with(new_spec(), json!({"quorumCommit": true}));
    assert_eq!(check(v.clone()), "");
    assert!(!spec(v).effective().quorum());
    // Nor in a standby cluster, where synchronous replication is not in force.
    let s = spec(
        json!({"initMode": "pitr", "role": "standby", "synchronousReplication": true,
        "quorumCommit": true, "pitrConfig": {"dataRestoreCommand": "x"}, "standbyConfig": {}}),
    );
    assert!(!s.effective().quorum());
}
