//! Engine tests of connections caught in their PostgreSQL startup when the destination is
//! withdrawn, against fake PostgreSQL servers on 127.0.0.1 that speak just enough of the
//! protocol and report what they received: while the forwarder holds (a planned switchover), a
//! connection the old server has not answered yet is held and its startup replayed to the new
//! server; one in the middle of its authentication finishes it and is closed; established and
//! TLS connections are closed; without holding every one of them is closed at once.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use stolon_proxy::engine::{EngineConfig, Forwarder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Generous bound for anything that should happen "at once".
const WAIT: Duration = Duration::from_secs(10);
/// A hold long enough never to expire in these tests (unless they shorten it).
const HOLD: Duration = Duration::from_secs(60);

const SSL_REQUEST: u32 = 80_877_103;

/// How a fake server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Authentication ok at once, parameters, ReadyForQuery.
    Trust,
    /// Never answers the StartupMessage.
    Silent,
    /// Asks for a cleartext password, then (after the client's 'p') ok and ReadyForQuery.
    Password,
    /// Asks for a cleartext password and never answers the client's 'p'.
    PasswordThenSilent,
    /// Agrees to TLS ('S') on an SSLRequest, then reads without answering.
    Tls,
}

/// What a fake server received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// An SSLRequest (answered 'N', or 'S' in [`Mode::Tls`]).
    SslRequest,
    /// A StartupMessage, exactly as received.
    Startup(Vec<u8>),
    /// A message after the StartupMessage: its type.
    Message(u8),
}

/// A protocol message: type, length, body.
fn message(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A StartupMessage (protocol 3.0) for `user`.
fn startup_message(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = u32::try_from(body.len() + 4)
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    p.extend_from_slice(&body);
    p
}

fn ssl_request() -> Vec<u8> {
    let mut p = 8u32.to_be_bytes().to_vec();
    p.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    p
}

/// Authentication ok, a `server` parameter naming `tag`, ReadyForQuery.
fn ready(tag: &str) -> Vec<u8> {
    let mut m = message(b'R', &0u32.to_be_bytes());
    m.extend(message(b'S', format!("server\0{tag}\0").as_bytes()));
    m.extend(message(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]));
    m.extend(message(b'Z', b"I"));
    m
}

/// Reads one first packet (length word included).
async fn read_packet(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    ensure!((8..=10_000).contains(&n), "bad packet length {n}");
    let mut p = len.to_vec();
    p.resize(n, 0);
    s.read_exact(&mut p[4..]).await?;
    Ok(p)
}

/// Reads one message: its type and body.
async fn read_message(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    ensure!((4..=1_000_000).contains(&n), "bad message length {n}");
    let mut body = vec![0u8; n - 4];
    s.read_exact(&mut body).await?;
    Ok((head[0], body))
}

/// One connection of a fake server.
async fn fake_session(
    mut s: TcpStream,
    tag: &'static str,
    mode: Mode,
    events: mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let mut packet = read_packet(&mut s).await?;
    if packet[4..8] == SSL_REQUEST.to_be_bytes() {
        let _ = events.send(Event::SslRequest);
        if mode == Mode::Tls {
            s.write_all(b"S").await?;
            let mut sink = [0u8; 256];
            while s.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        s.write_all(b"N").await?;
        packet = read_packet(&mut s).await?;
    }
    let _ = events.send(Event::Startup(packet));
    match mode {
        Mode::Silent => {
            let mut sink = [0u8; 256];
            while s.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        Mode::Password | Mode::PasswordThenSilent => {
            s.write_all(&message(b'R', &3u32.to_be_bytes())).await?;
            let (t, _) = read_message(&mut s).await?;
            let _ = events.send(Event::Message(t));
            if mode == Mode::PasswordThenSilent {
                let mut sink = [0u8; 256];
                while s.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            s.write_all(&ready(tag)).await?;
        }
        Mode::Trust | Mode::Tls => s.write_all(&ready(tag)).await?,
    }
    // A query gets a CommandComplete naming the server, then ReadyForQuery.
    loop {
        let (t, _) = read_message(&mut s).await?;
        let _ = events.send(Event::Message(t));
        if t == b'X' {
            return Ok(());
        }
        let mut answer = message(b'C', format!("{tag}\0").as_bytes());
        answer.extend(message(b'Z', b"I"));
        s.write_all(&answer).await?;
    }
}

/// A fake PostgreSQL server named `tag`; its events.
async fn fake_pg(
    tag: &'static str,
    mode: Mode,
) -> Result<(SocketAddr, mpsc::UnboundedReceiver<Event>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = fake_session(s, tag, mode, tx).await;
            });
        }
    });
    Ok((addr, rx))
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Result<Event> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .context("no event from the fake server")?
        .context("fake server gone")
}

/// Reads messages until ReadyForQuery; the `server` parameter seen.
async fn read_until_ready(s: &mut TcpStream) -> Result<String> {
    let mut server = String::new();
    for _ in 0..100 {
        let (t, body) = tokio::time::timeout(WAIT, read_message(s))
            .await
            .context("no message from the proxy")??;
        match t {
            b'S' if body.starts_with(b"server\0") => {
                server = String::from_utf8_lossy(&body[7..])
                    .trim_end_matches('\0')
                    .to_string();
            }
            b'Z' => return Ok(server),
            b'E' => bail!("error response"),
            _ => {}
        }
    }
    bail!("no ReadyForQuery")
}

/// Sends a query; the server's name from its CommandComplete.
async fn query(s: &mut TcpStream) -> Result<String> {
    s.write_all(&message(b'Q', b"select 1\0")).await?;
    let (t, body) = tokio::time::timeout(WAIT, read_message(s)).await??;
    ensure!(t == b'C', "got message {}", t as char);
    let (z, _) = tokio::time::timeout(WAIT, read_message(s)).await??;
    ensure!(z == b'Z');
    Ok(String::from_utf8_lossy(&body)
        .trim_end_matches('\0')
        .to_string())
}

/// True when the proxy closed `s` (EOF or reset) within [`WAIT`], ignoring bytes before.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    for _ in 0..1000 {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

async fn started(dest: SocketAddr) -> Result<(Forwarder, SocketAddr)> {
    let fwd = Forwarder::new("primary", EngineConfig::default());
    fwd.set_destination(Some(dest));
    let addr = fwd
        .start_listening(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    Ok((fwd, addr))
}

/// The switchover as the proxy machine orders it: hold, then no destination.
fn begin_switchover(fwd: &Forwarder, hold: Duration) {
    fwd.set_hold(Some(hold));
    fwd.set_destination(None);
}

/// The end of it: the new destination, then no more holding.
fn end_switchover(fwd: &Forwarder, new: SocketAddr) {
    fwd.set_destination(Some(new));
    fwd.set_hold(None);
}

/// Waits (bounded) until `n` clients wait for a destination.
async fn wait_held_now(fwd: &Forwarder, n: usize) -> Result<()> {
    for _ in 0..200 {
        if fwd.stats().held_now == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("held clients {} never reached {n}", fwd.stats().held_now)
}

async fn connect(proxy: SocketAddr) -> Result<TcpStream> {
    Ok(tokio::time::timeout(WAIT, TcpStream::connect(proxy)).await??)
}

#[tokio::test]
async fn a_startup_the_old_server_has_not_answered_is_replayed_to_the_new_one() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Silent).await?;
    let (new, mut new_events) = fake_pg("new", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;

    let mut c = connect(proxy).await?;
    let msg = startup_message("app");
    c.write_all(&msg).await?;
    // The proxy forwarded it: the old server has it, and says nothing.
    assert_eq!(
        next_event(&mut old_events).await?,
        Event::Startup(msg.clone())
    );

    begin_switchover(&fwd, HOLD);
    wait_held_now(&fwd, 1).await?;
    assert_eq!(fwd.stats().startups_replayed, 0);
    end_switchover(&fwd, new);

    // The client completes its startup with the new server, which got the same bytes.
    assert_eq!(read_until_ready(&mut c).await?, "new");
    assert_eq!(next_event(&mut new_events).await?, Event::Startup(msg));
    assert_eq!(query(&mut c).await?, "new");
    let st = fwd.stats();
    assert_eq!(st.startups_replayed, 1);
    assert_eq!(st.held_now, 0);
    assert_eq!(st.closed_by_route_change, 0);
    assert_eq!(st.refused, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn after_a_refused_ssl_request_only_the_startup_message_is_replayed() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Silent).await?;
    let (new, mut new_events) = fake_pg("new", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;

    let mut c = connect(proxy).await?;
    c.write_all(&ssl_request()).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(WAIT, c.read_exact(&mut answer)).await??;
    assert_eq!(&answer, b"N");
    let msg = startup_message("app");
    c.write_all(&msg).await?;
    assert_eq!(next_event(&mut old_events).await?, Event::SslRequest);
    assert_eq!(
        next_event(&mut old_events).await?,
        Event::Startup(msg.clone())
    );

    begin_switchover(&fwd, HOLD);
    wait_held_now(&fwd, 1).await?;
    end_switchover(&fwd, new);

    assert_eq!(read_until_ready(&mut c).await?, "new");
    // The new server's first packet is the StartupMessage: the SSLRequest was answered already.
    assert_eq!(next_event(&mut new_events).await?, Event::Startup(msg));
    assert_eq!(fwd.stats().startups_replayed, 1);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_sent_nothing_yet_is_held_and_goes_to_the_new_server() -> Result<()> {
    let (old, _old_events) = fake_pg("old", Mode::Silent).await?;
    let (new, mut new_events) = fake_pg("new", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    // Connected through to the old server, nothing sent.
    for _ in 0..200 {
        if fwd.stats().active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    begin_switchover(&fwd, HOLD);
    wait_held_now(&fwd, 1).await?;
    end_switchover(&fwd, new);
    let msg = startup_message("late");
    c.write_all(&msg).await?;
    assert_eq!(read_until_ready(&mut c).await?, "new");
    assert_eq!(next_event(&mut new_events).await?, Event::Startup(msg));
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_connection_in_its_authentication_finishes_it_then_is_closed() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Password).await?;
    let (new, _new_events) = fake_pg("new", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;

    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    let (t, _) = tokio::time::timeout(WAIT, read_message(&mut c)).await??;
    assert_eq!(t, b'R', "the old server asked for a password");
    assert!(matches!(
        next_event(&mut old_events).await?,
        Event::Startup(_)
    ));

    begin_switchover(&fwd, HOLD);
    end_switchover(&fwd, new);
    // Its authentication still goes to the old server, which lets it in...
    c.write_all(&message(b'p', b"secret\0")).await?;
    assert_eq!(next_event(&mut old_events).await?, Event::Message(b'p'));
    assert_eq!(read_until_ready(&mut c).await?, "old");
    // ...and then it is closed like the old server's other connections: no query reaches it.
    let _ = c.write_all(&message(b'Q', b"select 1\0")).await;
    assert!(closed_by_peer(&mut c).await, "left open after its startup");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), old_events.recv())
            .await
            .is_err(),
        "the old server received something after the startup"
    );
    let st = fwd.stats();
    assert_eq!(st.closed_by_route_change, 1);
    assert_eq!(st.startups_replayed, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_authentication_that_does_not_finish_is_closed_at_the_hold_limit() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::PasswordThenSilent).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    let (t, _) = tokio::time::timeout(WAIT, read_message(&mut c)).await??;
    assert_eq!(t, b'R');
    begin_switchover(&fwd, Duration::from_millis(300));
    c.write_all(&message(b'p', b"secret\0")).await?;
    assert!(matches!(
        next_event(&mut old_events).await?,
        Event::Startup(_)
    ));
    assert_eq!(next_event(&mut old_events).await?, Event::Message(b'p'));
    assert!(
        closed_by_peer(&mut c).await,
        "left open past the hold limit"
    );
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_established_connection_is_closed() -> Result<()> {
    let (old, _old_events) = fake_pg("old", Mode::Trust).await?;
    let (new, _new_events) = fake_pg("new", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    assert_eq!(read_until_ready(&mut c).await?, "old");
    assert_eq!(query(&mut c).await?, "old");

    begin_switchover(&fwd, HOLD);
    assert!(
        closed_by_peer(&mut c).await,
        "established connection left open"
    );
    end_switchover(&fwd, new);
    let st = fwd.stats();
    assert_eq!(st.closed_by_route_change, 1);
    assert_eq!(st.held, 0);
    assert_eq!(st.startups_replayed, 0);

    // A new client reaches the new server.
    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    assert_eq!(read_until_ready(&mut c).await?, "new");
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_tls_connection_is_closed() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Tls).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    c.write_all(&ssl_request()).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(WAIT, c.read_exact(&mut answer)).await??;
    assert_eq!(&answer, b"S");
    assert_eq!(next_event(&mut old_events).await?, Event::SslRequest);
    // Opaque from here: bytes that would be an invalid startup packet pass untouched.
    c.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0])
        .await?;
    begin_switchover(&fwd, HOLD);
    assert!(closed_by_peer(&mut c).await, "TLS connection left open");
    assert_eq!(fwd.stats().closed_by_route_change, 1);
    assert_eq!(fwd.stats().held, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_holding_an_unanswered_startup_is_closed_at_once() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Silent).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    assert!(matches!(
        next_event(&mut old_events).await?,
        Event::Startup(_)
    ));
    // A failover or fail-closed: no hold.
    fwd.set_destination(None);
    assert!(closed_by_peer(&mut c).await, "left open without holding");
    let st = fwd.stats();
    assert_eq!(st.closed_by_route_change, 1);
    assert_eq!(st.held, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_startup_packet_longer_than_postgresql_accepts_is_refused() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Trust).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    let mut header = 10_001u32.to_be_bytes().to_vec();
    header.extend_from_slice(&196_608u32.to_be_bytes());
    c.write_all(&header).await?;
    assert!(
        closed_by_peer(&mut c).await,
        "oversized startup let through"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), old_events.recv())
            .await
            .is_err(),
        "the server received a startup"
    );
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_held_startup_is_closed_when_no_destination_comes() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Silent).await?;
    let (fwd, proxy) = started(old).await?;
    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    assert!(matches!(
        next_event(&mut old_events).await?,
        Event::Startup(_)
    ));
    begin_switchover(&fwd, Duration::from_millis(300));
    assert!(closed_by_peer(&mut c).await, "held past the hold limit");
    let st = fwd.stats();
    assert_eq!(st.held, 1);
    assert_eq!(st.hold_expired, 1);
    assert_eq!(st.held_now, 0);
    fwd.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_switch_is_acknowledged_once_authenticating_connections_finished() -> Result<()> {
    let (old, mut old_events) = fake_pg("old", Mode::Password).await?;
    let (fwd, proxy) = started(old).await?;
    // Not switching: nothing to wait for.
    assert!(fwd.withdrawn_startups_finished(WAIT).await);

    let mut c = connect(proxy).await?;
    c.write_all(&startup_message("app")).await?;
    let (t, _) = tokio::time::timeout(WAIT, read_message(&mut c)).await??;
    assert_eq!(t, b'R');
    assert!(matches!(
        next_event(&mut old_events).await?,
        Event::Startup(_)
    ));
    begin_switchover(&fwd, HOLD);
    // The client has not answered the password request: its startup is not over.
    assert!(
        !fwd.withdrawn_startups_finished(Duration::from_millis(200))
            .await
    );
    c.write_all(&message(b'p', b"secret\0")).await?;
    assert_eq!(read_until_ready(&mut c).await?, "old");
    assert!(closed_by_peer(&mut c).await);
    assert!(fwd.withdrawn_startups_finished(WAIT).await);
    fwd.shutdown().await;
    Ok(())
}
