//! One supervised test process (a keeper, sentinel, proxy): started under a small `sh` guard that
//! sends its stdout+stderr to a log file the test can grep, signal helpers (SIGTERM, SIGKILL,
//! SIGSTOP, SIGCONT), and cleanup that never leaves a process behind.
//!
//! The guard reads a pipe from the test process. When the test stops or kills the process on
//! purpose it tells the guard `quit` and the guard only reaps it. When the pipe closes for any
//! other reason (the [`Process`] is dropped, or the test process dies, even by SIGKILL) the guard
//! kills the process and, for a keeper, the postgres of its data dir (immediate shutdown, then
//! SIGKILL of the postmaster and its children), so nothing outlives the test run.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stolon_pg::OsUser;

/// Runs the command in the background with output appended to the log, prints its PID, waits for
/// a line on stdin: `quit` = it is known dead, just reap it; anything else or EOF = kill it (and
/// the postgres of `$pgdata`, if any) first.
const GUARD_SCRIPT: &str = r#"log="$1"; pgdata="$2"; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid"
if read line && [ "$line" = quit ]; then
  wait "$pid"
  exit 0
fi
kill -s CONT "$pid" 2>/dev/null
kill -s KILL "$pid" 2>/dev/null
wait "$pid"
if [ -n "$pgdata" ] && [ -f "$pgdata/postmaster.pid" ]; then
  pm=$(head -n 1 "$pgdata/postmaster.pid")
  if [ -n "$pm" ] && [ "$(cat /proc/$pm/comm 2>/dev/null)" = postgres ]; then
    kill -s CONT "$pm" 2>/dev/null
    pkill -CONT -P "$pm" 2>/dev/null
    kill -s QUIT "$pm" 2>/dev/null
    i=0
    while [ $i -lt 30 ] && kill -0 "$pm" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    pkill -KILL -P "$pm" 2>/dev/null
    kill -s KILL "$pm" 2>/dev/null
  fi
fi
exit 0
"#;

/// How long a graceful stop waits before SIGKILL.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How long we wait for a killed process to disappear.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// Poll period for waits on files and processes.
const POLL: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    /// Program.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Environment (the inherited one is cleared, except PATH).
    pub envs: Vec<(String, String)>,
    /// Run as this OS user (through `setpriv`), when set.
    pub run_as: Option<OsUser>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// A PostgreSQL data dir whose postmaster the guard kills on cleanup (keepers).
    pub pgdata: Option<PathBuf>,
}

struct Running {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: i32,
}

/// A test process with a log file. Dropping it kills it (and its postgres, for keepers).
pub struct Process {
    name: String,
    spec: ProcSpec,
    log: PathBuf,
    run: Option<Running>,
    run_start: u64,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("log", &self.log)
            .finish()
    }
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Waits (blocking, bounded) until `pid` is gone; true if it is.
fn wait_pid_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

impl Process {
    /// A process not started yet; output goes to `log` (appended across restarts).
    pub fn new(name: &str, spec: ProcSpec, log: PathBuf) -> Self {
        Process {
            name: name.to_string(),
            spec,
            log,
            run: None,
            run_start: 0,
        }
    }

    /// Name given at creation (`keeper0`, `sentinel1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it runs.
    pub fn spec(&self) -> &ProcSpec {
        &self.spec
    }

    /// Changes what the next [`Process::start`] runs.
    pub fn spec_mut(&mut self) -> &mut ProcSpec {
        &mut self.spec
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// PID of the running process (`None` if never started or already reaped).
    pub fn pid(&self) -> Option<i32> {
        self.run.as_ref().map(|r| r.pid)
    }

    /// Whether the process is alive (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(pid_alive)
    }

    /// Starts it. Fails if it is already running.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        self.finish();
        if !self.log.exists() {
            std::fs::write(&self.log, b"").with_context(|| format!("create {:?}", self.log))?;
        }
        self.run_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(GUARD_SCRIPT).arg("stolon-it-guard");
        cmd.arg(&self.log);
        cmd.arg(self.spec.pgdata.as_deref().unwrap_or(Path::new("")));
        if let Some(u) = &self.spec.run_as {
            cmd.arg("setpriv")
                .arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups");
        }
        cmd.arg(&self.spec.program).args(&self.spec.args);
        cmd.env_clear();
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        cmd.env("RUST_BACKTRACE", "1");
        let home = self
            .spec
            .cwd
            .clone()
            .or_else(|| self.spec.run_as.as_ref().map(|u| u.home.clone()))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        cmd.env("HOME", home);
        for (k, v) in &self.spec.envs {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.spec.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut guard = cmd
            .spawn()
            .with_context(|| format!("spawn guard for {}", self.name))?;
        let stdout = guard.stdout.take().context("guard stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read pid from guard")?;
        let pid: i32 = line
            .trim()
            .parse()
            .with_context(|| format!("guard of {} printed {line:?} instead of a pid", self.name))?;
        let stdin = guard.stdin.take();
        self.run = Some(Running { guard, stdin, pid });
        Ok(())
    }

    /// Tells the guard the process is gone (if it is) and reaps the guard.
    fn finish(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Some(mut stdin) = run.stdin.take() {
            let msg: &[u8] = if pid_alive(run.pid) {
                b"kill\n"
            } else {
                b"quit\n"
            };
            let _ = stdin.write_all(msg);
        }
        let deadline = Instant::now() + KILL_LIMIT;
        loop {
            match run.guard.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = run.guard.kill();
                    let _ = run.guard.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(POLL),
            }
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("{sig} to {}", self.name))
    }

    /// SIGKILL, then waits until it is gone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !wait_pid_gone(pid, KILL_LIMIT) {
                bail!("{} (pid {pid}) still alive after SIGKILL", self.name);
            }
        }
        self.finish();
        Ok(())
    }

    /// SIGTERM (graceful: a keeper stops its postgres), SIGKILL after [`STOP_LIMIT`].
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_LIMIT;
            while pid_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            if pid_alive(pid) {
                tracing::warn!(name = %self.name, "did not stop on SIGTERM, killing");
            }
        }
        self.kill()
    }

    /// SIGSTOP.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Waits until the process exits by itself (true) or `limit` passes (false).
    pub async fn wait_exit(&self, limit: Duration) -> bool {
        let Some(pid) = self.pid() else { return true };
        let deadline = Instant::now() + limit;
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// The current length of the log: a mark for [`Process::wait_log_since`].
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Log text from byte `from` on.
    pub fn log_since(&self, from: u64) -> String {
        let mut out = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log)
            && f.seek(SeekFrom::Start(from)).is_ok()
        {
            let _ = f.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Log text of the current (or last) run.
    pub fn log_text(&self) -> String {
        self.log_since(self.run_start)
    }

    /// Whether the current run's log contains `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        self.log_text().contains(text)
    }

    /// Last `n` lines of the whole log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_since(0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the current run's log contains `text` (every 200 ms, up to `limit`).
    pub async fn wait_log_line(&self, text: &str, limit: Duration) -> Result<()> {
        self.wait_log_since(self.run_start, text, limit).await
    }

    /// Waits until the log after byte `mark` contains `text`.
    pub async fn wait_log_since(&self, mark: u64, text: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_since(mark).contains(text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no log line containing {text:?} within {limit:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing the pipe makes the guard kill the process and its postgres.
        if let Some(run) = self.run.as_mut() {
            run.stdin.take();
        }
        if let Some(mut run) = self.run.take() {
            let deadline = Instant::now() + KILL_LIMIT;
            loop {
                match run.guard.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = run.guard.kill();
                        let _ = run.guard.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(POLL),
                }
            }
        }
    }
}

/// The postmaster PID of a data dir (first line of `postmaster.pid`), if that process is alive
/// and is a postgres.
pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "postgres" && pid_alive(pid)).then_some(pid)
}

/// PIDs whose parent is `parent` (from `/proc/<pid>/stat`).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = st
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .to_string();
                    rest.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Sends `sig` to the postgres instance of `pgdata`: the postmaster and every child of it
/// (PostgreSQL puts each child in its own session, so a process-group signal would miss the
/// backends, which keep serving their clients after the postmaster is gone). For SIGKILL and
/// SIGSTOP the postmaster is stopped first so it cannot fork while its children are signalled.
/// Returns the postmaster PID.
pub fn signal_postgres(pgdata: &Path, sig: Signal) -> Result<i32> {
    let pid = postmaster_pid(pgdata)
        .with_context(|| format!("no running postmaster for {}", pgdata.display()))?;
    let pm = Pid::from_raw(pid);
    let freeze = matches!(sig, Signal::SIGKILL | Signal::SIGSTOP);
    if freeze {
        kill(pm, Signal::SIGSTOP).with_context(|| format!("SIGSTOP to postgres {pid}"))?;
    }
    for child in children_of(pid) {
        let _ = kill(Pid::from_raw(child), sig);
    }
    kill(pm, sig).with_context(|| format!("{sig} to postgres {pid}"))?;
    Ok(pid)
}

/// SIGKILLs the postgres of `pgdata` (postmaster and backends) and waits until the postmaster is
/// gone. Returns its PID.
pub fn kill_postgres(pgdata: &Path) -> Result<i32> {
    let pid = signal_postgres(pgdata, Signal::SIGKILL)?;
    if !wait_pid_gone(pid, KILL_LIMIT) {
        bail!("postgres {pid} still alive after SIGKILL");
    }
    Ok(pid)
}
