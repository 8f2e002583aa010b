//! The store conformance suite (`stolon_store::testing::suite`) against the kubernetes backend,
//! with the real `kube` client talking to the in-process fake API server: all its cases, the
//! same functions that run against etcd and the in-memory store.
//!
//! Kubernetes specifics live in the harness: a member ([`Harness::open_as`]) is a client bound
//! to its own `Running` pod labelled `component=stolon-<kind>` and `stolon-cluster=<cluster>`
//! (its status goes in that pod's annotation), and a member disappears
//! ([`Harness::make_member_disappear`]) the ways a Kubernetes component does, one per kind:
//! a keeper's pod leaves phase `Running` (`Failed`), a sentinel's pod gets a
//! `deletionTimestamp`, a proxy's pod is deleted. More Kubernetes-specific behaviour is in
//! `kube_store.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use stolon_kube::KubeOptions;
use stolon_kube::store::{KEEPER_COMPONENT, PROXY_COMPONENT, SENTINEL_COMPONENT};
use stolon_kube::testing::FakeApiServer;
use stolon_store::testing::suite::{self, BoxFuture, Component, Harness, Member};
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
        let pod = format!("{cluster}-client-{n}");
        self.fake
            .add_pod(NS, &pod, &labels("stolon-keeper", cluster), "Running");
        let opts = KubeOptions {
            lease_duration: election_ttl,
            ..KubeOptions::default()
        };
        let pair = open(&self.fake, cluster, Some(&pod), opts);
        Box::pin(async move { pair })
    }

    fn open_as<'a>(
        &'a self,
        cluster: &'a str,
        component: Component,
        name: &'a str,
    ) -> BoxFuture<'a, Member> {
        let pod = member_pod(cluster, component, name);
        // A second handle of the same member is a second client in the same pod.
        if self.fake.object("pods", NS, &pod).is_none() {
            self.fake.add_pod(
                NS,
                &pod,
                &labels(component_label(component), cluster),
                "Running",
            );
        }
        let (store, _election) = open(&self.fake, cluster, Some(&pod), KubeOptions::default());
        let member = Member {
            cluster: cluster.to_string(),
            component,
            name: name.to_string(),
            store,
        };
        Box::pin(async move { member })
    }

    fn make_member_disappear(&self, member: Member) -> BoxFuture<'_, ()> {
        let pod = member_pod(&member.cluster, member.component, &member.name);
        drop(member.store);
        let done = match member.component {
            // The container exited and is not restarted.
            Component::Keeper => self.fake.set_pod_phase(NS, &pod, "Failed"),
            // Being deleted (still listed until the kubelet is done).
            Component::Sentinel => self.fake.mark_pod_terminating(NS, &pod),
            // Deleted.
            Component::Proxy => self.fake.remove("pods", NS, &pod),
        };
        assert!(done, "member pod {pod} not found in the fake API server");
        Box::pin(async {})
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

/// The pod a member runs in (pod names are per namespace, so the cluster is part of it).
fn member_pod(cluster: &str, component: Component, name: &str) -> String {
    let kind = match component {
        Component::Keeper => "keeper",
        Component::Sentinel => "sentinel",
        Component::Proxy => "proxy",
    };
    format!("{cluster}-{kind}-{name}").replace('_', "-")
}

/// The `component` label of a member's pod.
fn component_label(component: Component) -> &'static str {
    match component {
        Component::Keeper => KEEPER_COMPONENT,
        Component::Sentinel => SENTINEL_COMPONENT,
        Component::Proxy => PROXY_COMPONENT,
    }
}

async fn run(case: &str) {
    let h = KubeHarness::new().await;
    if let Err(e) = suite::run_case(&h, case, "kube").await {
        panic!("conformance case {case} failed: {e}");
    }
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                run(stringify!($case)).await;
            }
        )*

        /// Every case of the suite runs here.
        #[test]
        fn all_cases_listed() {
            assert_eq!([$(stringify!($case)),*], suite::CASES);
        }
    };
}

cases!(
    cas,
    force_put,
    null_and_malformed,
    listing,
    member_disappearance,
    keeper_withdrawal,
    change_wakeups,
    election_resign,
    election_lease_end,
    election_heartbeats,
);
