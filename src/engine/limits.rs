//! The CPU and memory the process may use, from its cgroup, so that a job in a container (a
//! Kubernetes pod with `limits: {cpu: 2, memory: 4Gi}`) sizes its threads and memory pool to
//! the container rather than to the host, without configuration.
//!
//! cgroup v2: `cpu.max` (`QUOTA PERIOD`, or `max`) and `memory.max` (bytes, or `max`) of the
//! process's cgroup (`0::PATH` in `/proc/self/cgroup`) and of each of its ancestors: the
//! tightest wins. cgroup v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us` of the `cpu`
//! controller and `memory.limit_in_bytes` of the `memory` controller.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where the cgroup files are read from.
#[derive(Debug, Clone)]
pub struct CgroupPaths {
    /// The process's cgroup membership (`/proc/self/cgroup`).
    pub self_cgroup: PathBuf,
    /// Where the cgroup file systems are mounted (`/sys/fs/cgroup`).
    pub root: PathBuf,
}

impl Default for CgroupPaths {
    fn default() -> CgroupPaths {
        CgroupPaths {
            self_cgroup: PathBuf::from("/proc/self/cgroup"),
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

impl CgroupPaths {
    /// The files of a copy of a machine's cgroup under `dir`: `dir/proc-self-cgroup` and
    /// `dir/sys-fs-cgroup/` (for tests, and to try a pod's limits on another machine).
    pub fn under(dir: &Path) -> CgroupPaths {
        CgroupPaths {
            self_cgroup: dir.join("proc-self-cgroup"),
            root: dir.join("sys-fs-cgroup"),
        }
    }
}

/// The limits a cgroup sets, where it sets any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupLimits {
    /// `v2` or `v1`; `None`: no cgroup found.
    pub version: Option<&'static str>,
    /// CPUs the quota allows (quota / period).
    pub cpus: Option<f64>,
    /// Bytes of memory.
    pub memory: Option<u64>,
}

/// Values at or above this are v1's way of saying "no limit" (the largest multiple of the
/// page size below 2^63).
const V1_UNLIMITED: u64 = 1 << 62;

/// The limits of the cgroup `paths` describe; none where a file is missing or unreadable.
pub fn read_cgroup(paths: &CgroupPaths) -> CgroupLimits {
    let Ok(membership) = std::fs::read_to_string(&paths.self_cgroup) else {
        return CgroupLimits::default();
    };
    let v2 = membership.lines().find_map(|l| l.strip_prefix("0::"));
    let v1 = membership
        .lines()
        .any(|l| !l.starts_with("0::") && !l.trim().is_empty());
    match v2 {
        // Unified (v2 only).
        Some(path) if !v1 => read_v2(&paths.root, path),
        // Hybrid (v1 controllers, v2 mounted at `unified` without them): v1 holds the
        // limits.
        Some(path) => {
            let limits = read_v1(&paths.root, &membership);
            if limits.cpus.is_some() || limits.memory.is_some() {
                limits
            } else {
                read_v2(&paths.root.join("unified"), path)
            }
        }
        None => read_v1(&paths.root, &membership),
    }
}

fn read_v2(root: &Path, path: &str) -> CgroupLimits {
    let mut limits = CgroupLimits {
        version: Some("v2"),
        ..CgroupLimits::default()
    };
    // The process's cgroup, then each ancestor up to the root.
    let mut dir = root.join(path.trim_start_matches('/'));
    loop {
        if let Some(cpus) = read(&dir.join("cpu.max")).and_then(|t| {
            let mut parts = t.split_whitespace();
            let quota: f64 = parts.next()?.parse().ok()?;
            let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
            (quota > 0.0 && period > 0.0).then_some(quota / period)
        }) {
            limits.cpus = Some(limits.cpus.map_or(cpus, |c| c.min(cpus)));
        }
        if let Some(bytes) = read(&dir.join("memory.max")).and_then(|t| t.trim().parse().ok()) {
            limits.memory = Some(limits.memory.map_or(bytes, |m: u64| m.min(bytes)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    limits
}

fn read_v1(root: &Path, membership: &str) -> CgroupLimits {
    let mut limits = CgroupLimits::default();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let names: Vec<&str> = controllers.split(',').collect();
        // The controller's folder: as mounted (`cpu,cpuacct`), with the process's path
        // below it, or its root (a container sees its own cgroup there).
        let dirs = |name: &str| -> Vec<PathBuf> {
            [controllers, name]
                .into_iter()
                .flat_map(|mount| {
                    let base = root.join(mount);
                    [base.join(path.trim_start_matches('/')), base]
                })
                .collect()
        };
        if names.contains(&"memory")
            && let Some(bytes) = (dirs("memory").iter())
                .find_map(|d| read(&d.join("memory.limit_in_bytes")))
                .and_then(|t| t.trim().parse::<u64>().ok())
        {
            limits.version = Some("v1");
            if bytes < V1_UNLIMITED {
                limits.memory = Some(bytes);
            }
        }
        if names.contains(&"cpu")
            && let Some(dir) =
                (dirs("cpu").into_iter()).find(|d| d.join("cpu.cfs_quota_us").is_file())
        {
            limits.version = Some("v1");
            let number = |f: &str| read(&dir.join(f)).and_then(|t| t.trim().parse::<f64>().ok());
            if let (Some(quota), Some(period)) =
                (number("cpu.cfs_quota_us"), number("cpu.cfs_period_us"))
                && quota > 0.0
                && period > 0.0
            {
                limits.cpus = Some(quota / period);
            }
        }
    }
    limits
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The share of a cgroup's memory limit the query memory pool gets: the rest is for what the
/// pool does not count (batches in flight between operators, Parquet writers' buffers, the
/// runtime), which an out-of-memory kill would not tell apart.
pub const CGROUP_MEMORY_SHARE: f64 = 0.75;

/// The threads and memory pool a run uses, and where each came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    /// Worker threads and target partitions.
    pub threads: usize,
    /// Where `threads` came from, in words.
    pub threads_from: String,
    /// The query memory pool in bytes (`None`: unbounded).
    pub memory_limit: Option<usize>,
    /// Where `memory_limit` came from, in words.
    pub memory_from: String,
}

/// The resources of a run: `threads` and `memory_limit` as set (flag or `[settings]`), else
/// from the cgroup's limits, else the machine's `cores` and no memory limit.
pub fn resolve(
    threads: Option<usize>,
    memory_limit: Option<usize>,
    cgroup: &CgroupLimits,
    cores: usize,
) -> Resources {
    let version = cgroup.version.unwrap_or("");
    let (threads, threads_from) = match (threads, cgroup.cpus) {
        (Some(t), _) => (t, "set".to_string()),
        (None, Some(cpus)) => (
            // (Whole CPUs: a thread over a fraction of one would only wait for the quota.)
            (cpus.floor() as usize).clamp(1, cores.max(1)),
            format!("the cgroup {version} CPU quota, {cpus:.2} CPUs"),
        ),
        (None, None) => (cores.max(1), "the machine's cores".to_string()),
    };
    let (memory_limit, memory_from) = match (memory_limit, cgroup.memory) {
        (Some(m), _) => (Some(m), "set".to_string()),
        (None, Some(bytes)) => (
            Some((bytes as f64 * CGROUP_MEMORY_SHARE) as usize),
            format!(
                "{:.0} % of the cgroup {version} memory limit, {}",
                CGROUP_MEMORY_SHARE * 100.0,
                human_bytes(bytes)
            ),
        ),
        (None, None) => (
            None,
            "no memory_limit set, no cgroup memory limit".to_string(),
        ),
    };
    Resources {
        threads,
        threads_from,
        memory_limit,
        memory_from,
    }
}

/// `4 GiB`, `512 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup tree in a temporary folder: `membership` as /proc/self/cgroup, and `files`
    /// (path under sys-fs-cgroup, content).
    fn fixture(membership: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, CgroupPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = CgroupPaths::under(dir.path());
        std::fs::write(&paths.self_cgroup, membership).unwrap();
        for (path, content) in files {
            let file = paths.root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn v2_limits_are_the_tightest_of_the_cgroup_and_its_ancestors() {
        let (_d, paths) = fixture(
            "0::/kubepods/pod1/app\n",
            &[
                ("cpu.max", "max 100000\n"),
                ("memory.max", "max\n"),
                ("kubepods/cpu.max", "400000 100000\n"),
                ("kubepods/memory.max", "8589934592\n"),
                ("kubepods/pod1/cpu.max", "250000 100000\n"),
                ("kubepods/pod1/memory.max", "4294967296\n"),
                ("kubepods/pod1/app/cpu.max", "max 100000\n"),
                ("kubepods/pod1/app/memory.max", "max\n"),
            ],
        );
        let limits = read_cgroup(&paths);
        assert_eq!(
            limits,
            CgroupLimits {
                version: Some("v2"),
                cpus: Some(2.5),
                memory: Some(4 << 30),
            }
        );
        let r = resolve(None, None, &limits, 16);
        assert_eq!((r.threads, r.memory_limit), (2, Some(3 << 30)));
        assert_eq!(r.threads_from, "the cgroup v2 CPU quota, 2.50 CPUs");
        assert_eq!(r.memory_from, "75 % of the cgroup v2 memory limit, 4 GiB");
        // Set values win; the machine's cores bound the quota's threads.
        let r = resolve(Some(6), Some(1 << 30), &limits, 16);
        assert_eq!((r.threads, r.memory_limit), (6, Some(1 << 30)));
        assert_eq!(resolve(None, None, &limits, 1).threads, 1);
    }

    #[test]
    fn a_v2_container_sees_its_own_limits_at_the_root() {
        let (_d, paths) = fixture(
            "0::/\n",
            &[("cpu.max", "50000 100000\n"), ("memory.max", "536870912\n")],
        );
        let limits = read_cgroup(&paths);
        assert_eq!((limits.cpus, limits.memory), (Some(0.5), Some(512 << 20)));
        // Half a CPU is still one thread.
        assert_eq!(resolve(None, None, &limits, 8).threads, 1);
    }

    #[test]
    fn v1_limits_are_read_from_the_cpu_and_memory_controllers() {
        let (_d, paths) = fixture(
            "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
            &[
                ("memory/docker/abc/memory.limit_in_bytes", "2147483648\n"),
                ("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n"),
                ("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n"),
            ],
        );
        let limits = read_cgroup(&paths);
        assert_eq!(
            limits,
            CgroupLimits {
                version: Some("v1"),
                cpus: Some(3.0),
                memory: Some(2 << 30),
            }
        );
        // Unlimited in v1's words: no limit.
        let (_d, paths) = fixture(
            "4:memory:/\n3:cpu,cpuacct:/\n",
            &[
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
                ("cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            ],
        );
        let limits = read_cgroup(&paths);
        assert_eq!(
            (limits.version, limits.cpus, limits.memory),
            (Some("v1"), None, None)
        );
    }

    #[test]
    fn a_hybrid_host_reads_the_v1_limits() {
        // v1 controllers, and v2 at sys/fs/cgroup/unified without them.
        let (_d, paths) = fixture(
            "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n0::/docker/abc\n",
            &[
                ("memory/docker/abc/memory.limit_in_bytes", "4294967296\n"),
                ("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n"),
                ("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n"),
                ("unified/docker/abc/cgroup.procs", "1\n"),
            ],
        );
        let limits = read_cgroup(&paths);
        assert_eq!(
            (limits.version, limits.cpus, limits.memory),
            (Some("v1"), None, Some(4 << 30))
        );
    }

    #[test]
    fn without_a_cgroup_the_machine_decides() {
        let dir = tempfile::tempdir().unwrap();
        let limits = read_cgroup(&CgroupPaths::under(dir.path()));
        assert_eq!(limits, CgroupLimits::default());
        let r = resolve(None, None, &limits, 4);
        assert_eq!((r.threads, r.memory_limit), (4, None));
        assert_eq!(r.threads_from, "the machine's cores");
        assert_eq!(r.memory_from, "no memory_limit set, no cgroup memory limit");
    }
}
