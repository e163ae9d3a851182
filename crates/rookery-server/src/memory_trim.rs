//! Gives the memory of objects that came and went back to the operating system.
//!
//! The C allocator keeps what a program frees in its arenas for later use. When many objects
//! are activated and evicted (each with its SQLite connection, page cache and WAL), the freed
//! memory is scattered through those arenas and the server's resident set stays near its peak
//! although the runtime holds far less (`live_bytes`). `malloc_trim` hands the free pages back.
//! It walks every arena under its lock, so it runs at most once a second, on the blocking pool,
//! and only after objects were activated since the last look (a server whose objects stay live
//! has nothing to give back).

use std::time::Duration;

use rookery::Runtime;

/// How often the runtime's activations are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Starts the trimming task; it holds `runtime` until the task is aborted (the caller aborts it
/// when serving ends, so that the runtime can close and let go of its data directory).
pub(crate) fn spawn(runtime: Runtime) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = runtime.stats().activations;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = runtime.stats().activations;
            if now == seen {
                continue;
            }
            seen = now;
            // A failed join only means the pool is shutting down.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}

/// Returns free memory to the operating system, where the allocator can.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes only the padding to keep and touches only the allocator's own
    // free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
