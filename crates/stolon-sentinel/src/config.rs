//! Flags of `stolon-sentinel` (docs/architecture.md §5 plus the common flags) and the validated
//! configuration `run` takes.

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use stolon_core::model::ClusterSpec;
use stolon_store::{CommonArgs, StoreConfig};

/// Command line of `stolon-sentinel`. Every flag also reads `STSENTINEL_<FLAG>`.
#[derive(Debug, Clone, Parser)]
#[command(name = "stolon-sentinel", about = "Stolon sentinel", version = stolon_obs::VERSION_TEXT)]
pub struct Cli {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// a file providing the initial cluster specification, used only at cluster initialization, ignored if cluster is already initialized
    #[arg(long = "initial-cluster-spec", default_value = "")]
    pub initial_cluster_spec: String,
    /// enable debug logging (deprecated, use --log-level=debug instead)
    #[arg(long = "debug", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,
    /// kubernetes store only: where the sentinels' leader record lives: "configmap" (Stolon's lock, an annotation of the cluster's ConfigMap) or "lease" (a coordination.k8s.io/v1 Lease; needs RBAC on leases). All sentinels of a cluster must use the same
    #[arg(long = "kube-election-lock", default_value = "configmap")]
    pub kube_election_lock: String,
    /// enable color in log output (default if attached to a terminal)
    #[arg(long = "log-color", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub log_color: bool,
}

/// Bad flags or an unusable initial cluster spec.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Store flags.
    #[error("{0}")]
    Store(#[from] stolon_store::StoreError),
    /// The spec file cannot be read.
    #[error("cannot read initial cluster spec file {path:?}: {source}")]
    SpecRead {
        /// Path given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The spec file is not a cluster spec.
    #[error("cannot parse initial cluster spec {path:?}: {source}")]
    SpecParse {
        /// Path given.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The spec is invalid.
    #[error("invalid initial cluster spec {path:?}: {source}")]
    SpecInvalid {
        /// Path given.
        path: String,
        /// Why.
        #[source]
        source: stolon_core::model::SpecError,
    },
    /// Bad metrics address.
    #[error("invalid --metrics-listen-address {0:?}: expected host:port")]
    MetricsAddress(String),
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This sentinel's UID (random per process).
    pub uid: String,
    /// Store settings.
    pub store: StoreConfig,
    /// Initial cluster spec (used only when no clusterdata exists).
    pub initial_spec: Option<ClusterSpec>,
    /// Where to serve `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
}

/// Reads and validates a cluster spec file.
pub fn load_spec(path: &str) -> Result<ClusterSpec, ConfigError> {
    let text =
        std::fs::read_to_string(Path::new(path)).map_err(|source| ConfigError::SpecRead {
            path: path.into(),
            source,
        })?;
    let spec: ClusterSpec = match stolon_core::model::decode_spec(text.as_bytes()) {
        Ok(spec) => spec,
        Err(stolon_core::model::SpecDecodeError::Json(source)) => {
            return Err(ConfigError::SpecParse {
                path: path.into(),
                source,
            });
        }
        Err(stolon_core::model::SpecDecodeError::Invalid(source)) => {
            return Err(ConfigError::SpecInvalid {
                path: path.into(),
                source,
            });
        }
    };
    spec.validate().map_err(|source| ConfigError::SpecInvalid {
        path: path.into(),
        source,
    })?;
    Ok(spec)
}

impl Config {
    /// Validates the command line (store flags, spec file, metrics address).
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let store = StoreConfig::from_common(&cli.common)?;
        let initial_spec = if cli.initial_cluster_spec.is_empty() {
            None
        } else {
            Some(load_spec(&cli.initial_cluster_spec)?)
        };
        let addr = &cli.common.metrics_listen_address;
        let metrics_addr = if addr.is_empty() {
            None
        } else {
            Some(
                addr.parse::<SocketAddr>()
                    .map_err(|_| ConfigError::MetricsAddress(addr.clone()))?,
            )
        };
        Ok(Config {
            uid: crate::random_uid(),
            store,
            initial_spec,
            metrics_addr,
        })
    }
}
