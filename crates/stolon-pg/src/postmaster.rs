//! The postmaster as a supervised child: spawned directly (not through pg_ctl) in its own process
//! group, its output forwarded to tracing (or inherited / appended to a file), its exit reaped by
//! a task and published on a `watch` channel. Deciding what an exit means is the keeper's job.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::ctl::PostgresExit;
use crate::error::PgError;

/// Lines of postgres output kept for error messages.
const TAIL_LINES: usize = 30;

/// Where the postmaster's stdout/stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PostgresOutput {
    /// Each line becomes a tracing event (target `postgres`); the last lines are kept for
    /// "exited unexpectedly" errors.
    #[default]
    Tracing,
    /// Inherit our stdout/stderr.
    Inherit,
    /// Append to this file (created 0600 if missing; must be writable by the child user).
    File(PathBuf),
}

/// Exit notifications shared by every child of one controller.
#[derive(Debug)]
pub(crate) struct ExitEvents {
    pub tx: watch::Sender<Option<PostgresExit>>,
    seq: AtomicU64,
}

impl ExitEvents {
    pub fn new() -> Self {
        ExitEvents {
            tx: watch::Sender::new(None),
            seq: AtomicU64::new(0),
        }
    }
}

/// A running (or exited) postmaster child of ours (clones share the same child).
#[derive(Debug, Clone)]
pub(crate) struct Postmaster {
    pub pid: u32,
    /// `Some(status text)` once reaped.
    exited: watch::Receiver<Option<String>>,
    /// Set before we stop it, so its exit is reported as expected.
    pub stop_expected: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
    output: PostgresOutput,
}

impl Postmaster {
    /// Spawns `cmd` (already built with env, uid and args) and starts supervising it.
    pub fn spawn(
        mut cmd: Command,
        output: &PostgresOutput,
        events: Arc<ExitEvents>,
    ) -> Result<Self, PgError> {
        // Own process group: a Ctrl-C aimed at the keeper must not stop postgres behind its back.
        cmd.process_group(0);
        // The supervisor task owns the child; dropping it must not kill postgres.
        cmd.kill_on_drop(false);
        match output {
            PostgresOutput::Tracing => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            PostgresOutput::Inherit => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            PostgresOutput::File(path) => {
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                };
                let f = open().map_err(|e| PgError::io("open postgres log", path, e))?;
                let f2 = f
                    .try_clone()
                    .map_err(|e| PgError::io("open postgres log", path, e))?;
                cmd.stdout(Stdio::from(f)).stderr(Stdio::from(f2));
            }
        }
        let mut child = cmd.spawn().map_err(|e| PgError::Spawn {
            program: cmd.as_std().get_program().to_string_lossy().into_owned(),
            source: e,
        })?;
        let pid = child.id().ok_or_else(|| PgError::ExitedUnexpectedly {
            status: "no pid".into(),
            output: String::new(),
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, tail.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, tail.clone()));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let stop_expected = Arc::new(AtomicBool::new(false));
        let expected = stop_expected.clone();
        tokio::spawn(async move {
            let (status, code) = match child.wait().await {
                Ok(s) => (s.to_string(), s.code()),
                Err(e) => (format!("wait failed: {e}"), None),
            };
            let expected = expected.load(Ordering::SeqCst);
            if expected {
                tracing::info!(pid, %status, "postgres exited");
            } else {
                tracing::warn!(pid, %status, "postgres exited unexpectedly");
            }
            // Per-child state first, so whoever reacts to the shared event sees it exited.
            exit_tx.send_replace(Some(status.clone()));
            let seq = events.seq.fetch_add(1, Ordering::SeqCst) + 1;
            events.tx.send_replace(Some(PostgresExit {
                seq,
                pid,
                status,
                code,
                expected,
            }));
        });
        Ok(Postmaster {
            pid,
            exited: exit_rx,
            stop_expected,
            tail,
            output: output.clone(),
        })
    }

    /// `Some(status)` when the child has been reaped.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Waits until the child is reaped or `timeout` passes; returns its status if reaped.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let mut rx = self.exited.clone();
        let done = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some())).await;
        match done {
            Ok(Ok(s)) => s.clone(),
            _ => self.exit_status(),
        }
    }

    /// The last lines postgres printed (tracing mode) or the tail of its log file.
    pub fn output_tail(&self) -> String {
        match &self.output {
            PostgresOutput::Tracing => {
                let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
                tail.iter().cloned().collect::<Vec<_>>().join("\n")
            }
            PostgresOutput::File(p) => std::fs::read(p)
                .map(|b| crate::error::truncate_tail(&String::from_utf8_lossy(&b), 2000))
                .unwrap_or_default(),
            PostgresOutput::Inherit => String::new(),
        }
    }

    /// The error for "exited before it was up".
    pub fn exited_error(&self, status: String) -> PgError {
        PgError::ExitedUnexpectedly {
            status,
            output: self.output_tail(),
        }
    }
}

async fn forward_lines(reader: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if line.contains("FATAL:") || line.contains("PANIC:") || line.contains("ERROR:") {
                    tracing::warn!(target: "postgres", "{line}");
                } else {
                    tracing::info!(target: "postgres", "{line}");
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    }
}
