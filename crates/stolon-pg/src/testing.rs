//! Test support (feature `testing`), for this crate's and other crates' integration tests that
//! run real PostgreSQL: the PostgreSQL 15 binaries, the `postgres` OS user when running as root,
//! fresh temp dirs owned by that user under `/tmp`, and free loopback ports. Not for production.

use std::collections::HashSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::binaries::{OsUser, PgBinaries};
use crate::process_pg::{Credentials, ProcessPgConfig};

/// Where the tests expect PostgreSQL (Debian's PostgreSQL 15).
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// `$STOLON_TEST_PG_BIN_DIR` or [`DEFAULT_PG_BIN_DIR`].
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("STOLON_TEST_PG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR))
}

/// The binaries in [`pg_bin_dir`].
pub fn pg_binaries() -> PgBinaries {
    PgBinaries::in_dir(pg_bin_dir())
}

/// `Some(postgres user)` when running as root (PostgreSQL refuses root), else `None`.
///
/// # Panics
/// When running as root and there is no `postgres` OS user.
pub fn test_os_user() -> Option<OsUser> {
    if nix::unistd::geteuid().is_root() {
        Some(OsUser::from_name("postgres").expect("running as root needs a `postgres` OS user"))
    } else {
        None
    }
}

/// A loopback TCP port that was free a moment ago and was not handed out before by this
/// process (so parallel tests in one binary never collide with each other).
///
/// # Panics
/// When no port can be bound after 100 attempts.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port after 100 attempts");
}

/// A fresh directory `/tmp/<prefix>XXXXXX` (mode 0755) owned by the test OS user, removed with
/// everything in it on drop (unless `$STOLON_TEST_KEEP_DIRS` is set, for debugging).
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    os_user: Option<OsUser>,
}

impl TestDir {
    /// Creates the directory. `/tmp` (not `$TMPDIR`) so every parent is traversable.
    ///
    /// # Panics
    /// On any IO error (tests only).
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("create test dir under /tmp");
        let path = dir.path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        let os_user = test_os_user();
        chown(&path, os_user.as_ref());
        TestDir {
            dir: Some(dir),
            path,
            os_user,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The OS user owning it (and which children should run as), when root.
    pub fn os_user(&self) -> Option<&OsUser> {
        self.os_user.as_ref()
    }

    /// Creates `<dir>/<name>` with `mode`, owned by the test OS user, and returns it.
    ///
    /// # Panics
    /// On any IO error (tests only).
    pub fn subdir(&self, name: &str, mode: u32) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create test subdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .expect("chmod test subdir");
        chown(&p, self.os_user.as_ref());
        p
    }

    /// A [`ProcessPgConfig`] for a node called `name`: `<dir>/<name>` (0700) as socket dir,
    /// `<dir>/<name>/postgres` as PGDATA (not created), a free port, the PostgreSQL 15 binaries,
    /// the test OS user, and `<dir>/<name>/postgres.log` as postgres output (that file survives
    /// initdb and pg_basebackup, which want PGDATA empty).
    pub fn pg_config(
        &self,
        name: &str,
        superuser: Credentials,
        replication: Credentials,
    ) -> ProcessPgConfig {
        let node = self.subdir(name, 0o700);
        let mut cfg = ProcessPgConfig::new(
            pg_binaries(),
            node.join("postgres"),
            node.clone(),
            free_port(),
            superuser,
            replication,
        );
        cfg.os_user = self.os_user.clone();
        cfg.temp_dir = self.subdir("tmp", 0o700);
        let log = node.join("postgres.log");
        std::fs::write(&log, b"").expect("create postgres log");
        chown(&log, self.os_user.as_ref());
        cfg.output = crate::process_pg::PostgresOutput::File(log);
        cfg
    }
}

impl TestDir {
    /// Copies an executable (e.g. a freshly built `stolon-keeper`) to `<dir>/bin/<name>` with
    /// mode 0755, so another OS user can run it even when the build dir's parents are not
    /// traversable for that user; returns the copy's path.
    ///
    /// # Panics
    /// On any IO error (tests only).
    pub fn install_binary(&self, src: &Path) -> PathBuf {
        let bin = self.subdir("bin", 0o755);
        let name = src.file_name().expect("binary path has a file name");
        let dst = bin.join(name);
        std::fs::copy(src, &dst).expect("copy binary");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary");
        dst
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("STOLON_TEST_KEEP_DIRS").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping test dir {}", d.keep().display());
        }
    }
}

fn chown(path: &Path, user: Option<&OsUser>) {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).expect("chown test path");
    }
}
