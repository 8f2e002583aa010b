//! Command line of stolonctl (clap derive): the common store flags of every stolon binary
//! (flattened from `stolon_store::CommonArgs`, each with a `STOLONCTL_*` env form), the
//! stolonctl-only Kubernetes flags, and the subcommands.
//!
//! Positional arguments are collected as lists so that stolonctl, not clap, words the refusal
//! ("too many arguments", "keeper uid required") as Stolon does.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use stolon_store::CommonArgs;

/// Env prefix of stolonctl's top-level flags.
pub const ENV_PREFIX: &str = "STOLONCTL";

/// stolon command line client
#[derive(Debug, Parser)]
#[command(name = "stolonctl", about = "stolon command line client", version = crate::app::VERSION_TEXT)]
pub struct Cli {
    /// Store flags shared by every stolon binary.
    #[command(flatten)]
    pub common: CommonArgs,
    /// path to kubeconfig file. Overrides $KUBECONFIG
    #[arg(long = "kubeconfig", default_value = "")]
    pub kubeconfig: String,
    /// name of the kubeconfig context to use
    #[arg(long = "kube-context", default_value = "")]
    pub kube_context: String,
    /// name of the kubernetes namespace to use
    #[arg(long = "kube-namespace", default_value = "")]
    pub kube_namespace: String,
    /// The subcommand (none: print help).
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Display the version
    Version,
    /// Initialize a new cluster
    Init(InitArgs),
    /// Update a cluster specification
    Update(UpdateArgs),
    /// Retrieve the current cluster specification
    Spec(SpecArgs),
    /// Display the current cluster status
    Status(StatusArgs),
    /// Manage current cluster data
    #[command(subcommand)]
    Clusterdata(ClusterdataCmd),
    /// Force keeper as "temporarily" failed. The sentinel will compute a new clusterdata considering it as failed and then restore its state to the real one.
    Failkeeper(KeeperArgs),
    /// Removes keeper from cluster data
    Removekeeper(KeeperArgs),
    /// Promotes a standby cluster to a primary cluster
    Promote(PromoteArgs),
    /// Register stolon keepers for service discovery
    Register(RegisterArgs),
    /// Pause the cluster: no automatic failover and no keeper-driven restart until resume
    Pause(NoArgs),
    /// Resume a paused cluster: automatic failover again
    Resume(NoArgs),
    /// Display the last master changes (failovers and switchovers)
    History(HistoryArgs),
    /// Move the master to a standby without losing a write (planned switchover)
    Switchover(SwitchoverArgs),
}

/// A command that takes no argument.
#[derive(Debug, Args)]
pub struct NoArgs {
    /// None accepted.
    #[arg(value_name = "ARGS", hide = true)]
    pub args: Vec<String>,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// output format (text or json)
    #[arg(short = 'f', long = "format", default_value = "")]
    pub format: String,
}

/// `switchover` (docs/switchover.md).
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// keeper to promote (default: the best standby)
    #[arg(long = "to", default_value = "")]
    pub to: String,
    /// longest time writes may pause before the switchover is rolled back
    #[arg(long = "timeout", default_value = "30s")]
    pub timeout: String,
    /// don't ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// None accepted.
    #[arg(value_name = "ARGS", hide = true)]
    pub args: Vec<String>,
}

/// `register` (Consul service registration; stolon-rs checks the flags and refuses).
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// register backend type (consul)
    #[arg(long = "register-backend", default_value = "consul")]
    pub register_backend: String,
    /// a comma-delimited list of register endpoints (use https scheme for tls communication) defaults: http://127.0.0.1:8500 for consul
    #[arg(long = "register-endpoints", default_value = "http://127.0.0.1:8500")]
    pub register_endpoints: String,
    /// certificate file for client identification to the register
    #[arg(long = "register-cert-file", default_value = "")]
    pub register_cert_file: String,
    /// private key file for client identification to the register
    #[arg(long = "register-key", default_value = "")]
    pub register_key: String,
    /// skip register certificate verification (insecure!!!)
    #[arg(long = "register-skip-tls-verify", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub register_skip_tls_verify: bool,
    /// verify certificates of HTTPS-enabled register servers using this CA bundle
    #[arg(long = "register-ca-file", default_value = "")]
    pub register_ca_file: String,
    /// register master as well for service discovery (use it with caution!!!)
    #[arg(long = "register-master", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub register_master: bool,
    /// a comma-delimited list of tag to be used when registering master
    #[arg(long = "tag-master-as", default_value = "master")]
    pub tag_master_as: String,
    /// a comma-delimited list of tag to be used when registering slave
    #[arg(long = "tag-slave-as", default_value = "slave")]
    pub tag_slave_as: String,
    /// enable debug logging
    #[arg(long = "debug", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,
    /// number of seconds to sleep before probing for change
    #[arg(long = "sleep-interval", default_value_t = 10)]
    pub sleep_interval: i64,
}

/// `init [cluster spec]`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// file containing the new cluster spec (`-` for stdin)
    #[arg(short = 'f', long = "file", default_value = "")]
    pub file: String,
    /// don't ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// initialise only when the store holds no cluster data (compare-and-create, never
    /// overwrites, asks nothing); existing cluster data is left alone and the exit status is 0
    #[arg(long = "if-absent", conflicts_with = "yes")]
    pub if_absent: bool,
    /// The cluster spec as JSON (at most one).
    #[arg(value_name = "SPEC", allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `update [cluster spec]`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// patch the current cluster specification instead of replacing it
    #[arg(short = 'p', long = "patch")]
    pub patch: bool,
    /// file containing a complete cluster specification or a patch to apply to the current cluster specification (`-` for stdin)
    #[arg(short = 'f', long = "file", default_value = "")]
    pub file: String,
    /// The new spec or patch as JSON (exactly one of this or --file).
    #[arg(value_name = "SPEC")]
    pub args: Vec<String>,
}

/// `spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// also show default values
    #[arg(long = "defaults")]
    pub defaults: bool,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// output format (text or json)
    #[arg(short = 'f', long = "format", default_value = "")]
    pub format: String,
}

/// `clusterdata read|write`.
#[derive(Debug, Subcommand)]
pub enum ClusterdataCmd {
    /// Retrieve the current cluster data
    Read(ClusterdataReadArgs),
    /// Write cluster data
    Write(ClusterdataWriteArgs),
}

/// `clusterdata read`.
#[derive(Debug, Args)]
pub struct ClusterdataReadArgs {
    /// pretty print
    #[arg(long = "pretty")]
    pub pretty: bool,
    /// file to write cluster data (empty or `-`: stdout)
    #[arg(short = 'f', long = "file", default_value = "")]
    pub file: String,
}

/// `clusterdata write`.
#[derive(Debug, Args)]
pub struct ClusterdataWriteArgs {
    /// file containing the new cluster data (empty or `-`: stdin)
    #[arg(short = 'f', long = "file", default_value = "")]
    pub file: String,
    /// don't ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
}

/// `failkeeper <uid>` / `removekeeper <uid>`.
#[derive(Debug, Args)]
pub struct KeeperArgs {
    /// The keeper UID (exactly one).
    #[arg(value_name = "KEEPER_UID")]
    pub args: Vec<String>,
}

/// `promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// don't ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// None accepted.
    #[arg(value_name = "ARGS", hide = true)]
    pub args: Vec<String>,
}

/// The clap command with Stolon's conventions applied: top-level flags may also be given after
/// the subcommand (cobra persistent flags) and each has a `STOLONCTL_<NAME>` env form, a flag on
/// the command line beating its env var.
pub fn command() -> clap::Command {
    let cmd = Cli::command().mut_args(|a| a.global(true));
    stolon_store::apply_env_prefix(cmd, ENV_PREFIX)
}

/// Parses `args` (including the program name). Errors are clap's (help and version included).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn flags_before_or_after_the_subcommand() {
        let cli = parse([
            "stolonctl",
            "--cluster-name",
            "a",
            "status",
            "--store-backend",
            "etcdv3",
        ])
        .unwrap();
        assert_eq!(cli.common.cluster_name, "a");
        assert_eq!(cli.common.store_backend, "etcdv3");
        assert!(matches!(cli.command, Some(Cmd::Status(_))));
        let cli = parse(["stolonctl", "init", "-y", "{\"initMode\":\"new\"}", "x"]).unwrap();
        let Some(Cmd::Init(a)) = cli.command else {
            panic!("init")
        };
        assert!(a.yes);
        assert_eq!(a.args.len(), 2);
        let cli = parse(["stolonctl", "update", "-p", "{}"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Cmd::Update(UpdateArgs { patch: true, .. }))
        ));
        let cli = parse(["stolonctl", "clusterdata", "read", "--pretty"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Cmd::Clusterdata(ClusterdataCmd::Read(
                ClusterdataReadArgs { pretty: true, .. }
            )))
        ));
        let cli = parse(["stolonctl", "--kube-namespace", "ns", "version"]).unwrap();
        assert_eq!(cli.kube_namespace, "ns");
    }
}
