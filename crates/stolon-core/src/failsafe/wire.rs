//! The failsafe messages and how they are authenticated.
//!
//! Keepers acknowledge and confirm only to callers that know the cluster's shared secret, and a
//! caller believes only answers made with it: a forged acknowledgement would let a master confirm
//! what no keeper promised. Every message travels in an [`Envelope`]: the message as a JSON string,
//! the caller's random nonce, and an HMAC-SHA256 over the message kind, the nonce and that string.
//! The secret itself never crosses the network. An answer must carry the nonce of the request it
//! answers, so an old answer cannot be replayed; a replayed *request* gets its answer sent to the
//! replayer, who cannot use it, and at most makes a keeper renew a promise it already gave.
//!
//! Pure: the nonce comes from the caller (drawn from the operating system's random source at the
//! edge), the secret from a file the daemon read.

use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The shortest shared secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// A nonce: this many lowercase hexadecimal characters (128 random bits).
pub const NONCE_LEN: usize = 32;

/// The cluster's shared secret. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Why a secret file's contents cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing but white space.
    #[error("the secret file is empty")]
    Empty,
    /// Shorter than [`MIN_SECRET_LEN`].
    #[error("the secret is {0} bytes long; it must be at least {MIN_SECRET_LEN}")]
    TooShort(usize),
}

impl Secret {
    /// The secret in a file's contents: trailing line ends and spaces are not part of it (a file
    /// written by an editor or `echo` ends with a newline).
    pub fn from_file_contents(bytes: &[u8]) -> Result<Secret, SecretError> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let s = &bytes[..end];
        if s.is_empty() {
            return Err(SecretError::Empty);
        }
        if s.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(s.len()));
        }
        Ok(Secret(s.to_vec()))
    }

    fn mac(&self, kind: Kind, nonce: &str, body: &str) -> Hmac<Sha256> {
        // HMAC hashes keys longer than its block and pads shorter ones: no length is refused.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(kind.label().as_bytes());
        mac.update(&[0]);
        mac.update(nonce.as_bytes());
        mac.update(&[0]);
        mac.update(body.as_bytes());
        mac
    }
}

/// What a message is; bound into its tag, so a tag made for one kind never verifies another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The master's keeper asks another keeper to acknowledge it.
    AckRequest,
    /// That keeper's answer.
    AckAnswer,
    /// A proxy asks the master's keeper to confirm it.
    ConfirmRequest,
    /// The master's keeper's answer.
    ConfirmAnswer,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::AckRequest => "stolon-failsafe-ack-request",
            Kind::AckAnswer => "stolon-failsafe-ack-answer",
            Kind::ConfirmRequest => "stolon-failsafe-confirm-request",
            Kind::ConfirmAnswer => "stolon-failsafe-confirm-answer",
        }
    }
}

/// A message as it travels: the message's JSON text, the request's nonce, the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The caller's nonce ([`NONCE_LEN`] hexadecimal characters).
    pub nonce: String,
    /// The message, as JSON text (the tag covers these exact bytes).
    pub body: String,
    /// HMAC-SHA256 of kind, nonce and body, hexadecimal.
    pub mac: String,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not an envelope, or a nonce that is not [`NONCE_LEN`] hexadecimal characters.
    #[error("malformed failsafe message: {0}")]
    Malformed(String),
    /// The tag does not match: another secret, another kind, or a changed message.
    #[error("failsafe message not authenticated")]
    BadMac,
    /// An answer to another request (a replay, or a late answer).
    #[error("failsafe answer to another request")]
    NonceMismatch,
}

fn check_nonce(nonce: &str) -> Result<(), AuthError> {
    if nonce.len() == NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(AuthError::Malformed(format!(
            "nonce must be {NONCE_LEN} lowercase hexadecimal characters"
        )))
    }
}

/// Seals a message: serialises it and tags it with the secret.
pub fn seal<T: Serialize>(
    secret: &Secret,
    kind: Kind,
    nonce: &str,
    msg: &T,
) -> Result<Envelope, AuthError> {
    check_nonce(nonce)?;
    let body = serde_json::to_string(msg).map_err(|e| AuthError::Malformed(e.to_string()))?;
    let mac = hex::encode(secret.mac(kind, nonce, &body).finalize().into_bytes());
    Ok(Envelope {
        nonce: nonce.to_string(),
        body,
        mac,
    })
}

/// Opens an envelope of `kind`: checks the tag (in constant time), then, for an answer, that it
/// carries the nonce of the request it answers, then decodes the message.
pub fn open<T: DeserializeOwned>(
    secret: &Secret,
    kind: Kind,
    expected_nonce: Option<&str>,
    env: &Envelope,
) -> Result<T, AuthError> {
    check_nonce(&env.nonce)?;
    let tag = hex::decode(&env.mac).map_err(|_| AuthError::BadMac)?;
    secret
        .mac(kind, &env.nonce, &env.body)
        .verify_slice(&tag)
        .map_err(|_| AuthError::BadMac)?;
    if let Some(n) = expected_nonce
        && n != env.nonce
    {
        return Err(AuthError::NonceMismatch);
    }
    serde_json::from_str(&env.body).map_err(|e| AuthError::Malformed(e.to_string()))
}

/// Decodes an envelope from a request or answer body.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, AuthError> {
    serde_json::from_slice(bytes).map_err(|e| AuthError::Malformed(e.to_string()))
}

/// An acknowledgement request, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRequestMsg {
    /// The master DB.
    #[serde(rename = "masterDB")]
    pub master_db: String,
    /// The keeper asking.
    pub master_keeper: String,
}

/// The answer to an acknowledgement or a confirmation request: a lifetime granted, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerMsg {
    /// The lifetime granted, in milliseconds of the grantor's clock (absent: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_ms: Option<u64>,
    /// Why it was refused (absent: granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The kind of refusal, [`super::Refusal::code`] (absent: granted, or an older peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

impl AnswerMsg {
    /// The answer for a decision of [`super::answer_ack`] or [`super::answer_confirm`].
    /// A lifetime is rounded down to whole milliseconds, never up.
    pub fn from_decision(d: &Result<std::time::Duration, super::Refusal>) -> AnswerMsg {
        match d {
            Ok(lifetime) => AnswerMsg {
                granted_ms: Some(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX)),
                refused: None,
                refusal: None,
            },
            Err(r) => AnswerMsg {
                granted_ms: None,
                refused: Some(r.to_string()),
                refusal: Some(r.code().to_string()),
            },
        }
    }

    /// The lifetime granted, if any.
    pub fn granted(&self) -> Option<std::time::Duration> {
        self.granted_ms.map(std::time::Duration::from_millis)
    }
}

/// A confirmation request, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmRequestMsg {
    /// The DB the proxy last saw as master.
    #[serde(rename = "masterDB")]
    pub master_db: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn secret(s: &str) -> Secret {
        Secret::from_file_contents(s.as_bytes()).expect("a valid secret")
    }

    fn req() -> AckRequestMsg {
        AckRequestMsg {
            master_db: "db0".into(),
            master_keeper: "keeper0".into(),
        }
    }

    #[test]
    fn a_sealed_request_opens_with_the_same_secret() {
        let s = secret("correct horse battery staple\n");
        let env = seal(&s, Kind::AckRequest, NONCE, &req()).expect("seals");
        let back: AckRequestMsg = open(&s, Kind::AckRequest, None, &env).expect("opens");
        assert_eq!(back, req());
        assert_eq!(env.body, r#"{"masterDB":"db0","masterKeeper":"keeper0"}"#);
        assert!(!env.body.contains("horse") && !env.mac.contains("horse"));
    }

    #[test]
    fn a_request_without_the_secret_is_refused() {
        let env = seal(
            &secret("an attacker's guess!"),
            Kind::AckRequest,
            NONCE,
            &req(),
        )
        .expect("seals");
        assert_eq!(
            open::<AckRequestMsg>(
                &secret("the cluster's secret"),
                Kind::AckRequest,
                None,
                &env
            ),
            Err(AuthError::BadMac)
        );
        let unsigned = Envelope {
            mac: String::new(),
            ..env.clone()
        };
        assert_eq!(
            open::<AckRequestMsg>(
                &secret("an attacker's guess!"),
                Kind::AckRequest,
                None,
                &unsigned
            ),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn a_changed_message_or_another_kind_is_refused() {
        let s = secret("the cluster's secret");
        let env = seal(&s, Kind::AckRequest, NONCE, &req()).expect("seals");
        let changed = Envelope {
            body: env.body.replace("db0", "db9"),
            ..env.clone()
        };
        assert_eq!(
            open::<AckRequestMsg>(&s, Kind::AckRequest, None, &changed),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            open::<AckRequestMsg>(&s, Kind::ConfirmRequest, None, &env),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn an_answer_to_another_request_is_refused() {
        let s = secret("the cluster's secret");
        let answer = AnswerMsg::from_decision(&Ok(std::time::Duration::from_millis(7500)));
        let env = seal(&s, Kind::AckAnswer, OTHER, &answer).expect("seals");
        assert_eq!(
            open::<AnswerMsg>(&s, Kind::AckAnswer, Some(NONCE), &env),
            Err(AuthError::NonceMismatch)
        );
        let back: AnswerMsg = open(&s, Kind::AckAnswer, Some(OTHER), &env).expect("opens");
        assert_eq!(back.granted(), Some(std::time::Duration::from_millis(7500)));
    }

    #[test]
    fn malformed_envelopes_and_nonces_are_refused_in_one_line() {
        let s = secret("the cluster's secret");
        assert!(matches!(
            decode_envelope(b"{\"nonce\": 3}"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            seal(&s, Kind::AckRequest, "short", &req()),
            Err(AuthError::Malformed(_))
        ));
        let mut env = seal(&s, Kind::AckRequest, NONCE, &req()).expect("seals");
        env.nonce = NONCE.to_uppercase();
        let e = open::<AckRequestMsg>(&s, Kind::AckRequest, None, &env).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "malformed failsafe message: nonce must be 32 lowercase hexadecimal characters"
        );
    }

    #[test]
    fn a_refusal_travels_as_its_reason() {
        let a = AnswerMsg::from_decision(&Err(super::super::Refusal::Elected));
        assert_eq!(a.granted(), None);
        assert_eq!(
            serde_json::to_string(&a).expect("serialises"),
            r#"{"refused":"this keeper's db was elected master","refusal":"elected"}"#
        );
    }

    #[test]
    fn secrets_are_read_from_file_contents_and_never_printed() {
        assert_eq!(
            Secret::from_file_contents(b"\n \n"),
            Err(SecretError::Empty)
        );
        assert_eq!(
            Secret::from_file_contents(b"too short\n"),
            Err(SecretError::TooShort(9))
        );
        let s = secret("sixteen bytes ok\r\n");
        assert_eq!(format!("{s:?}"), "Secret(<16 bytes>)");
    }
}
