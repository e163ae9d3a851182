//! Process facts from Linux: open-file limits and resident memory.

use anyhow::{Context, bail};

/// File descriptors kept free for everything that is not a benchmark socket (stdio, the
/// runtime's own descriptors, the server's pipe, the HTTP checks).
const FD_MARGIN: u64 = 64;

/// Raises this process's soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// This process's hard RLIMIT_NOFILE: the most files it (and the server it starts, which
/// inherits it) can ever open.
pub fn nofile_hard_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_max)
}

/// How many more sockets this process can open: the raised limit minus what is open and a margin.
pub fn socket_capacity() -> anyhow::Result<u64> {
    let limit = raise_nofile_limit()?;
    let open = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .count() as u64;
    Ok(limit.saturating_sub(open + FD_MARGIN))
}

/// `requested` clients capped to `capacity`, with a note when capped.
pub fn cap_clients(requested: u64, capacity: u64) -> (u64, Option<String>) {
    if requested <= capacity {
        (requested, None)
    } else {
        (
            capacity,
            Some(format!(
                "capped from {requested} to {capacity} clients: this process may open only \
                 {capacity} more files (RLIMIT_NOFILE hard limit); use several client processes \
                 for more"
            )),
        )
    }
}

/// The resident set size of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// The `VmRSS:   1234 kB` value of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Fails when `pid` is not a running process, so `--pid` typos show up before the run.
pub fn check_pid(pid: u32) -> anyhow::Result<()> {
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        Ok(())
    } else {
        bail!("no process {pid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\trookery\nVmPeak:\t  999 kB\nVmRSS:\t   51236 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(51_236));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn caps_clients_to_capacity() {
        assert_eq!(cap_clients(100, 200), (100, None));
        let (n, note) = cap_clients(50_000, 19_900);
        assert_eq!(n, 19_900);
        assert!(note.unwrap().contains("capped from 50000 to 19900"));
    }

    #[test]
    fn hard_limit_is_at_least_the_soft_one() {
        let hard = nofile_hard_limit().unwrap();
        assert!(hard >= raise_nofile_limit().unwrap());
    }

    #[test]
    fn reads_own_rss() {
        // Our own process certainly has a resident set.
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
