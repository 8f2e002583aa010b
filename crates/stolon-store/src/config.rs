//! The common flags of all four binaries (stolon-behaviour.md §1.4) and the store configuration
//! derived from them.

use std::time::Duration;

use clap::Args;

/// Store backend names as Stolon spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    /// etcd v3 API.
    EtcdV3,
    /// Kubernetes API (ConfigMap + pod annotations).
    Kubernetes,
}

/// Common flags. Each binary applies its env prefix (`STKEEPER_`, ...) to these at run time.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// cluster name
    #[arg(long = "cluster-name", default_value = "")]
    pub cluster_name: String,
    /// store backend type (etcdv2/etcd, etcdv3, consul or kubernetes)
    #[arg(long = "store-backend", default_value = "")]
    pub store_backend: String,
    /// a comma-delimited list of store endpoints (use https scheme for tls communication) (defaults: http://127.0.0.1:2379 for etcd)
    #[arg(long = "store-endpoints", default_value = "")]
    pub store_endpoints: String,
    /// store request timeout
    #[arg(long = "store-timeout", default_value = "5s")]
    pub store_timeout: String,
    /// the store base prefix
    #[arg(long = "store-prefix", default_value = "stolon/cluster")]
    pub store_prefix: String,
    /// certificate file for client identification to the store
    #[arg(long = "store-cert-file", default_value = "")]
    pub store_cert_file: String,
    /// private key file for client identification to the store
    #[arg(long = "store-key", default_value = "")]
    pub store_key: String,
    /// verify certificates of HTTPS-enabled store servers using this CA bundle
    #[arg(long = "store-ca-file", default_value = "")]
    pub store_ca_file: String,
    /// skip store certificate verification (insecure!!!)
    #[arg(long = "store-skip-tls-verify", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub store_skip_tls_verify: bool,
    /// metrics listen address i.e "0.0.0.0:8080" (disabled by default)
    #[arg(long = "metrics-listen-address", default_value = "")]
    pub metrics_listen_address: String,
    /// the k8s resource kind to be used to store stolon clusterdata and do sentinel leader election (only "configmap" is currently supported)
    #[arg(long = "kube-resource-kind", default_value = "")]
    pub kube_resource_kind: String,
    /// debug logging level. Valid values: error, warn, info, debug
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,
}

/// A validated store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Backend.
    pub backend: StoreBackend,
    /// Endpoints with scheme (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Key prefix (`stolon/cluster`).
    pub prefix: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Client certificate (PEM path).
    pub cert_file: Option<String>,
    /// Client key (PEM path).
    pub key_file: Option<String>,
    /// CA bundle (PEM path).
    pub ca_file: Option<String>,
    /// Skip server certificate verification.
    pub skip_tls_verify: bool,
    /// Kubernetes resource kind (`configmap`).
    pub kube_resource_kind: Option<String>,
}

impl StoreConfig {
    /// `<prefix>/<cluster name>`, Stolon's cluster path.
    pub fn cluster_path(&self) -> String {
        format!(
            "{}/{}",
            self.prefix.trim_end_matches('/'),
            self.cluster_name
        )
    }
}
