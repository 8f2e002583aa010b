//! The stolonctl binary against a real etcd, on the points where a Stolon user would notice a
//! difference: JSON keys matched like Go's decoder, `--store-prefix` joined like Go's
//! `path.Join`, `register`, and Stolon's texts.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Puts `value` at `key` with etcdctl, bypassing stolon-rs (a document another tool wrote).
fn raw_put(etcd: &EtcdServer, key: &str, value: &str) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "--command-timeout",
            "10s",
            "put",
            key,
            value,
        ])
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_are_matched_like_go_in_init_update_clusterdata_and_store_reads() {
    let etcd = etcd();
    // Stolon's standby documentation spells the key `primaryConnInfo`.
    let spec = r#"{"initMode":"new","SleepInterval":"2s","standbyConfig":{"standbySettings":{"primaryConnInfo":"host=a"}}}"#;
    ctl(&etcd, "c", &["init", "-y", spec], "").ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"],
        json!({"initMode": "new", "sleepInterval": "2s",
               "standbyConfig": {"standbySettings": {"primaryConninfo": "host=a"}}})
    );

    // A patch key matching a field case-insensitively patches that field.
    let patch = r#"{"StandbyConfig":{"standbySettings":{"PRIMARYCONNINFO":"host=b","primarySlotName":"s"}}}"#;
    ctl(&etcd, "c", &["update", "-p", patch], "").ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"]["standbyConfig"],
        json!({"standbySettings": {"primaryConninfo": "host=b", "primarySlotName": "s"}})
    );
    let patch = r#"{"standbyconfig":{"standbySettings":{"primaryConnInfo":null}}}"#;
    ctl(&etcd, "c", &["update", "--patch", patch], "").ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"]["standbyConfig"],
        json!({"standbySettings": {"primarySlotName": "s"}})
    );
    // A full update too.
    ctl(
        &etcd,
        "c",
        &["update", r#"{"INITMODE":"new","maxStandbys":4}"#],
        "",
    )
    .ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"],
        json!({"initMode": "new", "maxStandbys": 4})
    );

    // clusterdata write: capitalised keys at every level are stored under the real names.
    let text = std::fs::read_to_string(testdata("clusterdata-stolon.json")).expect("testdata");
    let original: Value = serde_json::from_str(&text).expect("json");
    let shouted = text
        .replacen("\"formatVersion\"", "\"FormatVersion\"", 1)
        .replacen("\"cluster\"", "\"Cluster\"", 1)
        .replace("\"healthy\"", "\"Healthy\"");
    assert_ne!(shouted, text);
    ctl(&etcd, "d", &["clusterdata", "write"], &shouted).ok();
    pretty_assertions::assert_eq!(raw_cd(&etcd, "d").expect("d"), original);

    // A clusterdata another tool wrote with other key spellings is read as Go would read it.
    raw_put(
        &etcd,
        "stolon/cluster/e/clusterdata",
        r#"{"FormatVersion":1,"Cluster":{"UID":"abcd","Generation":1,"Spec":{"InitMode":"new","MaxStandbys":7},"Status":{"Phase":"normal"}},"Keepers":{},"DBs":{}}"#,
    );
    let out = ctl(&etcd, "e", &["spec"], "");
    assert_eq!(
        out.ok(),
        "{\n\t\"maxStandbys\": 7,\n\t\"initMode\": \"new\"\n}\n"
    );
}

#[test]
fn unknown_enum_values_get_stolons_validation_message() {
    let etcd = etcd();
    let out = ctl(&etcd, "c", &["init", "-y", r#"{"initMode":"bogus"}"#], "");
    assert_eq!(
        out.refused(),
        r#"invalid cluster spec: unknown initMode: "bogus""#
    );
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), None);
    let out = ctl(
        &etcd,
        "c",
        &[
            "init",
            "-y",
            r#"{"initMode":"new","defaultSUReplAccessMode":"some"}"#,
        ],
        "",
    );
    assert_eq!(
        out.refused(),
        r#"invalid cluster spec: unknown defaultSUReplAccessMode: "some""#
    );
}

#[test]
fn store_prefix_is_joined_like_go_path_join() {
    let etcd = etcd();
    ctl(&etcd, "c", &["--store-prefix=", "init", "-y"], "").ok();
    assert!(
        raw_key(&etcd, "c/clusterdata").is_some(),
        "an empty prefix: no leading slash"
    );
    assert_eq!(raw_key(&etcd, "/c/clusterdata"), None);

    ctl(&etcd, "d", &["--store-prefix", "a//b/", "init", "-y"], "").ok();
    assert!(raw_key(&etcd, "a/b/d/clusterdata").is_some());
    // Every spelling Go joins to the same path finds that cluster.
    for prefix in ["a/b", "a/./b", "a/x/../b//"] {
        let out = ctl(&etcd, "d", &["--store-prefix", prefix, "spec"], "");
        assert_eq!(out.ok(), "{\n\t\"initMode\": \"new\"\n}\n", "{prefix}");
    }
    let out = ctl(&etcd, "d", &["--store-prefix", "a", "spec"], "");
    assert_eq!(out.refused(), "nil cluster data");
}

#[test]
fn register_has_stolons_flags_and_refuses_in_one_line() {
    let base = [
        "--cluster-name",
        "c",
        "--store-backend",
        "etcdv3",
        "register",
    ];
    let all_flags = [
        "--register-backend",
        "consul",
        "--register-endpoints",
        "http://127.0.0.1:8500",
        "--register-cert-file",
        "",
        "--register-key",
        "",
        "--register-skip-tls-verify",
        "--register-ca-file",
        "",
        "--register-master",
        "--tag-master-as",
        "master,primary",
        "--tag-slave-as",
        "slave",
        "--debug",
        "--sleep-interval",
        "5",
    ];
    let args: Vec<&str> = base.iter().chain(all_flags.iter()).copied().collect();
    let out = stolonctl(&args, &[], "");
    assert_eq!(
        out.refused(),
        r#"register: Consul service registration is not supported by stolon-rs (register backend "consul")"#
    );
    let out = stolonctl(
        &[&base[..], &["--register-backend", "zk"]].concat(),
        &[],
        "",
    );
    assert_eq!(out.refused(), r#"unknown register backend: "zk""#);
    let out = stolonctl(
        &[
            &base[..],
            &["--register-endpoints", "http://a:1,http://b:1"],
        ]
        .concat(),
        &[],
        "",
    );
    assert_eq!(
        out.refused(),
        "consul does not support multiple endpoints: http://a:1,http://b:1"
    );
    // The common flags are checked first, as by Stolon.
    let out = stolonctl(&["register"], &[], "");
    assert_eq!(out.refused(), "cluster name required");
}

#[test]
fn texts_match_stolon() {
    for args in [&["--version"][..], &["version"][..]] {
        let out = stolonctl(args, &[], "");
        assert_eq!(
            out.ok(),
            format!("stolonctl version v{}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    let out = stolonctl(
        &[
            "--cluster-name",
            "c",
            "--store-backend",
            "zookeeper",
            "spec",
        ],
        &[],
        "",
    );
    assert_eq!(out.refused(), r#"Unknown store backend: "zookeeper""#);

    let etcd = etcd();
    // No clusterdata: status in both formats and spec fail with Stolon's text.
    for args in [
        &["status"][..],
        &["status", "-f", "json"][..],
        &["spec"][..],
    ] {
        let out = ctl(&etcd, "c", args, "");
        assert_eq!(out.refused(), "nil cluster data", "{args:?}");
        assert_eq!(out.stdout, "", "{args:?}");
    }

    // `spec` omits an empty pgParameters and additionalMasterReplicationSlots, as Stolon does;
    // an empty pgHBA ("no extra rules") is kept.
    let spec =
        r#"{"initMode":"new","pgParameters":{},"additionalMasterReplicationSlots":[],"pgHBA":[]}"#;
    ctl(&etcd, "c", &["init", "-y", spec], "").ok();
    assert_eq!(
        ctl(&etcd, "c", &["spec"], "").ok(),
        "{\n\t\"initMode\": \"new\",\n\t\"pgHBA\": []\n}\n"
    );

    // --store-timeout 0 is accepted, as by Go, with a warning.
    let out = ctl(&etcd, "c", &["--store-timeout", "0", "spec"], "");
    out.ok();
    assert!(
        out.stderr.starts_with("WARNING: --store-timeout \"0\"") && out.stderr.lines().count() == 1,
        "{out:?}"
    );

    // promote without -y on a master cluster asks first, then says it is already master.
    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata");
    let out = ctl(&etcd, "c", &["promote"], "yes\n");
    assert_eq!(out.ok(), "Are you sure you want to continue? [yes/no] ");
    assert_eq!(out.stderr, "cluster spec role already set to master\n");
    // End of input at the prompt fails at once.
    let out = ctl(&etcd, "c", &["promote"], "");
    assert_eq!(out.refused(), "error reading input: EOF");
    assert_eq!(out.stdout, "Are you sure you want to continue? [yes/no] ");
    let out = ctl(&etcd, "c", &["init"], "maybe\n");
    assert_eq!(out.refused(), "error reading input: EOF");
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), before);
}
