//! The workload: clients outside the hosts, each inserting unique ids one at a time and spreading
//! its connections over the proxies (a new connection goes to the next proxy, as behind a
//! Kubernetes Service). For every acknowledged insert it records who acknowledged it: the
//! server's address and the timeline of its WAL insert position, returned by the insert itself
//! (one statement, one transaction), and when it was sent and acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::checker::Ack;
use crate::cluster;

/// Ids of client `c` in a cycle start at `base + c * ID_STRIDE`.
pub const ID_STRIDE: i64 = 10_000_000;
/// One insert's bound: an insert that takes longer is abandoned (not acknowledged).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between a client's inserts.
const PACE: Duration = Duration::from_millis(25);

/// Running clients.
#[derive(Debug)]
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Vec<Ack>>,
    attempts: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
}

/// Where client writes go: through proxies (addresses), or straight to given servers.
#[derive(Debug, Clone)]
pub struct Targets(pub Vec<SocketAddr>);

/// The SQL of one insert.
pub fn insert_sql(id: i64, client: usize) -> String {
    format!(
        "insert into acks (id, client) values ({id}, {client}) returning \
         host(inet_server_addr()), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
    )
}

async fn one_insert(c: &Client, id: i64, client: usize) -> anyhow::Result<(String, u32)> {
    let msgs = tokio::time::timeout(WRITE_TIMEOUT, c.simple_query(&insert_sql(id, client)))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let server = r.get(0).unwrap_or_default().to_string();
            let tl = u32::from_str_radix(r.get(1).unwrap_or_default(), 16)?;
            return Ok((server, tl));
        }
    }
    anyhow::bail!("insert returned no row")
}

impl Workload {
    /// Starts `clients` clients over `targets`; times are ms since `epoch`; ids from `base`.
    pub fn start(targets: Targets, clients: usize, epoch: Instant, base: i64) -> Workload {
        let (stop, rx) = watch::channel(false);
        let attempts = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let targets = Arc::new(targets.0);
        for c in 0..clients {
            let rx = rx.clone();
            let attempts = attempts.clone();
            let acked = acked.clone();
            let targets = targets.clone();
            tasks.spawn(async move {
                let ms = || epoch.elapsed().as_millis() as u64;
                let mut acks = Vec::new();
                let mut k = c % targets.len();
                let mut seq = 0i64;
                let mut conn: Option<(Client, SocketAddr)> = None;
                while !*rx.borrow() {
                    let Some((cl, via)) = conn.as_ref() else {
                        let t = targets[k];
                        k = (k + 1) % targets.len();
                        match cluster::connect(ip4(t), t.port()).await {
                            Ok(cl) => conn = Some((cl, t)),
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                        continue;
                    };
                    let id = base + c as i64 * ID_STRIDE + seq;
                    seq += 1;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let sent_ms = ms();
                    match one_insert(cl, id, c).await {
                        Ok((server, timeline)) => {
                            acks.push(Ack {
                                id,
                                client: c,
                                sent_ms,
                                acked_ms: ms(),
                                server,
                                timeline,
                            });
                            acked.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(PACE).await;
                        }
                        Err(e) => {
                            eprintln!(
                                "workload: client {c} insert {id} via {via} failed at {sent_ms} ms \
                                 ({}): {e:#}",
                                utc_time_of_day()
                            );
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acks
            });
        }
        Workload {
            stop,
            tasks,
            attempts,
            acked,
        }
    }

    /// Acknowledged inserts so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` more inserts than now are acknowledged, at most `limit`; whether they were.
    pub async fn wait_more_acks(&self, n: u64, limit: Duration) -> bool {
        let want = self.acked() + n;
        let deadline = Instant::now() + limit;
        while self.acked() < want {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// Stops the clients; returns every acknowledged insert and the number sent.
    pub async fn finish(mut self) -> (Vec<Ack>, u64) {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            if let Ok(v) = r {
                all.extend(v);
            }
        }
        (all, self.attempts.load(Ordering::Relaxed))
    }
}

fn ip4(a: SocketAddr) -> std::net::Ipv4Addr {
    match a.ip() {
        std::net::IpAddr::V4(v) => v,
        std::net::IpAddr::V6(_) => std::net::Ipv4Addr::LOCALHOST,
    }
}

/// The wall-clock time (UTC, to the millisecond), to match a failed insert with the processes'
/// logs.
fn utc_time_of_day() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}
