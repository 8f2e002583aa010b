//! Self-tests of the harness that need no stolon binary: the guarded process, its log, signals,
//! and cleanup when the handle is dropped.

use std::time::Duration;

use stolon_it::process::{ProcSpec, Process, pid_alive};

fn sh(script: &str, log: &std::path::Path) -> Process {
    Process::new(
        "sh",
        ProcSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            envs: vec![("GREETING".into(), "hello from the guard".into())],
            run_as: None,
            cwd: None,
            pgdata: None,
        },
        log.to_path_buf(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_log_signals_and_cleanup() {
    let dir = tempfile_dir();
    let log = dir.join("p.log");
    let mut p = sh("echo \"$GREETING\"; echo err >&2; exec sleep 300", &log);
    p.start().expect("start");
    p.wait_log_line("hello from the guard", Duration::from_secs(10))
        .await
        .expect("stdout in the log");
    p.wait_log_line("err", Duration::from_secs(10))
        .await
        .expect("stderr in the log");
    assert!(p.is_running());
    assert!(
        p.start().is_err(),
        "a running process cannot be started twice"
    );

    // SIGSTOP / SIGCONT keep it alive.
    p.pause().expect("pause");
    p.resume().expect("resume");
    assert!(p.is_running());

    // Kill and restart: the log is appended, the new run's text starts after the old one.
    p.kill().expect("kill");
    assert!(!p.is_running());
    p.start().expect("restart");
    p.wait_log_line("hello from the guard", Duration::from_secs(10))
        .await
        .expect("second run logged");
    assert_eq!(p.log_since(0).matches("hello from the guard").count(), 2);
    assert!(!p.log_contains("nonexistent text"));
    assert!(
        p.wait_log_line("nonexistent text", Duration::from_millis(500))
            .await
            .is_err()
    );

    // Graceful stop.
    p.stop().await.expect("stop");
    assert!(!p.is_running());

    // Dropping a running process kills it.
    p.start().expect("start again");
    let pid = p.pid().expect("pid");
    assert!(pid_alive(pid));
    drop(p);
    assert!(!pid_alive(pid), "dropped process {pid} must be gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exiting_by_itself() {
    let dir = tempfile_dir();
    let mut p = sh("echo bye; exit 3", &dir.join("q.log"));
    p.start().expect("start");
    assert!(p.wait_exit(Duration::from_secs(10)).await);
    p.wait_log_line("bye", Duration::from_secs(5))
        .await
        .expect("log");
    p.kill().expect("kill of an exited process is fine");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "stolon-it-harness-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}
