//! What a result is tied to: the machine, the commit and the date.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine the benchmark ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// Total memory in GiB.
    pub ram_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's description from /proc; unknown parts say so.
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self {
            cpu: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram_gib: mem_total_kib(&read("/proc/meminfo")).map_or(0.0, |kib| {
                (kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0
            }),
            kernel: kernel(&read("/proc/version")).unwrap_or_else(|| "unknown kernel".into()),
        }
    }
}

/// The first `model name` of a /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `MemTotal` of a /proc/meminfo text, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `Linux 6.1.0-18-amd64` from a /proc/version text.
pub fn kernel(version: &str) -> Option<String> {
    let mut words = version.split_whitespace();
    let os = words.next()?;
    (words.next()? == "version").then_some(())?;
    Some(format!("{os} {}", words.next()?))
}

/// `git rev-parse --short HEAD`, with `-dirty` when the working tree has changes; `unknown`
/// outside a repository.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) if !head.is_empty() => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        _ => "unknown".into(),
    }
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, m, d) = rookery::civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo_meminfo_and_version() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) \
                       CPU @ 2.20GHz\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            mem_total_kib("MemTotal:       24684300 kB\nMemFree: 1 kB\n"),
            Some(24_684_300)
        );
        assert_eq!(
            kernel("Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc) #1 SMP")
                .as_deref(),
            Some("Linux 6.1.0-18-amd64")
        );
        assert_eq!(kernel(""), None);
    }

    #[test]
    fn formats_utc_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC, a leap day in a century leap year.
        assert_eq!(utc_timestamp(951_827_696), "2000-02-29 12:34 UTC");
        // 2024-12-31 23:59 UTC.
        assert_eq!(utc_timestamp(1_735_689_540), "2024-12-31 23:59 UTC");
    }
}
