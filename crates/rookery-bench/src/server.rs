//! The server under test as a child process: started on an ephemeral port with a fresh data
//! directory, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the server may take to announce its address, and to stop after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the server prints once it accepts connections.
const LISTENING_PREFIX: &str = "rookery listening on ";

/// The `http://ADDR` of the server's `rookery listening on http://ADDR` line.
pub fn parse_listening(line: &str) -> Option<&str> {
    let url = line.trim_end().strip_prefix(LISTENING_PREFIX)?;
    (url.starts_with("http://") && url.len() > "http://".len()).then_some(url)
}

/// A running `rookery serve`.
pub struct ServerProcess {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its process id.
    pub pid: u32,
    data_dir: PathBuf,
    /// The configuration file written for this server, if any.
    config_file: Option<PathBuf>,
}

/// How the server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It stopped cleanly on SIGTERM.
    Clean,
    /// It stopped on SIGTERM but not cleanly (or had to be killed).
    Unclean(String),
    /// It had already died while the scenario ran.
    DiedEarly(String),
}

impl ServerProcess {
    /// Starts `server serve` on 127.0.0.1:0 with a fresh data directory and `durability`, and
    /// waits for its listening line. With `config` (TOML text), the server runs that
    /// configuration, written to a file next to the data directory, instead of the built-in
    /// demo.
    pub async fn start(
        server: &Path,
        durability: &str,
        config: Option<&str>,
    ) -> anyhow::Result<Self> {
        let data_dir = fresh_data_dir()?;
        let config_file = match config {
            Some(text) => {
                let path = config_path(&data_dir);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let mut command = Command::new(server);
        command.arg("serve");
        if let Some(path) = &config_file {
            command.arg("--config").arg(path);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(["--durability", durability])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // If the runner fails half-way, no server is left behind.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("server stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = parse_listening(&line) {
                    return Ok(url.to_owned());
                }
            }
            bail!("the server exited without announcing its address")
        })
        .await;
        let url = match found {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no listening line within {} s", PATIENCE.as_secs()),
        };
        // Keep reading stdout: a closed pipe would make the server's next print fail.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url,
            pid,
            data_dir,
            config_file,
        })
    }

    /// Stops the server with SIGTERM (SIGKILL after [`PATIENCE`]) and removes its data.
    pub async fn stop(mut self) -> Exit {
        let exit = self.terminate().await;
        // Best effort: a leftover temp directory is not worth failing a benchmark over.
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(path) = &self.config_file {
            let _ = std::fs::remove_file(path);
        }
        exit
    }

    async fn terminate(&mut self) -> Exit {
        match self.child.try_wait() {
            Ok(Some(status)) => return Exit::DiedEarly(describe(status)),
            Ok(None) => {}
            Err(e) => return Exit::Unclean(format!("cannot check the server: {e}")),
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return Exit::Unclean(format!("pid {} out of range", self.pid));
        };
        // SAFETY: sending a signal to our own child process, which try_wait saw still running.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Exit::Unclean(format!(
                "SIGTERM failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Exit::Clean,
            Ok(Ok(status)) => {
                Exit::Unclean(format!("after SIGTERM the server {}", describe(status)))
            }
            Ok(Err(e)) => Exit::Unclean(format!("waiting for the server: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Exit::Unclean(format!(
                    "the server did not stop within {} s of SIGTERM and was killed",
                    PATIENCE.as_secs()
                ))
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended: {status}"),
    }
}

/// Where the configuration of the server using `data_dir` goes: beside it, `DIR.toml`.
fn config_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".toml");
    PathBuf::from(name)
}

/// A new empty directory under the system temp directory.
fn fresh_data_dir() -> anyhow::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rookery-bench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening("rookery listening on http://127.0.0.1:40123"),
            Some("http://127.0.0.1:40123")
        );
        assert_eq!(
            parse_listening("rookery listening on http://[::1]:8787\r\n"),
            Some("http://[::1]:8787")
        );
        assert_eq!(parse_listening("rookery listening on "), None);
        assert_eq!(parse_listening("rookery listening on http://"), None);
        assert_eq!(parse_listening("some log line"), None);
    }

    #[test]
    fn config_file_sits_beside_the_data_dir() {
        assert_eq!(
            config_path(Path::new("/tmp/rookery-bench-1-2")),
            PathBuf::from("/tmp/rookery-bench-1-2.toml")
        );
    }

    #[test]
    fn describes_exit_statuses() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(describe(ExitStatus::from_raw(9)), "was killed by signal 9");
    }
}
