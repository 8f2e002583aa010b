//! The `stolon-proxy` binary: parse flags (with `STPROXY_*` env forms), set up logging, connect
//! to the store and run the proxy daemon until SIGINT or SIGTERM. Bad flags are one line on
//! stderr and exit code 1.

use std::process::ExitCode;

use stolon_obs::logging::{self, fatal};
use stolon_proxy::config::{self, ProxyConfig};
use stolon_proxy::daemon::{self, RunOptions};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match config::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => stolon_obs::exit_on_clap_error(e),
    };
    // Logging first, at the level asked for, so that every later refusal is a FATAL line.
    let level = if cli.proxy.debug {
        "debug"
    } else {
        cli.common.log_level.as_str()
    };
    match stolon_obs::log_options(level, &cli.common.log_format, cli.proxy.log_color) {
        Ok(opts) => logging::init(&opts),
        Err(e) => fatal(e),
    }
    logging::warn_all(stolon_store::config::startup_warnings(&cli.common));
    if cli.proxy.debug {
        tracing::warn!("--debug is deprecated, use --log-level=debug instead");
    }
    let cfg = match ProxyConfig::from_cli(&cli) {
        Ok(cfg) => cfg,
        Err(e) => fatal(one_line(&e.to_string())),
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(one_line(&format!("{e:#}"))),
    }
}

fn run(cfg: ProxyConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        // POD_NAME is read here, at the edge: the kubernetes backend needs it, etcd ignores it.
        let kube =
            stolon_kube::KubeOptions::for_component(&cfg.store, std::env::var("POD_NAME").ok())?;
        let (store, _election) = stolon_kube::connect_any(&cfg.store, &kube).await?;
        let uid = stolon_core::uid::uid_from_bytes(rand::random::<[u8; 4]>());
        let cancel = CancellationToken::new();
        tokio::spawn(stop_on_signal(cancel.clone()));
        daemon::run(cfg, store, RunOptions::new(uid), cancel).await?;
        Ok(())
    })
}

/// Cancels `cancel` on SIGINT or SIGTERM.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stop signal received");
    cancel.cancel();
}

/// A message as one line.
fn one_line(msg: &str) -> String {
    msg.replace(['\n', '\r'], " ").trim_end().to_string()
}
