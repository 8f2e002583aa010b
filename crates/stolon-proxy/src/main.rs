//! The `stolon-proxy` binary: parse flags (with `STPROXY_*` env forms), set up logging, connect
//! to the store and run the proxy daemon until SIGINT or SIGTERM. Bad flags are one line on
//! stderr and exit code 1.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use stolon_failsafe::{HttpTransport, Transport};
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
    // The secret is read once, here; the error names the file, never its contents.
    let failsafe: Option<Arc<dyn Transport>> = if cli.proxy.failsafe_secret_file.is_empty() {
        None
    } else {
        match stolon_failsafe::load_secret(Path::new(&cli.proxy.failsafe_secret_file)) {
            Ok(secret) => Some(Arc::new(HttpTransport::new(secret))),
            Err(e) => fatal(one_line(&e)),
        }
    };
    match run(cfg, failsafe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(one_line(&format!("{e:#}"))),
    }
}

/// Env var choosing the async runtime: `0` (the default) runs everything on one thread, `N > 0`
/// on a pool of `N` worker threads.
const WORKER_THREADS_ENV: &str = "STPROXY_WORKER_THREADS";

/// Reads [`WORKER_THREADS_ENV`]: unset or empty is 0.
fn worker_threads() -> Result<usize, String> {
    let Some(value) = std::env::var_os(WORKER_THREADS_ENV) else {
        return Ok(0);
    };
    parse_worker_threads(&value.to_string_lossy())
}

fn parse_worker_threads(value: &str) -> Result<usize, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(0);
    }
    match value.parse::<usize>() {
        Ok(n) if n <= 1024 => Ok(n),
        _ => Err(format!(
            "invalid {WORKER_THREADS_ENV} {value:?}: expected 0 (one thread) or a number of worker threads up to 1024"
        )),
    }
}

/// The runtime of the whole process. A forwarder spends its time in short system calls, so by
/// default everything (the copy of every connection, the store checks) runs on one thread: no
/// wake-ups of idle workers, no hand-over of ready connections between threads, and one
/// `epoll_wait` serves every connection that became ready at once. A pool of workers only pays
/// off when the proxy needs more than one core.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn run(cfg: ProxyConfig, failsafe: Option<Arc<dyn Transport>>) -> anyhow::Result<()> {
    let threads = worker_threads().map_err(anyhow::Error::msg)?;
    let rt =
        runtime(threads).map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        // POD_NAME is read here, at the edge: the kubernetes backend needs it, etcd ignores it.
        let kube =
            stolon_kube::KubeOptions::for_component(&cfg.store, std::env::var("POD_NAME").ok())?;
        let (store, _election) = stolon_kube::connect_any(&cfg.store, &kube).await?;
        let uid = stolon_core::uid::uid_from_bytes(rand::random::<[u8; 4]>());
        let cancel = CancellationToken::new();
        tokio::spawn(stop_on_signal(cancel.clone()));
        let opts = RunOptions {
            failsafe,
            ..RunOptions::new(uid)
        };
        daemon::run(cfg, store, opts, cancel).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_values() {
        assert_eq!(parse_worker_threads(""), Ok(0));
        assert_eq!(parse_worker_threads("0"), Ok(0));
        assert_eq!(parse_worker_threads(" 4 "), Ok(4));
        for bad in ["-1", "two", "1.5", "100000"] {
            let err = parse_worker_threads(bad).unwrap_err();
            assert!(err.contains(WORKER_THREADS_ENV), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
