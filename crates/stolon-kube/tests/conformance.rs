//! The store conformance suite (`stolon_store::testing::suite`) against the kubernetes backend,
//! with the real `kube` client talking to the in-process fake API server.
//!
//! Cases run: `cas`, `force_put`, `null_and_malformed`, `election_resign`,
//! `election_lease_end`. Not run, because Kubernetes has no TTLs and a store publishes only its
//! own pod's status: `listing` (one store publishes several keepers, sentinels and proxies),
//! `ttl_expiry` and `change_wakeups` (they wait for an info to expire). Their Kubernetes
//! equivalents are in `kube_store.rs` (`infos_*`, `changes_*`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use stolon_kube::KubeOptions;
use stolon_kube::testing::FakeApiServer;
use stolon_store::testing::suite::{self, BoxFuture, Harness};
use stolon_store::{Election, Store};

use common::{NS, labels, open};

struct KubeHarness {
    fake: FakeApiServer,
    next_pod: AtomicU64,
}

impl KubeHarness {
    async fn new() -> KubeHarness {
        KubeHarness {
            fake: FakeApiServer::start().await.expect("start fake API server"),
            next_pod: AtomicU64::new(0),
        }
    }
}

impl Harness for KubeHarness {
    fn open(
        &self,
        cluster: &str,
        election_ttl: Duration,
    ) -> BoxFuture<'_, (Arc<dyn Store>, Arc<dyn Election>)> {
        // Every client is a component in its own running pod, with its own connection pool.
        let n = self.next_pod.fetch_add(1, Ordering::SeqCst);
        let pod = format!("{cluster}-keeper-{n}");
        self.fake
            .add_pod(NS, &pod, &labels("stolon-keeper", cluster), "Running");
        let opts = KubeOptions {
            lease_duration: election_ttl,
            ..KubeOptions::default()
        };
        let pair = open(&self.fake, cluster, Some(&pod), opts);
        Box::pin(async move { pair })
    }

    /// A little more than the suite's default 2 s: leases are whole seconds here too, and a
    /// loaded 2-core machine should not make a live leader miss its renewals.
    fn short_ttl(&self) -> Duration {
        Duration::from_secs(3)
    }

    fn put_raw_cluster_data<'a>(&'a self, cluster: &'a str, raw: &'a [u8]) -> BoxFuture<'a, ()> {
        let name = format!("stolon-cluster-{cluster}");
        let value = String::from_utf8_lossy(raw).into_owned();
        if !self.fake.modify("configmaps", NS, &name, |cm| {
            cm["metadata"]["annotations"]["stolon-clusterdata"] = json!(value.clone());
        }) {
            self.fake.put_object(
                "configmaps",
                NS,
                json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "annotations": { "stolon-clusterdata": value },
                    },
                }),
            );
        }
        Box::pin(async {})
    }
}

async fn run(case: &str) {
    let h = KubeHarness::new().await;
    if let Err(e) = suite::run_case(&h, case, "kube").await {
        panic!("conformance case {case} failed: {e}");
    }
}

#[tokio::test]
async fn conformance_cas() {
    run("cas").await;
}

#[tokio::test]
async fn conformance_force_put() {
    run("force_put").await;
}

#[tokio::test]
async fn conformance_null_and_malformed() {
    run("null_and_malformed").await;
}

#[tokio::test]
async fn conformance_election_resign() {
    run("election_resign").await;
}

#[tokio::test]
async fn conformance_election_lease_end() {
    run("election_lease_end").await;
}
