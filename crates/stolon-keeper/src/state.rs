//! The keeper's local files in `--data-dir` (docs/architecture.md §4.5): `keeperstate` and
//! `dbstate` written atomically (temp file + fsync + rename + directory fsync, mode 0600), the
//! exclusive fcntl lock on `lock`, and UID generation.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use stolon_core::keeper::{KeeperLocalState, LocalDbState};

/// Errors reading or writing the local state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem error.
    #[error("{what} {path}: {source}")]
    Io {
        /// Verb + object.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid JSON of the expected shape.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically with mode 0600: a reader sees the old or the new file,
/// never a partial one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        f.write_all(data).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("chmod", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename to", path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync directory", dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(b) => stolon_core::model::json::from_slice(&b)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path, e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StateError> {
    let data = serde_json::to_vec(v).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &data)
}

/// `<data-dir>/keeperstate`.
pub fn load_keeper_state(data_dir: &Path) -> Result<Option<KeeperLocalState>, StateError> {
    read_json(&data_dir.join("keeperstate"))
}

/// Saves `<data-dir>/keeperstate`.
pub fn save_keeper_state(data_dir: &Path, s: &KeeperLocalState) -> Result<(), StateError> {
    write_json(&data_dir.join("keeperstate"), s)
}

/// `<data-dir>/dbstate` (a missing file is the empty state).
pub fn load_db_state(data_dir: &Path) -> Result<LocalDbState, StateError> {
    Ok(read_json(&data_dir.join("dbstate"))?.unwrap_or_default())
}

/// Saves `<data-dir>/dbstate`.
pub fn save_db_state(data_dir: &Path, s: &LocalDbState) -> Result<(), StateError> {
    write_json(&data_dir.join("dbstate"), s)
}

/// A new random UID: 8 lowercase hex characters (Stolon's `common.UID()`).
pub fn new_uid() -> String {
    let b = uuid::Uuid::new_v4();
    let bytes = b.as_bytes();
    stolon_core::uid::uid_from_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The held exclusive lock on `<data-dir>/lock`; released when dropped (the file closes).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes an exclusive `fcntl(F_SETLK, F_WRLCK)` lock on the whole `<data-dir>/lock` file
/// without waiting. The error text is Stolon's.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    let path = data_dir.join("lock");
    let fail = |e: String| {
        format!(
            "cannot take exclusive lock on data dir {:?}: {e}",
            path.display().to_string()
        )
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&fl))
        .map_err(|e| fail(e.to_string()))?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json_round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load_db_state(d.path()).unwrap(), LocalDbState::default());
        let s = LocalDbState {
            uid: "db1".into(),
            generation: 4,
            initializing: true,
            init_pg_parameters: None,
        };
        save_db_state(d.path(), &s).unwrap();
        assert_eq!(load_db_state(d.path()).unwrap(), s);
        let mode = std::fs::metadata(d.path().join("dbstate"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        std::fs::write(d.path().join("keeperstate"), "{bad").unwrap();
        assert!(load_keeper_state(d.path()).is_err());
    }

    #[test]
    fn uids_are_valid() {
        let u = new_uid();
        assert_eq!(u.len(), 8);
        assert!(crate::config::is_valid_uid(&u));
    }

    #[test]
    fn lock_creates_lock_file() {
        // fcntl locks belong to the process, so exclusivity between two keepers is tested with
        // two real processes in tests/keeper_integration.rs (lock_and_startup_checks).
        let d = tempfile::tempdir().unwrap();
        let l = lock_data_dir(d.path()).unwrap();
        assert!(d.path().join("lock").exists());
        drop(l);
    }
}
