//! Wire-format tests of the shared model: documents written in Stolon's exact JSON format (the
//! files in `testdata/`) parse, and re-serialise to an equivalent JSON value.
//!
//! The one deliberate difference from Stolon's Go encoder: in a cluster spec, a key whose value is
//! unset is omitted, where Go writes `null` for the four spec fields without `omitempty`
//! (`additionalWalSenders`, `additionalMasterReplicationSlots`, `pgHBA`, `automaticPgRestart`). A
//! missing key parses back as unset, so nothing is lost; `spec_null_keys_are_omitted` pins it.

use serde_json::{Value, json};
use stolon_core::model::{
    ClusterData, ClusterPhase, ClusterSpec, DbInitMode, DbRole, FollowType, KeeperInfo, ProxyInfo,
    SentinelInfo,
};

fn testdata(name: &str) -> String {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn raw(name: &str) -> Value {
    serde_json::from_str(&testdata(name)).expect("testdata is JSON")
}

/// Every object key path in `v` (`a.b.c`, array elements as `[]`, map keys of keepers/dbs as `*`).
fn key_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let seg = if prefix == "keepers" || prefix == "dbs" {
                    "*"
                } else {
                    k.as_str()
                };
                let p = if prefix.is_empty() {
                    seg.to_string()
                } else {
                    format!("{prefix}.{seg}")
                };
                out.insert(p.clone());
                key_paths(child, &p, out);
            }
        }
        Value::Array(a) => {
            for child in a {
                key_paths(child, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn clusterdata_testdata_round_trips_to_an_equivalent_value() {
    let original = raw("clusterdata-stolon.json");
    let cd: ClusterData = serde_json::from_value(original.clone()).expect("parse clusterdata");
    let back = serde_json::to_value(&cd).expect("serialise clusterdata");
    pretty_assertions::assert_eq!(back, original);

    // And the text form parses to the same model again.
    let text = serde_json::to_string(&cd).expect("to string");
    let again: ClusterData = serde_json::from_str(&text).expect("reparse");
    assert_eq!(again, cd);
}

#[test]
fn clusterdata_testdata_parses_into_the_right_fields() {
    let cd: ClusterData =
        serde_json::from_str(&testdata("clusterdata-stolon.json")).expect("parse");
    assert_eq!(cd.format_version, 1);
    let cluster = cd.cluster.as_ref().expect("cluster");
    assert_eq!(cluster.uid, "66613766");
    assert_eq!(cluster.status.phase, Some(ClusterPhase::Normal));
    assert_eq!(cluster.status.master, "db0a0a0a");
    let k1 = &cd.keepers["keeper1"];
    assert!(k1.status.force_fail);
    assert_eq!(k1.status.can_be_master, Some(false));
    assert_eq!(k1.status.postgres_binary_version.maj, 15);
    assert_eq!(cd.keepers["keeper2"].status.can_be_master, None);
    assert!(cd.keepers["keeper2"].status.last_healthy_time.is_zero());

    let db0 = &cd.dbs["db0a0a0a"];
    let spec0 = db0.spec.as_ref().expect("db0 spec");
    assert_eq!(spec0.role, Some(DbRole::Master));
    assert_eq!(spec0.init_mode, Some(DbInitMode::Pitr));
    assert_eq!(spec0.pg_hba, Some(vec![]), "pgHBA [] stays [] (not null)");
    assert_eq!(spec0.request_timeout.to_string(), "10s");
    assert_eq!(
        db0.status.system_id, "7275403539734175423",
        "systemdID (sic)"
    );
    assert_eq!(db0.status.timelines_history.len(), 2);
    assert_eq!(db0.status.timelines_history[1].switch_point, 50331744);

    let spec1 = cd.dbs["db1b1b1b"].spec.as_ref().expect("db1 spec");
    assert_eq!(spec1.pg_hba, None, "pgHBA null stays null");
    assert_eq!(spec1.request_timeout.to_string(), "1m30s");
    let fc = spec1.follow_config.as_ref().expect("follow config");
    assert_eq!(fc.kind, Some(FollowType::Internal));
    assert_eq!(fc.db_uid, "db0a0a0a");

    let spec2 = cd.dbs["db2c2c2c"].spec.as_ref().expect("db2 spec");
    assert_eq!(spec2.init_mode, Some(DbInitMode::None));
    let fc2 = spec2.follow_config.as_ref().expect("follow config");
    assert_eq!(fc2.kind, Some(FollowType::External));
    assert_eq!(
        fc2.standby_settings
            .as_ref()
            .map(|s| s.primary_slot_name.as_str()),
        Some("stolon_db2c2c2c")
    );

    let proxy = cd.proxy.as_ref().expect("proxy");
    assert_eq!(proxy.generation, 12);
    assert_eq!(proxy.spec.enabled_proxies, ["proxy1", "proxy2"]);

    // The document is usable (format 1, valid spec) and structurally consistent.
    cd.check_usable().expect("usable");
    cd.validate().expect("consistent");
}

#[test]
fn clusterdata_testdata_has_every_key_of_the_format() {
    // Every key that Stolon's format version 1 defines (docs/architecture.md §4.4) appears in the
    // test document, so the round trip above covers all of them.
    let mut paths = std::collections::BTreeSet::new();
    key_paths(&raw("clusterdata-stolon.json"), "", &mut paths);
    let spec_fields = [
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
        "maxStandbys",
        "maxStandbysPerSender",
        "maxStandbyLag",
        "synchronousReplication",
        "minSynchronousStandbys",
        "maxSynchronousStandbys",
        "additionalWalSenders",
        "additionalMasterReplicationSlots",
        "usePgrewind",
        "initMode",
        "mergePgParameters",
        "role",
        "newConfig.locale",
        "newConfig.encoding",
        "newConfig.dataChecksums",
        "pitrConfig.dataRestoreCommand",
        "pitrConfig.archiveRecoverySettings.restoreCommand",
        "pitrConfig.recoveryTargetSettings.recoveryTarget",
        "pitrConfig.recoveryTargetSettings.recoveryTargetLsn",
        "pitrConfig.recoveryTargetSettings.recoveryTargetName",
        "pitrConfig.recoveryTargetSettings.recoveryTargetTime",
        "pitrConfig.recoveryTargetSettings.recoveryTargetXid",
        "pitrConfig.recoveryTargetSettings.recoveryTargetTimeline",
        "existingConfig.keeperUID",
        "standbyConfig.standbySettings.primaryConninfo",
        "standbyConfig.standbySettings.primarySlotName",
        "standbyConfig.standbySettings.recoveryMinApplyDelay",
        "standbyConfig.archiveRecoverySettings.restoreCommand",
        "defaultSUReplAccessMode",
        "pgParameters",
        "pgHBA",
        "automaticPgRestart",
    ];
    let mut want: Vec<String> = [
        "formatVersion",
        "changeTime",
        "cluster.uid",
        "cluster.generation",
        "cluster.changeTime",
        "cluster.status.currentGeneration",
        "cluster.status.phase",
        "cluster.status.master",
        "keepers.*.uid",
        "keepers.*.generation",
        "keepers.*.changeTime",
        "keepers.*.spec",
        "keepers.*.status.healthy",
        "keepers.*.status.lastHealthyTime",
        "keepers.*.status.bootUUID",
        "keepers.*.status.postgresBinaryVersion.Maj",
        "keepers.*.status.postgresBinaryVersion.Min",
        "keepers.*.status.forceFail",
        "keepers.*.status.canBeMaster",
        "keepers.*.status.canBeSynchronousReplica",
        "dbs.*.uid",
        "dbs.*.generation",
        "dbs.*.changeTime",
        "dbs.*.spec.keeperUID",
        "dbs.*.spec.requestTimeout",
        "dbs.*.spec.maxStandbys",
        "dbs.*.spec.synchronousReplication",
        "dbs.*.spec.usePgrewind",
        "dbs.*.spec.additionalWalSenders",
        "dbs.*.spec.additionalReplicationSlots",
        "dbs.*.spec.initMode",
        "dbs.*.spec.newConfig.locale",
        "dbs.*.spec.newConfig.encoding",
        "dbs.*.spec.pitrConfig.dataRestoreCommand",
        "dbs.*.spec.pitrConfig.archiveRecoverySettings.restoreCommand",
        "dbs.*.spec.pitrConfig.recoveryTargetSettings.recoveryTargetTime",
        "dbs.*.spec.pgParameters",
        "dbs.*.spec.pgHBA",
        "dbs.*.spec.role",
        "dbs.*.spec.followConfig.type",
        "dbs.*.spec.followConfig.dbuid",
        "dbs.*.spec.followConfig.standbySettings.primaryConninfo",
        "dbs.*.spec.followConfig.standbySettings.primarySlotName",
        "dbs.*.spec.followConfig.standbySettings.recoveryMinApplyDelay",
        "dbs.*.spec.followConfig.archiveRecoverySettings.restoreCommand",
        "dbs.*.spec.followers",
        "dbs.*.spec.includePreviousConfig",
        "dbs.*.spec.synchronousStandbys",
        "dbs.*.spec.externalSynchronousStandbys",
        "dbs.*.status.healthy",
        "dbs.*.status.currentGeneration",
        "dbs.*.status.listenAddress",
        "dbs.*.status.port",
        "dbs.*.status.systemdID",
        "dbs.*.status.timelineID",
        "dbs.*.status.xLogPos",
        "dbs.*.status.timelinesHistory[].timelineID",
        "dbs.*.status.timelinesHistory[].switchPoint",
        "dbs.*.status.timelinesHistory[].reason",
        "dbs.*.status.pgParameters",
        "dbs.*.status.synchronousStandbys",
        "dbs.*.status.olderWalFile",
        "proxy.uid",
        "proxy.generation",
        "proxy.changeTime",
        "proxy.spec.masterDbUid",
        "proxy.spec.enabledProxies",
        "proxy.status",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.extend(spec_fields.iter().map(|f| format!("cluster.spec.{f}")));
    let missing: Vec<&String> = want.iter().filter(|p| !paths.contains(*p)).collect();
    assert!(missing.is_empty(), "testdata lacks keys: {missing:?}");
}

#[test]
fn clusterdata_null_and_missing_collections() {
    // Go decodes null maps as empty; keepers/dbs null parse.
    let cd: ClusterData = serde_json::from_value(json!({
        "formatVersion": 1,
        "changeTime": "0001-01-01T00:00:00Z",
        "cluster": null,
        "keepers": null,
        "dbs": null,
        "proxy": null
    }))
    .expect("parse");
    assert!(cd.keepers.is_empty() && cd.dbs.is_empty());
    assert!(cd.cluster.is_none());
    assert!(cd.check_usable().is_err());

    // Format version is checked by check_usable with Stolon's message.
    let mut cd2: ClusterData =
        serde_json::from_str(&testdata("clusterdata-stolon.json")).expect("parse");
    cd2.format_version = 2;
    assert_eq!(
        cd2.check_usable().expect_err("v2").to_string(),
        "unsupported clusterdata format version 2"
    );
}

#[test]
fn spec_null_keys_are_omitted() {
    // The deliberate difference: Go writes these four keys as null when unset; we omit them.
    let with_nulls = json!({
        "initMode": "new",
        "additionalWalSenders": null,
        "additionalMasterReplicationSlots": null,
        "pgHBA": null,
        "automaticPgRestart": null
    });
    let spec: ClusterSpec = serde_json::from_value(with_nulls).expect("parse");
    assert_eq!(
        spec,
        ClusterSpec::new_init(stolon_core::model::ClusterInitMode::New)
    );
    assert_eq!(
        serde_json::to_value(&spec).expect("ser"),
        json!({"initMode": "new"})
    );
    // pgHBA [] is not null: kept.
    let spec: ClusterSpec =
        serde_json::from_value(json!({"initMode": "new", "pgHBA": []})).expect("parse");
    assert_eq!(spec.pg_hba, Some(vec![]));
    assert_eq!(
        serde_json::to_value(&spec).expect("ser"),
        json!({"initMode": "new", "pgHBA": []})
    );
}

#[test]
fn keeper_info_round_trips_with_stolons_keys() {
    let original = raw("keeperinfo-stolon.json");
    let ki: KeeperInfo = serde_json::from_value(original.clone()).expect("parse keeper info");
    assert_eq!(ki.info_uid, "a1b2c3d4");
    assert_eq!(ki.cluster_uid, "66613766");
    assert_eq!(ki.can_be_synchronous_replica, Some(false));
    let ps = ki.postgres_state.as_ref().expect("postgres state");
    assert_eq!(ps.system_id, "7275403539734175423", "systemID here");
    assert_eq!(ps.xlog_pos, 50331744);
    assert_eq!(ps.synchronous_standbys, Some(vec!["db1b1b1b".to_string()]));
    pretty_assertions::assert_eq!(serde_json::to_value(&ki).expect("ser"), original);
}

#[test]
fn sentinel_and_proxy_infos_use_capitalised_keys() {
    let original = raw("sentinelinfo-stolon.json");
    let si: SentinelInfo = serde_json::from_value(original.clone()).expect("parse sentinel info");
    assert_eq!(si.uid, "2051827f");
    assert_eq!(serde_json::to_value(&si).expect("ser"), original);

    let original = raw("proxyinfo-stolon.json");
    let pi: ProxyInfo = serde_json::from_value(original.clone()).expect("parse proxy info");
    assert_eq!(pi.uid, "fc6b8f04");
    assert_eq!(pi.generation, 43);
    assert_eq!(pi.proxy_timeout, 15_000_000_000, "nanoseconds");
    assert_eq!(serde_json::to_value(&pi).expect("ser"), original);
    assert!(!pi.fences_from_check_start, "a Stolon proxy has no mark");
}

#[test]
fn proxy_info_fence_mark_is_camel_case_and_omitted_when_false() {
    let mut pi = ProxyInfo {
        info_uid: "a1".into(),
        uid: "p1".into(),
        generation: 3,
        proxy_timeout: 15_000_000_000,
        fences_from_check_start: true,
    };
    let v = serde_json::to_value(&pi).expect("ser");
    assert_eq!(v["fencesFromCheckStart"], serde_json::Value::Bool(true));
    let back: ProxyInfo = serde_json::from_value(v).expect("parse");
    assert_eq!(back, pi);
    pi.fences_from_check_start = false;
    let v = serde_json::to_value(&pi).expect("ser");
    assert!(v.get("fencesFromCheckStart").is_none(), "{v}");
}
