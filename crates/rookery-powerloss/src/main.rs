//! `rookery-powerloss BACKING MOUNTPOINT [--control SOCKET]`: mounts the power-loss filesystem
//! until SIGINT/SIGTERM (or the `unmount` command), for manual experiments.
//!
//! The control socket takes one command per line and answers one line:
//! `power-cut` → `ok`; `counts` → `fsync=N fdatasync=N fsyncdir=N`; `unmount` → `ok`, then
//! the program unmounts and exits. For example: `echo power-cut | socat - UNIX:/tmp/pl.sock`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use rookery_powerloss::PowerLossFs;
use tracing::{error, info, warn};

const USAGE: &str = "usage: rookery-powerloss BACKING MOUNTPOINT [--control SOCKET]";

type SharedFs = Arc<Mutex<Option<PowerLossFs>>>;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backing, mountpoint, control) = match args.as_slice() {
        [b, m] => (PathBuf::from(b), PathBuf::from(m), None),
        [b, m, flag, s] if flag == "--control" => {
            (PathBuf::from(b), PathBuf::from(m), Some(PathBuf::from(s)))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Block the stop signals in every thread (threads inherit the mask), so they are taken
    // only by the sigwait below, which then unmounts cleanly.
    let signals = stop_signals();
    // SAFETY: `signals` is an initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let fs = match PowerLossFs::mount(&backing, &mountpoint) {
        Ok(fs) => fs,
        Err(e) => {
            error!(error = %e, "mount failed");
            return ExitCode::FAILURE;
        }
    };
    println!("mounted {} at {}", backing.display(), mountpoint.display());
    let fs: SharedFs = Arc::new(Mutex::new(Some(fs)));

    if let Some(path) = control {
        let _ = std::fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(listener) => {
                let fs = Arc::clone(&fs);
                std::thread::spawn(move || serve(listener, fs));
                info!(socket = %path.display(), "control socket ready");
            }
            Err(e) => {
                error!(socket = %path.display(), error = %e, "cannot bind the control socket");
                return ExitCode::FAILURE;
            }
        }
    }

    let mut sig: libc::c_int = 0;
    // SAFETY: `signals` is initialised and `sig` is writable.
    unsafe { libc::sigwait(&signals, &mut sig) };
    info!(signal = sig, "stopping");
    let taken = fs.lock().unwrap_or_else(PoisonError::into_inner).take();
    match taken.map(PowerLossFs::unmount) {
        Some(Err(e)) => {
            error!(error = %e, "unmount failed");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn serve(listener: UnixListener, fs: SharedFs) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                if let Err(e) = handle(conn, &fs) {
                    warn!(error = %e, "control connection failed");
                }
            }
            Err(e) => warn!(error = %e, "control socket accept failed"),
        }
    }
}

fn handle(conn: UnixStream, fs: &SharedFs) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let reply = match line.trim() {
            "power-cut" => match fs.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                Some(fs) => match fs.power_cut() {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("error: {e}"),
                },
                None => "error: unmounted".to_string(),
            },
            "counts" => match fs.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                Some(fs) => {
                    let c = fs.sync_counts();
                    format!(
                        "fsync={} fdatasync={} fsyncdir={}",
                        c.fsync, c.fdatasync, c.fsyncdir
                    )
                }
                None => "error: unmounted".to_string(),
            },
            "unmount" => {
                writeln!(out, "ok")?;
                // The main thread unmounts when the signal arrives.
                // SAFETY: signalling our own process.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                return Ok(());
            }
            "" => continue,
            other => format!("error: unknown command {other:?} (power-cut, counts, unmount)"),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}
