//! stolonctl with `--store-backend kubernetes`, against the in-test fake Kubernetes API server
//! (there is no real API server on these machines): the real binary, the real kube client.

mod common;

use common::stolonctl;
use stolon_kube::testing::FakeApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_update_and_read_through_the_kubernetes_api() {
    let api = FakeApiServer::start().await.expect("start fake API server");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_yaml("test-ctx", "test")).expect("write kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_string();

    // The blocking child processes run off the async runtime that serves the fake API.
    let run = move |args: Vec<&'static str>| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec![
                "--cluster-name",
                "kc",
                "--store-backend",
                "kubernetes",
                "--kube-resource-kind",
                "configmap",
                "--kubeconfig",
                kubeconfig.as_str(),
            ];
            all.extend(args);
            stolonctl(&all, &[], "")
        })
    };

    run(vec!["init", "-y"]).await.expect("join").ok();
    let cm = api
        .object("configmaps", "test", "stolon-cluster-kc")
        .expect("the clusterdata ConfigMap exists in the kubeconfig's namespace");
    let annotation = cm["metadata"]["annotations"]["stolon-clusterdata"]
        .as_str()
        .expect("clusterdata annotation");
    let cd: serde_json::Value = serde_json::from_str(annotation).expect("clusterdata JSON");
    assert_eq!(cd["formatVersion"], 1);
    assert_eq!(cd["cluster"]["status"]["phase"], "initializing");
    assert_eq!(
        cd["cluster"]["spec"],
        serde_json::json!({"initMode": "new"})
    );

    run(vec![
        "update",
        "--patch",
        r#"{"synchronousReplication":true}"#,
    ])
    .await
    .expect("join")
    .ok();
    let spec = run(vec!["spec"]).await.expect("join");
    let spec: serde_json::Value = serde_json::from_str(spec.ok()).expect("spec JSON");
    assert_eq!(spec["synchronousReplication"], true);

    let read = run(vec!["clusterdata", "read"]).await.expect("join");
    let read: serde_json::Value = serde_json::from_str(read.ok()).expect("clusterdata JSON");
    assert_eq!(read["cluster"]["uid"], cd["cluster"]["uid"]);
}

/// `init --if-absent` (the Helm chart's init Job): creates the clusterdata once, then leaves it
/// alone; an unreachable API server is a failure (so the Job retries), never a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_if_absent_never_overwrites_through_the_kubernetes_api() {
    let api = std::sync::Arc::new(FakeApiServer::start().await.expect("start fake API server"));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_yaml("test-ctx", "test")).expect("write kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_string();
    let run = move |args: Vec<&'static str>| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec![
                "--cluster-name",
                "kc",
                "--store-backend",
                "kubernetes",
                "--kube-resource-kind",
                "configmap",
                "--store-timeout",
                "2s",
                "--kubeconfig",
                kubeconfig.as_str(),
            ];
            all.extend(args);
            stolonctl(&all, &[], "")
        })
    };
    let clusterdata = |api: &FakeApiServer| {
        api.object("configmaps", "test", "stolon-cluster-kc")
            .and_then(|cm| {
                cm["metadata"]["annotations"]["stolon-clusterdata"]
                    .as_str()
                    .map(str::to_string)
            })
    };

    api.set_unavailable(true);
    let down = run(vec!["init", "--if-absent"]).await.expect("join");
    assert!(
        down.refused()
            .starts_with("cannot initialise cluster data: "),
        "{down:?}"
    );
    api.set_unavailable(false);
    assert_eq!(clusterdata(&api), None);

    let first = run(vec!["init", "--if-absent"]).await.expect("join");
    assert_eq!(first.ok(), "cluster data initialised\n");
    let written = clusterdata(&api).expect("clusterdata written");
    let again = run(vec![
        "init",
        "--if-absent",
        r#"{"initMode":"new","maxStandbys":5}"#,
    ])
    .await
    .expect("join");
    assert_eq!(
        again.ok(),
        "cluster data already present: left unchanged (--if-absent)\n"
    );
    assert_eq!(clusterdata(&api), Some(written));
}
