//! `stolon-keeper` binary: parse flags (env `STKEEPER_*`), run the startup checks, take the
//! data-dir lock, resolve the keeper UID, connect to the store, and run the keeper loop until
//! SIGTERM/SIGINT (postgres is then stopped in fast mode and we exit 0).

use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use stolon_keeper::{Cli, Keeper, metrics, state};
use stolon_obs::logging::{self, fatal};
use stolon_pg::{Credentials, PgBinaries, ProcessPg, ProcessPgConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

fn main() {
    let cmd = stolon_store::config::apply_env_prefix(Cli::command(), "STKEEPER");
    let matches = match cmd.try_get_matches() {
        Ok(m) => m,
        Err(e) => stolon_obs::exit_on_clap_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => stolon_obs::exit_on_clap_error(e),
    };
    let level = if cli.debug {
        "debug".to_string()
    } else {
        cli.common.log_level.clone()
    };
    let color = stolon_obs::explicit_flag(&matches, "log_color");
    match stolon_obs::log_options(&level, &cli.common.log_format, color) {
        Ok(opts) => logging::init(&opts),
        Err(e) => fatal(e),
    }
    logging::warn_all(stolon_store::config::startup_warnings(&cli.common));
    if nix::unistd::geteuid().is_root() {
        fatal(
            "stolon-keeper must not run as root (PostgreSQL refuses to run as root): run it as an unprivileged user such as postgres",
        );
    }
    // Warnings found before a failure (e.g. trailing newlines) are logged before it.
    let (cfg, warnings) = cli.validate_all();
    for w in &warnings {
        w.log();
    }
    let cfg = cfg.unwrap_or_else(|e| fatal(e));
    let _lock = if cfg.disable_data_dir_locking {
        None
    } else {
        match state::lock_data_dir(&cfg.data_dir) {
            Ok(l) => {
                info!("exclusive lock on data dir taken");
                Some(l)
            }
            Err(e) => fatal(e),
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fatal(format!("cannot start the async runtime: {e}")),
    };
    let code = rt.block_on(run(cfg));
    std::process::exit(code);
}

async fn run(cfg: stolon_keeper::KeeperConfig) -> i32 {
    let saved = match state::load_keeper_state(&cfg.data_dir) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => fatal(format!("failed to load keeper state: {e}")),
    };
    let mut ks = saved.clone();
    if !saved.uid.is_empty() {
        if !cfg.uid.is_empty() && cfg.uid != saved.uid {
            fatal(format!(
                "saved uid {:?} differs from configuration uid: {:?}",
                saved.uid, cfg.uid
            ));
        }
    } else {
        ks.uid = if cfg.uid.is_empty() {
            let u = state::new_uid();
            info!(uid = %u, "uid not provided, generating a random uid");
            u
        } else {
            cfg.uid.clone()
        };
        if let Err(e) = state::save_keeper_state(&cfg.data_dir, &ks) {
            fatal(format!("failed to save keeper state: {e}"));
        }
    }
    info!(uid = %ks.uid, "keeper uid");
    let boot_uuid = uuid::Uuid::new_v4().to_string();

    // POD_NAME is read here, at the edge: the kubernetes backend needs it, etcd ignores it.
    let connected =
        match stolon_kube::KubeOptions::for_component(&cfg.store, std::env::var("POD_NAME").ok()) {
            Ok(kube) => stolon_kube::connect_any(&cfg.store, &kube).await,
            Err(e) => Err(e),
        };
    let (store, _election) = match connected {
        Ok(s) => s,
        Err(e) => fatal(format!("cannot create store: {e}")),
    };
    let binaries = match &cfg.pg_bin_path {
        Some(p) => PgBinaries::in_dir(p),
        None => PgBinaries::from_path(),
    };
    let pg_cfg = ProcessPgConfig::new(
        binaries,
        cfg.data_dir.join("postgres"),
        "/tmp",
        cfg.pg_port,
        Credentials::new(cfg.su.username.clone(), cfg.su.password.clone()),
        Credentials::new(cfg.repl.username.clone(), cfg.repl.password.clone()),
    );
    let pg = match ProcessPg::new(pg_cfg) {
        Ok(p) => Arc::new(p),
        Err(e) => fatal(format!("cannot create postgres manager: {e}")),
    };
    let m = metrics::Metrics::new(&cfg.store.cluster_name);
    let cancel = CancellationToken::new();
    let metrics_listener = match &cfg.metrics_listen_address {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => fatal(format!("metrics http server error: {e}")),
        },
        None => None,
    };
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => info!("received SIGTERM"),
                _ = int.recv() => info!("received SIGINT"),
            }
            cancel.cancel();
        });
    }
    let failsafe_secret = cfg.failsafe_secret.clone();
    // Reported as where this keeper answers failsafe requests: the host it advertises for
    // PostgreSQL and the port its HTTP listener is bound to.
    let failsafe_address = match (&failsafe_secret, &metrics_listener) {
        (Some(_), Some(l)) => match l.local_addr() {
            Ok(a) => Some(host_port(&cfg.pg_advertise_address, a.port())),
            Err(e) => fatal(format!("metrics http server error: {e}")),
        },
        _ => None,
    };
    let mut keeper = match Keeper::new(cfg, store, pg, m.clone(), ks, boot_uuid) {
        Ok(k) => k,
        Err(e) => fatal(format!("failed to load db state: {e}")),
    };
    if let (Some(secret), Some(address)) = (&failsafe_secret, failsafe_address) {
        info!(address = %address, "failsafe requests answered on the metrics listener");
        let transport = Arc::new(stolon_failsafe::HttpTransport::new(secret.clone()));
        keeper = keeper.with_failsafe(transport, address);
    }
    let routes = match (failsafe_secret, keeper.failsafe_responder()) {
        (Some(secret), Some(responder)) => Some(metrics::FailsafeRoutes { secret, responder }),
        _ => None,
    };
    if let Some(l) = metrics_listener {
        tokio::spawn(metrics::serve(
            l,
            m,
            keeper.health(),
            routes,
            cancel.clone(),
        ));
    }
    keeper.run(cancel).await;
    0
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
