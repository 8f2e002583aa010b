//! The `stolonctl` binary: parse flags (env forms included), connect to the store, run the
//! command, and turn any failure into one line on stderr and exit code 1.

use std::io::Write;
use std::process::ExitCode;

use stolon_core::Timestamp;
use stolon_store::StoreConfig;
use stolonctl::app::{self, Env, Io};
use stolonctl::cli::{self, Cmd};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return clap_failure(&e),
    };
    let Some(cmd) = cli.command else {
        // Like cobra: no subcommand prints the help.
        let _ = cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    if let Cmd::Version = cmd {
        // Not println!: it panics when stdout is a closed pipe.
        let mut out = std::io::stdout();
        return match writeln!(out, "stolonctl version {}", app::VERSION) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => die(&format!("cannot write to stdout: {e}")),
        };
    }
    // Warnings first, so that they are seen even when the command then fails.
    for w in stolon_store::config::startup_warnings(&cli.common) {
        let _ = writeln!(std::io::stderr(), "WARNING: {w}");
    }
    if let Cmd::Register(a) = &cmd {
        // Stolon checks the log level and the common flags first.
        let r = stolon_store::config::check_log_level(&cli.common.log_level)
            .map_err(anyhow::Error::from)
            .and_then(|()| StoreConfig::from_common(&cli.common).map_err(anyhow::Error::from))
            .and_then(|_| app::register(a));
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => die(&format!("{e:#}")),
        };
    }
    let kube = stolon_kube::KubeOptions::from_flags(
        &cli.kubeconfig,
        &cli.kube_context,
        &cli.kube_namespace,
    );
    match run(&cli.common, &kube, &cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => die(&format!("{e:#}")),
    }
}

fn run(
    common: &stolon_store::CommonArgs,
    kube: &stolon_kube::KubeOptions,
    cmd: &Cmd,
) -> anyhow::Result<()> {
    let cfg = StoreConfig::from_common(common)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let (store, election) = stolon_kube::connect_any(&cfg, kube).await?;
        let stdin = std::io::stdin();
        let mut stdin = stdin.lock();
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let mut io = Io {
            stdin: &mut stdin,
            stdout: &mut stdout,
            stderr: &mut stderr,
        };
        let mut new_uid = || stolon_core::uid::uid_from_bytes(rand::random::<[u8; 4]>());
        let now = || {
            let ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            Timestamp::from_unix_nanos(i128::try_from(ns).unwrap_or(0))
        };
        let mut env = Env {
            new_uid: &mut new_uid,
            now: &now,
        };
        let r = app::run(cmd, store.as_ref(), election.as_ref(), &mut io, &mut env).await;
        let _ = io.stdout.flush();
        r
    })
}

/// One line on stderr, exit 1.
fn die(msg: &str) -> ExitCode {
    let line = msg.replace(['\n', '\r'], " ");
    let _ = writeln!(std::io::stderr(), "{}", line.trim_end());
    ExitCode::FAILURE
}

/// Help and version requests print as clap renders them (exit 0); a usage error becomes one line
/// on stderr and exit 1.
fn clap_failure(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            die(first.strip_prefix("error: ").unwrap_or(first))
        }
    }
}
