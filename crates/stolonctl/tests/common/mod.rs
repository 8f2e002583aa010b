//! Helpers for the stolonctl integration tests: run the real built binary against a real etcd
//! started by the test, and read the raw clusterdata key with `etcdctl`.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub use stolon_store::testing::etcd::EtcdServer;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stolonctl");

/// The stolon-core test data directory.
pub fn testdata(name: &str) -> String {
    format!(
        "{}/../stolon-core/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Starts a one-member etcd on loopback (killed when dropped).
pub fn etcd() -> EtcdServer {
    EtcdServer::start().expect("start etcd")
}

/// The result of one stolonctl run.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        &self.stdout
    }

    /// Asserts a refusal: exit code 1 and exactly one line on stderr; returns that line.
    #[track_caller]
    pub fn refused(&self) -> &str {
        assert_eq!(self.code, 1, "expected exit code 1: {self:?}");
        assert!(
            self.stderr.ends_with('\n') && self.stderr.lines().count() == 1,
            "expected exactly one line on stderr: {self:?}"
        );
        self.stderr.trim_end()
    }
}

/// Runs stolonctl with `args`, extra env vars `envs` (set on the child only; every STOLONCTL_*
/// var of the test process is removed from the child) and `stdin`.
pub fn stolonctl(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("STOLONCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn stolonctl");
    {
        let mut input = child.stdin.take().expect("stdin");
        // The command may exit without reading its input: ignore a broken pipe.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out: Output = child.wait_with_output().expect("wait stolonctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The common flags for cluster `cluster` on `etcd`.
pub fn flags(etcd: &EtcdServer, cluster: &str) -> Vec<String> {
    vec![
        "--cluster-name".into(),
        cluster.into(),
        "--store-backend".into(),
        "etcdv3".into(),
        "--store-endpoints".into(),
        etcd.endpoint(),
    ]
}

/// Runs stolonctl on cluster `cluster` of `etcd` (flags first, then `args`).
pub fn ctl(etcd: &EtcdServer, cluster: &str, args: &[&str], stdin: &str) -> Run {
    let mut all: Vec<String> = flags(etcd, cluster);
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    stolonctl(&refs, &[], stdin)
}

/// The raw value of `key` in etcd (via `etcdctl`), `None` when absent.
pub fn raw_key(etcd: &EtcdServer, key: &str) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "--command-timeout",
            "10s",
            "get",
            key,
            "--print-value-only",
        ])
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = String::from_utf8(out.stdout).expect("utf8");
    let v = v.strip_suffix('\n').unwrap_or(&v).to_string();
    (!v.is_empty()).then_some(v)
}

/// The clusterdata of `cluster` as a JSON value, read raw from etcd.
pub fn raw_cd(etcd: &EtcdServer, cluster: &str) -> Option<serde_json::Value> {
    raw_key(etcd, &format!("stolon/cluster/{cluster}/clusterdata"))
        .map(|v| serde_json::from_str(&v).expect("stored clusterdata is JSON"))
}
