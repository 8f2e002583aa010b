//! Identifier generation, injected so the pure core stays deterministic.

/// A source of new UIDs (8 lowercase hex characters in Stolon's form).
pub trait UidSource {
    /// A new UID.
    fn new_uid(&mut self) -> String;
}

/// Deterministic UIDs for tests: `uid0001`, `uid0002`, ... with a prefix.
#[derive(Debug, Clone, Default)]
pub struct SeqUids {
    prefix: String,
    next: u64,
}

impl SeqUids {
    /// UIDs `<prefix>0001`, `<prefix>0002`, ...
    pub fn new(prefix: &str) -> Self {
        SeqUids {
            prefix: prefix.to_string(),
            next: 0,
        }
    }
}

impl UidSource for SeqUids {
    fn new_uid(&mut self) -> String {
        self.next += 1;
        format!("{}{:04}", self.prefix, self.next)
    }
}

/// Formats the first 4 bytes of random input as Stolon's 8-hex-char UID.
pub fn uid_from_bytes(b: [u8; 4]) -> String {
    format!("{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}
