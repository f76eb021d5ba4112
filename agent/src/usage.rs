//! CPU and memory usage of the node and its containers, read from /proc and the containers'
//! cgroups and reported to the master's metrics API (`kubectl top`, autoscaling).
//!
//! CPU is a rate: the change of a cumulative counter between two samples. Memory is the
//! working set as the kubelet counts it: usage minus inactive file cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

/// A container to measure: its name and cgroup (relative to the cgroup root).
pub struct ContainerCgroup {
    /// The container's name.
    pub name: String,
    /// Its cgroup, e.g. `/bramble/pi-1/pod<uid>/web`.
    pub cgroup: String,
}

/// A pod to measure.
pub struct PodCgroups {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its containers.
    pub containers: Vec<ContainerCgroup>,
}

/// Remembers the previous CPU counters so each report holds rates.
#[derive(Default)]
pub struct UsageSampler {
    previous: HashMap<String, (u64, Instant)>,
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: impl AsRef<Path>, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
}

fn root(controller: &str, cgroup: &str) -> (PathBuf, PathBuf) {
    let relative = cgroup.trim_start_matches('/');
    (
        Path::new("/sys/fs/cgroup").join(controller).join(relative),
        Path::new("/sys/fs/cgroup").join(relative),
    )
}

/// Cumulative CPU time of a cgroup in nanoseconds (cgroup v1 cpuacct, or v2 cpu.stat).
pub fn cgroup_cpu_nanos(cgroup: &str) -> Option<u64> {
    let (v1, v2) = root("cpuacct", cgroup);
    read_u64(v1.join("cpuacct.usage"))
        .or_else(|| stat_field(v2.join("cpu.stat"), "usage_usec").map(|us| us * 1000))
}

/// The working set of a cgroup in bytes: usage minus inactive file pages.
pub fn cgroup_working_set(cgroup: &str) -> Option<u64> {
    let (v1, v2) = root("memory", cgroup);
    if let Some(usage) = read_u64(v1.join("memory.usage_in_bytes")) {
        let inactive = stat_field(v1.join("memory.stat"), "total_inactive_file").unwrap_or(0);
        return Some(usage.saturating_sub(inactive));
    }
    let usage = read_u64(v2.join("memory.current"))?;
    let inactive = stat_field(v2.join("memory.stat"), "inactive_file").unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// Busy CPU time of the whole machine in nanoseconds, from /proc/stat.
fn host_cpu_nanos() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| *v)
        .sum();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    Some(busy * 1_000_000_000 / ticks)
}

fn host_memory_used() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

impl UsageSampler {
    /// The CPU rate in nanocores since the previous sample under `key` (None on the first).
    fn rate(&mut self, key: &str, nanos: u64, now: Instant) -> Option<u64> {
        let previous = self.previous.insert(key.to_owned(), (nanos, now));
        let (before, then) = previous?;
        let elapsed = now.duration_since(then).as_nanos() as u64;
        (elapsed > 0).then(|| nanos.saturating_sub(before) * 1_000_000_000 / elapsed)
    }

    /// A NodeMetrics report with the pods' usage (the shape the master's metrics API takes).
    pub fn report(&mut self, node: &str, pods: &[PodCgroups], window_seconds: u64) -> Value {
        let now = Instant::now();
        let timestamp = protocol::client::now_time();
        let window = format!("{window_seconds}s");
        let mut seen = Vec::new();
        let mut pod_reports = Vec::new();
        for pod in pods {
            let mut containers = Vec::new();
            for container in &pod.containers {
                seen.push(container.cgroup.clone());
                let cpu = cgroup_cpu_nanos(&container.cgroup)
                    .and_then(|nanos| self.rate(&container.cgroup, nanos, now));
                let memory = cgroup_working_set(&container.cgroup);
                if let (Some(cpu), Some(memory)) = (cpu, memory) {
                    containers.push(container_usage(&container.name, cpu, memory));
                }
            }
            if !containers.is_empty() {
                let sample = Sample {
                    timestamp: &timestamp,
                    window: &window,
                };
                pod_reports.push(sample.pod(&pod.namespace, &pod.name, containers));
            }
        }
        self.previous
            .retain(|key, _| key == "node" || seen.contains(key));
        let node_cpu = host_cpu_nanos()
            .and_then(|nanos| self.rate("node", nanos, now))
            .unwrap_or(0);
        let sample = Sample {
            timestamp: &timestamp,
            window: &window,
        };
        sample.node(node, node_cpu, host_memory_used().unwrap_or(0), pod_reports)
    }
}

/// A container's usage in a metrics report: CPU in nanocores, memory in bytes.
pub fn container_usage(name: &str, cpu_nanos: u64, memory_bytes: u64) -> Value {
    json!({"name": name, "usage": {
        "cpu": format!("{cpu_nanos}n"),
        "memory": format!("{}Ki", memory_bytes / 1024),
    }})
}

/// When a metrics report was sampled and over which window (`"10s"`).
pub struct Sample<'a> {
    pub timestamp: &'a str,
    pub window: &'a str,
}

impl Sample<'_> {
    /// One pod's entry in a NodeMetrics report.
    pub fn pod(&self, namespace: &str, name: &str, containers: Vec<Value>) -> Value {
        json!({
            "metadata": {"name": name, "namespace": namespace},
            "timestamp": self.timestamp, "window": self.window, "containers": containers,
        })
    }

    /// The NodeMetrics report the master's metrics API takes: the node's usage and its pods'.
    pub fn node(&self, node: &str, cpu_nanos: u64, memory_bytes: u64, pods: Vec<Value>) -> Value {
        json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "NodeMetrics",
            "metadata": {"name": node},
            "timestamp": self.timestamp,
            "window": self.window,
            "usage": {
                "cpu": format!("{cpu_nanos}n"),
                "memory": format!("{}Ki", memory_bytes / 1024),
            },
            "pods": pods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_samples() {
        let mut sampler = UsageSampler::default();
        let start = Instant::now();
        assert_eq!(sampler.rate("c", 1_000, start), None);
        let later = start + std::time::Duration::from_secs(2);
        // One core busy for two seconds: a billion nanocores.
        assert_eq!(
            sampler.rate("c", 1_000 + 2_000_000_000, later),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn the_host_reports_cpu_and_memory() {
        assert!(host_cpu_nanos().is_some_and(|n| n > 0));
        assert!(host_memory_used().is_some_and(|m| m > 0));
    }
}
