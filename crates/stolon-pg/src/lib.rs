//! stolon-pg: the only place in stolon-rs that runs PostgreSQL programs or SQL.
//!
//! It executes and observes; it never decides. The keeper's pure `plan` (in stolon-core) says what
//! to do, and the keeper drives a [`PgCtl`] implementation to do it. [`ProcessPg`] is the real
//! implementation (initdb, postgres as a supervised child, pg_ctl, pg_basebackup, pg_rewind, psql
//! and tokio-postgres over the local unix socket); tests of the keeper can use a fake instead.
//!
//! Module map:
//! - [`binaries`]: locating the PostgreSQL programs, their version, the OS user children run as;
//! - [`conninfo`]: libpq connection strings and pgpass lines for remote connections;
//! - [`files`]: files inside PGDATA (atomic writes, signal files, pg_control, WAL, timelines);
//! - [`lsn`]: the `Lsn` WAL position type;
//! - [`ctl`]: the [`PgCtl`] trait and its option / result types;
//! - [`process_pg`]: [`ProcessPg`], the real implementation;
//! - [`testing`] (feature `testing`): helpers for integration tests running as root;
//! - [`fake`] (feature `fake`): `FakePg`, an in-memory [`PgCtl`] for keeper tests.
//!
//! IDENTIFY_SYSTEM needs a replication connection, which tokio-postgres cannot open (it has no
//! way to send the `replication` startup parameter), so [`ProcessPg`] runs `psql "...
//! replication=1" -c IDENTIFY_SYSTEM` (the PostgreSQL documentation's own example) with a
//! temporary PGPASSFILE. TIMELINE_HISTORY is served by reading `pg_wal/<tli>.history`
//! directly: the file the server itself would send, and it is stable across versions (the
//! protocol's `content` column changed type in PostgreSQL 16).

pub mod binaries;
pub mod conninfo;
pub mod ctl;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod files;
pub mod lsn;
mod postmaster;
mod process;
pub mod process_pg;
pub mod replication;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

pub use binaries::{OsUser, PgBinaries, PgVersion};
pub use conninfo::ConnParams;
pub use ctl::{
    BaseBackupOptions, InitDbOptions, PgCtl, PostgresExit, RecoveryMode, RewindOptions,
    RewindOutcome, RoleDef, StartOptions, StopMode, SystemIdentity, TimelineHistoryEntry, WalFile,
    WalPosition,
};
pub use error::PgError;
pub use lsn::Lsn;
pub use process_pg::{Credentials, PostgresOutput, ProcessPg, ProcessPgConfig};
