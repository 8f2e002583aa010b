//! Command line of stolon-proxy (docs/architecture.md §5): Stolon's flags with their `STPROXY_*`
//! env forms, the common store flags, and the read-only listener flags that Stolon lacks; and
//! the validated [`ProxyConfig`] built from them. No IO here besides reading the process env for
//! the env forms.

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use stolon_store::{CommonArgs, StoreConfig, StoreError};

use crate::engine::Keepalive;

/// Env prefix of every stolon-proxy flag.
pub const ENV_PREFIX: &str = "STPROXY";

/// Stolon proxy
#[derive(Debug, Clone, Parser)]
// Like Go flags, a repeated flag takes its last value.
#[command(
    name = "stolon-proxy",
    about = "Stolon proxy",
    version = stolon_obs::VERSION_TEXT,
    args_override_self = true
)]
pub struct Cli {
    /// Store flags shared by every stolon binary.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Proxy flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// The proxy's own flags.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// proxy listening address
    #[arg(long = "listen-address", default_value = "127.0.0.1")]
    pub listen_address: String,
    /// proxy listening port
    #[arg(long = "port", default_value = "5432")]
    pub port: String,
    /// stop listening on store error
    #[arg(long = "stop-listening", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub stop_listening: bool,
    /// set tcp keepalive idle (seconds)
    #[arg(
        long = "tcp-keepalive-idle",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_idle: i64,
    /// set tcp keepalive probe count number
    #[arg(
        long = "tcp-keepalive-count",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_count: i64,
    /// set tcp keepalive interval (seconds)
    #[arg(
        long = "tcp-keepalive-interval",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub tcp_keepalive_interval: i64,
    /// read-only listening port: new connections are spread round-robin over healthy standbys
    /// within maxStandbyLag of the primary (their data can be stale). Empty: no read-only listener
    #[arg(long = "read-only-port", default_value = "")]
    pub read_only_port: String,
    /// read-only listening address (default: the --listen-address)
    #[arg(long = "read-only-listen-address", default_value = "")]
    pub read_only_listen_address: String,
    /// where read-only connections go when no standby qualifies: "primary" or "refuse"
    #[arg(long = "read-only-fallback", default_value = "primary")]
    pub read_only_fallback: String,
    /// file holding the cluster's failsafe secret. With it, while failsafeMode is on and the
    /// store cannot be read, the proxy keeps routing to the master as long as that master's keeper
    /// confirms it. Empty: no confirmations, the proxy fences at proxyTimeout
    #[arg(long = "failsafe-secret-file", default_value = "")]
    pub failsafe_secret_file: String,
    /// enable colored log output (default: when stderr is a terminal)
    #[arg(long = "log-color", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub log_color: Option<bool>,
    /// enable debug logging (deprecated, use --log-level=debug instead)
    #[arg(long = "debug", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,
}

/// The clap command with `STPROXY_*` env forms for every flag.
pub fn command() -> clap::Command {
    stolon_store::apply_env_prefix(Cli::command(), ENV_PREFIX)
}

/// Parses the command line (and the `STPROXY_*` env vars).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// A configuration error: one line saying what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A common (store) flag is wrong.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A port flag is not a number in 1-65535.
    #[error("invalid {flag} {value:?}: expected a port number in 1-65535")]
    Port {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A keepalive flag is negative or too large.
    #[error("tcp keepalive {what} value must be greater or equal to 0")]
    Keepalive {
        /// `idle`, `count` or `interval`.
        what: &'static str,
    },
    /// `--read-only-fallback` is neither `primary` nor `refuse`.
    #[error("invalid --read-only-fallback {0:?}: expected \"primary\" or \"refuse\"")]
    Fallback(String),
    /// The read-only listener would use the primary listener's address and port.
    #[error("--read-only-port {0} is the same as --port on the same address")]
    SameListener(u16),
}

/// Where read-only connections go when no standby qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyFallback {
    /// To the primary (when this proxy routes to one).
    Primary,
    /// Nowhere: the connection is closed.
    Refuse,
}

/// A listening address as given on the command line; resolved each time the proxy starts
/// listening, as Stolon does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The read-only listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyConfig {
    /// Where it listens.
    pub listen: ListenAddr,
    /// What happens when no standby qualifies.
    pub fallback: ReadOnlyFallback,
}

/// Validated proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Store access.
    pub store: StoreConfig,
    /// The primary (read-write) listener.
    pub listen: ListenAddr,
    /// Close the listening sockets when the store could not be read for `proxyTimeout`.
    pub stop_listening: bool,
    /// Keepalive of proxied sockets.
    pub keepalive: Keepalive,
    /// The read-only listener, if enabled.
    pub read_only: Option<ReadOnlyConfig>,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// Colored logs (`None`: when stderr is a terminal).
    pub log_color: Option<bool>,
    /// Where to serve `GET /metrics` (Go form `host:port`, `:port` = all addresses), if set.
    pub metrics_listen: Option<String>,
}

impl ProxyConfig {
    /// Validates the flags.
    pub fn from_cli(cli: &Cli) -> Result<ProxyConfig, ConfigError> {
        let p = &cli.proxy;
        let mut common = cli.common.clone();
        if p.debug {
            common.log_level = "debug".into();
        }
        let store = StoreConfig::from_common(&common)?;
        let listen = ListenAddr {
            host: p.listen_address.clone(),
            port: parse_port("--port", &p.port)?,
        };
        let keepalive = Keepalive::from_flags(
            non_negative(p.tcp_keepalive_idle, "idle")?,
            u32::try_from(non_negative(p.tcp_keepalive_count, "count")?)
                .map_err(|_| ConfigError::Keepalive { what: "count" })?,
            non_negative(p.tcp_keepalive_interval, "interval")?,
        );
        let fallback = match p.read_only_fallback.as_str() {
            "primary" => ReadOnlyFallback::Primary,
            "refuse" => ReadOnlyFallback::Refuse,
            other => return Err(ConfigError::Fallback(other.to_string())),
        };
        let read_only = if p.read_only_port.is_empty() {
            None
        } else {
            let host = if p.read_only_listen_address.is_empty() {
                listen.host.clone()
            } else {
                p.read_only_listen_address.clone()
            };
            let ro = ListenAddr {
                host,
                port: parse_port("--read-only-port", &p.read_only_port)?,
            };
            if ro == listen {
                return Err(ConfigError::SameListener(ro.port));
            }
            Some(ReadOnlyConfig {
                listen: ro,
                fallback,
            })
        };
        Ok(ProxyConfig {
            store,
            listen,
            stop_listening: p.stop_listening,
            keepalive,
            read_only,
            log_level: common.log_level,
            log_color: p.log_color,
            metrics_listen: (!common.metrics_listen_address.is_empty())
                .then(|| common.metrics_listen_address.clone()),
        })
    }
}

fn parse_port(flag: &'static str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(ConfigError::Port {
            flag,
            value: value.to_string(),
        }),
    }
}

fn non_negative(v: i64, what: &'static str) -> Result<u64, ConfigError> {
    u64::try_from(v).map_err(|_| ConfigError::Keepalive { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> Result<ProxyConfig, ConfigError> {
        let mut args = vec![
            "stolon-proxy",
            "--cluster-name",
            "c",
            "--store-backend",
            "etcdv3",
        ];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).expect("flags parse");
        ProxyConfig::from_cli(&cli)
    }

    #[test]
    fn defaults_match_stolon() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            c.listen,
            ListenAddr {
                host: "127.0.0.1".into(),
                port: 5432
            }
        );
        assert!(c.stop_listening);
        assert_eq!(c.keepalive, Keepalive::default());
        assert_eq!(c.read_only, None);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn flags_are_validated() {
        let c = cfg(&["--stop-listening=false", "--tcp-keepalive-idle", "30"]).unwrap();
        assert!(!c.stop_listening);
        assert_eq!(c.keepalive, Keepalive::from_flags(30, 0, 0));
        assert_eq!(
            cfg(&["--tcp-keepalive-idle", "-1"])
                .unwrap_err()
                .to_string(),
            "tcp keepalive idle value must be greater or equal to 0"
        );
        assert!(matches!(
            cfg(&["--port", "70000"]),
            Err(ConfigError::Port { .. })
        ));
        assert!(matches!(
            cfg(&["--read-only-fallback", "maybe"]),
            Err(ConfigError::Fallback(_))
        ));
        assert!(matches!(
            cfg(&["--read-only-port", "5432"]),
            Err(ConfigError::SameListener(5432))
        ));
        assert!(cfg(&["--debug"]).unwrap().log_level == "debug");
        assert!(matches!(
            cfg(&["--store-backend", "consul"]),
            Err(ConfigError::Store(_))
        ));
    }

    #[test]
    fn read_only_listener() {
        let c = cfg(&["--read-only-port", "6432", "--read-only-fallback", "refuse"]).unwrap();
        assert_eq!(
            c.read_only,
            Some(ReadOnlyConfig {
                listen: ListenAddr {
                    host: "127.0.0.1".into(),
                    port: 6432
                },
                fallback: ReadOnlyFallback::Refuse,
            })
        );
    }

    #[test]
    fn every_flag_has_an_env_form() {
        let cmd = stolon_store::config::apply_env_prefix_with(Cli::command(), ENV_PREFIX, |_| None);
        let help = cmd.clone().render_long_help().to_string();
        for name in [
            "STPROXY_LISTEN_ADDRESS",
            "STPROXY_PORT",
            "STPROXY_STOP_LISTENING",
            "STPROXY_TCP_KEEPALIVE_IDLE",
            "STPROXY_TCP_KEEPALIVE_COUNT",
            "STPROXY_TCP_KEEPALIVE_INTERVAL",
            "STPROXY_READ_ONLY_PORT",
            "STPROXY_FAILSAFE_SECRET_FILE",
            "STPROXY_CLUSTER_NAME",
            "STPROXY_STORE_ENDPOINTS",
        ] {
            assert!(help.contains(name), "{name} missing from help");
        }
    }
}
