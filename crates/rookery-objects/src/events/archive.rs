//! The archive: every published event handed, in sequence order, to the namespace's
//! `EventWriter` (binding `EVENT_WRITER`), which buffers events and flushes them to the blob
//! store as compressed NDJSON files (seed 003's `EventWriterDO`).
//!
//! The namespace's object is the one place that knows every acknowledged event, so it is the
//! one that feeds the writer, as if the writer were one more subscription that takes every
//! event: while a writer is bound, each published event is stored (even if no subscription
//! matches) and kept until the writer has it. The alarm sends the oldest events not yet
//! archived, up to [`ARCHIVE_BATCH`] per turn, in one typed call; the cursor (`archived`, the
//! highest sequence the writer accepted) moves only after the call succeeded, so a crash or a
//! failed call sends the batch again, and the writer skips what it already has by sequence
//! number: each event reaches the files exactly once. A failed call is retried with the
//! subscriptions' backoff; publishing goes on meanwhile, and the stored backlog is bounded by
//! `EVENTS_MAX_PENDING`, like a subscription's queue.
//!
//! Events published before a writer was bound are not archived retroactively: the archive
//! starts with the events the object still holds.

use rookery::prelude::*;

use super::Subscriptions;
use crate::event_writer::EventSinkStub;

/// The binding of the namespaces' event writers.
pub const WRITER_BINDING: &str = "EVENT_WRITER";
/// Events handed to the writer per alarm turn, at most.
pub const ARCHIVE_BATCH: i64 = 256;

/// The archive's state, as `GET /subscriptions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// The highest sequence the writer has accepted.
    pub archived: i64,
    /// Published events the writer does not have yet.
    pub backlog: i64,
    /// Failed calls to the writer since the last one that succeeded.
    pub failures: i64,
    /// Why the last call failed.
    pub last_error: Option<String>,
    /// When the next call is due after a failure (ms since the epoch).
    pub next_attempt_at: Option<i64>,
}

impl Subscriptions {
    /// Whether a writer is bound.
    pub(super) fn archiving(&self) -> bool {
        self.archiving
    }

    /// The first sequence number the archive still needs: no event from it on may be
    /// forgotten. `i64::MAX` when no writer is bound.
    pub(super) fn keep_from(&self) -> Result<i64> {
        if !self.archiving() {
            return Ok(i64::MAX);
        }
        Ok(self.meta()?.archived.saturating_add(1))
    }

    /// When the archive step is next due, if events wait for it.
    pub(super) fn archive_due(&self) -> Result<Option<i64>> {
        if !self.archiving() {
            return Ok(None);
        }
        let meta = self.meta()?;
        if meta.next_seq - 1 <= meta.archived {
            return Ok(None);
        }
        Ok(Some(meta.archive_next.unwrap_or(0)))
    }

    /// The archive's state, when a writer is bound.
    pub(super) fn archive_status(&self) -> Result<Option<ArchiveStatus>> {
        if !self.archiving() {
            return Ok(None);
        }
        let meta = self.meta()?;
        Ok(Some(ArchiveStatus {
            archived: meta.archived,
            backlog: (meta.next_seq - 1 - meta.archived).max(0),
            failures: meta.archive_failures,
            last_error: meta.archive_error,
            next_attempt_at: meta.archive_next,
        }))
    }

    /// Hands the oldest events the writer lacks to it, if due.
    pub(super) async fn archive(&mut self) -> Result<()> {
        let now = self.state.now_ms();
        if self.archive_due()?.is_none_or(|at| at > now) {
            return Ok(());
        }
        let mut meta = self.meta()?;
        let cursor = self.state.storage().sql().exec(
            "SELECT seq, body FROM ev_events WHERE seq > ? ORDER BY seq LIMIT ?",
            &[meta.archived.into(), ARCHIVE_BATCH.into()],
        )?;
        let mut bodies = Vec::with_capacity(cursor.len());
        let mut last = meta.archived;
        for row in cursor.rows() {
            last = row.get("seq")?;
            bodies.push(row.get::<String>("body")?);
        }
        if bodies.is_empty() {
            // Published before the writer was bound, and already forgotten: nothing to send.
            meta.archived = meta.next_seq - 1;
            return self.put_meta(&meta);
        }
        let writer = self
            .env
            .namespace(WRITER_BINDING)?
            .typed::<EventSinkStub>()
            .get_by_name(&self.namespace());
        match writer.append(bodies).await {
            Ok(_) => {
                let previous = meta.archived;
                meta.archived = last;
                meta.archive_failures = 0;
                meta.archive_error = None;
                meta.archive_next = None;
                self.put_meta(&meta)?;
                // What no queue or dead-letter list needs can go now.
                self.state.storage().sql().exec(
                    "DELETE FROM ev_events WHERE seq > ? AND seq <= ?
                       AND NOT EXISTS (SELECT 1 FROM ev_pending p WHERE p.seq = ev_events.seq)
                       AND NOT EXISTS (SELECT 1 FROM ev_dead d WHERE d.seq = ev_events.seq)",
                    &[previous.into(), last.into()],
                )?;
            }
            Err(e) => {
                let e = Error::from(e);
                meta.archive_failures += 1;
                let at = now.saturating_add(self.settings.backoff_ms(meta.archive_failures));
                tracing::warn!(error = %e, failures = meta.archive_failures, next = at, "Subscriptions: the event writer refused a batch");
                meta.archive_error = Some(e.public_message().into_owned());
                meta.archive_next = Some(at);
                self.put_meta(&meta)?;
            }
        }
        Ok(())
    }
}
