//! The standard Prometheus process metrics (as the Go client's process collector exports them),
//! read from `/proc/self` on Linux at every scrape:
//! `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_virtual_memory_bytes`, `process_resident_memory_bytes`, `process_start_time_seconds`.
//!
//! Elsewhere (or when `/proc` cannot be read) nothing is exported rather than wrong values.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One reading of the process metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit of open file descriptors.
    pub max_fds: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_memory_bytes: u64,
    /// Resident set size, bytes.
    pub resident_memory_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Parses `/proc/<pid>/stat`: (utime + stime ticks, starttime ticks, vsize bytes, rss pages).
fn parse_stat(stat: &str) -> Option<(u64, u64, u64, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces: fields after the
    // last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    let (utime, stime, start, vsize, rss) = (num(11)?, num(12)?, num(19)?, num(20)?, num(21)?);
    Some((utime + stime, start, vsize, rss))
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft `Max open files` limit from `/proc/<pid>/limits` (`None` when unlimited).
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// Reads the current process's metrics (`None` off Linux or when `/proc` is unreadable).
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (ticks, start_ticks, vsize, rss_pages) = parse_stat(&stat)?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let hz = sysconf(nix::unistd::SysconfVar::CLK_TCK)? as f64;
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(parse_max_fds);
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / hz,
        open_fds,
        max_fds,
        virtual_memory_bytes: vsize,
        resident_memory_bytes: rss_pages * page,
        start_time_seconds: btime as f64 + start_ticks as f64 / hz,
    })
}

const CPU_HELP: &str = "Total user and system CPU time spent in seconds.";
const OPEN_FDS_HELP: &str = "Number of open file descriptors.";
const MAX_FDS_HELP: &str = "Maximum number of open file descriptors.";
const VMEM_HELP: &str = "Virtual memory size in bytes.";
const RSS_HELP: &str = "Resident memory size in bytes.";
const START_HELP: &str = "Start time of the process since unix epoch in seconds.";

impl ProcessStats {
    /// The gauges as (name, help, value), in the Go client's order.
    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let mut g = vec![("process_open_fds", OPEN_FDS_HELP, self.open_fds as f64)];
        if let Some(m) = self.max_fds {
            g.push(("process_max_fds", MAX_FDS_HELP, m as f64));
        }
        g.push((
            "process_virtual_memory_bytes",
            VMEM_HELP,
            self.virtual_memory_bytes as f64,
        ));
        g.push((
            "process_resident_memory_bytes",
            RSS_HELP,
            self.resident_memory_bytes as f64,
        ));
        g.push((
            "process_start_time_seconds",
            START_HELP,
            self.start_time_seconds,
        ));
        g
    }

    /// Prometheus text exposition (format 0.0.4) of the six metrics.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total {CPU_HELP}\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            self.cpu_seconds
        );
        for (name, help, v) in self.gauges() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

/// The process metrics every daemon exports under these names (what dashboards expect).
pub const METRIC_NAMES: [&str; 6] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
];

/// The names of [`METRIC_NAMES`] with no sample in the Prometheus text `text`.
pub fn missing_metrics(text: &str) -> Vec<&'static str> {
    METRIC_NAMES
        .into_iter()
        .filter(|name| !text.contains(&format!("\n{name} ")))
        .collect()
}

/// The process metrics of the moment as Prometheus text (empty when unavailable).
pub fn render_text() -> String {
    read().map(|s| s.render_text()).unwrap_or_default()
}

/// A `prometheus-client` collector reading the process metrics at every scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Boxed, for `Registry::register_collector`.
    pub fn boxed() -> Box<ProcessCollector> {
        Box::new(ProcessCollector)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = read() else {
            return Ok(());
        };
        // The OpenMetrics encoder appends `_total` to a counter's name.
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            CPU_HELP,
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, v) in s.gauges() {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0 9000 123456789 3000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 9000, 123_456_789, 3000)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("linux /proc");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.resident_memory_bytes > 0 && s.virtual_memory_bytes >= s.resident_memory_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started before now and after the boot of the machine (allow clock rounding).
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > 1.0e9,
            "{s:?}"
        );
        let text = s.render_text();
        for name in [
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in {text}");
        }
    }

    #[test]
    fn collector_encodes_into_a_registry() {
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(ProcessCollector::boxed());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "),
            "{out}"
        );
        assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
        assert!(out.contains("\nprocess_start_time_seconds "), "{out}");
    }
}
