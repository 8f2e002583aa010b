//! Engine tests against real TCP sockets on 127.0.0.1: tagged echo servers as upstreams.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stolon_proxy::engine::{EngineConfig, Forwarder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything that should happen "at once".
const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An upstream that greets every connection with its one-byte tag, then echoes.
async fn tagged_echo(tag: u8) -> Result<SocketAddr> {
    let listener = TcpListener::bind(any_port()).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                if sock.write_all(&[tag]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Connects through the proxy and returns the stream and the tag of the upstream reached.
async fn connect_tagged(proxy: SocketAddr) -> Result<(TcpStream, u8)> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(proxy))
        .await
        .context("connect timed out")??;
    let mut tag = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut tag))
        .await
        .context("greeting timed out")??;
    if n == 0 {
        bail!("closed before greeting");
    }
    Ok((s, tag[0]))
}

/// True when the peer closed `s` (EOF or reset) within [`WAIT`].
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn started(dest: Option<SocketAddr>) -> Result<(Forwarder, SocketAddr)> {
    let fwd = Forwarder::new("primary", EngineConfig::default());
    fwd.set_destination(dest);
    let addr = fwd.start_listening(any_port()).await?;
    Ok((fwd, addr))
}

/// Waits (bounded) until the forwarder reports `n` active connections.
async fn wait_active(fwd: &Forwarder, n: usize) -> Result<()> {
    for _ in 0..200 {
        if fwd.stats().active == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "active connections {} never reached {n}",
        fwd.stats().active
    )
}

#[tokio::test]
async fn bytes_flow_both_ways() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let (fwd, proxy) = started(Some(a)).await?;
    let (s, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, b'A');

    // 4 MiB, more than any socket and copy buffer, with a pattern that catches reordering.
    let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let payload = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut got = Vec::with_capacity(sent.len());
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .context("echo timed out")??;
    writer.await??;
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "echoed bytes differ");
    wait_active(&fwd, 0).await?;
    Ok(())
}

#[tokio::test]
async fn destination_change_closes_existing_and_routes_new() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let b = tagged_echo(b'B').await?;
    let (fwd, proxy) = started(Some(a)).await?;

    let mut olds = Vec::new();
    for _ in 0..20 {
        let (s, tag) = connect_tagged(proxy).await?;
        assert_eq!(tag, b'A');
        olds.push(s);
    }
    wait_active(&fwd, 20).await?;
    assert!(
        !fwd.set_destination(Some(a)),
        "same destination is no change"
    );
    assert!(fwd.set_destination(Some(b)));
    for s in &mut olds {
        assert!(closed_by_peer(s).await, "old connection left open");
    }
    wait_active(&fwd, 0).await?;
    assert_eq!(fwd.stats().closed_by_route_change, 20);

    let (mut s, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, b'B');
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn no_destination_closes_accepted_and_existing() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let (fwd, proxy) = started(Some(a)).await?;
    let (mut existing, _) = connect_tagged(proxy).await?;

    assert!(fwd.set_destination(None));
    assert!(
        closed_by_peer(&mut existing).await,
        "existing connection left open"
    );

    // Still listening: the connect succeeds, then the proxy closes the client.
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(proxy)).await??;
    assert!(
        closed_by_peer(&mut s).await,
        "accepted connection left open"
    );
    assert!(fwd.stats().refused >= 1);

    // And routes again once a destination is back.
    fwd.set_destination(Some(a));
    let (_s, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, b'A');
    Ok(())
}

#[tokio::test]
async fn stop_listening_frees_the_port() -> Result<()> {
    let a = tagged_echo(b'A').await?;
    let (fwd, proxy) = started(Some(a)).await?;
    let (mut kept, _) = connect_tagged(proxy).await?;
    assert_eq!(fwd.listening_addr().await, Some(proxy));

    fwd.stop_listening().await;
    assert_eq!(fwd.listening_addr().await, None);
    match TcpStream::connect(proxy).await {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => bail!("expected connection refused, got {other:?}"),
    }
    // Proxied connections are not touched by closing the listener.
    kept.write_all(b"x").await?;
    let mut buf = [0u8; 1];
    tokio::time::timeout(WAIT, kept.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"x");

    // Listening again on the same port works.
    assert_eq!(fwd.start_listening(proxy).await?, proxy);
    let (_s, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, b'A');
    fwd.shutdown().await;
    assert!(closed_by_peer(&mut kept).await);
    Ok(())
}

#[tokio::test]
async fn start_listening_is_idempotent() -> Result<()> {
    let (fwd, proxy) = started(None).await?;
    assert_eq!(fwd.start_listening(any_port()).await?, proxy);
    Ok(())
}

#[tokio::test]
async fn read_only_round_robin_spreads_over_standbys() -> Result<()> {
    let s1 = tagged_echo(b'1').await?;
    let s2 = tagged_echo(b'2').await?;
    let primary = tagged_echo(b'P').await?;
    let fwd = Forwarder::new("read-only", EngineConfig::default());
    fwd.set_read_only_destinations(vec![s1, s2], Some(primary));
    let proxy = fwd.start_listening(any_port()).await?;

    let mut counts: HashMap<u8, usize> = HashMap::new();
    let mut conns = Vec::new();
    for _ in 0..100 {
        let (s, tag) = connect_tagged(proxy).await?;
        *counts.entry(tag).or_default() += 1;
        conns.push((s, tag));
    }
    assert_eq!(counts.get(&b'P'), None, "primary used while standbys exist");
    assert!(counts.get(&b'1').copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get(&b'2').copied().unwrap_or(0) > 0, "{counts:?}");

    // Standby 1 leaves: only its connections close.
    assert!(fwd.set_read_only_destinations(vec![s2], Some(primary)));
    for (s, tag) in &mut conns {
        if *tag == b'1' {
            assert!(
                closed_by_peer(s).await,
                "connection to removed standby left open"
            );
        }
    }
    for (s, tag) in conns.iter_mut().filter(|(_, t)| *t == b'2').take(3) {
        s.write_all(b"y").await?;
        let mut buf = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await??;
        assert_eq!((buf[0], *tag), (b'y', b'2'));
    }

    // No standby left: the fallback (primary) takes new connections...
    fwd.set_read_only_destinations(vec![], Some(primary));
    let (_p, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, b'P');

    // ...or, with the refuse policy, nothing does.
    fwd.set_read_only_destinations(vec![], None);
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(proxy)).await??;
    assert!(closed_by_peer(&mut s).await);
    Ok(())
}

#[tokio::test]
async fn unreachable_destination_closes_client() -> Result<()> {
    // A port that was just free: connecting to it is refused.
    let dead = {
        let l = TcpListener::bind(any_port()).await?;
        l.local_addr()?
    };
    let (fwd, proxy) = started(Some(dead)).await?;
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(proxy)).await??;
    assert!(closed_by_peer(&mut s).await);
    wait_active(&fwd, 0).await?;
    Ok(())
}

/// Waits (bounded) until `n` clients have been held.
async fn wait_held(fwd: &Forwarder, n: u64) -> Result<()> {
    for _ in 0..200 {
        if fwd.stats().held == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("held clients {} never reached {n}", fwd.stats().held)
}

#[tokio::test]
async fn held_clients_wait_and_go_to_the_next_destination() -> Result<()> {
    let old = tagged_echo(1).await?;
    let new = tagged_echo(2).await?;
    let (fwd, proxy) = started(Some(old)).await?;
    let (mut existing, tag) = connect_tagged(proxy).await?;
    assert_eq!(tag, 1);
    // The switchover: no destination, hold. The existing connection is closed.
    fwd.set_destination(None);
    fwd.set_hold(Some(Duration::from_secs(60)));
    assert!(closed_by_peer(&mut existing).await);
    // New clients are accepted and wait (no greeting yet, not closed).
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(connect_tagged(proxy)))
        .collect();
    wait_held(&fwd, 3).await?;
    assert_eq!(fwd.stats().refused, 0);
    // The new master: held clients reach it.
    fwd.set_destination(Some(new));
    fwd.set_hold(None);
    for w in waiting {
        let (_, tag) = w.await??;
        assert_eq!(tag, 2);
    }
    assert_eq!(fwd.stats().refused, 0);
    assert_eq!(fwd.stats().hold_expired, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn held_clients_are_closed_when_holding_stops_without_a_destination() -> Result<()> {
    let (fwd, proxy) = started(None).await?;
    fwd.set_hold(Some(Duration::from_secs(60)));
    let mut c = tokio::time::timeout(WAIT, TcpStream::connect(proxy))
        .await
        .context("connect timed out")??;
    wait_held(&fwd, 1).await?;
    fwd.set_hold(None);
    assert!(closed_by_peer(&mut c).await);
    assert_eq!(fwd.stats().hold_expired, 1);
    // Not holding: refused at once, as before.
    let mut c = TcpStream::connect(proxy).await?;
    assert!(closed_by_peer(&mut c).await);
    assert_eq!(fwd.stats().refused, 1);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_held_client_is_closed_after_the_hold_limit() -> Result<()> {
    let (fwd, proxy) = started(None).await?;
    fwd.set_hold(Some(Duration::from_millis(300)));
    let mut c = TcpStream::connect(proxy).await?;
    assert!(closed_by_peer(&mut c).await);
    assert_eq!(fwd.stats().held, 1);
    assert_eq!(fwd.stats().hold_expired, 1);
    fwd.shutdown().await;
    Ok(())
}
