//! Containers for the end-to-end tests, through the `docker` CLI: a private bridge network of the
//! engine with its own /24 (so that containers get fixed addresses), named volumes, containers
//! started from the project's image, `docker kill` / `docker start` as faults.
//!
//! Everything made here carries the label `stolon-rs.test-run=<run id>` and is removed when the
//! [`Docker`] value is dropped, even after a failed test: by id first, then whatever still carries
//! the label. Every docker call is bounded in time. Only addresses of the network made here are
//! ever targeted. Unless the test called [`Docker::pass`], the tail of every container's log is
//! printed on drop.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// Label carried by every container, volume and network a test run makes.
pub const RUN_LABEL: &str = "stolon-rs.test-run";

/// Bound on one docker call.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// Candidate subnets: 172.28.0.0/24 ... 172.31.255.0/24 (inside 172.16.0.0/12, which the engine
/// itself allocates from), tried from an offset picked by the run so that runs side by side do
/// not collide; bounded in count.
const SUBNET_TRIES: u32 = 64;

/// A private network of the engine.
#[derive(Debug, Clone)]
pub struct Network {
    /// Network id.
    pub id: String,
    /// Network name.
    pub name: String,
    /// First three octets of its /24.
    prefix: [u8; 3],
}

impl Network {
    /// The address `host` (2..=254) of the network's /24.
    pub fn ip(&self, host: u8) -> String {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, host).to_string()
    }

    /// The subnet in CIDR form.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.0/24")
    }
}

/// A container to start with `docker run -d`.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Short name; the container is named `stolon-it-<run id>-<name>`.
    pub name: String,
    /// Image.
    pub image: String,
    /// Network name and fixed address on it.
    pub network: Option<(String, String)>,
    /// Named volumes: `(volume, mount path)`.
    pub volumes: Vec<(String, String)>,
    /// Environment: passed by name (`-e NAME`) with the value in the docker CLI's own
    /// environment, so that secrets never appear on a command line.
    pub env: Vec<(String, String)>,
    /// Command (after the image's entrypoint).
    pub args: Vec<String>,
}

/// The containers, volumes and networks of one test run.
#[derive(Debug)]
pub struct Docker {
    run_id: String,
    containers: Vec<(String, String)>,
    volumes: Vec<String>,
    networks: Vec<String>,
    passed: bool,
}

fn to_strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Docker {
    /// Checks that the engine answers and picks the run id.
    pub async fn new() -> Result<Docker> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let d = Docker {
            run_id: format!("{}-{:08x}", std::process::id(), nanos),
            containers: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            passed: false,
        };
        d.cmd(&["version", "--format", "{{.Server.Version}}"])
            .await
            .context("the Docker engine does not answer")?;
        Ok(d)
    }

    /// The id of this run (in names and in the [`RUN_LABEL`] label).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn label(&self) -> String {
        format!("{RUN_LABEL}={}", self.run_id)
    }

    fn full_name(&self, name: &str) -> String {
        format!("stolon-it-{}-{name}", self.run_id)
    }

    /// Marks the test as passed: container logs are not printed on drop.
    pub fn pass(&mut self) {
        self.passed = true;
    }

    /// `docker ARGS` with extra env for the CLI, bounded by [`DOCKER_TIMEOUT`]; fails unless it
    /// exits 0; returns stdout, trimmed.
    pub async fn cmd_env(&self, args: &[String], env: &[(String, String)]) -> Result<String> {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = args.first().map(String::as_str).unwrap_or("");
        let out = tokio::time::timeout(DOCKER_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("docker {what} timed out after {DOCKER_TIMEOUT:?}"))?
            .context("run docker")?;
        if !out.status.success() {
            bail!(
                "docker {what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker ARGS` (see [`Docker::cmd_env`]).
    pub async fn cmd(&self, args: &[&str]) -> Result<String> {
        self.cmd_env(&to_strings(args), &[]).await
    }

    /// Fails with one clear line unless the engine has `image`.
    pub async fn require_image(&self, image: &str) -> Result<()> {
        self.cmd(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
            .map(|_| ())
            .with_context(|| format!("image {image} not found: build it with scripts/image.sh"))
    }

    /// Creates a bridge network with its own /24, free on this host and in the engine.
    pub async fn create_network(&mut self, name: &str) -> Result<Network> {
        let full = self.full_name(name);
        let start = std::process::id() % 1024;
        let mut last = String::from("no candidate subnet was free");
        for k in 0..SUBNET_TRIES {
            let n = (start + k * 17) % 1024;
            let prefix = [172, 28 + (n / 256) as u8, (n % 256) as u8];
            let net = Network {
                id: String::new(),
                name: full.clone(),
                prefix,
            };
            if host_uses(&net.ip(1)).await {
                continue;
            }
            let args = to_strings(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &self.label(),
                "--subnet",
                &net.subnet(),
                "--gateway",
                &net.ip(1),
                &full,
            ]);
            match self.cmd_env(&args, &[]).await {
                Ok(id) => {
                    self.networks.push(id.clone());
                    return Ok(Network { id, ..net });
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("could not create a network after {SUBNET_TRIES} subnets: {last}")
    }

    /// Creates a named volume; returns its name.
    pub async fn create_volume(&mut self, name: &str) -> Result<String> {
        let full = self.full_name(name);
        let v = self
            .cmd(&["volume", "create", "--label", &self.label(), &full])
            .await?;
        self.volumes.push(v.clone());
        Ok(v)
    }

    /// `docker run -d` of `spec`; returns the container id.
    pub async fn run(&mut self, spec: &ContainerSpec) -> Result<String> {
        let full = self.full_name(&spec.name);
        let mut args = to_strings(&["run", "-d", "--label", &self.label(), "--name", &full]);
        if let Some((net, ip)) = &spec.network {
            args.extend(to_strings(&["--network", net, "--ip", ip]));
        }
        for (vol, path) in &spec.volumes {
            args.extend(["--volume".to_string(), format!("{vol}:{path}")]);
        }
        for (k, _) in &spec.env {
            args.extend(["--env".to_string(), k.clone()]);
        }
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        let id = self
            .cmd_env(&args, &spec.env)
            .await
            .with_context(|| format!("start container {}", spec.name))?;
        self.containers.push((spec.name.clone(), id.clone()));
        Ok(id)
    }

    /// `docker kill` (SIGKILL to the container's PID 1: every process in it dies).
    pub async fn kill(&self, id: &str) -> Result<()> {
        self.cmd(&["kill", id]).await.map(|_| ())
    }

    /// `docker start` of a stopped container (same volumes, same address).
    pub async fn start(&self, id: &str) -> Result<()> {
        self.cmd(&["start", id]).await.map(|_| ())
    }

    /// `docker exec CONTAINER ARGS`; returns stdout.
    pub async fn exec(&self, id: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["exec", id];
        a.extend_from_slice(args);
        self.cmd(&a).await
    }

    /// Whether the container is running.
    pub async fn is_running(&self, id: &str) -> Result<bool> {
        let s = self
            .cmd(&["inspect", "--format", "{{.State.Running}}", id])
            .await?;
        Ok(s == "true")
    }

    fn sync_docker(args: &[&str]) -> Option<String> {
        let mut child = std::process::Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + DOCKER_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("docker {args:?} timed out");
                    return None;
                }
            }
        }
        let out = child.wait_with_output().ok()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Some(text)
    }

    fn print_logs(&self) {
        for (name, id) in &self.containers {
            let logs = Self::sync_docker(&["logs", "--tail", "60", id]).unwrap_or_default();
            eprintln!("----- container {name} ({id:.12}): last log lines -----\n{logs}");
        }
    }

    fn cleanup(&mut self) {
        let label = format!("label={}", self.label());
        let mut containers: Vec<String> = self.containers.drain(..).map(|(_, id)| id).collect();
        let listed = Self::sync_docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
        containers.extend(
            listed
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from),
        );
        containers.sort();
        containers.dedup();
        if !containers.is_empty() {
            let mut a = vec!["rm", "-f", "--volumes"];
            a.extend(containers.iter().map(String::as_str));
            Self::sync_docker(&a);
        }
        let mut volumes: Vec<String> = self.volumes.drain(..).collect();
        let listed = Self::sync_docker(&["volume", "ls", "-q", "--filter", &label]);
        volumes.extend(
            listed
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from),
        );
        volumes.sort();
        volumes.dedup();
        if !volumes.is_empty() {
            let mut a = vec!["volume", "rm", "-f"];
            a.extend(volumes.iter().map(String::as_str));
            Self::sync_docker(&a);
        }
        let mut networks: Vec<String> = self.networks.drain(..).collect();
        let listed = Self::sync_docker(&["network", "ls", "-q", "--no-trunc", "--filter", &label]);
        networks.extend(
            listed
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from),
        );
        networks.sort();
        networks.dedup();
        if !networks.is_empty() {
            let mut a = vec!["network", "rm"];
            a.extend(networks.iter().map(String::as_str));
            Self::sync_docker(&a);
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if !self.passed {
            self.print_logs();
        }
        self.cleanup();
    }
}

/// Whether the host already reaches `addr` directly (an address or a connected route of its own
/// covers it): `ip route get` then names no gateway.
async fn host_uses(addr: &str) -> bool {
    let out = tokio::process::Command::new("ip")
        .args(["-4", "route", "get", addr])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), out).await {
        Ok(Ok(o)) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            !s.contains(" via ")
        }
        _ => false,
    }
}
