//! A small client for PostgreSQL's physical replication protocol, enough to run
//! `IDENTIFY_SYSTEM` over the local Unix socket: startup with `replication=true`, password
//! authentication (cleartext, md5, SCRAM-SHA-256), one simple query, terminate.
//!
//! tokio-postgres cannot open replication connections. A standby's replay timeline is only
//! available through `IDENTIFY_SYSTEM` on PostgreSQL 15, and running `psql` for it on every keeper
//! pass cost about 50 ms of CPU; this costs one socket round trip per message.

use std::path::Path;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::ctl::SystemIdentity;
use crate::lsn::Lsn;

/// The `application_name` of the connection: never one of the `stolon_<db>` names that
/// `synchronous_standby_names` lists.
const APPLICATION_NAME: &str = "stolon-keeper-identify";

/// A server message larger than this is refused (IDENTIFY_SYSTEM's answer is a few dozen bytes).
const MAX_MESSAGE: usize = 1 << 20;

/// Why an `IDENTIFY_SYSTEM` over the replication protocol failed (no password is ever included).
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The socket could not be opened, read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(String),
    /// The server asks for an authentication method this client does not speak, or for a
    /// password when none is configured.
    #[error("{0}")]
    Auth(String),
    /// The server sent something the protocol does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Runs `IDENTIFY_SYSTEM` as `user` over the Unix socket `socket` (the full path of
/// `.s.PGSQL.<port>`). The caller bounds the time.
pub async fn identify_system(
    socket: &Path,
    user: &str,
    password: Option<&str>,
) -> Result<SystemIdentity, ReplicationError> {
    let mut conn = Conn {
        stream: UnixStream::connect(socket).await?,
        buf: BytesMut::with_capacity(1024),
        out: BytesMut::with_capacity(256),
    };
    frontend::startup_message(
        [
            ("user", user),
            ("replication", "true"),
            ("application_name", APPLICATION_NAME),
        ],
        &mut conn.out,
    )?;
    conn.flush().await?;
    conn.authenticate(user, password).await?;

    frontend::query("IDENTIFY_SYSTEM", &mut conn.out)?;
    conn.flush().await?;
    let mut row = None;
    loop {
        match conn.next().await? {
            Message::RowDescription(_) | Message::CommandComplete(_) => {}
            Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
            Message::DataRow(body) => {
                let fields: Vec<Option<String>> = body
                    .ranges()
                    .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&body.buffer()[r]).into_owned())))
                    .collect()?;
                row = Some(fields);
            }
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::ReadyForQuery(_) => break,
            _ => return Err(unexpected("the IDENTIFY_SYSTEM answer")),
        }
    }
    frontend::terminate(&mut conn.out);
    // The answer is in; a failure to say goodbye changes nothing.
    let _ = conn.flush().await;
    let row =
        row.ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    parse_row(&row)
}

/// Builds the identity from IDENTIFY_SYSTEM's columns: systemid, timeline, xlogpos, dbname.
fn parse_row(row: &[Option<String>]) -> Result<SystemIdentity, ReplicationError> {
    let col = |i: usize, name: &str| {
        row.get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| ReplicationError::Protocol(format!("IDENTIFY_SYSTEM: no {name}")))
    };
    let bad = |name: &str, v: &str| {
        ReplicationError::Protocol(format!("IDENTIFY_SYSTEM: {name} {v:?} is not valid"))
    };
    let system_id = col(0, "systemid")?;
    let timeline = col(1, "timeline")?;
    let xlog_pos = col(2, "xlogpos")?;
    Ok(SystemIdentity {
        system_id: system_id.parse().map_err(|_| bad("systemid", system_id))?,
        timeline: timeline.parse().map_err(|_| bad("timeline", timeline))?,
        xlog_pos: xlog_pos
            .parse::<Lsn>()
            .map_err(|_| bad("xlogpos", xlog_pos))?,
    })
}

struct Conn {
    stream: UnixStream,
    /// Bytes read and not yet parsed.
    buf: BytesMut,
    /// Bytes to send.
    out: BytesMut,
}

impl Conn {
    async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next whole message from the server.
    async fn next(&mut self) -> Result<Message, ReplicationError> {
        loop {
            if let Some(msg) = Message::parse(&mut self.buf)? {
                return Ok(msg);
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(ReplicationError::Protocol(format!(
                    "a server message is over {MAX_MESSAGE} bytes"
                )));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
        }
    }

    /// Answers the server's authentication requests until it is ready for a query.
    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&str>,
    ) -> Result<(), ReplicationError> {
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Auth(format!(
                    "the server asks for a password for {user:?} and none is configured"
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                Message::AuthenticationOk
                | Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), need_password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = body.mechanisms();
                    let mut scram_offered = false;
                    while let Some(m) = offered.next()? {
                        scram_offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !scram_offered {
                        return Err(ReplicationError::Auth(
                            "the server offers no SASL mechanism but SCRAM-SHA-256-PLUS, \
                             which needs TLS"
                                .into(),
                        ));
                    }
                    let s = ScramSha256::new(
                        need_password()?.as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.out,
                    )?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| unexpected("a SASL continuation before SASL started"))?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| unexpected("a SASL final message before SASL started"))?;
                    s.finish(body.data())
                        .map_err(|e| ReplicationError::Auth(format!("SCRAM: {e}")))?;
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::Auth(
                        "the server asks for an authentication method other than password, \
                         md5 or scram-sha-256"
                            .into(),
                    ));
                }
                _ => return Err(unexpected("authentication")),
            }
        }
    }
}

fn unexpected(during: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("unexpected message during {during}"))
}

/// `SEVERITY: message` from an ErrorResponse.
fn server_error(body: &ErrorResponseBody) -> ReplicationError {
    let mut severity = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = value,
            b'M' => message = value,
            _ => {}
        }
    }
    if severity.is_empty() {
        ReplicationError::Server(message)
    } else {
        ReplicationError::Server(format!("{severity}: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[Option<&str>]) -> Vec<Option<String>> {
        cols.iter().map(|c| c.map(str::to_string)).collect()
    }

    #[test]
    fn identify_system_row() {
        let id = parse_row(&row(&[
            Some("7312345678901234567"),
            Some("2"),
            Some("0/3000148"),
            None,
        ]))
        .unwrap();
        assert_eq!(id.system_id, 7312345678901234567);
        assert_eq!(id.timeline, 2);
        assert_eq!(id.xlog_pos, Lsn(0x3000148));
    }

    #[test]
    fn malformed_rows_are_refused_with_the_column() {
        let err = |cols: &[Option<&str>]| parse_row(&row(cols)).unwrap_err().to_string();
        assert_eq!(
            err(&[Some("x"), Some("1"), Some("0/0")]),
            "protocol: IDENTIFY_SYSTEM: systemid \"x\" is not valid"
        );
        assert_eq!(
            err(&[Some("1"), None, Some("0/0")]),
            "protocol: IDENTIFY_SYSTEM: no timeline"
        );
        assert_eq!(
            err(&[Some("1"), Some("1"), Some("zz")]),
            "protocol: IDENTIFY_SYSTEM: xlogpos \"zz\" is not valid"
        );
        assert_eq!(err(&[Some("1")]), "protocol: IDENTIFY_SYSTEM: no timeline");
    }
}
