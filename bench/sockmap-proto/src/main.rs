//! sockproxy: feasibility prototype of an eBPF-sockmap TCP forwarder (plus a user-space baseline).

mod bpf;

use std::cell::RefCell;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

static FALLBACK_BYTES: AtomicU64 = AtomicU64::new(0);
static DRAIN_BYTES: AtomicU64 = AtomicU64::new(0);
static CONNS: AtomicU64 = AtomicU64::new(0);

struct Bpf {
    sockmap: RawFd,
    hash: RawFd,
    free: RefCell<Vec<u32>>,
    rport_shl: bool,
    rdhup: bool,
}

const MAX_SOCKS: u32 = 65536;

fn key_of(s: &TcpStream, rport_shl: bool) -> std::io::Result<[u8; 16]> {
    let (l, r) = match (s.local_addr()?, s.peer_addr()?) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => (l, r),
        _ => return Err(std::io::Error::other("ipv4 only")),
    };
    Ok(key_v4(&l, &r, rport_shl))
}

fn key_v4(l: &SocketAddrV4, r: &SocketAddrV4, rport_shl: bool) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[0..4].copy_from_slice(&r.ip().octets()); // network order
    k[4..8].copy_from_slice(&l.ip().octets());
    // remote_port: kernel loads skc_dport (network order u16) and, on little endian, shifts it
    // left by 16 (so the u32 in memory is 00 00 hi lo).
    let raw = u16::from_ne_bytes(r.port().to_be_bytes()) as u32;
    let rp = if rport_shl { raw << 16 } else { raw };
    k[8..12].copy_from_slice(&rp.to_ne_bytes());
    k[12..16].copy_from_slice(&(l.port() as u32).to_ne_bytes()); // host order
    k
}

async fn forward_ready(from: &TcpStream, to: &TcpStream, buf: &mut [u8], counter: &AtomicU64) -> bool {
    loop {
        match from.try_read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                let mut off = 0;
                while off < n {
                    if to.writable().await.is_err() {
                        return false;
                    }
                    match to.try_write(&buf[off..n]) {
                        Ok(w) => off += w,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

async fn handle_bpf(client: TcpStream, to: SocketAddr, b: Rc<Bpf>) -> std::io::Result<()> {
    let backend = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    backend.set_nodelay(true)?;
    let kc = key_of(&client, b.rport_shl)?;
    let kb = key_of(&backend, b.rport_shl)?;
    let (ic, ib) = {
        let mut f = b.free.borrow_mut();
        if let Some(m) = MONITOR.get() { f.extend(m.2.lock().expect("lock").drain(..)); }
        match (f.pop(), f.pop()) {
            (Some(x), Some(y)) => (x, y),
            _ => return Err(std::io::Error::other("sockmap full")),
        }
    };
    let cfd = client.as_raw_fd() as u32;
    let bfd = backend.as_raw_fd() as u32;
    let mut ok = bpf::map_update(b.sockmap, &ic.to_ne_bytes(), &cfd.to_ne_bytes(), 0).is_ok()
        && bpf::map_update(b.sockmap, &ib.to_ne_bytes(), &bfd.to_ne_bytes(), 0).is_ok();
    if ok {
        ok = bpf::map_update(b.hash, &kc, &ib.to_ne_bytes(), 0).is_ok()
            && bpf::map_update(b.hash, &kb, &ic.to_ne_bytes(), 0).is_ok();
    }
    if !ok {
        eprintln!("map insert failed: {}", std::io::Error::last_os_error());
    }
    CONNS.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 16384];
    // Drain whatever arrived before insertion.
    let alive = forward_ready(&client, &backend, &mut buf, &DRAIN_BYTES).await
        && forward_ready(&backend, &client, &mut buf, &DRAIN_BYTES).await;
    if b.rdhup && alive {
        // Hand the pair to the monitor thread: epoll with EPOLLRDHUP only, so that the
        // per-message data_ready wakeups (sockmap calls the saved sk_data_ready after each
        // verdict) do not wake us.
        let c = client.into_std()?;
        let k = backend.into_std()?;
        monitor_add(Pair { client: c, backend: k, kc, kb, ic, ib, bpf_sockmap: b.sockmap, bpf_hash: b.hash });
        return Ok(());
    }
    let mut alive = alive;
    while alive {
        tokio::select! {
            r = client.ready(Interest::READABLE) => {
                alive = r.is_ok() && forward_ready(&client, &backend, &mut buf, &FALLBACK_BYTES).await;
            }
            r = backend.ready(Interest::READABLE) => {
                alive = r.is_ok() && forward_ready(&backend, &client, &mut buf, &FALLBACK_BYTES).await;
            }
        }
    }
    let _ = bpf::map_delete(b.hash, &kc);
    let _ = bpf::map_delete(b.hash, &kb);
    let _ = bpf::map_delete(b.sockmap, &ic.to_ne_bytes());
    let _ = bpf::map_delete(b.sockmap, &ib.to_ne_bytes());
    {
        let mut f = b.free.borrow_mut();
        f.push(ic);
        f.push(ib);
    }
    drop(client);
    drop(backend);
    Ok(())
}

struct Pair {
    client: std::net::TcpStream,
    backend: std::net::TcpStream,
    kc: [u8; 16],
    kb: [u8; 16],
    ic: u32,
    ib: u32,
    bpf_sockmap: RawFd,
    bpf_hash: RawFd,
}

static MONITOR: std::sync::OnceLock<(RawFd, std::sync::Mutex<std::collections::HashMap<u64, Pair>>, std::sync::Mutex<Vec<u32>>)> =
    std::sync::OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn monitor_init() {
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    MONITOR.get_or_init(|| (ep, Default::default(), Default::default()));
    std::thread::spawn(move || {
        let m = MONITOR.get().expect("monitor");
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = unsafe { libc::epoll_wait(m.0, evs.as_mut_ptr(), evs.len() as i32, -1) };
            if n < 0 {
                continue;
            }
            for e in &evs[..n as usize] {
                let id = e.u64 >> 1;
                let p = m.1.lock().expect("lock").remove(&id);
                if let Some(p) = p {
                    unsafe {
                        libc::epoll_ctl(m.0, libc::EPOLL_CTL_DEL, p.client.as_raw_fd(), std::ptr::null_mut());
                        libc::epoll_ctl(m.0, libc::EPOLL_CTL_DEL, p.backend.as_raw_fd(), std::ptr::null_mut());
                    }
                    let _ = bpf::map_delete(p.bpf_hash, &p.kc);
                    let _ = bpf::map_delete(p.bpf_hash, &p.kb);
                    let _ = bpf::map_delete(p.bpf_sockmap, &p.ic.to_ne_bytes());
                    let _ = bpf::map_delete(p.bpf_sockmap, &p.ib.to_ne_bytes());
                    let _ = p.client.shutdown(std::net::Shutdown::Both);
                    let _ = p.backend.shutdown(std::net::Shutdown::Both);
                    m.2.lock().expect("lock").extend([p.ic, p.ib]);
                    CLOSED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
}

static CLOSED: AtomicU64 = AtomicU64::new(0);

fn monitor_add(p: Pair) {
    let m = MONITOR.get().expect("monitor");
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (cf, bf) = (p.client.as_raw_fd(), p.backend.as_raw_fd());
    m.1.lock().expect("lock").insert(id, p);
    for (fd, tag) in [(cf, 0u64), (bf, 1u64)] {
        let mut ev = libc::epoll_event { events: (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32, u64: (id << 1) | tag };
        unsafe { libc::epoll_ctl(m.0, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
}

async fn handle_copy(mut client: TcpStream, to: SocketAddr) -> std::io::Result<()> {
    let mut backend = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    backend.set_nodelay(true)?;
    CONNS.fetch_add(1, Ordering::Relaxed);
    let (a, b) = tokio::io::copy_bidirectional(&mut client, &mut backend).await?;
    FALLBACK_BYTES.fetch_add(a + b, Ordering::Relaxed);
    Ok(())
}

fn report() {
    let line = format!(
        "sockproxy stats: conns {} closed_by_monitor {} drained_bytes {} userspace_forwarded_bytes {}\n",
        CONNS.load(Ordering::Relaxed),
        CLOSED.load(Ordering::Relaxed),
        DRAIN_BYTES.load(Ordering::Relaxed),
        FALLBACK_BYTES.load(Ordering::Relaxed)
    );
    eprint!("{line}");
    if let Ok(p) = std::env::var("SOCKPROXY_STATS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut listen: Option<SocketAddr> = None;
    let mut to: Option<SocketAddr> = None;
    let mut no_bpf = false;
    let mut attach = bpf::BPF_SK_SKB_STREAM_VERDICT;
    let mut rport_shl = true;
    let mut rdhup = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--listen" => {
                i += 1;
                listen = args.get(i).and_then(|s| s.parse().ok());
            }
            "--to" => {
                i += 1;
                to = args.get(i).and_then(|s| s.parse().ok());
            }
            "--no-bpf" => no_bpf = true,
            "--skb-verdict" => attach = bpf::BPF_SK_SKB_VERDICT,
            "--rport-plain" => rport_shl = false,
            "--rdhup" => rdhup = true,
            a => {
                eprintln!("unknown argument {a}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let (Some(listen), Some(to)) = (listen, to) else {
        eprintln!("usage: sockproxy --listen ADDR --to ADDR [--no-bpf] [--skb-verdict] [--rport-plain]");
        std::process::exit(2);
    };

    let b = if no_bpf {
        None
    } else {
        let sockmap = bpf::map_create(bpf::BPF_MAP_TYPE_SOCKMAP, 4, 4, MAX_SOCKS).unwrap_or_else(|e| {
            eprintln!("sockmap create: {e}");
            std::process::exit(1)
        });
        let hash = bpf::map_create(bpf::BPF_MAP_TYPE_HASH, 16, 4, MAX_SOCKS * 2).unwrap_or_else(|e| {
            eprintln!("hash create: {e}");
            std::process::exit(1)
        });
        let prog = bpf::verdict_program(hash, sockmap);
        let pfd = bpf::prog_load(bpf::BPF_PROG_TYPE_SK_SKB, &prog, attach).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        bpf::prog_attach(sockmap, pfd, attach).unwrap_or_else(|e| {
            eprintln!("attach: {e}");
            std::process::exit(1)
        });
        if rdhup { monitor_init(); }
        eprintln!("bpf ready: sockmap fd {sockmap} hash fd {hash} prog fd {pfd} attach {attach}");
        Some(Rc::new(Bpf { sockmap, hash, free: RefCell::new((0..MAX_SOCKS).rev().collect()), rport_shl, rdhup }))
    };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = TcpListener::bind(listen).await.unwrap_or_else(|e| {
            eprintln!("bind {listen}: {e}");
            std::process::exit(1)
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("signal");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                r = l.accept() => {
                    let Ok((c, _)) = r else { continue };
                    match &b {
                        Some(b) => { let b = b.clone(); tokio::task::spawn_local(async move {
                            if let Err(e) = handle_bpf(c, to, b).await { eprintln!("conn: {e}"); }
                        }); }
                        None => { tokio::task::spawn_local(async move {
                            if let Err(e) = handle_copy(c, to).await { eprintln!("conn: {e}"); }
                        }); }
                    }
                }
            }
        }
    });
    report();
}
