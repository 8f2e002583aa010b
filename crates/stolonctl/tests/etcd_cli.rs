//! The stolonctl binary against a real etcd: init, spec, update, env and TLS flags, clusterdata
//! write and read, plus failkeeper, removekeeper, promote and status on a hand-written
//! clusterdata.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use stolon_core::model::{ProxyInfo, SentinelInfo};

#[test]
fn init_writes_formatversion_uid_phase_and_default_spec() {
    let etcd = etcd();
    let out = ctl(&etcd, "c", &["init", "-y"], "");
    assert_eq!(
        out.ok(),
        "WARNING: The databases managed by the keepers will be overwritten depending on the provided cluster spec.\n"
    );
    let raw = raw_key(&etcd, "stolon/cluster/c/clusterdata").expect("clusterdata written");
    let v: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(v["formatVersion"], 1);
    let uid = v["cluster"]["uid"].as_str().expect("uid");
    assert!(
        uid.len() == 8
            && uid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{uid}"
    );
    assert_eq!(v["cluster"]["generation"], 1);
    assert_eq!(v["cluster"]["status"]["phase"], "initializing");
    assert_eq!(v["cluster"]["spec"], json!({"initMode": "new"}));
    assert_eq!(v["keepers"], json!({}));
    assert_eq!(v["dbs"], json!({}));

    // Init again: warned, confirmed through the prompt, a new cluster uid.
    let out = ctl(&etcd, "c", &["init"], "yes please\nyes\n");
    assert_eq!(
        out.ok(),
        "WARNING: The current cluster data will be removed\n\
         WARNING: The databases managed by the keepers will be overwritten depending on the provided cluster spec.\n\
         Are you sure you want to continue? [yes/no] Please enter 'yes' or 'no'\n\
         Are you sure you want to continue? [yes/no] "
    );
    let v2 = raw_cd(&etcd, "c").expect("clusterdata");
    assert_ne!(
        v2["cluster"]["uid"], v["cluster"]["uid"],
        "a new cluster uid"
    );

    // Answering no writes nothing.
    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata");
    let out = ctl(
        &etcd,
        "c",
        &["init", r#"{"initMode":"new","maxStandbys":3}"#],
        "no\n",
    );
    assert!(out.ok().ends_with("exiting\n"));
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), before);

    // A spec from a file and from stdin.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spec.json");
    std::fs::write(&file, r#"{"initMode":"new","sleepInterval":"2s"}"#).expect("write spec");
    ctl(
        &etcd,
        "d",
        &["init", "-y", "-f", file.to_str().expect("path")],
        "",
    )
    .ok();
    assert_eq!(
        raw_cd(&etcd, "d").expect("d")["cluster"]["spec"],
        json!({"initMode": "new", "sleepInterval": "2s"})
    );
    ctl(
        &etcd,
        "e",
        &["init", "-y", "-f", "-"],
        r#"{"initMode":"new","usePgrewind":true}"#,
    )
    .ok();
    assert_eq!(
        raw_cd(&etcd, "e").expect("e")["cluster"]["spec"]["usePgrewind"],
        true
    );

    // Refusals write nothing.
    let out = ctl(&etcd, "f", &["init", "-y", "{}", "{}"], "");
    assert_eq!(out.refused(), "too many arguments");
    let out = ctl(
        &etcd,
        "f",
        &["init", "-y", r#"{"initMode":"new","maxStandbys":0}"#],
        "",
    );
    assert_eq!(
        out.refused(),
        "invalid cluster spec: maxStandbys must be at least 1"
    );
    let out = ctl(&etcd, "f", &["init", "-y", "{oops"], "");
    assert!(
        out.refused()
            .starts_with("failed to unmarshal cluster spec: ")
    );
    assert_eq!(raw_cd(&etcd, "f"), None);
}

#[test]
fn spec_defaults_lists_every_field_with_its_default() {
    let etcd = etcd();
    ctl(&etcd, "c", &["init", "-y"], "").ok();
    let out = ctl(&etcd, "c", &["spec"], "");
    assert_eq!(out.ok(), "{\n\t\"initMode\": \"new\"\n}\n");
    let out = ctl(&etcd, "c", &["spec", "--defaults"], "");
    let text = out.ok();
    assert!(
        text.starts_with("{\n\t\"sleepInterval\": \"5s\",\n"),
        "{text}"
    );
    let v: Value = serde_json::from_str(text).expect("json");
    assert_eq!(
        v,
        json!({
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
        })
    );
    // Defaults are shown, never written back.
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"],
        json!({"initMode": "new"})
    );
}

#[test]
fn update_patches_the_spec_and_refusals_change_nothing() {
    let etcd = etcd();
    // Missing cluster.
    let out = ctl(
        &etcd,
        "c",
        &["update", "--patch", r#"{"synchronousReplication":true}"#],
        "",
    );
    assert_eq!(out.refused(), "nil cluster data");
    assert_eq!(raw_cd(&etcd, "c"), None);

    ctl(&etcd, "c", &["init", "-y"], "").ok();
    ctl(
        &etcd,
        "c",
        &["update", "--patch", r#"{"synchronousReplication":true}"#],
        "",
    )
    .ok();
    let spec: Value = serde_json::from_str(ctl(&etcd, "c", &["spec"], "").ok()).expect("json");
    assert_eq!(
        spec,
        json!({"initMode": "new", "synchronousReplication": true})
    );

    ctl(
        &etcd,
        "c",
        &[
            "update",
            "-p",
            r#"{"pgParameters":{"work_mem":"16MB","datestyle":"iso"}}"#,
        ],
        "",
    )
    .ok();
    let spec: Value = serde_json::from_str(ctl(&etcd, "c", &["spec"], "").ok()).expect("json");
    assert_eq!(spec["pgParameters"]["work_mem"], "16MB");
    ctl(
        &etcd,
        "c",
        &["update", "-p", r#"{"pgParameters":{"work_mem":null}}"#],
        "",
    )
    .ok();
    let spec: Value = serde_json::from_str(ctl(&etcd, "c", &["spec"], "").ok()).expect("json");
    assert_eq!(
        spec["pgParameters"],
        json!({"datestyle": "iso"}),
        "work_mem removed"
    );
    assert_eq!(spec["synchronousReplication"], true, "earlier patch kept");

    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata").expect("cd");
    let refusals: [(&[&str], &str); 6] = [
        (
            &[
                "update",
                "-p",
                r#"{"initMode":"existing","existingConfig":{"keeperUID":"k0"}}"#,
            ],
            "Cannot update cluster spec: cannot change cluster init mode",
        ),
        (
            &["update", "-p", r#"{"proxyCheckInterval":"20s"}"#],
            "Cannot update cluster spec: invalid cluster spec: proxyCheckInterval should be less than proxyTimeout",
        ),
        (
            &["update", r#"{"initMode":"new","maxSynchronousStandbys":0}"#],
            "Cannot update cluster spec: invalid cluster spec: maxSynchronousStandbys must be at least 1",
        ),
        (
            &["update"],
            "no cluster spec provided as argument and no file provided (--file/-f option)",
        ),
        (&["update", "-p", "{}", "{}"], "too many arguments"),
        (
            &["update", "-f", "/nonexistent/x.json"],
            "cannot read file: /nonexistent/x.json: No such file or directory (os error 2)",
        ),
    ];
    for (args, want) in refusals {
        let out = ctl(&etcd, "c", args, "");
        assert_eq!(out.refused(), want, "{args:?}");
    }
    for malformed in [
        r#"{"synchronousReplication":tru"#,
        "{",
        r#"{"maxStandbys":"x"}"#,
    ] {
        let out = ctl(&etcd, "c", &["update", "-p", malformed], "");
        assert!(
            out.refused().starts_with("failed to patch cluster spec: "),
            "{malformed}: {out:?}"
        );
        let out = ctl(&etcd, "c", &["update", malformed], "");
        assert!(
            out.refused()
                .starts_with("failed to unmarshal cluster spec: "),
            "{malformed}: {out:?}"
        );
    }
    assert_eq!(
        raw_key(&etcd, "stolon/cluster/c/clusterdata").expect("cd"),
        before,
        "refusals leave the stored clusterdata byte for byte unchanged"
    );

    // Full replace from a file: what is not given goes back to its default.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spec.json");
    std::fs::write(&file, r#"{"initMode":"new","maxStandbys":4}"#).expect("write");
    ctl(
        &etcd,
        "c",
        &["update", "-f", file.to_str().expect("path")],
        "",
    )
    .ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"],
        json!({"initMode": "new", "maxStandbys": 4})
    );
}

#[test]
fn every_env_form_works_and_flags_beat_env() {
    let etcd = etcd();
    let ep = etcd.endpoint();
    ctl(&etcd, "c", &["init", "-y"], "").ok();
    let base: [(&str, &str); 3] = [
        ("STOLONCTL_CLUSTER_NAME", "c"),
        ("STOLONCTL_STORE_BACKEND", "etcdv3"),
        ("STOLONCTL_STORE_ENDPOINTS", ep.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };

    // Cluster name, backend and endpoints from env only.
    let out = stolonctl(&["spec"], &base, "");
    assert_eq!(out.ok(), "{\n\t\"initMode\": \"new\"\n}\n");
    // Each of them is really read: a wrong env value is refused...
    let wrong_name = [base[1], base[2], ("STOLONCTL_CLUSTER_NAME", "nope")];
    assert_eq!(
        stolonctl(&["spec"], &wrong_name, "").refused(),
        "nil cluster data"
    );
    let wrong_backend = [base[0], base[2], ("STOLONCTL_STORE_BACKEND", "consul")];
    assert!(
        stolonctl(&["spec"], &wrong_backend, "")
            .refused()
            .contains("\"consul\" is not supported")
    );
    let wrong_ep = [
        base[0],
        base[1],
        ("STOLONCTL_STORE_ENDPOINTS", "http://127.0.0.1:1"),
        ("STOLONCTL_STORE_TIMEOUT", "2s"),
    ];
    assert!(
        stolonctl(&["spec"], &wrong_ep, "")
            .refused()
            .starts_with("cannot get cluster data: ")
    );
    // ... and a flag beats it.
    assert!(stolonctl(&["--cluster-name", "c", "spec"], &wrong_name, "").code == 0);
    assert!(stolonctl(&["--store-backend", "etcdv3", "spec"], &wrong_backend, "").code == 0);
    assert!(stolonctl(&["spec", "--store-endpoints", &ep], &wrong_ep, "").code == 0);
    // Missing entirely.
    let none = [base[1], base[2]];
    assert_eq!(
        stolonctl(&["spec"], &none, "").refused(),
        "cluster name required"
    );
    // An empty env value is ignored.
    let empty = [base[1], base[2], ("STOLONCTL_CLUSTER_NAME", "")];
    assert_eq!(
        stolonctl(&["spec"], &empty, "").refused(),
        "cluster name required"
    );
    assert_eq!(
        stolonctl(&["--cluster-name", "c", "spec"], &empty, "").code,
        0
    );

    // Store prefix.
    stolonctl(
        &["init", "-y"],
        &with(&[("STOLONCTL_STORE_PREFIX", "other/prefix")]),
        "",
    )
    .ok();
    assert!(raw_key(&etcd, "other/prefix/c/clusterdata").is_some());
    let out = stolonctl(
        &[
            "--store-prefix",
            "stolon/cluster",
            "update",
            "-p",
            r#"{"maxStandbys":9}"#,
        ],
        &with(&[("STOLONCTL_STORE_PREFIX", "other/prefix")]),
        "",
    );
    out.ok();
    assert_eq!(
        raw_cd(&etcd, "c").expect("cd")["cluster"]["spec"]["maxStandbys"],
        9
    );
    let other: Value =
        serde_json::from_str(&raw_key(&etcd, "other/prefix/c/clusterdata").expect("other"))
            .expect("json");
    assert_eq!(other["cluster"]["spec"], json!({"initMode": "new"}));

    // Store timeout, log level, skip-tls-verify: bad env values are refused (so the env form
    // is read), good ones accepted; for the two string flags a good flag beats a bad env value.
    // (An unparsable boolean env value is fatal even with the flag given, as in Stolon, whose
    // env pass runs before flag parsing; the TLS test shows the flag beating a valid value.)
    for (var, bad, flag, good, msg) in [
        (
            "STOLONCTL_STORE_TIMEOUT",
            "soon",
            Some("--store-timeout"),
            "3s",
            "--store-timeout",
        ),
        (
            "STOLONCTL_LOG_LEVEL",
            "loud",
            Some("--log-level"),
            "debug",
            "invalid log level",
        ),
        (
            "STOLONCTL_STORE_SKIP_TLS_VERIFY",
            "perhaps",
            None,
            "true",
            "perhaps",
        ),
    ] {
        let envs = with(&[(var, bad)]);
        let out = stolonctl(&["spec"], &envs, "");
        assert!(out.refused().contains(msg), "{var}: {out:?}");
        if let Some(flag) = flag {
            let flag_arg = format!("{flag}={good}");
            assert_eq!(stolonctl(&[&flag_arg, "spec"], &envs, "").code, 0, "{var}");
        }
        let envs = with(&[(var, good)]);
        assert_eq!(stolonctl(&["spec"], &envs, "").code, 0, "{var}={good}");
    }

    // Client certificate without key (and the reverse) is refused: the env forms are read.
    let cert = with(&[("STOLONCTL_STORE_CERT_FILE", "/nonexistent/cert.pem")]);
    assert!(
        stolonctl(&["spec"], &cert, "")
            .refused()
            .contains("--store-key")
    );
    let key = with(&[("STOLONCTL_STORE_KEY", "/nonexistent/key.pem")]);
    assert!(
        stolonctl(&["spec"], &key, "")
            .refused()
            .contains("--store-cert-file")
    );

    // Kubernetes resource kind.
    let k8s = [
        ("STOLONCTL_CLUSTER_NAME", "c"),
        ("STOLONCTL_STORE_BACKEND", "kubernetes"),
        ("STOLONCTL_KUBE_RESOURCE_KIND", "secret"),
        ("STOLONCTL_KUBECONFIG", "/nonexistent/kubeconfig"),
    ];
    assert!(
        stolonctl(&["spec"], &k8s, "")
            .refused()
            .contains("\"secret\"")
    );
    // The flag beats the env var: the resource kind is accepted and the (missing) kubeconfig
    // from STOLONCTL_KUBECONFIG is what stops it.
    assert!(
        stolonctl(&["--kube-resource-kind", "configmap", "spec"], &k8s, "")
            .refused()
            .starts_with("cannot read kubeconfig /nonexistent/kubeconfig")
    );

    // Accepted (stolonctl ignores the metrics address; the kube flags go to a backend not built
    // yet): the command still works with them set.
    let accepted = with(&[
        ("STOLONCTL_METRICS_LISTEN_ADDRESS", "127.0.0.1:1"),
        ("STOLONCTL_KUBECONFIG", "/nonexistent/kubeconfig"),
        ("STOLONCTL_KUBE_CONTEXT", "ctx"),
        ("STOLONCTL_KUBE_NAMESPACE", "ns"),
        ("STOLONCTL_STORE_CA_FILE", ""),
    ]);
    stolonctl(&["spec"], &accepted, "").ok();

    // Every common flag documents its env form.
    let help = stolonctl(&["--help"], &[], "");
    for var in [
        "STOLONCTL_CLUSTER_NAME",
        "STOLONCTL_STORE_BACKEND",
        "STOLONCTL_STORE_ENDPOINTS",
        "STOLONCTL_STORE_TIMEOUT",
        "STOLONCTL_STORE_PREFIX",
        "STOLONCTL_STORE_CERT_FILE",
        "STOLONCTL_STORE_KEY",
        "STOLONCTL_STORE_CA_FILE",
        "STOLONCTL_STORE_SKIP_TLS_VERIFY",
        "STOLONCTL_METRICS_LISTEN_ADDRESS",
        "STOLONCTL_KUBE_RESOURCE_KIND",
        "STOLONCTL_LOG_LEVEL",
        "STOLONCTL_KUBECONFIG",
        "STOLONCTL_KUBE_CONTEXT",
        "STOLONCTL_KUBE_NAMESPACE",
    ] {
        assert!(help.ok().contains(var), "{var} missing from --help");
    }
}

#[test]
fn tls_flags_through_their_env_forms() {
    let etcd = EtcdServer::start_tls().expect("start TLS etcd");
    let tls = etcd.tls_files().expect("tls files").clone();
    let p = |x: &std::path::Path| x.to_str().expect("path").to_string();
    let (ca, cert, key) = (p(&tls.ca_cert), p(&tls.client_cert), p(&tls.client_key));
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"));
    let base = vec![
        ("STOLONCTL_CLUSTER_NAME", "c"),
        ("STOLONCTL_STORE_BACKEND", "etcdv3"),
        ("STOLONCTL_STORE_ENDPOINTS", ep.as_str()),
        ("STOLONCTL_STORE_TIMEOUT", "3s"),
    ];
    let mut full = base.clone();
    full.extend([
        ("STOLONCTL_STORE_CA_FILE", ca.as_str()),
        ("STOLONCTL_STORE_CERT_FILE", cert.as_str()),
        ("STOLONCTL_STORE_KEY", key.as_str()),
    ]);
    stolonctl(&["init", "-y"], &full, "").ok();
    assert_eq!(
        stolonctl(&["spec"], &full, "").ok(),
        "{\n\t\"initMode\": \"new\"\n}\n"
    );

    // Without a client certificate the server refuses us.
    let mut no_cert = base.clone();
    no_cert.push(("STOLONCTL_STORE_CA_FILE", ca.as_str()));
    stolonctl(&["spec"], &no_cert, "").refused();
    // Without the CA the server certificate is not trusted, unless verification is skipped.
    let mut no_ca = base.clone();
    no_ca.extend([
        ("STOLONCTL_STORE_CERT_FILE", cert.as_str()),
        ("STOLONCTL_STORE_KEY", key.as_str()),
    ]);
    stolonctl(&["spec"], &no_ca, "").refused();
    let mut skip = no_ca.clone();
    skip.push(("STOLONCTL_STORE_SKIP_TLS_VERIFY", "true"));
    stolonctl(&["spec"], &skip, "").ok();
    // The flag beats the env var.
    stolonctl(&["--store-skip-tls-verify=false", "spec"], &skip, "").refused();
}

#[test]
fn clusterdata_write_then_read_is_equivalent() {
    let etcd = etcd();
    let path = testdata("clusterdata-stolon.json");
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read testdata"))
            .expect("json");

    let out = ctl(&etcd, "c", &["clusterdata", "write", "-f", &path], "");
    assert_eq!(
        out.ok(),
        "successfully wrote cluster data into the new store\n"
    );
    let stored: Value =
        serde_json::from_str(&raw_key(&etcd, "stolon/cluster/c/clusterdata").expect("stored"))
            .expect("json");
    assert_eq!(stored, original);

    let out = ctl(&etcd, "c", &["clusterdata", "read"], "");
    let text = out.ok();
    assert_eq!(text.lines().count(), 1, "compact");
    let back: Value = serde_json::from_str(text).expect("json");
    pretty_assertions::assert_eq!(back, original);

    let out = ctl(&etcd, "c", &["clusterdata", "read", "--pretty"], "");
    let text = out.ok();
    assert!(
        text.starts_with("{\n\t\"formatVersion\": 1,\n\t\"changeTime\": "),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Value>(text).expect("json"), original);

    // What read printed can be written into another cluster (a migration) from stdin.
    let out = ctl(&etcd, "d", &["clusterdata", "write"], text);
    out.ok();
    assert_eq!(raw_cd(&etcd, "d").expect("d"), original);

    // Overwriting needs --yes.
    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata");
    let out = ctl(&etcd, "c", &["clusterdata", "write", "-f", &path], "");
    assert_eq!(
        out.refused(),
        "WARNING: cluster data already available use --yes to override"
    );
    let out = ctl(
        &etcd,
        "c",
        &["clusterdata", "write", "-y", "-f", "-"],
        "{\"formatVersion\": 1,",
    );
    assert!(out.refused().starts_with("invalid cluster data: "));
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), before);
    let out = ctl(&etcd, "c", &["clusterdata", "write", "-y", "-f", &path], "");
    assert_eq!(
        out.ok(),
        "WARNING: The current cluster data will be removed\nsuccessfully wrote cluster data into the new store\n"
    );
}

#[test]
fn keeper_commands_promote_and_status_on_written_clusterdata() {
    let etcd = etcd();
    let path = testdata("clusterdata-stolon.json");
    ctl(&etcd, "c", &["clusterdata", "write", "-f", &path], "").ok();
    let original = raw_cd(&etcd, "c").expect("cd");

    // Status with no sentinels or proxies published.
    let out = ctl(&etcd, "c", &["status"], "");
    let want = "\
=== Active sentinels ===

No active sentinels

=== Active proxies ===

No active proxies

=== Keepers ===

UID\tHEALTHY\tPG LISTENADDRESS\tPG HEALTHY\tPG WANTEDGENERATION\tPG CURRENTGENERATION
keeper0\ttrue\t10.0.0.1:5432\t\ttrue\t\t7\t\t\t7\t
keeper1\ttrue\t10.0.0.2:5433\t\tfalse\t\t3\t\t\t2\t
keeper2\tfalse\t(unknown)\t\tfalse\t\t1\t\t\t0\t

=== Cluster Info ===

Master Keeper: keeper0

===== Keepers/DB tree =====

keeper0 (master)
├─keeper1
└─keeper2

";
    pretty_assertions::assert_eq!(out.ok(), want);

    // Sentinels, a leader and a proxy published through the store, as the daemons do.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_store, election) = rt.block_on(async {
        let (store, election) = stolon_store::connect(&etcd.store_config("c"))
            .await
            .expect("connect");
        let ttl = Duration::from_secs(60);
        for uid in ["sentb", "senta"] {
            store
                .put_sentinel_info(
                    &SentinelInfo {
                        uid: uid.into(),
                        ..Default::default()
                    },
                    ttl,
                )
                .await
                .expect("sentinel info");
        }
        store
            .put_proxy_info(
                &ProxyInfo {
                    info_uid: "i1".into(),
                    uid: "proxy1".into(),
                    generation: 12,
                    proxy_timeout: 15_000_000_000,
                    fences_from_check_start: false,
                },
                ttl,
            )
            .await
            .expect("proxy info");
        let mut leading = election.campaign("sentb").await.expect("campaign");
        tokio::time::timeout(Duration::from_secs(30), leading.wait_for(|l| *l))
            .await
            .expect("elected within 30s")
            .expect("election channel");
        (store, election)
    });
    let out = ctl(&etcd, "c", &["status", "--format", "json"], "");
    let v: Value = serde_json::from_str(out.ok()).expect("json");
    assert_eq!(
        v,
        json!({
            "sentinels": [{"uid": "senta", "leader": false}, {"uid": "sentb", "leader": true}],
            "proxies": [{"uid": "proxy1", "generation": 12}],
            "keepers": [
                {"uid": "keeper0", "listen_address": "10.0.0.1:5432", "healthy": true,
                 "pg_healthy": true, "pg_wanted_generation": 7, "pg_current_generation": 7},
                {"uid": "keeper1", "listen_address": "10.0.0.2:5433", "healthy": true,
                 "pg_healthy": false, "pg_wanted_generation": 3, "pg_current_generation": 2},
                {"uid": "keeper2", "listen_address": "(unknown)", "healthy": false,
                 "pg_healthy": false, "pg_wanted_generation": 1, "pg_current_generation": 0}
            ],
            "cluster": {"available": true, "master_keeper_uid": "keeper0", "master_db_uid": "db0a0a0a"}
        })
    );
    let text = ctl(&etcd, "c", &["status"], "").ok().to_string();
    assert!(
        text.starts_with("=== Active sentinels ===\n\nID\tLEADER\nsenta\tfalse\nsentb\ttrue\n\n=== Active proxies ===\n\nID\nproxy1\n\n"),
        "{text}"
    );
    rt.block_on(election.resign()).expect("resign");
    assert_eq!(
        ctl(&etcd, "c", &["status", "-f", "xml"], "").refused(),
        "unrecognised output format xml"
    );

    // failkeeper: only that keeper's forceFail changes.
    assert_eq!(
        ctl(&etcd, "c", &["failkeeper", "ghost"], "").refused(),
        "keeper doesn't exist"
    );
    assert_eq!(
        ctl(&etcd, "c", &["failkeeper"], "").refused(),
        "keeper uid required"
    );
    ctl(&etcd, "c", &["failkeeper", "keeper2"], "").ok();
    let mut after = raw_cd(&etcd, "c").expect("cd");
    assert_eq!(after["keepers"]["keeper2"]["status"]["forceFail"], true);
    after["keepers"]["keeper2"]["status"]
        .as_object_mut()
        .expect("status")
        .remove("forceFail");
    assert_eq!(after, original);

    // removekeeper: never the master's keeper; otherwise keeper and DB go.
    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata");
    assert_eq!(
        ctl(&etcd, "c", &["removekeeper", "keeper0"], "").refused(),
        "keeper assigned db is the current cluster master db."
    );
    assert_eq!(
        ctl(&etcd, "c", &["removekeeper", "a", "b"], "").refused(),
        "too many arguments"
    );
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), before);
    ctl(&etcd, "c", &["removekeeper", "keeper1"], "").ok();
    let after = raw_cd(&etcd, "c").expect("cd");
    assert!(after["keepers"].get("keeper1").is_none());
    assert!(after["dbs"].get("db1b1b1b").is_none());
    assert_eq!(after["keepers"]["keeper0"], original["keepers"]["keeper0"]);
    // The tree skips the removed DB still listed as a follower.
    let text = ctl(&etcd, "c", &["status"], "").ok().to_string();
    assert!(text.ends_with("keeper0 (master)\n└─keeper2\n\n"), "{text}");

    // promote: a master cluster is left alone (notice on stderr, exit 0).
    let before = raw_key(&etcd, "stolon/cluster/c/clusterdata");
    let out = ctl(&etcd, "c", &["promote", "-y"], "");
    out.ok();
    assert_eq!(out.stderr, "cluster spec role already set to master\n");
    assert_eq!(raw_key(&etcd, "stolon/cluster/c/clusterdata"), before);

    // A standby cluster is promoted (after confirmation).
    let mut standby = original.clone();
    standby["cluster"]["spec"]["role"] = json!("standby");
    standby["cluster"]["spec"]["pitrConfig"]
        .as_object_mut()
        .expect("pitrConfig")
        .remove("recoveryTargetSettings");
    let text = serde_json::to_string(&standby).expect("json");
    ctl(&etcd, "s", &["clusterdata", "write"], &text).ok();
    let out = ctl(&etcd, "s", &["promote"], "no\n");
    assert!(out.ok().ends_with("exiting\n"));
    assert_eq!(
        raw_cd(&etcd, "s").expect("s")["cluster"]["spec"]["role"],
        "standby"
    );
    let out = ctl(&etcd, "s", &["promote"], "yes\n");
    assert_eq!(out.ok(), "Are you sure you want to continue? [yes/no] ");
    let mut promoted = raw_cd(&etcd, "s").expect("s");
    assert_eq!(promoted["cluster"]["spec"]["role"], "master");
    promoted["cluster"]["spec"]["role"] = json!("standby");
    assert_eq!(promoted, standby, "only the role changed");
    // Once master, update cannot go back to standby.
    assert_eq!(
        ctl(&etcd, "s", &["update", "-p", r#"{"role":"standby"}"#], "").refused(),
        "Cannot update cluster spec: cannot update a cluster from master role to standby role"
    );
}

#[test]
fn other_backends_are_refused_with_one_line() {
    let cases = [
        (
            "etcdv2",
            "store backend \"etcdv2\" is not supported by stolon-rs (use etcdv3 or kubernetes)",
        ),
        (
            "etcd",
            "store backend \"etcd\" is not supported by stolon-rs (use etcdv3 or kubernetes)",
        ),
        (
            "consul",
            "store backend \"consul\" is not supported by stolon-rs (use etcdv3 or kubernetes)",
        ),
    ];
    for (backend, want) in cases {
        let out = stolonctl(
            &[
                "--cluster-name",
                "c",
                "--store-backend",
                backend,
                "--kube-resource-kind",
                "configmap",
                "init",
                "-y",
            ],
            &[],
            "",
        );
        assert_eq!(out.refused(), want, "{backend}");
        assert_eq!(
            out.stdout, "",
            "{backend}: nothing printed before the refusal"
        );
    }
    assert_eq!(
        stolonctl(&["--cluster-name", "c", "spec"], &[], "").refused(),
        "store backend type required"
    );
    assert_eq!(
        stolonctl(&["version"], &[], "").ok(),
        format!("stolonctl version v{}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = stolonctl(&["--cluster-name", "c", "frobnicate"], &[], "");
    assert_eq!(out.refused(), "unrecognized subcommand 'frobnicate'");
}
