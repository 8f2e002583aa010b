//! stolon-kube: the Kubernetes store backend (docs/architecture.md §4.3, §4.3), with the real
//! `kube` client.
//!
//! Layout in the API server, all in one namespace:
//! - clusterdata: annotation `stolon-clusterdata` of ConfigMap `stolon-cluster-<clusterName>`
//!   (created when missing); compare-and-swap on the ConfigMap's `resourceVersion`.
//! - component infos: annotation `stolon-status` of each component's own pod (`$POD_NAME`,
//!   passed in [`KubeOptions::pod_name`]), found again by the pod labels
//!   `component=stolon-keeper|stolon-sentinel|stolon-proxy` and `stolon-cluster=<clusterName>`.
//! - sentinel leadership: client-go's leader record in annotation
//!   `control-plane.alpha.kubernetes.io/leader` of the same ConfigMap (Stolon's lock, the
//!   default), or a `coordination.k8s.io/v1` Lease `stolon-cluster-<clusterName>`
//!   ([`ElectionLock`]).
//!
//! [`connect`] builds the store and election from the flags; [`connect_any`] dispatches between
//! this backend and etcd v3 so the binaries need one call. The `testing` feature adds an
//! in-process fake API server ([`testing::FakeApiServer`]).

mod api;
pub mod election;
pub mod events;
pub mod store;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use stolon_store::{BackendOptions, Election, Store, StoreBackend, StoreConfig, StoreError};

pub use election::{DEFAULT_LEASE_DURATION, ElectionLock, KubeElection, LEADER_ANNOTATION};
pub use store::KubeStore;

/// A connected store and its sentinel election (what [`connect`] and [`connect_any`] return).
pub type Connected = (Arc<dyn Store>, Arc<dyn Election>);

/// Name of the ConfigMap holding clusterdata (and the sentinels' leader record) and of the
/// sentinels' Lease.
pub fn resource_name(cluster_name: &str) -> String {
    format!("stolon-cluster-{cluster_name}")
}

/// Kubernetes settings that are not common store flags.
///
/// Library code never reads the process environment: the binaries fill `pod_name` from
/// `$POD_NAME` (keeper, sentinel, proxy) and the three kube fields from stolonctl's
/// `--kubeconfig`, `--kube-context`, `--kube-namespace` flags.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Kubeconfig file (`--kubeconfig`); `None`: `$KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (`--kube-context`); `None`: the current context.
    pub context: Option<String>,
    /// Namespace (`--kube-namespace`); `None`: the kubeconfig context's namespace, or the
    /// in-cluster namespace file, or `default`.
    pub namespace: Option<String>,
    /// This component's pod (`$POD_NAME`), whose `stolon-status` annotation it writes. Needed by
    /// keepers, sentinels and proxies, not by stolonctl.
    pub pod_name: Option<String>,
    /// Sentinel lease duration (15 s, like Stolon's client-go election). Tests shorten it.
    pub lease_duration: Duration,
    /// Where the sentinels' leader record lives (the sentinel's `--kube-election-lock`):
    /// Stolon's ConfigMap annotation by default, or a Lease.
    pub election_lock: ElectionLock,
    /// How often an info whose content did not change apart from its `infoUID` is rewritten;
    /// `None`: per component (every keeper publish, a proxy's info every half its TTL, a
    /// sentinel's info only when it changes; see the store module's notes).
    pub status_refresh: Option<Duration>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            context: None,
            namespace: None,
            pod_name: None,
            lease_duration: DEFAULT_LEASE_DURATION,
            election_lock: ElectionLock::default(),
            status_refresh: None,
        }
    }
}

impl KubeOptions {
    /// Options for a keeper, sentinel or proxy running in pod `pod_name` (the binaries pass
    /// `std::env::var("POD_NAME").ok()`).
    pub fn for_pod(pod_name: Option<String>) -> Self {
        KubeOptions {
            pod_name: pod_name.filter(|p| !p.is_empty()),
            ..KubeOptions::default()
        }
    }

    /// Options for a keeper, sentinel or proxy: with the kubernetes backend the pod name is
    /// required (Stolon: "missing required env variable POD_NAME"); other backends ignore it.
    /// The binaries call it with `std::env::var("POD_NAME").ok()`.
    pub fn for_component(
        cfg: &StoreConfig,
        pod_name: Option<String>,
    ) -> Result<KubeOptions, StoreError> {
        let opts = KubeOptions::for_pod(pod_name);
        if cfg.backend == StoreBackend::Kubernetes && opts.pod_name.is_none() {
            return Err(StoreError::Config(
                "missing required env variable POD_NAME (the kubernetes store backend needs the pod's name)"
                    .into(),
            ));
        }
        Ok(opts)
    }

    /// Options from stolonctl's flags; empty strings mean "not given".
    pub fn from_flags(kubeconfig: &str, context: &str, namespace: &str) -> Self {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        KubeOptions {
            kubeconfig: opt(kubeconfig).map(PathBuf::from),
            context: opt(context),
            namespace: opt(namespace),
            ..KubeOptions::default()
        }
    }
}

/// Builds the client configuration: explicit kubeconfig file, else context of the default
/// kubeconfig, else inference (kubeconfig, then in-cluster). The namespace flag wins over the
/// configuration's namespace.
pub async fn client_config(
    cfg: &StoreConfig,
    opts: &KubeOptions,
) -> Result<kube::Config, StoreError> {
    let kc_opts = KubeConfigOptions {
        context: opts.context.clone(),
        cluster: None,
        user: None,
    };
    let mut config = if let Some(path) = &opts.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
            StoreError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &kc_opts)
            .await
            .map_err(|e| StoreError::Config(format!("bad kubeconfig {}: {e}", path.display())))?
    } else if opts.context.is_some() {
        kube::Config::from_kubeconfig(&kc_opts)
            .await
            .map_err(|e| StoreError::Config(format!("cannot load kubeconfig: {e}")))?
    } else {
        kube::Config::infer().await.map_err(|e| {
            StoreError::Config(format!(
                "cannot find a kubernetes configuration (kubeconfig or in-cluster): {e}"
            ))
        })?
    };
    if let Some(ns) = &opts.namespace {
        config.default_namespace = ns.clone();
    }
    config.connect_timeout = Some(cfg.timeout);
    Ok(config)
}

fn check_kind(cfg: &StoreConfig) -> Result<(), StoreError> {
    match cfg.kube_resource_kind.as_deref() {
        Some("configmap") => Ok(()),
        None => Err(StoreError::Config(
            "unspecified kubernetes resource kind (--kube-resource-kind, only \"configmap\" is supported)"
                .into(),
        )),
        Some(other) => Err(StoreError::Config(format!(
            "wrong kubernetes resource kind: {other:?}, supported resources kinds are: \"configmap\""
        ))),
    }
}

/// Connects to the Kubernetes API as configured by the flags and `opts`: the store and the
/// sentinel election. Connecting is lazy (an unreachable API server shows on the first request);
/// configuration errors are reported here.
pub async fn connect(cfg: &StoreConfig, opts: &KubeOptions) -> Result<Connected, StoreError> {
    check_kind(cfg)?;
    let config = client_config(cfg, opts).await?;
    connect_with_config(config, cfg, opts)
}

/// [`connect`] with a ready client configuration (tests point it at the fake API server).
pub fn connect_with_config(
    config: kube::Config,
    cfg: &StoreConfig,
    opts: &KubeOptions,
) -> Result<Connected, StoreError> {
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|e| StoreError::Config(format!("cannot build kubernetes client: {e}")))?;
    let store = KubeStore::new(client.clone(), &namespace, cfg, opts);
    let election = KubeElection::new(client, &namespace, cfg, opts);
    Ok((Arc::new(store), Arc::new(election)))
}

/// The store of any backend: etcd v3 through [`stolon_store::connect`], Kubernetes through
/// [`connect`]. This is what the binaries call.
pub async fn connect_any(cfg: &StoreConfig, kube: &KubeOptions) -> Result<Connected, StoreError> {
    connect_any_with(cfg, &BackendOptions::default(), kube).await
}

/// [`connect_any`] with etcd backend options (e.g. a short election TTL in tests).
pub async fn connect_any_with(
    cfg: &StoreConfig,
    etcd: &BackendOptions,
    kube: &KubeOptions,
) -> Result<Connected, StoreError> {
    match cfg.backend {
        StoreBackend::EtcdV3 => stolon_store::connect_with(cfg, etcd).await,
        StoreBackend::Kubernetes => connect(cfg, kube).await,
    }
}
