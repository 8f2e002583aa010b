//! The Helm chart's command lines against the real binaries.
//!
//! The keeper, sentinel, proxy and init Job containers are taken from the chart's render
//! (`tests/k8s/rendered/kubernetes-store.json`, which `scripts/validate-k8s.sh` keeps equal to an
//! offline render of the documented install command) and run as the kubelet would run them:
//! command and args as rendered (minus the image's `tini --` init), `$(VAR)` references
//! expanded, the downward-API env (`POD_NAME`, `POD_IP`) and the Secret's password files filled
//! in, every volume mount a directory of the test. Each pod gets its own loopback address (its
//! network namespace: a rendered `0.0.0.0` listen address becomes that address) and each keeper its
//! own `/tmp` (a private mount namespace: the `tmp` emptyDir). The in-cluster configuration is
//! replaced by a kubeconfig pointing at the in-test fake API server, with the pod's
//! ServiceAccount name as bearer token; the fake server enforces the rendered Roles as RBAC would.
//!
//! Checked: the init Job initialises once and a second run changes nothing; a primary is elected
//! and the proxy routes a client to it (real PostgreSQL under the keepers); no call was refused;
//! and each component made only calls listed in `crates/stolon-kube/rbac.json` (keepers and
//! proxies: exactly those).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use stolon_it::bins;
use stolon_it::process::{ProcSpec, Process};
use stolon_kube::testing::{ApiCall, FakeApiServer};
use stolon_pg::testing::{TestDir, pg_bin_dir, test_os_user};

const NS: &str = "test";
const SU_PASSWORD: &str = "chart-test-su-password";
const REPL_PASSWORD: &str = "chart-test-repl-password";
const FAILSAFE_SECRET: &str = "chart-test-failsafe-shared-secret";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn read_json(rel: &str) -> Result<Value> {
    let path = repo_file(rel);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn find<'a>(docs: &'a [Value], kind: &str, component: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["labels"]["component"] == component)
        .ok_or_else(|| anyhow!("no {kind} for {component} in the render"))
}

fn str_of(v: &Value) -> Result<&str> {
    v.as_str()
        .ok_or_else(|| anyhow!("expected a string, got {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet's `$(VAR)` expansion of command and args (`$$` escapes, unknown names stay).
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = env.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// RBAC as the API server applies it: the Roles bound to the caller's ServiceAccount.
fn authorizer(docs: &[Value]) -> Arc<dyn Fn(&ApiCall) -> bool + Send + Sync> {
    let mut by_sa: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for b in docs.iter().filter(|d| d["kind"] == "RoleBinding") {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == b["roleRef"]["name"]);
        for s in b["subjects"].as_array().into_iter().flatten() {
            if s["kind"] == "ServiceAccount"
                && let (Some(name), Some(role)) = (s["name"].as_str(), role)
            {
                by_sa
                    .entry(name.to_string())
                    .or_default()
                    .extend(role["rules"].as_array().cloned().unwrap_or_default());
            }
        }
    }
    Arc::new(move |call: &ApiCall| {
        by_sa.get(&call.user).is_some_and(|rules| {
            rules.iter().any(|r| {
                let names = strings(&r["resourceNames"]);
                strings(&r["apiGroups"]).contains(&call.group)
                    && strings(&r["resources"]).contains(&call.resource)
                    && strings(&r["verbs"]).contains(&call.verb)
                    && (names.is_empty()
                        || (call.verb != "create"
                            && call.name.as_ref().is_some_and(|n| names.contains(n))))
            })
        })
    })
}

/// One pod of the render, ready to run on this machine.
struct Pod {
    name: String,
    ip: String,
    service_account: String,
    labels: Vec<(String, String)>,
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// The pod's own `/tmp` (keepers: PostgreSQL's unix socket is there).
    private_tmp: Option<PathBuf>,
    pgdata: Option<PathBuf>,
    cwd: PathBuf,
}

struct Env<'a> {
    dir: &'a TestDir,
    bin_path: String,
    api: &'a FakeApiServer,
    config_map: &'a Value,
}

impl Env<'_> {
    /// Turns a rendered pod template into a runnable pod named `name` at `ip`.
    fn pod(&self, template: &Value, name: &str, ip: &str) -> Result<Pod> {
        let spec = &template["spec"];
        let c = &spec["containers"][0];
        let service_account = str_of(&spec["serviceAccountName"])?.to_string();
        let pod_dir = self.dir.subdir(name, 0o755);
        let owner = self.dir.os_user();

        // Volumes: each mount becomes a directory of the test.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut private_tmp = None;
        let mut pgdata = None;
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = str_of(&m["name"])?;
            let path = str_of(&m["mountPath"])?.to_string();
            let vol = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == vname);
            let host = self.dir.subdir(&format!("{name}/{vname}"), 0o700);
            match (vname, vol) {
                // The claim of volumeClaimTemplates (persistence on): PGDATA's parent.
                ("data", None) => pgdata = Some(host.join("postgres")),
                (_, Some(v)) if v.get("secret").is_some() => {
                    let pass = |key: &str| match key {
                        "pg_su_password" => Ok(SU_PASSWORD),
                        "pg_repl_password" => Ok(REPL_PASSWORD),
                        "failsafe_secret" => Ok(FAILSAFE_SECRET),
                        other => Err(anyhow!("no test value for Secret key {other}")),
                    };
                    for item in v["secret"]["items"].as_array().into_iter().flatten() {
                        let f = host.join(str_of(&item["path"])?);
                        std::fs::write(&f, pass(str_of(&item["key"])?)?)?;
                        std::os::unix::fs::chown(&f, owner.map(|u| u.uid), owner.map(|u| u.gid))?;
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
                    }
                }
                (_, Some(v)) if v.get("configMap").is_some() => {
                    if v["configMap"]["name"] != self.config_map["metadata"]["name"] {
                        bail!("{name}: volume {vname} is not the cluster spec ConfigMap");
                    }
                    for (k, text) in self.config_map["data"].as_object().into_iter().flatten() {
                        std::fs::write(host.join(k), str_of(text)?)?;
                    }
                }
                (_, Some(v)) if v.get("emptyDir").is_some() => {
                    if path == "/tmp" {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o1777))?;
                        private_tmp = Some(host);
                        continue;
                    }
                    if path == "/dev/shm" {
                        continue;
                    }
                }
                _ => bail!("{name}: volume {vname} of an unexpected kind"),
            }
            mounts.push((path, self.dir.path().join(format!("{name}/{vname}"))));
        }

        let kubeconfig = pod_dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            self.api
                .kubeconfig_yaml_with_token("in-cluster", NS, &service_account),
        )?;
        let mut env = BTreeMap::from([
            ("PATH".to_string(), self.bin_path.clone()),
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        ]);
        for e in c["env"].as_array().into_iter().flatten() {
            let key = str_of(&e["name"])?.to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => name.to_string(),
                    Some("status.podIP") => ip.to_string(),
                    other => bail!("{name}: env {key} from {other:?} is not filled in by the test"),
                }
            };
            env.insert(key, value);
        }

        let localize = |s: &str| {
            let mut s = expand(s, &env).replace("0.0.0.0", ip);
            for (path, host) in &mounts {
                s = s.replace(&format!("{path}/"), &format!("{}/", host.display()));
                if s.ends_with(path.as_str()) {
                    s = format!("{}{}", &s[..s.len() - path.len()], host.display());
                }
            }
            s
        };
        let mut command: Vec<String> = strings(&c["command"]);
        // The image's PID 1 (tini) only reaps zombies.
        if command.first().map(String::as_str) == Some("/usr/bin/tini") {
            command.drain(..command.len().min(2));
        }
        let mut line: Vec<String> = command.iter().map(|s| localize(s)).collect();
        line.extend(strings(&c["args"]).iter().map(|s| localize(s)));
        if line.is_empty() {
            bail!("{name}: empty command line");
        }
        let program = line.remove(0);
        let labels = template["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        Ok(Pod {
            name: name.to_string(),
            ip: ip.to_string(),
            service_account,
            labels,
            program,
            args: line,
            env,
            private_tmp,
            pgdata,
            cwd: pod_dir,
        })
    }

    /// Registers the pod with the API server (as the kubelet would) and starts its container.
    fn start(&self, pod: &Pod) -> Result<Process> {
        let labels: Vec<(&str, &str)> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.api.add_pod(NS, &pod.name, &labels, "Running");
        let os_user = test_os_user();
        let (program, args) = match &pod.private_tmp {
            // A mount namespace of its own with the pod's /tmp; then the container's user.
            Some(tmp) => {
                let drop_to = match &os_user {
                    Some(u) => format!(
                        "exec setpriv --reuid={} --regid={} --init-groups \"$@\"",
                        u.uid, u.gid
                    ),
                    None => "exec \"$@\"".to_string(),
                };
                let mut a = vec![
                    "--mount".to_string(),
                    "--propagation".into(),
                    "private".into(),
                ];
                if os_user.is_none() {
                    a.push("--map-root-user".into());
                }
                // The test's own directory is under /tmp too: bind it into the pod's /tmp first,
                // so every path of the command line still resolves.
                let test_dir = self.dir.path();
                let base = test_dir
                    .file_name()
                    .ok_or_else(|| anyhow!("test dir {}", test_dir.display()))?;
                std::fs::create_dir_all(tmp.join(base))?;
                a.extend([
                    "/bin/sh".into(),
                    "-ec".into(),
                    format!(
                        "t=\"$0\"; d=\"$1\"; b=\"$2\"; shift 2; mount --bind \"$d\" \"$t/$b\"; \
                         mount --rbind \"$t\" /tmp; {drop_to}"
                    ),
                    tmp.display().to_string(),
                    test_dir.display().to_string(),
                    base.to_string_lossy().to_string(),
                    pod.program.clone(),
                ]);
                a.extend(pod.args.iter().cloned());
                ("unshare".to_string(), a)
            }
            None => (pod.program.clone(), pod.args.clone()),
        };
        let program = if program.contains('/') {
            PathBuf::from(program)
        } else {
            which(&program, &pod.env["PATH"])?
        };
        let spec = ProcSpec {
            program,
            args: args.into_iter().map(Into::into).collect(),
            envs: pod.env.clone().into_iter().collect(),
            run_as: None,
            cwd: Some(pod.cwd.clone()),
            pgdata: pod.pgdata.clone(),
        };
        let mut p = Process::new(&pod.name, spec, pod.cwd.join("log"));
        p.start()?;
        Ok(p)
    }
}

fn which(program: &str, path: &str) -> Result<PathBuf> {
    path.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{program} not found in {path}"))
}

/// A loopback /24 of its own for this run's pods (other test runs may use the default one).
fn pod_subnet() -> String {
    let n = std::process::id();
    format!("127.{}.{}", 100 + n % 100, (n / 100) % 250 + 1)
}

/// Runs a pod's container to completion (the init Job), bounded.
async fn run_job(env: &Env<'_>, pod: &Pod) -> Result<String> {
    let labels: Vec<(&str, &str)> = pod
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.api.add_pod(NS, &pod.name, &labels, "Running");
    let program = which(&pod.program, &pod.env["PATH"])?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(&pod.args)
            .env_clear()
            .envs(&pod.env)
            .current_dir(&pod.cwd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("{} did not finish in 60 s", pod.name))??;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {stdout}{}",
            pod.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The calls of one ServiceAccount as (group, resource, verb).
fn used(calls: &[ApiCall], sa: &str) -> BTreeSet<(String, String, String)> {
    calls
        .iter()
        .filter(|c| c.user == sa)
        .map(|c| (c.group.clone(), c.resource.clone(), c.verb.clone()))
        .collect()
}

/// rbac.json's rules of one component as (group, resource, verb).
fn listed(rbac: &Value, component: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rbac[component].as_array().into_iter().flatten() {
        for v in strings(&r["verbs"]) {
            out.insert((
                r["apiGroup"].as_str().unwrap_or_default().to_string(),
                r["resource"].as_str().unwrap_or_default().to_string(),
                v,
            ));
        }
    }
    out
}

async fn routed_primary(ip: &str, port: u16, user: &str) -> Result<()> {
    let conninfo = format!(
        "host={ip} port={port} user={user} dbname=postgres connect_timeout=5 application_name=chart-test"
    );
    let mut cfg: tokio_postgres::Config = conninfo.parse()?;
    cfg.password(SU_PASSWORD);
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(10), cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client.query_one("select pg_is_in_recovery()", &[]).await?;
    if row.get::<_, bool>(0) {
        bail!("the proxy routed to a standby");
    }
    client
        .batch_execute("create table if not exists chart_test (id int primary key); insert into chart_test values (1) on conflict do nothing")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_command_lines_elect_a_primary_and_route_through_the_proxy() -> Result<()> {
    let docs: Vec<Value> =
        serde_json::from_value(read_json("tests/k8s/rendered/kubernetes-store.json")?)?;
    let rbac = read_json("crates/stolon-kube/rbac.json")?;
    let binaries = bins::locate()?;
    let dir = TestDir::new("stolon-chart-");
    let bin_dir = dir.subdir("bin", 0o755);
    for p in [
        &binaries.keeper,
        &binaries.sentinel,
        &binaries.proxy,
        &binaries.stolonctl,
    ] {
        let name = p
            .file_name()
            .ok_or_else(|| anyhow!("binary path {}", p.display()))?;
        // A link or copy, not a symlink: a pod sees only its own /tmp (with the test's directory
        // bound into it), so a symlink to a checkout under /tmp would dangle inside the pod.
        let to = bin_dir.join(name);
        if std::fs::hard_link(p, &to).is_err() {
            std::fs::copy(p, &to)?;
        }
    }
    let api = FakeApiServer::start().await?;
    api.set_authorizer(authorizer(&docs));
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .ok_or_else(|| anyhow!("no cluster spec ConfigMap in the render"))?;
    let env = Env {
        dir: &dir,
        bin_path: format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            bin_dir.display(),
            pg_bin_dir().display()
        ),
        api: &api,
        config_map,
    };
    let net = pod_subnet();
    let sts = find(&docs, "StatefulSet", "stolon-keeper")?;
    let sentinel = find(&docs, "Deployment", "stolon-sentinel")?;
    let proxy = find(&docs, "Deployment", "stolon-proxy")?;
    let job = find(&docs, "Job", "stolonctl")?;
    let sts_name = str_of(&sts["metadata"]["name"])?;
    let keepers = sts["spec"]["replicas"].as_u64().unwrap_or(0);
    if keepers < 2 {
        bail!("the install render has {keepers} keepers");
    }

    let mut pods = Vec::new();
    for i in 0..keepers {
        pods.push(env.pod(
            &sts["spec"]["template"],
            &format!("{sts_name}-{i}"),
            &format!("{net}.{}", 10 + i),
        )?);
    }
    let sentinel_name = format!("{}-7c9d5-a0", str_of(&sentinel["metadata"]["name"])?);
    pods.push(env.pod(
        &sentinel["spec"]["template"],
        &sentinel_name,
        &format!("{net}.20"),
    )?);
    let proxy_name = format!("{}-5f6b8-b0", str_of(&proxy["metadata"]["name"])?);
    let proxy_pod = env.pod(
        &proxy["spec"]["template"],
        &proxy_name,
        &format!("{net}.30"),
    )?;
    let proxy_port: u16 =
        proxy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("proxy containerPort"))?;
    let init = env.pod(
        &job["spec"]["template"],
        &format!("{}-x1", str_of(&job["metadata"]["name"])?),
        &format!("{net}.40"),
    )?;

    let mut running = Vec::new();
    for p in &pods {
        running.push(env.start(p)?);
    }
    running.push(env.start(&proxy_pod)?);

    // The post-install hook: initialises once; run again (a retried Job) it changes nothing.
    let first = run_job(&env, &init).await?;
    assert_eq!(first, "cluster data initialised\n");
    let cm_name = format!(
        "stolon-cluster-{}",
        sts["spec"]["template"]["metadata"]["labels"]["stolon-cluster"]
            .as_str()
            .unwrap_or_default()
    );
    let written = api
        .object("configmaps", NS, &cm_name)
        .map(|cm| cm["metadata"]["annotations"]["stolon-clusterdata"].clone());
    let cluster_uid = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|a| a.as_str())
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .map(|cd| cd["cluster"]["uid"].clone())
    };
    let uid = cluster_uid(&written);
    assert!(uid.is_some(), "no clusterdata after the init Job");

    // A primary elected, and the proxy routing a client (the chart's superuser) to it.
    let su_user = pods[0]
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--pg-su-username="))
        .ok_or_else(|| anyhow!("the keeper has no --pg-su-username"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = anyhow!("not tried");
    loop {
        match routed_primary(&proxy_pod.ip, proxy_port, &su_user).await {
            Ok(()) => break,
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            let logs: String = running
                .iter()
                .map(|p| format!("--- {}\n{}\n", p.name(), p.log_tail(30)))
                .collect();
            bail!("no primary through the proxy within 240 s: {last:#}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let again = run_job(&env, &init).await?;
    assert_eq!(
        again,
        "cluster data already present: left unchanged (--if-absent)\n"
    );
    let now = api
        .object("configmaps", NS, &cm_name)
        .map(|cm| cm["metadata"]["annotations"]["stolon-clusterdata"].clone());
    assert_eq!(
        cluster_uid(&now),
        uid,
        "the second init run replaced the cluster"
    );

    // RBAC: nothing refused, and nothing beyond the list next to the code.
    let calls = api.calls();
    let refused: Vec<&ApiCall> = calls.iter().filter(|c| !c.allowed).collect();
    assert!(
        refused.is_empty(),
        "calls the rendered Roles refuse: {refused:?}"
    );
    for (component, sa) in [
        ("keeper", &pods[0].service_account),
        ("sentinel", &pods[pods.len() - 1].service_account),
        ("proxy", &proxy_pod.service_account),
        ("init", &init.service_account),
    ] {
        let used = used(&calls, sa);
        let listed = listed(&rbac, component);
        assert!(!used.is_empty(), "{component} made no API call as {sa}");
        let extra: Vec<_> = used.difference(&listed).collect();
        assert!(
            extra.is_empty(),
            "{component} calls beyond rbac.json: {extra:?}"
        );
        if component == "keeper" || component == "proxy" {
            assert_eq!(
                used, listed,
                "{component}: rbac.json lists calls the code does not make"
            );
        }
    }
    for mut p in running {
        p.stop().await?;
    }
    Ok(())
}
