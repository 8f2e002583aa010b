//! The error type of every stolon-pg operation: one variant per way a PostgreSQL program, a file
//! operation or a SQL query can fail, carrying what the caller needs to log it in one line.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while running PostgreSQL programs, touching PGDATA or querying.
///
/// Messages never contain passwords: passwords travel in 0600 temp files (pgpass / pwfile) or
/// inside the SQL protocol, never in program arguments, and failed SQL texts are not included.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A PostgreSQL program was not found in the bin dir or `$PATH`.
    #[error("{program} not found in {searched}")]
    BinaryNotFound {
        /// Program name (`initdb`, `pg_ctl`, ...).
        program: String,
        /// Where we looked.
        searched: String,
    },
    /// The OS user to run children as does not exist.
    #[error("OS user {0:?} not found")]
    OsUserNotFound(String),
    /// The program could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program path.
        program: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    ToolFailed {
        /// Program name.
        program: String,
        /// Exit status as text (`exit status: 1`, `signal: 9`).
        status: String,
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Tail of its stderr (and stdout when stderr is empty).
        stderr: String,
    },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    ToolTimeout {
        /// Program name.
        program: String,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// Output of a program or a file could not be understood.
    #[error("cannot parse {what} from {output:?}")]
    Parse {
        /// What we were parsing.
        what: &'static str,
        /// The offending text (truncated).
        output: String,
    },
    /// The postmaster child exited before writing its pid file, or while we waited for it.
    #[error("postgres exited unexpectedly ({status}){}", tail_suffix(output))]
    ExitedUnexpectedly {
        /// Exit status as text.
        status: String,
        /// Last lines postgres printed, when we captured them.
        output: String,
    },
    /// The postmaster did not write its pid file in time (it keeps running).
    #[error("postgres instance still starting after {0:?}")]
    StillStarting(Duration),
    /// `select 1` did not succeed in time.
    #[error("postgres not ready after {timeout:?}: {last_error}")]
    NotReady {
        /// The bound that was exceeded.
        timeout: Duration,
        /// The last connection / query error seen.
        last_error: String,
    },
    /// `start` was called while a postmaster started by us is still running.
    #[error("postgres already running as our child (pid {0})")]
    AlreadyRunning(u32),
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// Verb + object, e.g. `write file`.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to PostgreSQL failed.
    #[error("connect to postgres at {target}: {source}")]
    Connect {
        /// `socket dir:port` or `host:port`.
        target: String,
        /// Underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting to PostgreSQL took too long.
    #[error("connect to postgres at {target}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// `socket dir:port` or `host:port`.
        target: String,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// IDENTIFY_SYSTEM over a replication connection failed.
    #[error("replication connection to postgres at {target}: {source}")]
    Replication {
        /// `socket dir:port`.
        target: String,
        /// What went wrong (never a password).
        #[source]
        source: crate::replication::ReplicationError,
    },
    /// A statement on the cached local connection took too long (the connection is dropped).
    #[error("local postgres query: no answer within {timeout:?}")]
    QueryTimeout {
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// A SQL statement failed.
    #[error("{what}: {source}")]
    Sql {
        /// Verb + object, e.g. `list replication slots`.
        what: &'static str,
        /// Underlying error (no statement text, so no password, is included).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The caller passed something we refuse to execute.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn tail_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

impl PgError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PgError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Keeps the last `max` bytes of `s` (on a char boundary), prefixed by `...` when cut.
pub(crate) fn truncate_tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}
