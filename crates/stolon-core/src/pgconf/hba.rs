//! `pg_hba.conf` generation (docs/architecture.md §7.4). Pure.
//!
//! Deliberate difference from Stolon (docs/differences.md): in `strict` mode the superuser host lines use the
//! superuser's auth method (Stolon used the replication one); IPv6 addresses get `/128`.

use std::fmt;
use std::str::FromStr;

use crate::model::{ClusterData, DbRole, DbSpec, SuReplAccessMode};

/// Authentication methods the keeper accepts for its superuser and replication user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `md5`.
    Md5,
    /// `scram-sha-256`.
    ScramSha256,
    /// `trust` (no password).
    Trust,
}

impl AuthMethod {
    /// The pg_hba method name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Trust => "trust",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(AuthMethod::Md5),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            "trust" => Ok(AuthMethod::Trust),
            other => Err(format!("unknown auth method {other:?}")),
        }
    }
}

/// Everything pg_hba.conf depends on.
#[derive(Debug, Clone, Copy)]
pub struct HbaInput<'a> {
    /// The whole clusterdata (strict mode lists the other DBs' addresses).
    pub cd: &'a ClusterData,
    /// Our DB's UID.
    pub db_uid: &'a str,
    /// Our DB's spec.
    pub spec: &'a DbSpec,
    /// `defaultSUReplAccessMode`.
    pub access_mode: SuReplAccessMode,
    /// Superuser name.
    pub su_username: &'a str,
    /// Superuser auth method.
    pub su_auth: AuthMethod,
    /// Replication user name.
    pub repl_username: &'a str,
    /// Replication auth method.
    pub repl_auth: AuthMethod,
    /// Only the keeper's own rules (a synchronous primary waiting for its standbys).
    pub only_internal: bool,
}

fn host_mask(addr: &str) -> String {
    if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

/// The pg_hba.conf lines, in order.
pub fn generate_hba(i: &HbaInput<'_>) -> Vec<String> {
    let (su, sa, repl, ra) = (i.su_username, i.su_auth, i.repl_username, i.repl_auth);
    let mut out = vec![
        format!("local postgres {su} {sa}"),
        format!("local replication {repl} {ra}"),
    ];
    match i.access_mode {
        SuReplAccessMode::All => {
            out.push(format!("host all {su} 0.0.0.0/0 {sa}"));
            out.push(format!("host all {su} ::0/0 {sa}"));
            out.push(format!("host replication {repl} 0.0.0.0/0 {ra}"));
            out.push(format!("host replication {repl} ::0/0 {ra}"));
        }
        SuReplAccessMode::Strict => {
            if i.spec.role == Some(DbRole::Master) {
                let mut addrs: Vec<&str> =
                    i.cd.dbs
                        .values()
                        .filter(|db| db.uid != i.db_uid && !db.status.listen_address.is_empty())
                        .map(|db| db.status.listen_address.as_str())
                        .collect();
                addrs.sort_unstable();
                addrs.dedup();
                for a in addrs {
                    let m = host_mask(a);
                    out.push(format!("host all {su} {m} {sa}"));
                    out.push(format!("host replication {repl} {m} {ra}"));
                }
            }
        }
    }
    if !i.only_internal {
        match &i.spec.pg_hba {
            Some(lines) => out.extend(lines.iter().cloned()),
            None => {
                out.push("host all all 0.0.0.0/0 md5".to_string());
                out.push("host all all ::0/0 md5".to_string());
            }
        }
    }
    out
}

/// The file content: one line each, newline-terminated.
pub fn render_hba(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}
