//! The start of one PostgreSQL connection as the proxy sees it, and what becomes of it when its
//! destination is withdrawn.
//!
//! The proxy forwards bytes; it does not speak the protocol. To keep a connection attempt alive
//! through a planned switchover it needs to know only how far the connection's startup went:
//!
//! - the client's first packets (`SSLRequest` / `GSSENCRequest`, each answered by one byte,
//!   `CancelRequest`, then the `StartupMessage`), framed by their 4-byte length;
//! - whether the server answered the `StartupMessage` at all, and its first `ReadyForQuery`
//!   (`'Z'`), framed by the type byte and length of each message (bodies are skipped, not read).
//!
//! [`Startup`] follows both directions until the session is ready, or until the stream becomes
//! opaque (TLS or GSS encryption agreed, a cancel request, bytes that are not a PostgreSQL
//! startup); after that it is never called again, so the byte copy of an established connection
//! costs what it cost before. It keeps the client's bytes the server has not answered yet (at
//! most [`MAX_STARTUP_PACKET`]): those can be sent again, unchanged, to another server.
//!
//! [`on_withdrawn`] is the decision: what the proxy does with a connection whose destination is
//! withdrawn, given how far its startup went and whether new connections are being held (a
//! planned switchover).

/// The longest startup packet PostgreSQL accepts (its `MAX_STARTUP_PACKET_LENGTH`), length word
/// included. A first packet announcing more (or less than its own 8-byte header) is refused.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Request codes of the client's first packet (in place of a protocol version).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// First byte of a TLS handshake: a client that starts TLS at once (`sslnegotiation=direct`).
const TLS_HANDSHAKE: u8 = 0x16;

/// How far the startup of a connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The client's first packet is not complete yet, or the client asked for TLS or GSS
    /// encryption and waits for the one-byte answer. Nothing of the session started.
    Negotiating,
    /// The client sent its `StartupMessage`; the server has not sent a byte since.
    StartupSent,
    /// The server answered the `StartupMessage` (authentication, parameters, an error); no
    /// `ReadyForQuery` yet.
    Authenticating,
    /// The server's first `ReadyForQuery` passed: the session is established.
    Ready,
    /// Not followed: TLS or GSS encryption was agreed, the client sent a `CancelRequest`, or the
    /// bytes are not a PostgreSQL startup (the server spoke first, a message out of order).
    Opaque,
}

/// A startup the proxy refuses, as PostgreSQL would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The first packet announced a length PostgreSQL refuses.
    #[error("invalid length of startup packet: {0} bytes (at most {MAX_STARTUP_PACKET})")]
    InvalidLength(u32),
}

/// Where the client's side of the startup is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Client {
    /// Reading the 8-byte header (length, code) of a first packet.
    Header { buf: [u8; 8], have: usize },
    /// Skipping the rest of a first packet.
    Body { code: u32, remaining: usize },
    /// Waiting for the server's one-byte answer to an SSL or GSS encryption request.
    AwaitAnswer,
    /// The `StartupMessage` was sent: framing the client's messages (authentication answers).
    Messages(Framer),
}

/// Frames a stream of protocol messages (type byte, 4-byte length including itself, body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Framer {
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to skip.
    remaining: usize,
}

impl Framer {
    /// Feeds `bytes`; `on_type` is called with the type of each message whose header completes,
    /// and stops the framing when it returns true. Err: a length below 4 (not the protocol).
    fn feed(&mut self, mut bytes: &[u8], mut on_type: impl FnMut(u8) -> bool) -> Result<(), ()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < 5 {
                break;
            }
            self.have = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(());
            }
            self.remaining = usize::try_from(len - 4).unwrap_or(usize::MAX);
            if on_type(self.header[0]) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The startup of one connection, fed with the bytes forwarded each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    phase: Phase,
    client: Client,
    server: Framer,
    /// The client's bytes the server has not answered yet, while they are all kept.
    unanswered: Vec<u8>,
    /// `unanswered` holds every such byte (false once more than [`MAX_STARTUP_PACKET`] came).
    complete: bool,
    /// After its `StartupMessage` the client sent something else than an authentication answer.
    other_than_auth: bool,
}

impl Default for Startup {
    fn default() -> Self {
        Self::new()
    }
}

impl Startup {
    /// A connection on which nothing was sent yet.
    pub fn new() -> Self {
        Startup {
            phase: Phase::Negotiating,
            client: Client::Header {
                buf: [0; 8],
                have: 0,
            },
            server: Framer::default(),
            unanswered: Vec::new(),
            complete: true,
            other_than_auth: false,
        }
    }

    /// How far the startup went.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The startup is over (ready or opaque): nothing more to follow.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Opaque)
    }

    /// The client's bytes the server has not answered, when the connection can be sent to
    /// another server as it is: nothing of the session started (no server byte after the
    /// `StartupMessage`) and every unanswered byte is kept. Sending these to another server
    /// puts it exactly where this one was.
    pub fn replay(&self) -> Option<&[u8]> {
        let early = matches!(self.phase, Phase::Negotiating | Phase::StartupSent);
        (early && self.complete).then_some(self.unanswered.as_slice())
    }

    /// Since its `StartupMessage`, the client sent only authentication answers (password,
    /// SASL, GSS: message type `'p'`), nothing a server would run.
    pub fn only_authentication(&self) -> bool {
        !self.other_than_auth
    }

    /// Bytes the client sent (before they are forwarded). Err: a first packet PostgreSQL
    /// refuses; the connection must be closed.
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Result<(), StartupError> {
        if self.is_done() || bytes.is_empty() {
            return Ok(());
        }
        if self.complete {
            if self.unanswered.len() + bytes.len() <= MAX_STARTUP_PACKET {
                self.unanswered.extend_from_slice(bytes);
            } else {
                self.complete = false;
                self.unanswered = Vec::new();
            }
        }
        let mut rest = bytes;
        while !rest.is_empty() && !self.is_done() {
            rest = match &mut self.client {
                Client::Header { buf, have } => {
                    if *have == 0 && rest[0] == TLS_HANDSHAKE {
                        self.phase = Phase::Opaque;
                        return Ok(());
                    }
                    let take = (8 - *have).min(rest.len());
                    buf[*have..*have + take].copy_from_slice(&rest[..take]);
                    *have += take;
                    if *have < 8 {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    let size = usize::try_from(len).unwrap_or(usize::MAX);
                    if !(8..=MAX_STARTUP_PACKET).contains(&size) {
                        self.phase = Phase::Opaque;
                        return Err(StartupError::InvalidLength(len));
                    }
                    self.client = Client::Body {
                        code,
                        remaining: size - 8,
                    };
                    if size == 8 {
                        self.first_packet_sent(code);
                    }
                    &rest[take..]
                }
                Client::Body { code, remaining } => {
                    let skip = (*remaining).min(rest.len());
                    *remaining -= skip;
                    let (code, done) = (*code, *remaining == 0);
                    if done {
                        self.first_packet_sent(code);
                    }
                    &rest[skip..]
                }
                // The client should wait for the one-byte answer: not a startup we know.
                Client::AwaitAnswer => {
                    self.phase = Phase::Opaque;
                    return Ok(());
                }
                Client::Messages(framer) => {
                    let mut other = false;
                    if framer
                        .feed(rest, |t| {
                            other |= t != b'p';
                            false
                        })
                        .is_err()
                    {
                        self.phase = Phase::Opaque;
                    }
                    self.other_than_auth |= other;
                    &[]
                }
            };
        }
        Ok(())
    }

    /// A whole first packet with `code` was sent.
    fn first_packet_sent(&mut self, code: u32) {
        match code {
            SSL_REQUEST | GSSENC_REQUEST => self.client = Client::AwaitAnswer,
            CANCEL_REQUEST => self.phase = Phase::Opaque,
            // A StartupMessage (any protocol version: the server judges it).
            _ => {
                self.client = Client::Messages(Framer::default());
                self.phase = Phase::StartupSent;
            }
        }
    }

    /// Bytes the server sent (before they are forwarded).
    pub fn server_bytes(&mut self, bytes: &[u8]) {
        if self.is_done() || bytes.is_empty() {
            return;
        }
        match self.phase {
            Phase::Negotiating => {
                if self.client != Client::AwaitAnswer {
                    // The server spoke first: not a PostgreSQL server starting a session.
                    self.phase = Phase::Opaque;
                    return;
                }
                match bytes {
                    // Encryption refused: the client goes on in plaintext; its request is
                    // answered and not to be sent again.
                    [b'N'] => {
                        self.client = Client::Header {
                            buf: [0; 8],
                            have: 0,
                        };
                        self.unanswered.clear();
                        self.complete = true;
                    }
                    // Encryption agreed ('S' to SSL, 'G' to GSS), an error from an old server,
                    // or more than the one byte: nothing more to follow.
                    _ => self.phase = Phase::Opaque,
                }
            }
            Phase::StartupSent | Phase::Authenticating => {
                self.phase = Phase::Authenticating;
                self.unanswered = Vec::new();
                self.complete = false;
                let mut ready = false;
                let framed = self.server.feed(bytes, |t| {
                    ready = t == b'Z';
                    ready
                });
                if ready {
                    self.phase = Phase::Ready;
                } else if framed.is_err() {
                    self.phase = Phase::Opaque;
                }
            }
            Phase::Ready | Phase::Opaque => {}
        }
    }
}

/// What the proxy does with a connection whose destination is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Close it now (as for every connection to a withdrawn destination).
    Close,
    /// Drop its server connection and hold the client with the other held ones; when a
    /// destination is set, connect there and send [`Startup::replay`] first.
    Hold,
    /// Keep forwarding its startup (authentication answers only) until the server's
    /// `ReadyForQuery` has reached the client, then close it as an established connection;
    /// close it at once if the client sends anything else, and at the hold limit.
    FinishThenClose,
}

/// The decision for a connection whose destination is withdrawn, `holding` new connections (a
/// planned switchover) or not.
///
/// Without holding (a failover, fail-closed) every connection is closed at once, as always.
/// While holding: a connection whose server has sent nothing of the session yet is held and
/// replayed to the next destination, so the client sees a slow connection attempt, not a failed
/// one; a connection in the middle of its authentication cannot be replayed (SCRAM and MD5
/// answers are bound to the server's nonce or salt), so it finishes there and the client gets
/// an established connection that is then closed like the other connections to the old
/// primary, the failure clients and pools already retry; an established or opaque (TLS)
/// connection is closed at once.
pub fn on_withdrawn(startup: &Startup, holding: bool) -> Withdrawal {
    if !holding {
        return Withdrawal::Close;
    }
    match startup.phase() {
        Phase::Negotiating | Phase::StartupSent if startup.replay().is_some() => Withdrawal::Hold,
        Phase::Negotiating | Phase::StartupSent | Phase::Authenticating
            if startup.only_authentication() =>
        {
            Withdrawal::FinishThenClose
        }
        _ => Withdrawal::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A StartupMessage (protocol 3.0) with `user` and `database`.
    fn startup_message(user: &str) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        packet(&body)
    }

    /// A first packet: its length word, then `body`.
    fn packet(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len() + 4).expect("small");
        let mut p = len.to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    fn request(code: u32) -> Vec<u8> {
        packet(&code.to_be_bytes())
    }

    /// A protocol message: type, length, body.
    fn message(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What a server sends after a successful authentication, ending with ReadyForQuery.
    fn auth_ok_and_ready() -> Vec<u8> {
        let mut m = message(b'R', &0u32.to_be_bytes());
        m.extend(message(b'S', b"server_version\x0015.0\x00"));
        m.extend(message(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]));
        m.extend(message(b'Z', b"I"));
        m
    }

    #[test]
    fn nothing_sent_yet_is_held_with_nothing_to_replay() {
        let s = Startup::new();
        assert_eq!(s.phase(), Phase::Negotiating);
        assert_eq!(s.replay(), Some(&[][..]));
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Hold);
        assert_eq!(on_withdrawn(&s, false), Withdrawal::Close);
    }

    #[test]
    fn startup_message_sent_and_unanswered_is_replayed_as_sent() {
        let mut s = Startup::new();
        let msg = startup_message("app");
        // In pieces, as TCP may deliver it.
        for piece in msg.chunks(5) {
            s.client_bytes(piece).expect("valid");
        }
        assert_eq!(s.phase(), Phase::StartupSent);
        assert_eq!(s.replay(), Some(msg.as_slice()));
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Hold);
        assert_eq!(
            on_withdrawn(&s, false),
            Withdrawal::Close,
            "not holding: closed"
        );
    }

    #[test]
    fn a_partial_startup_message_is_replayed_and_completed_on_the_next_server() {
        let mut s = Startup::new();
        let msg = startup_message("app");
        s.client_bytes(&msg[..3]).expect("valid");
        assert_eq!(s.phase(), Phase::Negotiating);
        assert_eq!(s.replay(), Some(&msg[..3]));
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Hold);
        s.client_bytes(&msg[3..]).expect("valid");
        assert_eq!(s.phase(), Phase::StartupSent);
        assert_eq!(s.replay(), Some(msg.as_slice()));
    }

    #[test]
    fn a_refused_ssl_request_is_not_replayed_only_the_startup_message() {
        let mut s = Startup::new();
        s.client_bytes(&request(SSL_REQUEST)).expect("valid");
        assert_eq!(s.phase(), Phase::Negotiating);
        // Unanswered: the SSLRequest itself is replayed (the next server answers it).
        assert_eq!(s.replay(), Some(request(SSL_REQUEST).as_slice()));
        s.server_bytes(b"N");
        assert_eq!(s.replay(), Some(&[][..]));
        let msg = startup_message("app");
        s.client_bytes(&msg).expect("valid");
        assert_eq!(s.replay(), Some(msg.as_slice()));
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Hold);
    }

    #[test]
    fn refused_gss_then_ssl_then_startup() {
        let mut s = Startup::new();
        s.client_bytes(&request(GSSENC_REQUEST)).expect("valid");
        s.server_bytes(b"N");
        s.client_bytes(&request(SSL_REQUEST)).expect("valid");
        s.server_bytes(b"N");
        let msg = startup_message("app");
        s.client_bytes(&msg).expect("valid");
        assert_eq!(s.phase(), Phase::StartupSent);
        assert_eq!(s.replay(), Some(msg.as_slice()));
    }

    #[test]
    fn tls_agreed_is_opaque_and_closed() {
        let mut s = Startup::new();
        s.client_bytes(&request(SSL_REQUEST)).expect("valid");
        s.server_bytes(b"S");
        assert_eq!(s.phase(), Phase::Opaque);
        assert!(s.is_done());
        assert_eq!(s.replay(), None);
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
        // Whatever follows (the TLS handshake) is not looked at.
        s.client_bytes(&[0x16, 3, 1, 0xff, 0xff])
            .expect("not parsed");
        assert_eq!(s.phase(), Phase::Opaque);
    }

    #[test]
    fn gss_agreed_is_opaque() {
        let mut s = Startup::new();
        s.client_bytes(&request(GSSENC_REQUEST)).expect("valid");
        s.server_bytes(b"G");
        assert_eq!(s.phase(), Phase::Opaque);
    }

    #[test]
    fn direct_tls_is_opaque() {
        let mut s = Startup::new();
        s.client_bytes(&[TLS_HANDSHAKE, 3, 1, 2, 0, 1, 0, 1, 0xfc])
            .expect("not a startup packet, not refused");
        assert_eq!(s.phase(), Phase::Opaque);
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
    }

    #[test]
    fn a_cancel_request_is_opaque_and_never_replayed() {
        let mut s = Startup::new();
        let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
        s.client_bytes(&packet(&body)).expect("valid");
        assert_eq!(s.phase(), Phase::Opaque);
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
    }

    #[test]
    fn authenticating_finishes_then_closes() {
        let mut s = Startup::new();
        s.client_bytes(&startup_message("app")).expect("valid");
        // AuthenticationSASL.
        s.server_bytes(&message(b'R', b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"));
        assert_eq!(s.phase(), Phase::Authenticating);
        assert_eq!(s.replay(), None, "bound to this server's nonce");
        assert_eq!(on_withdrawn(&s, true), Withdrawal::FinishThenClose);
        assert_eq!(on_withdrawn(&s, false), Withdrawal::Close);
        // SASLInitialResponse, then the server's final messages and ReadyForQuery.
        s.client_bytes(&message(b'p', b"SCRAM-SHA-256\x00\x00\x00\x00\x04n,,x"))
            .expect("valid");
        assert!(s.only_authentication());
        s.server_bytes(&auth_ok_and_ready());
        assert_eq!(s.phase(), Phase::Ready);
        assert!(s.is_done());
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
    }

    #[test]
    fn ready_for_query_split_across_reads_is_found() {
        let mut s = Startup::new();
        s.client_bytes(&startup_message("app")).expect("valid");
        let answer = auth_ok_and_ready();
        for piece in answer.chunks(3) {
            assert_ne!(s.phase(), Phase::Ready);
            s.server_bytes(piece);
        }
        assert_eq!(s.phase(), Phase::Ready);
    }

    #[test]
    fn a_query_during_authentication_is_not_let_through_after_withdrawal() {
        let mut s = Startup::new();
        s.client_bytes(&startup_message("app")).expect("valid");
        s.server_bytes(&message(b'R', &3u32.to_be_bytes()));
        s.client_bytes(&message(b'p', b"secret\x00"))
            .expect("valid");
        assert!(s.only_authentication());
        s.client_bytes(&message(b'Q', b"select 1\x00"))
            .expect("valid");
        assert!(!s.only_authentication());
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
    }

    #[test]
    fn an_oversized_or_undersized_startup_packet_is_refused() {
        let mut s = Startup::new();
        let too_long = u32::try_from(MAX_STARTUP_PACKET + 1).expect("small");
        let mut bytes = too_long.to_be_bytes().to_vec();
        bytes.extend_from_slice(&196_608u32.to_be_bytes());
        assert_eq!(
            s.client_bytes(&bytes),
            Err(StartupError::InvalidLength(too_long))
        );
        let mut s = Startup::new();
        assert_eq!(
            s.client_bytes(&[0, 0, 0, 4, 0, 3, 0, 0]),
            Err(StartupError::InvalidLength(4))
        );
        // The largest PostgreSQL accepts is followed and replayable.
        let mut s = Startup::new();
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.resize(MAX_STARTUP_PACKET - 4, b'x');
        let max = packet(&body);
        assert_eq!(max.len(), MAX_STARTUP_PACKET);
        s.client_bytes(&max).expect("valid");
        assert_eq!(s.phase(), Phase::StartupSent);
        assert_eq!(s.replay().map(<[u8]>::len), Some(MAX_STARTUP_PACKET));
    }

    #[test]
    fn more_unanswered_bytes_than_the_bound_are_not_kept_and_not_replayed() {
        let mut s = Startup::new();
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.resize(MAX_STARTUP_PACKET - 4, b'x');
        s.client_bytes(&packet(&body)).expect("valid");
        // One more client message before the server said anything.
        s.client_bytes(&message(b'p', b"pw\x00")).expect("valid");
        assert_eq!(s.phase(), Phase::StartupSent);
        assert_eq!(s.replay(), None);
        assert_eq!(on_withdrawn(&s, true), Withdrawal::FinishThenClose);
    }

    #[test]
    fn a_server_that_speaks_first_is_opaque() {
        let mut s = Startup::new();
        s.server_bytes(b"hello");
        assert_eq!(s.phase(), Phase::Opaque);
        assert_eq!(on_withdrawn(&s, true), Withdrawal::Close);
        // Its client's bytes are not parsed (no length check).
        s.client_bytes(&[0xff; 16]).expect("not parsed");
    }

    #[test]
    fn an_error_answer_to_the_startup_is_not_replayed() {
        let mut s = Startup::new();
        s.client_bytes(&startup_message("nobody")).expect("valid");
        s.server_bytes(&message(b'E', b"SFATAL\x00\x00"));
        assert_eq!(s.phase(), Phase::Authenticating);
        assert_eq!(s.replay(), None);
    }
}
