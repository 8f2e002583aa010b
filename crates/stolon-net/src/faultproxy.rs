//! A small TCP fault proxy in front of one etcd member, running inside that member's host
//! namespace (a thread of the test process that joined the namespace, with its own
//! single-threaded runtime, so every socket it makes lives there). Each chunk of bytes is
//! forwarded `delay` after it arrived (pure latency, order kept), in both directions; the delay is
//! changed at run time. Dropping the proxy stops it and closes its connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A running fault proxy.
#[derive(Debug)]
pub struct FaultProxy {
    delay_ms: Arc<AtomicU64>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Runs `f` on a new thread that first joined network namespace `ns` (`/run/netns/<ns>`).
fn in_netns<F>(ns: &str, f: F) -> Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("open namespace {ns}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    let handle = std::thread::Builder::new()
        .name(format!("faultproxy-{ns}"))
        .spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = tx.send(Err(anyhow!("setns: {e}")));
                return;
            }
            let _ = tx.send(Ok(()));
            f();
        })
        .context("spawn fault proxy thread")?;
    rx.recv().context("fault proxy thread died")??;
    Ok(handle)
}

impl FaultProxy {
    /// Listens on `listen` inside namespace `ns` and forwards to `target` (reached from there).
    pub fn start(ns: &str, listen: SocketAddr, target: SocketAddr) -> Result<FaultProxy> {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let d = delay_ms.clone();
        let thread = in_netns(ns, move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("bind {listen}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                serve(listener, target, d, stop_rx).await;
            });
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("fault proxy did not start")??;
        Ok(FaultProxy {
            delay_ms,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Sets the delay applied to bytes arriving from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    delay: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            acc = listener.accept() => {
                let Ok((client, _)) = acc else { continue };
                let delay = delay.clone();
                tasks.spawn(async move {
                    let Ok(Ok(server)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pump(cr, sw, delay.clone()),
                        pump(sr, cw, delay)
                    );
                });
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Copies `r` to `w`, each chunk written `delay` after it was read.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}
