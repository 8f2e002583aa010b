//! Every startup refusal of the real binaries: each prints the warnings found before it, then
//! exactly one error line, and exits 1. For the daemons every stderr line is a log line in
//! Stolon's console layout (`TIME\tLEVEL\tcaller\tmessage`), the error at level FATAL.
//!
//! Nothing here reaches a store: every case fails (or is refused) before connecting.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stolon_pg::testing::{TestDir, test_os_user};

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Substrings of the expected warnings, in order.
    warnings: Vec<&'static str>,
    /// Substring of the one error line.
    error: &'static str,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Runs `bin args` (as the postgres OS user when `as_postgres` and we are root) and checks the
/// refusal. `daemon`: log lines with a FATAL error; otherwise stolonctl's plain lines.
fn check(bin: &Path, as_postgres: bool, daemon: bool, case: &Case, cwd: &Path) {
    let mut cmd = match (as_postgres, test_os_user()) {
        (true, Some(u)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    let out = cmd
        .args(&case.args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("{}: run {}: {e}", case.name, bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("{}: stderr:\n{stderr}", case.name);
    assert_eq!(out.status.code(), Some(1), "{ctx}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "{ctx}");
    let (warns, last) = lines.split_at(lines.len() - 1);
    let last = last[0];
    if daemon {
        let level = |l: &str| l.split('\t').nth(1).map(str::to_string);
        for w in warns {
            assert_eq!(
                level(w).as_deref(),
                Some("WARN"),
                "only warnings before the error: {ctx}"
            );
            assert!(w.split('\t').count() >= 4, "console layout: {ctx}");
        }
        assert_eq!(level(last).as_deref(), Some("FATAL"), "{ctx}");
        let ts = last.split('\t').next().unwrap_or_default();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "millisecond timestamp: {ctx}"
        );
    } else {
        for w in warns {
            assert!(
                w.starts_with("WARNING: "),
                "only warnings before the error: {ctx}"
            );
        }
    }
    assert!(last.contains(case.error), "error {:?}: {ctx}", case.error);
    assert_eq!(
        warns.len(),
        case.warnings.len(),
        "warnings {:?}: {ctx}",
        case.warnings
    );
    for (w, want) in warns.iter().zip(&case.warnings) {
        assert!(w.contains(want), "warning {want:?}: {ctx}");
    }
}

/// Writes a password file owned by the postgres user (when root) with `mode`.
fn password_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write password file");
    if let Some(u) = test_os_user() {
        nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .expect("chown");
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

const UNREACHABLE: &str = "http://127.0.0.1:1";

#[test]
fn every_startup_refusal_prints_its_warnings_then_one_error() {
    let bins = stolon_it::bins::locate().expect("binaries built");
    let dir = TestDir::new("stolon-startup-");
    let keeper = dir.install_binary(&bins.keeper);
    let data = dir.subdir("data", 0o700);
    let data = data.to_str().expect("utf8 path").to_string();
    let empty_pw = password_file(dir.path(), "su-empty", "\n", 0o644);
    let empty_pw = empty_pw.to_str().expect("path").to_string();

    let common = [
        "--cluster-name",
        "c",
        "--store-backend",
        "etcdv3",
        "--store-endpoints",
        UNREACHABLE,
    ];
    let keeper_base = |extra: &[&str]| -> Vec<String> {
        let mut v = s(&common);
        v.extend(s(&[
            "--data-dir",
            &data,
            "--pg-listen-address",
            "10.0.0.1",
            "--pg-repl-username",
            "repl",
            "--pg-repl-password",
            "replpw",
            "--pg-su-password",
            "supw",
        ]));
        v.extend(s(extra));
        v
    };
    let keeper_cases = vec![
        Case {
            name: "keeper: unknown flag",
            args: keeper_base(&["--bogus"]),
            warnings: vec![],
            error: "unexpected argument '--bogus'",
        },
        Case {
            name: "keeper: bad flag value",
            args: keeper_base(&["--pg-port", "five"]),
            warnings: vec![],
            error: "invalid --pg-port \"five\"",
        },
        Case {
            name: "keeper: bad log level",
            args: keeper_base(&["--log-level", "verbose"]),
            warnings: vec![],
            error: "invalid log level: \"verbose\"",
        },
        Case {
            name: "keeper: missing required flag",
            args: s(&[
                "--cluster-name",
                "c",
                "--store-backend",
                "etcdv3",
                "--store-timeout",
                "0",
            ]),
            warnings: vec!["--store-timeout \"0\" would make every store request time out"],
            error: "data dir required",
        },
        Case {
            name: "keeper: unknown store backend",
            args: {
                let mut v = keeper_base(&[]);
                v[3] = "zookeeper".into();
                v
            },
            warnings: vec![],
            error: "Unknown store backend: \"zookeeper\"",
        },
        Case {
            name: "keeper: loopback listen address, then a missing flag",
            args: {
                let mut v = s(&common);
                v.extend(s(&[
                    "--data-dir",
                    &data,
                    "--pg-listen-address",
                    "127.0.0.1",
                ]));
                v
            },
            warnings: vec!["provided --pg-listen-address \"127.0.0.1\" is a loopback ip"],
            error: "--pg-repl-username is required",
        },
        Case {
            name: "keeper: password file with only a newline",
            args: {
                let mut v = s(&common);
                v.extend(s(&[
                    "--data-dir",
                    &data,
                    "--pg-listen-address",
                    "10.0.0.1",
                    "--pg-repl-username",
                    "repl",
                    "--pg-repl-password",
                    "replpw",
                    "--pg-su-passwordfile",
                    &empty_pw,
                ]));
                v
            },
            warnings: vec![
                "password file permissions are too open.",
                "superuser password contain trailing new line, removing",
            ],
            error: "superuser password is empty after removing trailing new line",
        },
    ];
    for case in &keeper_cases {
        check(&keeper, true, true, case, dir.path());
    }
    if nix::unistd::geteuid().is_root() {
        check(
            &keeper,
            false,
            true,
            &Case {
                name: "keeper: run as root",
                args: keeper_base(&[]),
                warnings: vec![],
                error: "must not run as root",
            },
            dir.path(),
        );
    }

    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"initMode":"bogus"}"#).expect("spec");
    let spec = spec.to_str().expect("path").to_string();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = s(&common);
        v.extend(s(extra));
        v
    };
    let sentinel_cases = vec![
        Case {
            name: "sentinel: missing cluster name",
            args: s(&["--store-backend", "etcdv3", "--store-timeout", "0s"]),
            warnings: vec!["--store-timeout \"0s\""],
            error: "cluster name required",
        },
        Case {
            name: "sentinel: unknown store backend",
            args: s(&["--cluster-name", "c", "--store-backend", "consul2"]),
            warnings: vec![],
            error: "Unknown store backend: \"consul2\"",
        },
        Case {
            name: "sentinel: bad initial cluster spec",
            args: with(&["--initial-cluster-spec", &spec]),
            warnings: vec![],
            error: "unknown initMode: \"bogus\"",
        },
        Case {
            name: "sentinel: bad flag value",
            args: with(&["--metrics-listen-address", "nowhere"]),
            warnings: vec![],
            error: "invalid --metrics-listen-address \"nowhere\"",
        },
        Case {
            name: "sentinel: deprecated flag, then a bad log format",
            args: with(&["--debug", "--log-format", "xml"]),
            warnings: vec![],
            error: "invalid log format: \"xml\"",
        },
        Case {
            name: "sentinel: deprecated flag, then a missing cluster name",
            args: s(&["--store-backend", "etcdv3", "--debug"]),
            warnings: vec!["--debug is deprecated"],
            error: "cluster name required",
        },
    ];
    for case in &sentinel_cases {
        check(&bins.sentinel, false, true, case, dir.path());
    }

    let proxy_cases = vec![
        Case {
            name: "proxy: missing cluster name",
            args: s(&["--store-backend", "etcdv3", "--store-timeout", "0"]),
            warnings: vec!["--store-timeout \"0\""],
            error: "cluster name required",
        },
        Case {
            name: "proxy: unknown store backend",
            args: s(&["--cluster-name", "c", "--store-backend", "zk"]),
            warnings: vec![],
            error: "Unknown store backend: \"zk\"",
        },
        Case {
            name: "proxy: bad flag value",
            args: with(&["--port", "eighty"]),
            warnings: vec![],
            error: "--port",
        },
        Case {
            name: "proxy: unknown flag",
            args: with(&["--nope"]),
            warnings: vec![],
            error: "unexpected argument '--nope'",
        },
    ];
    for case in &proxy_cases {
        check(&bins.proxy, false, true, case, dir.path());
    }

    let ctl_cases = vec![
        Case {
            name: "stolonctl: missing cluster name",
            args: s(&["--store-backend", "etcdv3", "--store-timeout", "0", "spec"]),
            warnings: vec!["--store-timeout \"0\""],
            error: "cluster name required",
        },
        Case {
            name: "stolonctl: unknown store backend",
            args: s(&["--cluster-name", "c", "--store-backend", "zk", "status"]),
            warnings: vec![],
            error: "Unknown store backend: \"zk\"",
        },
        Case {
            name: "stolonctl: unknown flag",
            args: with(&["spec", "--nope"]),
            warnings: vec![],
            error: "unexpected argument '--nope'",
        },
        Case {
            name: "stolonctl: register",
            args: with(&["register"]),
            warnings: vec![],
            error: "Consul service registration is not supported",
        },
    ];
    for case in &ctl_cases {
        check(&bins.stolonctl, false, false, case, dir.path());
    }
}

#[test]
fn every_binary_prints_cobras_version_line() {
    let bins = stolon_it::bins::locate().expect("binaries built");
    let want = format!("version v{}\n", env!("CARGO_PKG_VERSION"));
    for (bin, name) in [
        (&bins.keeper, "stolon-keeper"),
        (&bins.sentinel, "stolon-sentinel"),
        (&bins.proxy, "stolon-proxy"),
        (&bins.stolonctl, "stolonctl"),
    ] {
        let out = Command::new(bin).arg("--version").output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{name} {want}")
        );
    }
}
