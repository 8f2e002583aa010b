//! Locating the PostgreSQL programs (a bin dir or `$PATH`), parsing their version, and the OS user
//! child processes run as when we are root (tests only: the keeper itself refuses to run as root).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::PgError;

/// Where the PostgreSQL programs live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgBinaries {
    /// Directory holding `initdb`, `postgres`, `pg_ctl`, ...; `None` = search `$PATH`.
    pub bin_dir: Option<PathBuf>,
}

impl PgBinaries {
    /// Programs in `bin_dir` (e.g. `/usr/lib/postgresql/15/bin`).
    pub fn in_dir(bin_dir: impl Into<PathBuf>) -> Self {
        PgBinaries {
            bin_dir: Some(bin_dir.into()),
        }
    }

    /// Programs found through `$PATH`.
    pub fn from_path() -> Self {
        PgBinaries { bin_dir: None }
    }

    /// Full path of `program` (`initdb`, `pg_ctl`, ...); fails when it is not an existing file.
    pub fn program(&self, program: &str) -> Result<PathBuf, PgError> {
        match &self.bin_dir {
            Some(dir) => {
                let p = dir.join(program);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(PgError::BinaryNotFound {
                        program: program.to_string(),
                        searched: dir.display().to_string(),
                    })
                }
            }
            None => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .map(|d| d.join(program))
                    .find(|p| p.is_file())
                    .ok_or_else(|| PgError::BinaryNotFound {
                        program: program.to_string(),
                        searched: "$PATH".to_string(),
                    })
            }
        }
    }
}

/// A PostgreSQL version: `15.18` from `postgres -V`, or `15.0` from a `PG_VERSION` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgVersion {
    /// Major version (`15`; `9` for 9.6).
    pub major: u32,
    /// Minor version (`18` for 15.18; `6` for 9.6); 0 when absent.
    pub minor: u32,
}

impl PgVersion {
    /// Parses the output of `postgres -V`, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub fn parse_postgres_v(output: &str) -> Result<Self, PgError> {
        let err = || PgError::Parse {
            what: "postgres version",
            output: output.chars().take(200).collect(),
        };
        let marker = "(PostgreSQL) ";
        let start = output.find(marker).ok_or_else(err)? + marker.len();
        let digits: String = output[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Self::parse_numeric(&digits).ok_or_else(err)
    }

    /// Parses `15`, `15.18` or `9.6.24` (the first two components).
    pub fn parse_numeric(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = match parts.next() {
            Some(p) if !p.is_empty() => p.parse().ok()?,
            _ => 0,
        };
        Some(PgVersion { major, minor })
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The OS user PostgreSQL programs run as when the current process is root.
///
/// PostgreSQL refuses to run as root, so tests (which run as root here) start every child with
/// this uid/gid (`CommandExt::uid/gid`; supplementary groups are dropped) and make every file we
/// write owned by it. When the current process is not root it is ignored: children run as us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// User name (for messages).
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric primary gid.
    pub gid: u32,
    /// Home directory, given to children as `HOME`.
    pub home: PathBuf,
}

impl OsUser {
    /// Looks the user up in the password database.
    pub fn from_name(name: &str) -> Result<Self, PgError> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| PgError::OsUserNotFound(name.to_string()))?;
        Ok(OsUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }

    /// `Some(self)` when switching is possible and needed (we are root), else `None`.
    pub(crate) fn effective(this: Option<&OsUser>) -> Option<&OsUser> {
        this.filter(|_| nix::unistd::geteuid().is_root())
    }
}

/// Changes the owner of `path` (not following symlinks) to `user` when we run as root for it.
pub(crate) fn chown_to(user: Option<&OsUser>, path: &Path) -> Result<(), PgError> {
    if let Some(u) = OsUser::effective(user) {
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| PgError::io("change owner of", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_postgres_v() {
        let v =
            PgVersion::parse_postgres_v("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n")
                .unwrap();
        assert_eq!(
            v,
            PgVersion {
                major: 15,
                minor: 18
            }
        );
        assert_eq!(v.to_string(), "15.18");
    }

    #[test]
    fn parses_old_and_beta_versions() {
        let v = PgVersion::parse_postgres_v("postgres (PostgreSQL) 9.6.24").unwrap();
        assert_eq!(v, PgVersion { major: 9, minor: 6 });
        let v = PgVersion::parse_postgres_v("postgres (PostgreSQL) 17beta1").unwrap();
        assert_eq!(
            v,
            PgVersion {
                major: 17,
                minor: 0
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(PgVersion::parse_postgres_v("hello").is_err());
        assert!(PgVersion::parse_postgres_v("postgres (PostgreSQL) x").is_err());
        assert!(PgVersion::parse_numeric("").is_none());
        assert_eq!(
            PgVersion::parse_numeric("15\n"),
            Some(PgVersion {
                major: 15,
                minor: 0
            })
        );
    }

    #[test]
    fn missing_program_is_reported() {
        let b = PgBinaries::in_dir("/nonexistent-dir");
        let e = b.program("initdb").unwrap_err();
        assert!(
            e.to_string()
                .contains("initdb not found in /nonexistent-dir"),
            "{e}"
        );
    }
}
