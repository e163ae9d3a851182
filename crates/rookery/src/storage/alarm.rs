//! An object's alarm record: one row of `_rookery_meta`, written in the turn's transaction.
//!
//! **While a handler runs**, the alarm it handles counts as consumed: `get_alarm` answers
//! `None` until the handler sets a new one. Yet the record stays on disk until the handler
//! succeeds, and is deleted in the handler's last commit (unless the handler set or deleted
//! the alarm itself). A handler can commit before it ends: every outbound request, call and
//! `sync()` makes the turn's writes so far durable. Were the record deleted when the handler
//! began, a crash after such a commit would leave an object whose work was half done and no
//! alarm to finish it; kept, the alarm fires again after the restart (at least once).

use std::time::Duration;

use rusqlite::OptionalExtension;

use super::{AlarmChange, Storage};
use crate::error::{Error, Result};

impl Storage {
    /// When the alarm is set for, in milliseconds since the Unix epoch, if it is set.
    pub fn get_alarm(&self) -> Result<Option<i64>> {
        if self.lock().firing == Some(false) {
            return Ok(None);
        }
        self.meta_i64("alarm")
    }

    /// Marks the start of an alarm handler: the alarm counts as consumed, its record stays.
    pub(crate) fn begin_alarm_handler(&self) {
        self.lock().firing = Some(false);
    }

    /// Ends an alarm handler. After a success the consumed alarm's record is deleted, unless
    /// the handler changed the alarm itself; after a failure the caller records what is next.
    pub(crate) fn end_alarm_handler(&self, succeeded: bool) -> Result<()> {
        let touched = self.lock().firing.take();
        if succeeded && touched == Some(false) {
            self.put_alarm(None, false)?;
        }
        Ok(())
    }

    /// Sets the alarm for `at_ms` (milliseconds since the Unix epoch), replacing any other.
    /// A time in the past fires as soon as possible. Committed with the turn.
    pub fn set_alarm(&self, at_ms: i64) -> Result<()> {
        self.put_alarm(Some(at_ms), true)
    }

    /// Sets the alarm for `delay` from now by the runtime's clock.
    pub fn set_alarm_after(&self, delay: Duration) -> Result<()> {
        let delay = i64::try_from(delay.as_millis())
            .map_err(|_| Error::bad_request("the alarm delay is too long"))?;
        self.set_alarm(self.ctx.clock.now_ms().saturating_add(delay))
    }

    /// Deletes the alarm, if set. Committed with the turn.
    pub fn delete_alarm(&self) -> Result<()> {
        self.put_alarm(None, true)
    }

    /// Changes the alarm record; `by_handler` says whether object code asked for it.
    pub(crate) fn put_alarm(&self, at_ms: Option<i64>, by_handler: bool) -> Result<()> {
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        match at_ms {
            Some(at) => conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO main._rookery_meta (key, value) VALUES ('alarm', ?1)",
                )?
                .execute([at])?,
            None => conn
                .prepare_cached("DELETE FROM main._rookery_meta WHERE key = 'alarm'")?
                .execute([])?,
        };
        turn.alarm = Some(match at_ms {
            Some(at) => AlarmChange::Set(at),
            None => AlarmChange::Deleted,
        });
        turn.alarm_by_handler |= by_handler;
        if by_handler && let Some(touched) = turn.firing.as_mut() {
            *touched = true;
        }
        Ok(())
    }

    /// How many times the current alarm's handler has failed.
    pub(crate) fn alarm_retries(&self) -> Result<u32> {
        Ok(self
            .meta_i64("alarm_retries")?
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// Records the failures of the current alarm's handler (0 clears the record).
    pub(crate) fn set_alarm_retries(&self, retries: u32) -> Result<()> {
        let mut turn = self.lock();
        let conn = turn.db.txn_for_write()?;
        if retries == 0 {
            conn.prepare_cached("DELETE FROM main._rookery_meta WHERE key = 'alarm_retries'")?
                .execute([])?;
        } else {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO main._rookery_meta (key, value) VALUES ('alarm_retries', ?1)",
            )?
            .execute([i64::from(retries)])?;
        }
        Ok(())
    }

    /// The alarm change object code made in this turn, if any.
    pub(crate) fn handler_alarm_change(&self) -> Option<AlarmChange> {
        let turn = self.lock();
        if turn.alarm_by_handler {
            turn.alarm
        } else {
            None
        }
    }

    fn meta_i64(&self, key: &str) -> Result<Option<i64>> {
        let mut turn = self.lock();
        let conn = turn.db.txn()?;
        Ok(conn
            .prepare_cached("SELECT value FROM main._rookery_meta WHERE key = ?1")?
            .query_row([key], |r| r.get::<_, i64>(0))
            .optional()?)
    }
}
