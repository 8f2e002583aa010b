//! The network: N hosts, each a network namespace with its own address, linked to each other and
//! to the root namespace (which has an address too: clients run there) by veth pairs, and cuts
//! made of iptables rules inside the namespaces, removed rule by rule at heal.
//!
//! Every name carries the run's tag (from the test process's PID), so a run can find and remove
//! what an earlier, killed run left behind: [`cleanup_leftovers`] deletes the namespaces and links
//! of tags whose process is gone. [`Topology`] removes its own on drop.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Every namespace of this harness starts with this.
pub const NS_PREFIX: &str = "stnet-";
/// Links: `sn<tag><i><j>` (host i's end of its link to host j; `c` is the root namespace).
const LINK_PREFIX: &str = "sn";
/// First octets of the subnets tried (`10.213.<x>.0/24`).
const NET_A: u8 = 10;
const NET_B: u8 = 213;

/// Runs a command; fails with its stderr unless it exits 0; returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` inside namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, program];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// PIDs of the processes in namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn tag_pid(tag: &str) -> Option<i32> {
    // tag = <pid in hex><one hex digit of a per-process counter>
    let hex = tag.get(..tag.len().checked_sub(1)?)?;
    i32::from_str_radix(hex, 16).ok()
}

/// Deletes namespaces (with their links) and data dirs of earlier runs whose process is gone
/// (their tag's PID does not exist any more). Returns the tags removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let me = std::process::id() as i32;
    for line in list.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = ns.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((tag, _host)) = rest.split_once('-') else {
            continue;
        };
        let Some(pid) = tag_pid(tag) else { continue };
        if pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in netns_pids(ns) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = run("ip", &["netns", "del", ns]);
        if !removed.iter().any(|t| t == tag) {
            removed.push(tag.to_string());
        }
    }
    // Data dirs of dead runs (they name their process in `owner-pid`).
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for e in entries.flatten() {
            let path = e.path();
            let is_ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(DIR_PREFIX));
            let owner = std::fs::read_to_string(path.join(OWNER_FILE))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let (true, Some(pid)) = (is_ours, owner)
                && pid != me
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    removed
}

/// Prefix of a run's data dir under `/tmp`.
pub const DIR_PREFIX: &str = "stolon-net-";
/// File in a run's data dir holding the PID of the process that made it.
pub const OWNER_FILE: &str = "owner-pid";

/// One host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Index.
    pub index: usize,
    /// Namespace name.
    pub ns: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

/// An iptables rule in a host's namespace (chain and match), removable by the same spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The namespace.
    pub ns: String,
    /// `INPUT` or `OUTPUT`.
    pub chain: &'static str,
    /// `-s` or `-d`.
    pub dir: &'static str,
    /// The peer address.
    pub peer: Ipv4Addr,
    /// TCP ports (source or destination) whose traffic with the peer still passes; empty: none,
    /// everything is dropped. With ports, only TCP is dropped (all the cluster speaks).
    pub except_tcp_ports: Vec<u16>,
}

impl Rule {
    fn args(&self, op: &'static str) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-w".into(),
            op.into(),
            self.chain.into(),
            self.dir.into(),
            format!("{}/32", self.peer),
        ];
        if !self.except_tcp_ports.is_empty() {
            let ports: Vec<String> = self.except_tcp_ports.iter().map(u16::to_string).collect();
            a.extend([
                "-p".into(),
                "tcp".into(),
                "-m".into(),
                "multiport".into(),
                "!".into(),
                "--ports".into(),
                ports.join(","),
            ]);
        }
        a.extend(["-j".into(), "DROP".into()]);
        a
    }

    fn apply(&self, op: &'static str) -> Result<()> {
        let a = self.args(op);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_in(&self.ns, "iptables", &refs).map(|_| ())
    }
}

/// The hosts, their links and the rules in force. Dropping it removes them all.
#[derive(Debug)]
pub struct Topology {
    /// The run's tag.
    pub tag: String,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The root namespace's address (clients and the harness use it).
    pub client_addr: Ipv4Addr,
    rules: Vec<Rule>,
}

struct Endpoint {
    ns: Option<String>,
    addr: Ipv4Addr,
}

fn ip_at(ns: &Option<String>, args: &[&str]) -> Result<String> {
    match ns {
        Some(ns) => run_in(ns, "ip", args),
        None => run("ip", args),
    }
}

/// A veth pair between two namespaces, each end with its namespace's address and a route to the
/// other's.
fn link(a: (&Endpoint, &str), b: (&Endpoint, &str)) -> Result<()> {
    run(
        "ip",
        &["link", "add", a.1, "type", "veth", "peer", "name", b.1],
    )?;
    for (e, name) in [a, b] {
        if let Some(ns) = &e.ns {
            run("ip", &["link", "set", name, "netns", ns])?;
        }
    }
    for ((e, name), (other, _)) in [(a, b), (b, a)] {
        ip_at(
            &e.ns,
            &["addr", "add", &format!("{}/32", e.addr), "dev", name],
        )?;
        ip_at(&e.ns, &["link", "set", name, "up"])?;
        ip_at(
            &e.ns,
            &[
                "route",
                "add",
                &format!("{}/32", other.addr),
                "dev",
                name,
                "src",
                &e.addr.to_string(),
            ],
        )?;
    }
    Ok(())
}

fn subnet_in_use(third: u8) -> bool {
    let prefix = format!("{NET_A}.{NET_B}.{third}.");
    let routes = run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let addrs = run("ip", &["-4", "addr"]).unwrap_or_default();
    routes.contains(&prefix) || addrs.contains(&prefix)
}

impl Topology {
    /// Makes `n` hosts (after removing leftovers of dead runs).
    pub fn create(n: usize) -> Result<Topology> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        cleanup_leftovers();
        let k = COUNTER.fetch_add(1, Ordering::Relaxed) % 16;
        let tag = format!("{:x}{:x}", std::process::id(), k);
        let start = (std::process::id() % 200) as u8;
        let third = (0..200u8)
            .map(|i| 20 + (start.wrapping_add(i)) % 200)
            .find(|t| !subnet_in_use(*t))
            .context("no free 10.213.x.0/24 subnet")?;
        let mut topo = Topology {
            tag: tag.clone(),
            hosts: Vec::new(),
            client_addr: Ipv4Addr::new(NET_A, NET_B, third, 254),
            rules: Vec::new(),
        };
        for i in 0..n {
            let ns = format!("{NS_PREFIX}{tag}-h{i}");
            run("ip", &["netns", "add", &ns])?;
            run_in(&ns, "ip", &["link", "set", "lo", "up"])?;
            topo.hosts.push(Host {
                index: i,
                ns,
                addr: Ipv4Addr::new(NET_A, NET_B, third, i as u8 + 1),
            });
        }
        // A veth link per pair of hosts and one per host to the root namespace (no bridge: with
        // the Docker engine's br_netfilter, bridged frames would go through its FORWARD chain).
        // Each end carries its namespace's address as a /32 with a host route to the other end.
        let root = Endpoint {
            ns: None,
            addr: topo.client_addr,
        };
        for i in 0..n {
            let hi = Endpoint {
                ns: Some(topo.hosts[i].ns.clone()),
                addr: topo.hosts[i].addr,
            };
            for j in (i + 1)..n {
                let hj = Endpoint {
                    ns: Some(topo.hosts[j].ns.clone()),
                    addr: topo.hosts[j].addr,
                };
                link(
                    (&hi, &format!("{LINK_PREFIX}{tag}{i}{j}")),
                    (&hj, &format!("{LINK_PREFIX}{tag}{j}{i}")),
                )?;
            }
            link(
                (&root, &format!("{LINK_PREFIX}{tag}c{i}")),
                (&hi, &format!("{LINK_PREFIX}{tag}{i}c")),
            )?;
        }
        Ok(topo)
    }

    /// Adds a DROP rule (kept until [`Topology::heal`]).
    pub fn add_rule(&mut self, rule: Rule) -> Result<()> {
        rule.apply("-I")?;
        self.rules.push(rule);
        Ok(())
    }

    /// Host `h` drops everything from and to host `peer` (both directions, in `h`).
    pub fn cut_pair(&mut self, h: usize, peer: Ipv4Addr) -> Result<()> {
        self.cut_pair_except(h, peer, &[])
    }

    /// Host `h` drops everything from and to host `peer` but TCP from or to the given ports
    /// (both directions, in `h`).
    pub fn cut_pair_except(&mut self, h: usize, peer: Ipv4Addr, ports: &[u16]) -> Result<()> {
        let ns = self.hosts[h].ns.clone();
        self.add_rule(Rule {
            ns: ns.clone(),
            chain: "INPUT",
            dir: "-s",
            peer,
            except_tcp_ports: ports.to_vec(),
        })?;
        self.add_rule(Rule {
            ns,
            chain: "OUTPUT",
            dir: "-d",
            peer,
            except_tcp_ports: ports.to_vec(),
        })
    }

    /// Host `h` cut off from the other hosts (clients still reach it).
    pub fn cut_from_peers(&mut self, h: usize) -> Result<()> {
        for p in self.peer_addrs(h) {
            self.cut_pair(h, p)?;
        }
        Ok(())
    }

    /// Host `h` cut off from everything (other hosts and clients).
    pub fn isolate(&mut self, h: usize) -> Result<()> {
        self.cut_from_peers(h)?;
        let c = self.client_addr;
        self.cut_pair(h, c)
    }

    /// Host `h`'s packets to its peers dropped; theirs to it delivered.
    pub fn cut_outgoing(&mut self, h: usize) -> Result<()> {
        let ns = self.hosts[h].ns.clone();
        for peer in self.peer_addrs(h) {
            self.add_rule(Rule {
                ns: ns.clone(),
                chain: "OUTPUT",
                dir: "-d",
                peer,
                except_tcp_ports: Vec::new(),
            })?;
        }
        Ok(())
    }

    fn peer_addrs(&self, h: usize) -> Vec<Ipv4Addr> {
        self.hosts
            .iter()
            .filter(|o| o.index != h)
            .map(|o| o.addr)
            .collect()
    }

    /// Removes every rule added, each by its own spec; returns the first error after trying all.
    pub fn heal(&mut self) -> Result<()> {
        let mut first = None;
        for r in std::mem::take(&mut self.rules).into_iter().rev() {
            if let Err(e) = r.apply("-D") {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.heal();
        for h in &self.hosts {
            for p in netns_pids(&h.ns) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = run("ip", &["netns", "del", &h.ns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_data_dirs_of_dead_runs_are_removed_and_live_ones_kept() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait true");
        let make = |owner: u32| {
            let d = tempfile_dir();
            std::fs::write(d.join(OWNER_FILE), owner.to_string()).expect("write owner");
            d
        };
        let dead_dir = make(dead);
        let live_dir = make(std::process::id());
        cleanup_leftovers();
        assert!(!dead_dir.exists(), "dir of a dead run kept");
        assert!(live_dir.exists(), "dir of this live run removed");
        std::fs::remove_dir_all(&live_dir).expect("remove");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::path::PathBuf::from(format!(
            "/tmp/{DIR_PREFIX}unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn tag_encodes_the_pid() {
        assert_eq!(tag_pid("3e80"), Some(0x3e8));
        assert_eq!(tag_pid("3e8f"), Some(0x3e8));
        assert_eq!(tag_pid(""), None);
    }

    #[test]
    fn rule_specs_add_and_delete_the_same_rule() {
        let r = Rule {
            ns: "x".into(),
            chain: "INPUT",
            dir: "-s",
            peer: Ipv4Addr::new(10, 213, 1, 2),
            except_tcp_ports: Vec::new(),
        };
        let add = r.args("-I");
        let del = r.args("-D");
        assert_eq!(add[1], "-I");
        assert_eq!(del[1], "-D");
        assert_eq!(add[2..], del[2..]);
        assert!(add.contains(&"10.213.1.2/32".to_string()));
        assert!(!add.contains(&"multiport".to_string()));
    }

    #[test]
    fn a_rule_with_exceptions_drops_only_other_tcp_ports() {
        let r = Rule {
            ns: "x".into(),
            chain: "OUTPUT",
            dir: "-d",
            peer: Ipv4Addr::new(10, 213, 1, 3),
            except_tcp_ports: vec![5432, 8089],
        };
        let a = r.args("-I");
        let tail: Vec<&str> = a[5..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-p",
                "tcp",
                "-m",
                "multiport",
                "!",
                "--ports",
                "5432,8089",
                "-j",
                "DROP"
            ]
        );
    }
}
