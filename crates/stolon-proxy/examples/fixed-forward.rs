//! A forwarder with a fixed destination, built from the proxy engine: used by
//! `bench/proxy-bench.sh` to measure the cost of the byte copy alone.
//!
//! Usage: `fixed-forward --listen 127.0.0.1:PORT --to 127.0.0.1:PORT [--threads N] [--buffer BYTES]`
//! (`--threads 0`, the default, runs a single-threaded runtime).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use stolon_proxy::engine::{DEFAULT_BUFFER_SIZE, EngineConfig, Forwarder};

struct Args {
    listen: SocketAddr,
    to: SocketAddr,
    threads: usize,
    buffer: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut listen = None;
    let mut to = None;
    let mut threads = 0;
    let mut buffer = DEFAULT_BUFFER_SIZE;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().context("--listen: bad address")?),
            "--to" => to = Some(value.parse().context("--to: bad address")?),
            "--threads" => threads = value.parse().context("--threads: bad number")?,
            "--buffer" => buffer = value.parse().context("--buffer: bad number")?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        listen: listen.context("--listen is required")?,
        to: to.context("--to is required")?,
        threads,
        buffer,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = if args.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let config = EngineConfig {
            buffer_size: args.buffer,
            ..EngineConfig::default()
        };
        let fwd = Forwarder::new("primary", config);
        fwd.set_destination(Some(args.to));
        let local = fwd.start_listening(args.listen).await?;
        println!("forwarding {local} -> {}", args.to);
        tokio::signal::ctrl_c().await?;
        fwd.shutdown().await;
        Ok(())
    })
}
