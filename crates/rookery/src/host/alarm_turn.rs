//! An alarm event: checks the object's own record, runs the handler as a turn, and on failure
//! schedules the retry.

use super::activation::Activation;
use super::turn::{self, TurnContext};
use crate::alarm::{AlarmInfo, AlarmOutcome, MAX_RETRIES, backoff_ms};
use crate::error::Result;
use crate::object::{DurableObject, Env, ObjectState};
use crate::storage::AlarmChange;

/// Handles one alarm event for the object of `act`, whose instance is `instance`.
pub(crate) async fn run<C: DurableObject>(
    act: &Activation,
    state: &ObjectState,
    env: &Env,
    instance: &mut Option<C>,
    force: bool,
) -> Result<AlarmOutcome> {
    let storage = state.storage();
    let clock = act.rt.storage.clock.clone();
    let now = clock.now_ms();
    let record = storage.get_alarm();
    let retries = storage.alarm_retries();
    let (at, retries) = match (record, retries) {
        (Ok(at), Ok(retries)) => (at, retries),
        (Err(e), _) | (_, Err(e)) => {
            storage.finish_turn(false).await?;
            return Err(e);
        }
    };
    let Some(at) = at.filter(|at| force || *at <= now) else {
        // Woken early, or the alarm was deleted or handled: only correct the index.
        storage.finish_turn(true).await?;
        storage.reindex_alarm(at);
        return Ok(AlarmOutcome::NotDue);
    };
    act.rt
        .scheduler
        .lateness
        .record(u64::try_from(now - at).unwrap_or(0));
    // The alarm is cleared as the handler starts; the handler may set it again.
    storage.put_alarm(None, false)?;
    let info = AlarmInfo {
        retry_count: retries,
        is_retry: retries > 0,
        scheduled_ms: at,
    };
    let object = match super::activation::instance_of(instance, state, env) {
        Ok(object) => object,
        Err(message) => {
            tracing::error!("{message}");
            storage.finish_turn(false).await?;
            return retry_or_give_up(storage, now, retries).await;
        }
    };
    let ctx = TurnContext {
        chain: std::sync::Arc::from([act.key]),
        caller: state.clone(),
    };
    let result = turn::run(object.alarm(info), ctx, act.rt.options.host.turn_timeout).await;
    match result {
        Ok(()) => {
            if retries > 0 {
                storage.set_alarm_retries(0)?;
            }
            storage.finish_turn(true).await?;
            Ok(AlarmOutcome::Succeeded)
        }
        Err(e) => {
            tracing::warn!(error = %e, retry = retries, "alarm handler failed");
            *instance = None;
            // What the failed handler sent goes with its writes.
            drop(state.take_outbox());
            let own_change = storage.handler_alarm_change();
            storage.finish_turn(false).await?;
            match own_change {
                // The handler decided about its alarm itself: keep that decision, no retry.
                Some(change) => {
                    let at = match change {
                        AlarmChange::Set(at) => Some(at),
                        AlarmChange::Deleted => None,
                    };
                    storage.put_alarm(at, false)?;
                    storage.set_alarm_retries(0)?;
                    storage.finish_turn(true).await?;
                    Ok(AlarmOutcome::FailedAfterChange)
                }
                None => retry_or_give_up(storage, now, retries).await,
            }
        }
    }
}

async fn retry_or_give_up(
    storage: &crate::storage::Storage,
    now: i64,
    retries: u32,
) -> Result<AlarmOutcome> {
    if retries >= MAX_RETRIES {
        tracing::error!(retries, "alarm given up after its last retry");
        storage.put_alarm(None, false)?;
        storage.set_alarm_retries(0)?;
        storage.finish_turn(true).await?;
        return Ok(AlarmOutcome::GivenUp);
    }
    storage.put_alarm(Some(now + backoff_ms(retries)), false)?;
    storage.set_alarm_retries(retries + 1)?;
    storage.finish_turn(true).await?;
    Ok(AlarmOutcome::Retrying)
}
