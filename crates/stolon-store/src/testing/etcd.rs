//! A real etcd for tests: [`EtcdServer`] runs `/usr/bin/etcd` (env `ETCD_BIN` overrides) on free
//! loopback ports with a temporary data dir, as one member, a 3-member cluster, or one member
//! serving TLS with client-certificate auth (certificates made with `openssl` by the harness).
//!
//! Lifecycle:
//! - [`EtcdServer::start`] / [`EtcdServer::start_cluster`] / [`EtcdServer::start_tls`] return
//!   once every member answers `/health` (bounded: 30 s), or an error carrying the member logs.
//! - [`EtcdServer::stop`] stops every member (SIGTERM, SIGKILL after 5 s) and keeps ports and
//!   data; [`EtcdServer::restart`] starts them again on the same ports and data. `*_member(i)`
//!   variants act on one member; `pause`/`resume` send SIGSTOP/SIGCONT (a frozen store).
//! - Dropping the server stops every member and deletes the data dir.
//! - Each member runs under a small `sh` guard reading a pipe from the test process: if the test
//!   process dies without dropping the server (panic=abort, SIGKILL), the pipe closes and the
//!   guard terminates etcd, so no etcd outlives its test run.
//!
//! The methods that wait (start, stop, restart) block the calling thread; `*_async` variants
//! wait with tokio timers instead, for use in the middle of async tests whose other tasks must
//! keep running (e.g. a proxy under test while its store restarts).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::config::{StoreBackend, StoreConfig};
use crate::testing::suite::{self, BoxFuture, Component, Harness};
use crate::tls::{TlsFlags, client_config};
use crate::{BackendOptions, Election, Store, connect_with};

/// How long a start waits for health.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a stop waits for the member to exit after SIGTERM before SIGKILL (the guard does the
/// SIGKILL after 5 s; we give it a little more).
const STOP_LIMIT: Duration = Duration::from_secs(8);

/// Runs etcd in the background, prints its PID, waits for a line on stdin or its end, then
/// terminates etcd: SIGCONT (if frozen) + SIGTERM, SIGKILL after 5 s. Stdin ending without a
/// line means the test process died: the guard then also deletes the server's temp dir.
const GUARD_SCRIPT: &str = r#"dir="$1"; log="$2"; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid"
orphaned=yes
if read _line; then orphaned=no; fi
kill -CONT "$pid" 2>/dev/null
kill -TERM "$pid" 2>/dev/null
( sleep 5; kill -KILL "$pid" 2>/dev/null ) &
killer=$!
wait "$pid"
kill "$killer" 2>/dev/null
if [ "$orphaned" = yes ]; then rm -rf "$dir"; fi
exit 0
"#;

/// Certificates and keys of a TLS test setup (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (trust anchor for both server and clients).
    pub ca_cert: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// Server certificate (SAN IP 127.0.0.1, DNS localhost).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN `stolon-test-client`).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Makes a CA, a server and a client certificate in `dir` with `openssl` (EC P-256, valid 2
/// days). `name` prefixes the file names, so several PKIs can share a directory.
pub fn generate_test_pki(dir: &Path, name: &str) -> io::Result<TlsFiles> {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let files = TlsFiles {
        ca_cert: p("ca.pem"),
        ca_key: p("ca.key"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();
    run_openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &s(&files.ca_key),
        "-out",
        &s(&files.ca_cert),
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}-test-ca"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    let leaf = |cert: &Path, key: &Path, cn: &str, ext: &str| -> io::Result<()> {
        let csr = dir.join(format!("{name}-{cn}.csr"));
        let extfile = dir.join(format!("{name}-{cn}.ext"));
        std::fs::write(&extfile, ext)?;
        run_openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(key),
            "-out",
            &s(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        run_openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&files.ca_cert),
            "-CAkey",
            &s(&files.ca_key),
            "-CAcreateserial",
            "-out",
            &s(cert),
            "-days",
            "2",
            "-extfile",
            &s(&extfile),
        ])
    };
    leaf(
        &files.server_cert,
        &files.server_key,
        "127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    leaf(
        &files.client_cert,
        &files.client_key,
        "stolon-test-client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )?;
    Ok(files)
}

fn run_openssl(args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::other(format!("cannot run openssl: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A running etcd member under its guard shell.
struct Proc {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: i32,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

/// A real etcd (one member or a cluster) for tests. See the module docs.
pub struct EtcdServer {
    dir: TempDir,
    etcd_bin: PathBuf,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    token: String,
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold all listeners until every port is chosen, so they are distinct.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl EtcdServer {
    /// One plain-HTTP member.
    pub fn start() -> io::Result<EtcdServer> {
        Self::start_with(1, false)
    }

    /// A cluster of `members` plain-HTTP members (3 for failover tests).
    pub fn start_cluster(members: usize) -> io::Result<EtcdServer> {
        Self::start_with(members.max(1), false)
    }

    /// One member serving clients over TLS and requiring a client certificate signed by the
    /// test CA ([`EtcdServer::tls_files`]).
    pub fn start_tls() -> io::Result<EtcdServer> {
        Self::start_with(1, true)
    }

    /// [`EtcdServer::start`] without blocking the async runtime while waiting for health.
    pub async fn start_async() -> io::Result<EtcdServer> {
        tokio::task::spawn_blocking(Self::start)
            .await
            .map_err(|e| io::Error::other(format!("etcd start task failed: {e}")))?
    }

    /// [`EtcdServer::start_cluster`] without blocking the async runtime.
    pub async fn start_cluster_async(members: usize) -> io::Result<EtcdServer> {
        tokio::task::spawn_blocking(move || Self::start_cluster(members))
            .await
            .map_err(|e| io::Error::other(format!("etcd start task failed: {e}")))?
    }

    /// [`EtcdServer::start_tls`] without blocking the async runtime.
    pub async fn start_tls_async() -> io::Result<EtcdServer> {
        tokio::task::spawn_blocking(Self::start_tls)
            .await
            .map_err(|e| io::Error::other(format!("etcd start task failed: {e}")))?
    }

    fn start_with(n: usize, tls: bool) -> io::Result<EtcdServer> {
        let bin = etcd_bin();
        if !bin.exists() {
            return Err(io::Error::other(format!(
                "etcd binary {} not found (install etcd-server or set ETCD_BIN)",
                bin.display()
            )));
        }
        let mut last_err = None;
        // A port picked free can be taken by someone else before etcd binds it: retry with new
        // ports a few times.
        for _ in 0..3 {
            let mut srv = Self::prepare(n, tls, bin.clone())?;
            match srv.spawn_all().and_then(|()| srv.wait_healthy(START_LIMIT)) {
                Ok(()) => return Ok(srv),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn prepare(n: usize, tls: bool, etcd_bin: PathBuf) -> io::Result<EtcdServer> {
        let dir = tempfile::Builder::new().prefix("stolon-etcd-").tempdir()?;
        let tls_files = if tls {
            Some(generate_test_pki(dir.path(), "etcd")?)
        } else {
            None
        };
        let ports = free_ports(2 * n)?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                proc: None,
            })
            .collect();
        let token = format!(
            "stolon-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        Ok(EtcdServer {
            dir,
            etcd_bin,
            members,
            tls: tls_files,
            token,
        })
    }

    fn client_scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn_all(&mut self) -> io::Result<()> {
        for i in 0..self.members.len() {
            self.spawn_member(i)?;
        }
        Ok(())
    }

    fn spawn_member(&mut self, i: usize) -> io::Result<()> {
        if self.members[i].proc.is_some() {
            return Ok(());
        }
        let scheme = self.client_scheme();
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut args: Vec<String> = vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--initial-cluster".into(),
            initial_cluster,
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--logger".into(),
            "zap".into(),
            "--log-outputs".into(),
            "stderr".into(),
        ];
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca_cert),
            ] {
                args.push(flag.into());
                args.push(path.to_string_lossy().into_owned());
            }
            args.push("--client-cert-auth".into());
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("etcd-guard")
            .arg(self.dir.path())
            .arg(&m.log)
            .arg(&self.etcd_bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let mut guard = cmd.spawn()?;
        let stdin = guard.stdin.take();
        let mut line = String::new();
        if let Some(out) = guard.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let pid: i32 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = guard.kill();
                let _ = guard.wait();
                return Err(io::Error::other(format!(
                    "etcd guard did not report a pid (got {line:?})"
                )));
            }
        };
        self.members[i].proc = Some(Proc { guard, stdin, pid });
        Ok(())
    }

    /// Client endpoint URL of member `i`.
    pub fn member_endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.client_scheme(),
            self.members[i].client_port
        )
    }

    /// Client endpoint URL of the first member (`http://127.0.0.1:PORT`, or `https://...` for
    /// the TLS variant).
    pub fn endpoint(&self) -> String {
        self.member_endpoint(0)
    }

    /// Client endpoint URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.member_endpoint(i))
            .collect()
    }

    /// The endpoints as a `--store-endpoints` value (comma separated).
    pub fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    /// Number of members.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The TLS files of a [`EtcdServer::start_tls`] server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The temporary directory holding data dirs, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Log file of member `i` (etcd's own output).
    pub fn member_log(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// A store configuration for `cluster_name` on this server (all endpoints, 5 s timeout,
    /// prefix `stolon/cluster`, client certificate and CA for the TLS variant).
    pub fn store_config(&self, cluster_name: &str) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::EtcdV3,
            endpoints: self.endpoints(),
            timeout: Duration::from_secs(5),
            prefix: "stolon/cluster".into(),
            cluster_name: cluster_name.into(),
            cert_file: self.tls.as_ref().map(|t| path_string(&t.client_cert)),
            key_file: self.tls.as_ref().map(|t| path_string(&t.client_key)),
            ca_file: self.tls.as_ref().map(|t| path_string(&t.ca_cert)),
            skip_tls_verify: false,
            kube_resource_kind: None,
        }
    }

    /// The common command-line flags reaching this server for `cluster_name`
    /// (`--cluster-name`, `--store-backend etcdv3`, `--store-endpoints`, and the TLS flags).
    pub fn store_flags(&self, cluster_name: &str) -> Vec<String> {
        let mut flags = vec![
            "--cluster-name".to_string(),
            cluster_name.to_string(),
            "--store-backend".into(),
            "etcdv3".into(),
            "--store-endpoints".into(),
            self.endpoints_flag(),
        ];
        if let Some(t) = &self.tls {
            flags.extend([
                "--store-cert-file".to_string(),
                path_string(&t.client_cert),
                "--store-key".into(),
                path_string(&t.client_key),
                "--store-ca-file".into(),
                path_string(&t.ca_cert),
            ]);
        }
        flags
    }

    /// Whether member `i` answers `/health` with `true` right now.
    pub fn member_healthy(&self, i: usize) -> bool {
        let m = &self.members[i];
        if m.proc.is_none() {
            return false;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], m.client_port));
        probe_health(addr, self.tls.as_ref()).unwrap_or(false)
    }

    fn running_members(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].proc.is_some())
            .collect()
    }

    fn check_not_exited(&self) -> io::Result<()> {
        for m in &self.members {
            if let Some(p) = &m.proc
                && !process_alive(p.pid)
            {
                return Err(io::Error::other(format!(
                    "etcd member {} exited; log tail:\n{}",
                    m.name,
                    log_tail(&m.log)
                )));
            }
        }
        Ok(())
    }

    fn health_error(&self, limit: Duration) -> io::Error {
        let logs = self
            .running_members()
            .iter()
            .map(|i| {
                format!(
                    "--- {} ---\n{}",
                    self.members[*i].name,
                    log_tail(&self.members[*i].log)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        io::Error::other(format!(
            "etcd not healthy within {limit:?} ({}); logs:\n{logs}",
            self.endpoints_flag()
        ))
    }

    /// Blocks until every running member is healthy (bounded by `limit`).
    pub fn wait_healthy(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_not_exited()?;
            if self
                .running_members()
                .iter()
                .all(|i| self.member_healthy(*i))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.health_error(limit));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`EtcdServer::wait_healthy`] with tokio timers.
    pub async fn wait_healthy_async(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_not_exited()?;
            if self
                .running_members()
                .iter()
                .all(|i| self.member_healthy(*i))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.health_error(limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops member `i` (SIGTERM, SIGKILL after 5 s), keeping its port and data. Blocks until it
    /// exited (bounded).
    pub fn stop_member(&mut self, i: usize) {
        let Some(mut p) = self.members[i].proc.take() else {
            return;
        };
        // A line on the guard's stdin makes it terminate etcd (keeping the data).
        release(&mut p);
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match p.guard.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    force_kill(&mut p);
                    break;
                }
            }
        }
        // The guard reaped etcd; make sure nothing holds the port any more.
        if process_alive(p.pid) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }

    /// [`EtcdServer::stop_member`] waiting with tokio timers.
    pub async fn stop_member_async(&mut self, i: usize) {
        let Some(mut p) = self.members[i].proc.take() else {
            return;
        };
        release(&mut p);
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match p.guard.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    force_kill(&mut p);
                    break;
                }
            }
        }
        if process_alive(p.pid) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }

    /// Stops every member (ports and data kept).
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    /// [`EtcdServer::stop`] waiting with tokio timers.
    pub async fn stop_async(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member_async(i).await;
        }
    }

    /// Kills member `i` with SIGKILL at once (a crash), keeping its port and data.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(p) = &self.members[i].proc {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        self.stop_member(i);
    }

    /// Starts member `i` again (same port, same data) and waits until the running members are
    /// healthy. A running member is left alone.
    pub fn restart_member(&mut self, i: usize) -> io::Result<()> {
        self.spawn_member(i)?;
        self.wait_healthy(START_LIMIT)
    }

    /// [`EtcdServer::restart_member`] waiting with tokio timers.
    pub async fn restart_member_async(&mut self, i: usize) -> io::Result<()> {
        self.spawn_member(i)?;
        self.wait_healthy_async(START_LIMIT).await
    }

    /// Starts every stopped member again on the same ports and data, and waits for health.
    pub fn restart(&mut self) -> io::Result<()> {
        self.spawn_all()?;
        self.wait_healthy(START_LIMIT)
    }

    /// [`EtcdServer::restart`] waiting with tokio timers.
    pub async fn restart_async(&mut self) -> io::Result<()> {
        self.spawn_all()?;
        self.wait_healthy_async(START_LIMIT).await
    }

    /// Freezes member `i` (SIGSTOP): connections stay open but nothing answers.
    pub fn pause_member(&self, i: usize) -> io::Result<()> {
        self.signal_member(i, Signal::SIGSTOP)
    }

    /// Thaws member `i` (SIGCONT).
    pub fn resume_member(&self, i: usize) -> io::Result<()> {
        self.signal_member(i, Signal::SIGCONT)
    }

    /// Freezes every member.
    pub fn pause(&self) -> io::Result<()> {
        for i in self.running_members() {
            self.pause_member(i)?;
        }
        Ok(())
    }

    /// Thaws every member.
    pub fn resume(&self) -> io::Result<()> {
        for i in self.running_members() {
            self.resume_member(i)?;
        }
        Ok(())
    }

    fn signal_member(&self, i: usize, sig: Signal) -> io::Result<()> {
        let p = self.members[i]
            .proc
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("etcd member {i} is not running")))?;
        kill(Pid::from_raw(p.pid), sig).map_err(io::Error::from)
    }

    /// A conformance-suite harness on this server (plain HTTP or TLS).
    pub fn harness(&self) -> EtcdHarness {
        EtcdHarness {
            base: self.store_config("unused"),
        }
    }
}

/// Tells the guard to stop etcd normally (data kept).
fn release(p: &mut Proc) {
    if let Some(mut stdin) = p.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
}

fn force_kill(p: &mut Proc) {
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGCONT);
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    let _ = p.guard.kill();
    let _ = p.guard.wait();
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Close every guard first so members shut down in parallel, then wait.
        for m in &mut self.members {
            if let Some(p) = &mut m.proc {
                release(p);
            }
        }
        self.stop();
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// GET /health on a member; `Ok(true)` when it reports `"health":"true"`.
fn probe_health(addr: SocketAddr, tls: Option<&TlsFiles>) -> io::Result<bool> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    let mut body = Vec::new();
    match tls {
        None => {
            tcp.write_all(request.as_bytes())?;
            let _ = tcp.read_to_end(&mut body);
        }
        Some(t) => {
            let flags = TlsFlags {
                ca_file: Some(path_string(&t.ca_cert)),
                cert_file: Some(path_string(&t.client_cert)),
                key_file: Some(path_string(&t.client_key)),
                skip_verify: false,
            };
            let cfg = client_config(&flags, &[b"http/1.1"]).map_err(io::Error::other)?;
            let name =
                rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(io::Error::other)?;
            let conn =
                rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.write_all(request.as_bytes())?;
            let _ = stream.read_to_end(&mut body);
        }
    }
    let text = String::from_utf8_lossy(&body);
    Ok(text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\""))
}

/// The conformance-suite [`Harness`] for a real etcd.
#[derive(Debug, Clone)]
pub struct EtcdHarness {
    base: StoreConfig,
}

impl EtcdHarness {
    /// A harness for any store configuration (the cluster name is replaced per test).
    pub fn new(base: StoreConfig) -> Self {
        EtcdHarness { base }
    }

    fn config(&self, cluster: &str) -> StoreConfig {
        StoreConfig {
            cluster_name: cluster.to_string(),
            ..self.base.clone()
        }
    }
}

impl Harness for EtcdHarness {
    fn open(
        &self,
        cluster: &str,
        election_ttl: Duration,
    ) -> BoxFuture<'_, (Arc<dyn Store>, Arc<dyn Election>)> {
        let cfg = self.config(cluster);
        Box::pin(async move {
            connect_with(&cfg, &BackendOptions { election_ttl })
                .await
                .expect("connect to the test etcd")
        })
    }

    /// Any client may publish any info in etcd: another connection.
    fn open_as<'a>(
        &'a self,
        cluster: &'a str,
        component: Component,
        name: &'a str,
    ) -> BoxFuture<'a, suite::Member> {
        let cfg = self.config(cluster);
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(
                crate::EtcdStore::connect(&cfg)
                    .await
                    .expect("connect to the test etcd"),
            );
            suite::Member {
                cluster: cluster.to_string(),
                component,
                name: name.to_string(),
                store,
            }
        })
    }

    /// The member stops: its connection is dropped and its infos' TTL lease runs out in etcd
    /// (nothing is revoked, so the suite tests the expiry).
    fn make_member_disappear(&self, member: suite::Member) -> BoxFuture<'_, ()> {
        drop(member);
        Box::pin(async {})
    }

    fn put_raw_cluster_data<'a>(&'a self, cluster: &'a str, raw: &'a [u8]) -> BoxFuture<'a, ()> {
        let cfg = self.config(cluster);
        Box::pin(async move {
            let store = crate::EtcdStore::connect(&cfg)
                .await
                .expect("connect to the test etcd");
            store
                .raw_put(&store.layout().cluster_data(), raw)
                .await
                .expect("raw put");
        })
    }
}
