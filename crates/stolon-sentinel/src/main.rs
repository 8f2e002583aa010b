//! `stolon-sentinel`: parses flags (and `STSENTINEL_*` env), validates them, connects to the
//! store and runs the sentinel until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use stolon_sentinel::{Cli, Config};
use tokio_util::sync::CancellationToken;

fn init_logging(cli: &Cli) {
    let level = if cli.debug {
        "debug".to_string()
    } else {
        cli.common.log_level.clone()
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,tower=warn,hyper=warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(cli.log_color)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cmd = stolon_store::apply_env_prefix(Cli::command(), "STSENTINEL");
    let cli = match Cli::from_arg_matches(&cmd.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = stolon_store::config::check_log_level(&cli.common.log_level) {
        eprintln!("stolon-sentinel: {e}");
        return ExitCode::FAILURE;
    }
    let cfg = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stolon-sentinel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let election_lock: stolon_kube::ElectionLock = match cli.kube_election_lock.parse() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stolon-sentinel: invalid --kube-election-lock: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&cli);
    if cli.debug {
        tracing::warn!("--debug is deprecated, use --log-level=debug instead");
    }
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
        Err(e) => {
            eprintln!("stolon-sentinel: cannot create store: {e}");
            return ExitCode::FAILURE;
        }
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
        Err(e) => {
            tracing::error!(error = %e, "sentinel failed");
            ExitCode::FAILURE
        }
    }
}
