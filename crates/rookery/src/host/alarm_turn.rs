//! An alarm event: checks the object's own record, runs the handler as a turn, and on failure
//! records the retry in a turn of the runtime's own.

use std::sync::Arc;

use super::Host;
use super::alarm_event::{AlarmInfo, AlarmOutcome, AlarmReport, MAX_RETRIES, backoff_ms};
use super::class::{Instance, instance_of};
use super::turn::{self, TurnContext};
use crate::addr::ObjectKey;
use crate::error::Result;
use crate::state::ObjectState;

/// Handles one alarm event for object `key` of `host`, whose state is `state` and whose
/// instance is `instance`.
pub(crate) async fn run<I: Instance>(
    host: &Host,
    key: ObjectKey,
    state: &ObjectState,
    instance: &mut Option<I>,
    force: bool,
) -> Result<AlarmReport> {
    let storage = state.storage();
    let now = host.clock().now_ms();
    let record = storage
        .get_alarm()
        .and_then(|at| Ok((at, storage.alarm_retries()?)));
    let (at, retries) = match record {
        Ok(record) => record,
        Err(e) => return turn::finish(state, Err(e)).await.0,
    };
    let Some(at) = at.filter(|at| force || *at <= now) else {
        // Woken early, or the alarm was deleted or handled: only correct the index.
        let (ended, _) = turn::finish(state, Ok(())).await;
        ended?;
        storage.reindex_alarm(at);
        return Ok(AlarmReport {
            outcome: AlarmOutcome::NotDue,
            late_ms: None,
        });
    };
    let late_ms = u64::try_from(now - at).unwrap_or(0);
    // The alarm counts as consumed from here; its record goes with the handler's last commit,
    // so a crash in the middle (after the handler committed some work) fires it again.
    storage.begin_alarm_handler();
    let info = AlarmInfo {
        retry_count: retries,
        is_retry: retries > 0,
        scheduled_ms: at,
    };
    let result = match instance_of(instance, state, host) {
        Ok(object) => {
            let ctx = TurnContext::new(Arc::from([key]), state.clone());
            // Alarms do background work: they get their own, longer limit.
            let limit = host.options().alarm_timeout;
            turn::run(object.on_alarm(info), ctx, limit).await
        }
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(()) => {
            let cleared = storage.end_alarm_handler(true).and_then(|()| {
                if retries > 0 {
                    storage.set_alarm_retries(0)
                } else {
                    Ok(())
                }
            });
            turn::finish(state, cleared.map(|()| AlarmOutcome::Succeeded))
                .await
                .0?
        }
        Err(e) => {
            tracing::warn!(error = %e, retry = retries, "alarm handler failed");
            *instance = None;
            let own_change = storage.handler_alarm_change();
            // The failure path records what comes next itself.
            let _ = storage.end_alarm_handler(false);
            // The handler's writes and sends go; then the runtime records what comes next.
            let _ = turn::finish(state, Err::<(), _>(e)).await;
            let (next, retries, outcome) = match own_change {
                // The handler decided about its alarm itself: keep that decision, no retry.
                Some(change) => (change.at(), 0, AlarmOutcome::FailedAfterChange),
                None if retries >= MAX_RETRIES => {
                    tracing::error!(retries, "alarm given up after its last retry");
                    (None, 0, AlarmOutcome::GivenUp)
                }
                None => (
                    Some(now + backoff_ms(retries)),
                    retries + 1,
                    AlarmOutcome::Retrying,
                ),
            };
            let recorded = storage
                .put_alarm(next, false)
                .and_then(|()| storage.set_alarm_retries(retries));
            turn::finish(state, recorded.map(|()| outcome)).await.0?
        }
    };
    Ok(AlarmReport {
        outcome,
        late_ms: Some(late_ms),
    })
}
