//! Shared test support: store configurations and connections to the fake API server.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use stolon_kube::testing::FakeApiServer;
use stolon_kube::{KubeOptions, connect_with_config};
use stolon_store::{Election, Store, StoreBackend, StoreConfig};

/// Namespace the tests work in.
pub const NS: &str = "stolon-test";

/// A kubernetes store configuration for `cluster`.
pub fn store_config(cluster: &str) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Kubernetes,
        endpoints: Vec::new(),
        timeout: Duration::from_secs(5),
        prefix: "stolon/cluster".into(),
        cluster_name: cluster.into(),
        cert_file: None,
        key_file: None,
        ca_file: None,
        skip_tls_verify: false,
        kube_resource_kind: Some("configmap".into()),
    }
}

/// Labels of a component pod of `cluster`.
pub fn labels<'a>(component: &'a str, cluster: &'a str) -> [(&'a str, &'a str); 2] {
    [("component", component), ("stolon-cluster", cluster)]
}

/// A store and election on the fake server, as the component in pod `pod`.
pub fn open(
    fake: &FakeApiServer,
    cluster: &str,
    pod: Option<&str>,
    opts: KubeOptions,
) -> (Arc<dyn Store>, Arc<dyn Election>) {
    let opts = KubeOptions {
        pod_name: pod.map(str::to_string),
        ..opts
    };
    connect_with_config(fake.config(NS), &store_config(cluster), &opts)
        .expect("connect to the fake API server")
}

/// Polls `check` every 50 ms for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let polls = limit.as_millis() / 50 + 1;
    for _ in 0..polls {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
