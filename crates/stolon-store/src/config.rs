//! The common flags of all four binaries (docs/architecture.md §5), their env-var forms (§5),
//! and the validated store configuration derived from them.

use std::ffi::OsString;
use std::time::Duration;

use clap::Args;
use stolon_core::GoDuration;

use crate::error::StoreError;

/// Default etcd endpoint when `--store-endpoints` is empty.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// Log levels `--log-level` accepts.
pub const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

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
    /// log line format: console (Stolon's layout) or json (one object per line)
    #[arg(long = "log-format", default_value = "console")]
    pub log_format: String,
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
    /// The configuration that goes with an in-memory store handed to a component directly (tests,
    /// simulation): no endpoints or TLS, Stolon's default prefix; only `cluster_name` (a metrics
    /// label and the cluster path) matters.
    pub fn in_memory(cluster_name: &str) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::EtcdV3,
            endpoints: Vec::new(),
            timeout: std::time::Duration::from_secs(5),
            prefix: "stolon/cluster".into(),
            cluster_name: cluster_name.into(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            skip_tls_verify: false,
            kube_resource_kind: None,
        }
    }

    /// `path.Join(<prefix>, <cluster name>)`, Stolon's cluster path.
    pub fn cluster_path(&self) -> String {
        crate::keys::go_path_join(&[&self.prefix, &self.cluster_name])
    }
}

impl StoreConfig {
    /// Validates the common flags the way Stolon does (`cmd/common.go` + store constructors) and
    /// builds the store configuration. Every error is one line naming what is wrong.
    pub fn from_common(args: &CommonArgs) -> Result<StoreConfig, StoreError> {
        let cfg = |m: String| StoreError::Config(m);
        if args.cluster_name.is_empty() {
            return Err(cfg("cluster name required".into()));
        }
        check_log_level(&args.log_level)?;
        let backend = match args.store_backend.as_str() {
            "" => return Err(cfg("store backend type required".into())),
            "etcdv3" => StoreBackend::EtcdV3,
            "kubernetes" => match args.kube_resource_kind.as_str() {
                "" => return Err(cfg("unspecified kubernetes resource kind (--kube-resource-kind, only \"configmap\" is supported)".into())),
                "configmap" => StoreBackend::Kubernetes,
                other => {
                    return Err(cfg(format!(
                        "wrong kubernetes resource kind: {other:?}, supported resources kinds are: \"configmap\""
                    )));
                }
            },
            "etcdv2" | "etcd" | "consul" => {
                return Err(cfg(format!(
                    "store backend {:?} is not supported by stolon-rs (use etcdv3 or kubernetes)",
                    args.store_backend
                )));
            }
            other => {
                return Err(cfg(format!("Unknown store backend: {other:?}")));
            }
        };
        let timeout = parse_store_timeout(&args.store_timeout)?;
        let endpoints = match backend {
            StoreBackend::EtcdV3 => parse_endpoints(&args.store_endpoints)?,
            // The Kubernetes backend talks to the API server, not to store endpoints.
            StoreBackend::Kubernetes => Vec::new(),
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let cert_file = opt(&args.store_cert_file);
        let key_file = opt(&args.store_key);
        if cert_file.is_some() != key_file.is_some() {
            return Err(cfg(
                "--store-cert-file and --store-key must be given together".into(),
            ));
        }
        Ok(StoreConfig {
            backend,
            endpoints,
            timeout,
            prefix: args.store_prefix.clone(),
            cluster_name: args.cluster_name.clone(),
            cert_file,
            key_file,
            ca_file: opt(&args.store_ca_file),
            skip_tls_verify: args.store_skip_tls_verify,
            kube_resource_kind: opt(&args.kube_resource_kind),
        })
    }

    /// True when the endpoints use `https` (TLS to the store).
    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

/// Checks `--log-level` (`debug`, `info`, `warn`, `error`).
pub fn check_log_level(level: &str) -> Result<(), StoreError> {
    if LOG_LEVELS.contains(&level) {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "invalid log level: {level:?} (valid: debug, info, warn, error)"
        )))
    }
}

fn parse_store_timeout(s: &str) -> Result<Duration, StoreError> {
    let d = GoDuration::parse(s).map_err(|_| {
        StoreError::Config(format!(
            "invalid --store-timeout {s:?}: expected a duration such as \"5s\" or \"500ms\""
        ))
    })?;
    if d.as_nanos() < 0 {
        return Err(StoreError::Config(format!(
            "invalid --store-timeout {s:?}: must not be negative"
        )));
    }
    if d.as_nanos() == 0 {
        // Go accepts 0 (and then every store request times out at once): use the default.
        return Ok(DEFAULT_STORE_TIMEOUT);
    }
    Ok(d.to_std())
}

/// `--store-timeout`'s default, also used for `--store-timeout 0`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Warnings about the common flags that do not stop a binary from starting (each binary logs
/// them, before any fatal error).
pub fn startup_warnings(args: &CommonArgs) -> Vec<String> {
    let mut out = Vec::new();
    if GoDuration::parse(&args.store_timeout).is_ok_and(|d| d.as_nanos() == 0) {
        out.push(format!(
            "--store-timeout {:?} would make every store request time out at once: using the default 5s",
            args.store_timeout
        ));
    }
    out
}

/// Parses `--store-endpoints`: a comma list, scheme optional (defaults to `http`), only `http`
/// and `https`, all endpoints with the same scheme, each `host:port`. Empty means
/// [`DEFAULT_ETCD_ENDPOINT`]. Returns the endpoints normalised to `scheme://host:port`.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, StoreError> {
    let cfg = |m: String| StoreError::Config(m);
    let list = list.trim();
    if list.is_empty() {
        return Ok(vec![DEFAULT_ETCD_ENDPOINT.to_string()]);
    }
    let mut scheme: Option<&str> = None;
    let mut out = Vec::new();
    for raw in list.split(',') {
        let e = raw.trim();
        if e.is_empty() {
            return Err(cfg(format!("empty endpoint in --store-endpoints {list:?}")));
        }
        let (s, rest) = match e.split_once("://") {
            Some((s, rest)) => (s, rest),
            None => ("http", e),
        };
        if s != "http" && s != "https" {
            return Err(cfg(format!(
                "endpoint {e:?}: scheme must be http or https, not {s:?}"
            )));
        }
        match scheme {
            None => scheme = Some(s),
            Some(prev) if prev != s => {
                return Err(cfg(format!(
                    "all store endpoints must use the same scheme ({prev} and {s} mixed)"
                )));
            }
            Some(_) => {}
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(cfg(format!(
                "endpoint {e:?}: expected [scheme://]host:port"
            )));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| cfg(format!("endpoint {e:?}: expected [scheme://]host:port")))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(cfg(format!(
                "endpoint {e:?}: expected [scheme://]host:port with a port in 1-65535"
            )));
        }
        out.push(format!("{s}://{authority}"));
    }
    Ok(out)
}

/// Splits `host:port` or `[v6]:port`.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        Some((host, port))
    } else {
        let (host, port) = authority.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        Some((host, port))
    }
}

/// Gives every top-level long flag of `cmd` an env var `<PREFIX>_<FLAG>` (flag name uppercased,
/// `-` replaced by `_`), Stolon's `flagutil.SetFlagsFromEnv` semantics (docs/architecture.md §5):
/// a flag given on the command line beats its env var; an empty env var is ignored; only the
/// command's own arguments are scanned (a subcommand's own flags get no env form; arguments
/// declared `global` are the command's own and keep their env var in subcommands). Boolean flags
/// also accept Go's boolean spellings (`1`, `t`, `TRUE`, `0`, `f`, `False`, ...).
///
/// Call it on the root command before parsing (`Cli::command()` then
/// `Cli::from_arg_matches(&apply_env_prefix(cmd, "STKEEPER").get_matches())`). Env values are
/// read when this function runs.
pub fn apply_env_prefix(cmd: clap::Command, prefix: &str) -> clap::Command {
    apply_env_prefix_with(cmd, prefix, |name| std::env::var_os(name))
}

/// [`apply_env_prefix`] with the env lookup that decides which vars count as set (absent and
/// empty ones do not; set ones are registered with clap via `Arg::env`, and clap reads their
/// value from the real process env when this function runs).
pub fn apply_env_prefix_with(
    cmd: clap::Command,
    prefix: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> clap::Command {
    let prefix = prefix.trim_end_matches('_').to_string();
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if long == "help" || long == "version" {
            return arg;
        }
        let name = env_var_name(&prefix, long);
        let arg = if is_bool_arg(&arg) {
            arg.value_parser(GoBoolParser)
        } else {
            arg
        };
        match lookup(&name) {
            // Empty env values are ignored (Stolon semantics); unset ones simply leave the flag
            // at its default. Only set, non-empty vars are registered with clap, which then gives
            // command-line values precedence.
            Some(v) if !v.is_empty() => arg.env(name).hide_env_values(true),
            _ => {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{help} [env: {name}]").trim_start().to_string())
            }
        }
    })
}

/// `<PREFIX>_<FLAG_UPPER_WITH_UNDERSCORES>`.
pub fn env_var_name(prefix: &str, long_flag: &str) -> String {
    format!(
        "{}_{}",
        prefix.trim_end_matches('_'),
        long_flag.to_uppercase().replace('-', "_")
    )
}

fn is_bool_arg(arg: &clap::Arg) -> bool {
    matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
    ) || arg.get_value_parser().type_id() == clap::builder::ValueParser::bool().type_id()
}

/// Parses Go's `strconv.ParseBool` spellings.
#[derive(Clone, Copy, Debug)]
struct GoBoolParser;

impl clap::builder::TypedValueParser for GoBoolParser {
    type Value = bool;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<bool, clap::Error> {
        match value.to_str() {
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            _ => {
                let mut err = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
                if let Some(arg) = arg {
                    err.insert(
                        clap::error::ContextKind::InvalidArg,
                        clap::error::ContextValue::String(arg.to_string()),
                    );
                }
                err.insert(
                    clap::error::ContextKind::InvalidValue,
                    clap::error::ContextValue::String(value.to_string_lossy().into_owned()),
                );
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        /// a bool flag
        #[arg(long = "log-color")]
        log_color: bool,
        #[command(subcommand)]
        cmd: Option<Sub>,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Init {
            /// subcommand flag: no env form
            #[arg(long = "file", default_value = "")]
            file: String,
        },
    }

    fn args(extra: &[&str]) -> CommonArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parse").common
    }

    fn cfg_err(extra: &[&str]) -> String {
        match StoreConfig::from_common(&args(extra)) {
            Err(StoreError::Config(m)) => m,
            other => panic!("expected a config error for {extra:?}, got {other:?}"),
        }
    }

    const BASE: [&str; 4] = ["--cluster-name", "c", "--store-backend", "etcdv3"];

    fn with_base(extra: &[&'static str]) -> Vec<&'static str> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn defaults() {
        let cfg = StoreConfig::from_common(&args(&BASE)).expect("valid");
        assert_eq!(cfg.backend, StoreBackend::EtcdV3);
        assert_eq!(cfg.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert_eq!(cfg.prefix, "stolon/cluster");
        assert_eq!(cfg.cluster_path(), "stolon/cluster/c");
        assert!(!cfg.uses_tls());
        assert_eq!(cfg.cert_file, None);
    }

    #[test]
    fn required_flags_and_backends() {
        assert_eq!(cfg_err(&[]), "cluster name required");
        assert_eq!(
            cfg_err(&["--cluster-name", "c"]),
            "store backend type required"
        );
        for b in ["etcdv2", "etcd", "consul"] {
            let m = cfg_err(&["--cluster-name", "c", "--store-backend", b]);
            assert!(m.contains("not supported by stolon-rs"), "{b}: {m}");
            assert!(m.contains(b), "{b}: {m}");
        }
        let m = cfg_err(&["--cluster-name", "c", "--store-backend", "zookeeper"]);
        assert_eq!(m, "Unknown store backend: \"zookeeper\"");
        let m = cfg_err(&["--cluster-name", "c", "--store-backend", "kubernetes"]);
        assert!(m.contains("kubernetes resource kind"), "{m}");
        let m = cfg_err(&[
            "--cluster-name",
            "c",
            "--store-backend",
            "kubernetes",
            "--kube-resource-kind",
            "secret",
        ]);
        assert!(m.contains("wrong kubernetes resource kind"), "{m}");
        let k = StoreConfig::from_common(&args(&[
            "--cluster-name",
            "c",
            "--store-backend",
            "kubernetes",
            "--kube-resource-kind",
            "configmap",
        ]))
        .expect("kubernetes with configmap is valid");
        assert_eq!(k.backend, StoreBackend::Kubernetes);
        assert_eq!(k.kube_resource_kind.as_deref(), Some("configmap"));
    }

    #[test]
    fn endpoints() {
        let ok = |list: &str| parse_endpoints(list).expect(list);
        assert_eq!(ok(""), vec!["http://127.0.0.1:2379"]);
        assert_eq!(
            ok("127.0.0.1:1,127.0.0.2:2"),
            vec!["http://127.0.0.1:1", "http://127.0.0.2:2"]
        );
        assert_eq!(ok("https://h:3/"), vec!["https://h:3"]);
        assert_eq!(ok("http://[::1]:2379"), vec!["http://[::1]:2379"]);
        for bad in [
            "http://a:1,https://b:2",
            "ftp://a:1",
            "a:1,,b:2",
            "http://a",
            "http://a:0",
            "http://a:99999",
            "http://a:1/path",
            "http://:1",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad} accepted");
        }
        let m = cfg_err(&with_base(&["--store-endpoints", "http://a:1,https://b:2"]));
        assert!(m.contains("same scheme"), "{m}");
        let cfg = StoreConfig::from_common(&args(&with_base(&[
            "--store-endpoints",
            "https://a:1,https://b:2",
        ])))
        .expect("https");
        assert!(cfg.uses_tls());
    }

    #[test]
    fn timeout_and_log_level() {
        let cfg = StoreConfig::from_common(&args(&with_base(&["--store-timeout", "1m30s"])))
            .expect("valid");
        assert_eq!(cfg.timeout, Duration::from_secs(90));
        let m = cfg_err(&with_base(&["--store-timeout", "5"]));
        assert!(m.contains("--store-timeout") && m.contains("\"5\""), "{m}");
        for zero in ["0", "0s"] {
            let a = args(&with_base(&["--store-timeout", zero]));
            let cfg = StoreConfig::from_common(&a).expect("0 is accepted, as by Go");
            assert_eq!(cfg.timeout, DEFAULT_STORE_TIMEOUT);
            let w = startup_warnings(&a);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("using the default 5s"), "{w:?}");
        }
        assert!(startup_warnings(&args(&with_base(&[]))).is_empty());
        let m = cfg_err(&with_base(&["--store-timeout=-1s"]));
        assert!(m.contains("negative"), "{m}");
        for l in LOG_LEVELS {
            StoreConfig::from_common(&args(&with_base(&["--log-level", l]))).expect(l);
        }
        let m = cfg_err(&with_base(&["--log-level", "verbose"]));
        assert!(m.contains("invalid log level"), "{m}");
    }

    #[test]
    fn cert_and_key_together() {
        let m = cfg_err(&with_base(&["--store-cert-file", "/x"]));
        assert!(m.contains("--store-key"), "{m}");
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_var_name("STKEEPER", "store-endpoints"),
            "STKEEPER_STORE_ENDPOINTS"
        );
        assert_eq!(
            env_var_name("STOLONCTL_", "cluster-name"),
            "STOLONCTL_CLUSTER_NAME"
        );
    }

    /// Runs the child half of the env tests in a child process with `env` set, returning its
    /// printed result line.
    fn run_child(env: &[(&str, &str)], argv: &str) -> String {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "--exact",
            "config::tests::env_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STOLON_STORE_ENV_CHILD", "1")
        .env("STOLON_STORE_ENV_ARGV", argv);
        for (k, _) in std::env::vars() {
            if k.starts_with("STTEST_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        stdout
            .lines()
            .find_map(|l| l.split_once("ENV-RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no result line in: {stdout}"))
            .to_string()
    }

    /// The child half: parses `STOLON_STORE_ENV_ARGV` with prefix `STTEST` and prints the
    /// result. Does nothing in a normal test run.
    #[test]
    fn env_child() {
        if std::env::var_os("STOLON_STORE_ENV_CHILD").is_none() {
            return;
        }
        let argv_env = std::env::var("STOLON_STORE_ENV_ARGV").unwrap_or_default();
        let mut argv = vec!["test".to_string()];
        argv.extend(argv_env.split_whitespace().map(str::to_string));
        let cmd = apply_env_prefix(Cli::command(), "STTEST");
        let line = match cmd
            .try_get_matches_from(argv)
            .and_then(|m| Cli::from_arg_matches(&m))
        {
            Ok(cli) => format!(
                "name={} endpoints={} timeout={} prefix={} skip={} color={} file={}",
                cli.common.cluster_name,
                cli.common.store_endpoints,
                cli.common.store_timeout,
                cli.common.store_prefix,
                cli.common.store_skip_tls_verify,
                cli.log_color,
                match cli.cmd {
                    Some(Sub::Init { file }) => file,
                    None => "-".into(),
                }
            ),
            Err(e) => format!("error={}", e.kind()),
        };
        println!("ENV-RESULT {line}");
    }

    #[test]
    fn env_vars_fill_flags() {
        let r = run_child(
            &[
                ("STTEST_CLUSTER_NAME", "from-env"),
                ("STTEST_STORE_ENDPOINTS", "http://127.0.0.9:1"),
                ("STTEST_STORE_SKIP_TLS_VERIFY", "1"),
                ("STTEST_LOG_COLOR", "T"),
            ],
            "",
        );
        assert_eq!(
            r,
            "name=from-env endpoints=http://127.0.0.9:1 timeout=5s prefix=stolon/cluster skip=true color=true file=-"
        );
    }

    #[test]
    fn flag_beats_env_and_empty_env_is_ignored() {
        let r = run_child(
            &[
                ("STTEST_CLUSTER_NAME", "from-env"),
                ("STTEST_STORE_PREFIX", ""),
                ("STTEST_STORE_TIMEOUT", ""),
                ("STTEST_STORE_SKIP_TLS_VERIFY", "true"),
            ],
            "--cluster-name from-flag --store-skip-tls-verify=false",
        );
        assert_eq!(
            r,
            "name=from-flag endpoints= timeout=5s prefix=stolon/cluster skip=false color=false file=-"
        );
    }

    #[test]
    fn subcommand_flags_have_no_env_form() {
        let r = run_child(
            &[("STTEST_FILE", "/from/env"), ("STTEST_INIT_FILE", "/x")],
            "init",
        );
        assert!(r.ends_with("file="), "{r}");
        let r = run_child(&[], "init --file /f");
        assert!(r.ends_with("file=/f"), "{r}");
    }

    #[test]
    fn unparsable_env_value_is_an_error() {
        let r = run_child(&[("STTEST_STORE_SKIP_TLS_VERIFY", "maybe")], "");
        assert!(r.starts_with("error="), "{r}");
    }
}
