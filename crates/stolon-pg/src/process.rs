//! Building and running child processes: a cleared environment plus exactly what PostgreSQL
//! programs need, the optional switch to another OS user, bounded waits, stderr captured into
//! typed errors, and 0600 temp files for secrets (pgpass, initdb pwfile).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::binaries::OsUser;
use crate::error::{PgError, truncate_tail};

/// Most bytes of a program's output kept in an error.
const MAX_ERR_OUTPUT: usize = 4000;

/// The environment every child gets.
#[derive(Debug, Clone)]
pub(crate) struct ChildEnv {
    pub os_user: Option<OsUser>,
    /// Extra variables, after the base ones (may override them).
    pub extra_env: Vec<(OsString, OsString)>,
    /// Where secret temp files go (must be traversable by `os_user`).
    pub temp_dir: PathBuf,
}

impl ChildEnv {
    /// A command with `env_clear()` + PATH, HOME, LANG=C + extras, cwd `/`, stdin null, killed
    /// on drop, and the uid/gid switch when we are root.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        let path = std::env::var_os("PATH")
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        cmd.env("PATH", path);
        let effective = OsUser::effective(self.os_user.as_ref());
        let home = match effective {
            Some(u) => u.home.clone().into_os_string(),
            None => std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/")),
        };
        cmd.env("HOME", home);
        cmd.env("LANG", "C");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.current_dir("/");
        cmd.stdin(Stdio::null());
        cmd.kill_on_drop(true);
        if let Some(u) = effective {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// A 0600 temp file holding `contents`, owned by the child user; deleted on drop.
    pub fn secret_file(
        &self,
        prefix: &str,
        contents: &str,
    ) -> Result<tempfile::NamedTempFile, PgError> {
        let mut f = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(&self.temp_dir)
            .map_err(|e| PgError::io("create temp file in", &self.temp_dir, e))?;
        // tempfile creates files with mode 0600.
        f.write_all(contents.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| PgError::io("write temp file", f.path(), e))?;
        if let Some(u) = OsUser::effective(self.os_user.as_ref()) {
            std::os::unix::fs::fchown(f.as_file(), Some(u.uid), Some(u.gid))
                .map_err(|e| PgError::io("change owner of", f.path(), e))?;
        }
        Ok(f)
    }
}

/// Short program name for messages.
pub(crate) fn program_name(cmd: &Command) -> String {
    Path::new(cmd.as_std().get_program())
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs `cmd` to completion (bounded by `timeout` when set) and returns its output whatever
/// the exit status.
pub(crate) async fn run_any_status(
    mut cmd: Command,
    timeout: Option<Duration>,
) -> Result<Output, PgError> {
    let name = program_name(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Own process group, so a timeout or cancellation can kill everything it spawned
    // (pg_basebackup's WAL streamer, a restore script's children).
    cmd.process_group(0);
    tracing::debug!(program = %name, args = ?cmd.as_std().get_args().collect::<Vec<_>>(), "running");
    let child = cmd.spawn().map_err(|e| PgError::Spawn {
        program: cmd.as_std().get_program().to_string_lossy().into_owned(),
        source: e,
    })?;
    let mut guard = GroupKillGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let fut = child.wait_with_output();
    let out = match timeout {
        // Dropping the future on timeout drops the child, which kills it (kill_on_drop).
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| PgError::ToolTimeout {
                program: name.clone(),
                timeout: t,
            })?,
        None => fut.await,
    };
    // Finished normally: leftovers in its group are not ours to kill.
    guard.0 = None;
    out.map_err(|e| PgError::io("wait for", PathBuf::from(&name), e))
}

/// SIGKILLs a child's process group when dropped armed (timeout or cancelled future).
struct GroupKillGuard(Option<i32>);

impl Drop for GroupKillGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `cmd` and fails with [`PgError::ToolFailed`] unless it exits 0.
pub(crate) async fn run_ok(cmd: Command, timeout: Option<Duration>) -> Result<Output, PgError> {
    let name = program_name(&cmd);
    let out = run_any_status(cmd, timeout).await?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(&name, &out))
    }
}

/// The error for an unsuccessful run.
pub(crate) fn failed(name: &str, out: &Output) -> PgError {
    PgError::ToolFailed {
        program: name.to_string(),
        status: out.status.to_string(),
        code: out.status.code(),
        stderr: output_text(out),
    }
}

/// stderr, or stdout when stderr is empty, trimmed to its tail.
pub(crate) fn output_text(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    if err.trim().is_empty() {
        truncate_tail(&String::from_utf8_lossy(&out.stdout), MAX_ERR_OUTPUT)
    } else {
        truncate_tail(&err, MAX_ERR_OUTPUT)
    }
}
