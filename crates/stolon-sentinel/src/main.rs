//! `stolon-sentinel`: parses flags (and `STSENTINEL_*` env), validates them, connects to the
//! store and runs the sentinel until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use stolon_obs::logging::{self, fatal};
use stolon_sentinel::{Cli, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cmd = stolon_store::apply_env_prefix(Cli::command(), "STSENTINEL");
    let matches = match cmd.try_get_matches() {
        Ok(m) => m,
        Err(e) => stolon_obs::exit_on_clap_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => stolon_obs::exit_on_clap_error(e),
    };
    // Logging first, at the level asked for, so that every later refusal is a FATAL line.
    let level = if cli.debug {
        "debug"
    } else {
        cli.common.log_level.as_str()
    };
    let color = stolon_obs::explicit_flag(&matches, "log_color");
    match stolon_obs::log_options(level, &cli.common.log_format, color) {
        Ok(opts) => logging::init(&opts),
        Err(e) => fatal(e),
    }
    logging::warn_all(stolon_store::config::startup_warnings(&cli.common));
    if cli.debug {
        tracing::warn!("--debug is deprecated, use --log-level=debug instead");
    }
    let cfg = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => fatal(e),
    };
    let election_lock: stolon_kube::ElectionLock = match cli.kube_election_lock.parse() {
        Ok(l) => l,
        Err(e) => fatal(format!("invalid --kube-election-lock: {e}")),
    };
    // POD_NAME is read here, at the edge: the kubernetes backend needs it, etcd ignores it.
    let connected =
        match stolon_kube::KubeOptions::for_component(&cfg.store, std::env::var("POD_NAME").ok()) {
            Ok(kube) => {
                let kube = stolon_kube::KubeOptions {
                    election_lock,
                    ..kube
                };
                stolon_kube::connect_any(&cfg.store, &kube).await
            }
            Err(e) => Err(e),
        };
    let (store, election) = match connected {
        Ok(x) => x,
        Err(e) => fatal(format!("cannot create store: {e}")),
    };
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = int.recv() => tracing::info!("SIGINT received, stopping"),
        }
        signals.cancel();
    });
    match stolon_sentinel::run(cfg, store, election, cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(format!("sentinel failed: {e}")),
    }
}
