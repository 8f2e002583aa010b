//! Files inside (and next to) PGDATA: atomic writes, the recovery signal files, the
//! `postgresql.auto.conf` -> `/dev/null` symlink that blocks ALTER SYSTEM, and the read-only
//! facts the keeper reports (initialised?, system id, data version, oldest WAL file, timeline
//! history). Plain blocking std IO: these are small files; callers on a runtime wrap them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::binaries::{OsUser, PgVersion, chown_to};
use crate::ctl::{RecoveryMode, TimelineHistoryEntry, WalFile};
use crate::error::PgError;
use crate::lsn::Lsn;

/// Name of the standby signal file (PostgreSQL >= 12).
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// Name of the recovery signal file (PostgreSQL >= 12).
pub const RECOVERY_SIGNAL: &str = "recovery.signal";
/// The file ALTER SYSTEM writes; we make it a symlink to `/dev/null`.
pub const AUTO_CONF: &str = "postgresql.auto.conf";
/// The temporary merged config used while initialising.
pub const TEMP_MERGED_CONF: &str = "stolon-temp-postgresql.conf";

/// Files and directories whose presence means PGDATA is initialised (PostgreSQL >= 10).
pub const INITIALIZED_MARKERS: &[&str] = &[
    "PG_VERSION",
    "base",
    "global",
    "pg_dynshmem",
    "pg_logical",
    "pg_multixact",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_twophase",
    "global/pg_control",
    "pg_xact",
    "pg_wal",
];

/// Writes `contents` to `path` atomically: a temp file in the same directory, `mode`, fsync,
/// owner (when `owner` applies, see [`OsUser`]), rename over `path`, fsync of the directory.
/// A reader sees either the old or the new complete file, never a half-written one.
pub fn write_file_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<&OsUser>,
) -> Result<(), PgError> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".stolon-tmp-")
        .tempfile_in(dir)
        .map_err(|e| PgError::io("create temp file in", dir, e))?;
    let file = tmp.as_file_mut();
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| PgError::io("set mode of temp file for", path, e))?;
    file.write_all(contents)
        .map_err(|e| PgError::io("write temp file for", path, e))?;
    file.sync_all()
        .map_err(|e| PgError::io("fsync temp file for", path, e))?;
    if let Some(u) = OsUser::effective(owner) {
        std::os::unix::fs::fchown(&*file, Some(u.uid), Some(u.gid))
            .map_err(|e| PgError::io("change owner of temp file for", path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| PgError::io("rename temp file to", path, e.error))?;
    fsync_dir(dir)
}

/// fsyncs a directory so a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), PgError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PgError::io("fsync directory", dir, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes a file if it exists (and fsyncs its directory); a missing file is not an error.
pub fn remove_file_if_exists(path: &Path) -> Result<(), PgError> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PgError::io("remove file", path, e)),
    }
}

/// Creates or removes `standby.signal` / `recovery.signal` so that exactly `mode`'s file exists.
pub fn set_recovery_mode(
    pgdata: &Path,
    mode: RecoveryMode,
    owner: Option<&OsUser>,
) -> Result<(), PgError> {
    let (want, other) = match mode {
        RecoveryMode::None => (None, None),
        RecoveryMode::Standby => (Some(STANDBY_SIGNAL), Some(RECOVERY_SIGNAL)),
        RecoveryMode::Recovery => (Some(RECOVERY_SIGNAL), Some(STANDBY_SIGNAL)),
    };
    match want {
        None => {
            remove_file_if_exists(&pgdata.join(STANDBY_SIGNAL))?;
            remove_file_if_exists(&pgdata.join(RECOVERY_SIGNAL))?;
        }
        Some(w) => {
            if let Some(o) = other {
                remove_file_if_exists(&pgdata.join(o))?;
            }
            write_file_atomic(&pgdata.join(w), b"", 0o600, owner)?;
        }
    }
    Ok(())
}

/// Which signal file exists: `standby.signal` wins over `recovery.signal` (as in PostgreSQL).
pub fn recovery_mode(pgdata: &Path) -> RecoveryMode {
    if pgdata.join(STANDBY_SIGNAL).exists() {
        RecoveryMode::Standby
    } else if pgdata.join(RECOVERY_SIGNAL).exists() {
        RecoveryMode::Recovery
    } else {
        RecoveryMode::None
    }
}

/// Makes `postgresql.auto.conf` a symlink to `/dev/null`, so ALTER SYSTEM fails (it cannot
/// replace it). Idempotent; the swap is atomic (symlink at a temp name, then rename).
pub fn block_alter_system(pgdata: &Path, owner: Option<&OsUser>) -> Result<(), PgError> {
    let target = pgdata.join(AUTO_CONF);
    if let Ok(link) = fs::read_link(&target)
        && link == Path::new("/dev/null")
    {
        return Ok(());
    }
    let tmp = pgdata.join(format!(".{AUTO_CONF}.stolon-tmp"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink("/dev/null", &tmp)
        .map_err(|e| PgError::io("create symlink", &tmp, e))?;
    chown_to(owner, &tmp)?;
    fs::rename(&tmp, &target).map_err(|e| PgError::io("rename symlink to", &target, e))?;
    fsync_dir(pgdata)
}

/// True when every entry of [`INITIALIZED_MARKERS`] exists in `pgdata`.
pub fn is_initialized(pgdata: &Path) -> bool {
    INITIALIZED_MARKERS
        .iter()
        .all(|m| fs::symlink_metadata(pgdata.join(m)).is_ok())
}

/// The database system identifier: the first 8 bytes of `global/pg_control`, little endian.
/// `None` when the file does not exist.
pub fn read_system_id(pgdata: &Path) -> Result<Option<u64>, PgError> {
    let path = pgdata.join("global/pg_control");
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PgError::io("read", path, e)),
    };
    let first: [u8; 8] = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PgError::Parse {
            what: "system id from global/pg_control",
            output: format!("{} bytes", data.len()),
        })?;
    Ok(Some(u64::from_le_bytes(first)))
}

/// `DBState` value `DB_SHUTDOWNED` in `pg_control`: a primary shut down cleanly.
const DB_SHUTDOWNED: u32 = 1;

/// The location of the last checkpoint recorded in `global/pg_control` when the file records a
/// clean shutdown of a primary (state `shut down`; its last checkpoint is then the shutdown
/// checkpoint, the last WAL record it wrote). `None` when the file does not exist or records
/// any other state (running, crashed, a standby shut down in recovery).
///
/// Layout (PostgreSQL 12 to 17, `ControlFileData`, native byte order, little endian here):
/// system identifier (8 bytes), `pg_control_version` (4), `catalog_version_no` (4), `state` (4,
/// then 4 bytes of padding), `time` (8), `checkPoint` (8, at offset 32).
pub fn read_shutdown_checkpoint(pgdata: &Path) -> Result<Option<u64>, PgError> {
    let path = pgdata.join("global/pg_control");
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PgError::io("read", path, e)),
    };
    let parse_err = || PgError::Parse {
        what: "checkpoint location from global/pg_control",
        output: format!("{} bytes", data.len()),
    };
    let state: [u8; 4] = data
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(parse_err)?;
    let checkpoint: [u8; 8] = data
        .get(32..40)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(parse_err)?;
    if u32::from_le_bytes(state) != DB_SHUTDOWNED {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(checkpoint)).filter(|p| *p > 0))
}

/// The data directory's major version from `PG_VERSION`; `None` when the file does not exist.
pub fn read_data_version(pgdata: &Path) -> Result<Option<PgVersion>, PgError> {
    let path = pgdata.join("PG_VERSION");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PgError::io("read", path, e)),
    };
    PgVersion::parse_numeric(&text)
        .map(Some)
        .ok_or_else(|| PgError::Parse {
            what: "PG_VERSION",
            output: text.chars().take(50).collect(),
        })
}

/// The first WAL segment file (24 hex characters) in `pg_wal` in sorted order, with its size.
/// `None` when there is none. The caller judges the size (16 MiB by default).
pub fn oldest_wal_file(pgdata: &Path) -> Result<Option<WalFile>, PgError> {
    let dir = pgdata.join("pg_wal");
    let entries = fs::read_dir(&dir).map_err(|e| PgError::io("list", &dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PgError::io("list", &dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && is_wal_segment_name(name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    let Some(name) = names.into_iter().next() else {
        return Ok(None);
    };
    let path = dir.join(&name);
    let size = fs::metadata(&path)
        .map_err(|e| PgError::io("stat", &path, e))?
        .len();
    Ok(Some(WalFile { name, size }))
}

fn is_wal_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads `pg_wal/<TLI as %08X>.history`: the history that led to `timeline` (the same content
/// the server sends for TIMELINE_HISTORY). Empty for timeline 1 or when the file is absent.
pub fn read_timeline_history(
    pgdata: &Path,
    timeline: u32,
) -> Result<Vec<TimelineHistoryEntry>, PgError> {
    if timeline <= 1 {
        return Ok(Vec::new());
    }
    let path = pgdata
        .join("pg_wal")
        .join(format!("{timeline:08X}.history"));
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PgError::io("read", path, e)),
    };
    parse_timeline_history(&text)
}

/// Parses a timeline history file: `<parent tli> <switch lsn> <reason>` lines; blank lines and
/// `#` comments are skipped.
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimelineHistoryEntry>, PgError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || PgError::Parse {
            what: "timeline history line",
            output: line.chars().take(200).collect(),
        };
        let mut parts = line.splitn(3, |c: char| c.is_whitespace());
        let timeline: u32 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let switch_point: Lsn = parts
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(bad)?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        out.push(TimelineHistoryEntry {
            timeline,
            switch_point,
            reason,
        });
    }
    Ok(out)
}

/// Expands a restore command: `%d` -> `pgdata`, `%%` -> `%`; any other `%x` is kept as is.
pub fn expand_restore_command(command: &str, pgdata: &Path) -> String {
    let mut out = String::with_capacity(command.len() + 32);
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.peek() {
                Some('d') => {
                    chars.next();
                    out.push_str(&pgdata.to_string_lossy());
                }
                Some('%') => {
                    chars.next();
                    out.push('%');
                }
                _ => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes a directory tree; a missing directory is not an error.
pub fn remove_dir_all_if_exists(dir: &Path) -> Result<(), PgError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PgError::io("remove directory", dir, e)),
    }
}

/// The pid on the first line of `postmaster.pid`, if the file exists and parses.
pub fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.conf");
        write_file_atomic(&p, b"one", 0o600, None).unwrap();
        write_file_atomic(&p, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn signal_files_follow_mode() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(recovery_mode(d.path()), RecoveryMode::None);
        set_recovery_mode(d.path(), RecoveryMode::Standby, None).unwrap();
        assert_eq!(recovery_mode(d.path()), RecoveryMode::Standby);
        set_recovery_mode(d.path(), RecoveryMode::Recovery, None).unwrap();
        assert_eq!(recovery_mode(d.path()), RecoveryMode::Recovery);
        assert!(!d.path().join(STANDBY_SIGNAL).exists());
        set_recovery_mode(d.path(), RecoveryMode::None, None).unwrap();
        assert_eq!(recovery_mode(d.path()), RecoveryMode::None);
        assert!(!d.path().join(RECOVERY_SIGNAL).exists());
    }

    #[test]
    fn auto_conf_becomes_dev_null_symlink() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(AUTO_CONF), "work_mem = '1MB'\n").unwrap();
        block_alter_system(d.path(), None).unwrap();
        block_alter_system(d.path(), None).unwrap();
        assert_eq!(
            fs::read_link(d.path().join(AUTO_CONF)).unwrap(),
            Path::new("/dev/null")
        );
    }

    #[test]
    fn shutdown_checkpoint_only_for_a_cleanly_shut_down_primary() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_shutdown_checkpoint(d.path()).unwrap(), None);
        fs::create_dir(d.path().join("global")).unwrap();
        let control = |state: u32, checkpoint: u64| {
            let mut c = 7u64.to_le_bytes().to_vec();
            c.extend_from_slice(&1300u32.to_le_bytes());
            c.extend_from_slice(&202_209_061u32.to_le_bytes());
            c.extend_from_slice(&state.to_le_bytes());
            c.extend_from_slice(&[0u8; 4]);
            c.extend_from_slice(&1_700_000_000u64.to_le_bytes());
            c.extend_from_slice(&checkpoint.to_le_bytes());
            c.extend_from_slice(&[0u8; 200]);
            c
        };
        let path = d.path().join("global/pg_control");
        fs::write(&path, control(1, 0x0150_0718)).unwrap();
        assert_eq!(
            read_shutdown_checkpoint(d.path()).unwrap(),
            Some(0x0150_0718)
        );
        // Shut down in recovery (a standby), in production (running or crashed).
        for state in [2, 6] {
            fs::write(&path, control(state, 0x0150_0718)).unwrap();
            assert_eq!(read_shutdown_checkpoint(d.path()).unwrap(), None, "{state}");
        }
        fs::write(&path, [1u8, 2]).unwrap();
        assert!(read_shutdown_checkpoint(d.path()).is_err());
    }

    #[test]
    fn system_id_and_version() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_system_id(d.path()).unwrap(), None);
        assert_eq!(read_data_version(d.path()).unwrap(), None);
        fs::create_dir(d.path().join("global")).unwrap();
        let mut control = 0x0123_4567_89ab_cdefu64.to_le_bytes().to_vec();
        control.extend_from_slice(&[0u8; 100]);
        fs::write(d.path().join("global/pg_control"), &control).unwrap();
        fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(
            read_system_id(d.path()).unwrap(),
            Some(0x0123_4567_89ab_cdef)
        );
        assert_eq!(
            read_data_version(d.path()).unwrap(),
            Some(PgVersion {
                major: 15,
                minor: 0
            })
        );
        fs::write(d.path().join("global/pg_control"), [1u8, 2]).unwrap();
        assert!(read_system_id(d.path()).is_err());
        assert!(!is_initialized(d.path()));
    }

    #[test]
    fn oldest_wal_file_picks_first_segment() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("pg_wal");
        fs::create_dir(&wal).unwrap();
        assert_eq!(oldest_wal_file(d.path()).unwrap(), None);
        fs::write(wal.join("000000020000000000000005"), [0u8; 10]).unwrap();
        fs::write(wal.join("000000010000000000000004"), [0u8; 3]).unwrap();
        fs::write(wal.join("00000002.history"), "1\t0/5000000\tx\n").unwrap();
        fs::create_dir(wal.join("archive_status")).unwrap();
        let f = oldest_wal_file(d.path()).unwrap().unwrap();
        assert_eq!(f.name, "000000010000000000000004");
        assert_eq!(f.size, 3);
    }

    #[test]
    fn timeline_history_parses() {
        let h = parse_timeline_history(
            "1\t0/3000060\tno recovery target specified\n\n# c\n2\t0/5000000\tat lsn\n",
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].timeline, 1);
        assert_eq!(h[0].switch_point, Lsn(0x3000060));
        assert_eq!(h[0].reason, "no recovery target specified");
        assert_eq!(h[1].timeline, 2);
        assert!(parse_timeline_history("x y z").is_err());
        let d = tempfile::tempdir().unwrap();
        assert!(read_timeline_history(d.path(), 1).unwrap().is_empty());
    }

    #[test]
    fn restore_command_expansion() {
        let p = Path::new("/data/pg");
        assert_eq!(
            expand_restore_command("cp -a /b/. %d && echo 100%% %x %", p),
            "cp -a /b/. /data/pg && echo 100% %x %"
        );
        assert_eq!(expand_restore_command("%%d", p), "%d");
    }
}
