//! Alarms whose node is gone: each node looks, every second, for due alarms in
//! `rookery_alarms` whose object's owner no longer holds a lease, and wakes those objects here
//! (taking them over). It also wakes its own objects whose alarms are overdue by more than
//! [`OWN_SLACK_MS`]: its own index should have fired them, so one it lacks (an object that
//! moved here by a request, say) is caught.
//!
//! At least once, never concurrently: waking an object claims it, so it runs on one node at a
//! time, and its alarm handler runs in one of its turns. A node's own scheduler and this sweep
//! may both deliver the same alarm; the second finds nothing due.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use rookery::{AlarmOutcome, Runtime};

use crate::error::ClusterError;
use crate::membership::Membership;

/// How often the sweep looks.
const EVERY: Duration = Duration::from_secs(1);
/// How late a due alarm of this node's own objects may be before the sweep wakes it.
pub const OWN_SLACK_MS: i64 = 5_000;
/// Alarms woken per look at most.
const PER_LOOK: i64 = 64;

/// Runs the sweep until aborted.
pub(crate) async fn sweep(pool: Pool, membership: Arc<Membership>, runtime: Runtime) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !membership.holds() {
            continue;
        }
        if let Err(e) = look(&pool, &membership, &runtime).await {
            tracing::warn!(error = %e, "looking for alarms of departed nodes");
        }
    }
}

async fn look(pool: &Pool, membership: &Membership, runtime: &Runtime) -> Result<(), ClusterError> {
    let now = now_ms();
    let session = membership.session();
    let due = {
        let client = pool.get().await?;
        client
            .query(
                "SELECT a.class, a.object, a.due_ms FROM rookery_alarms a
                 JOIN rookery_objects o ON o.class = a.class AND o.object = a.object
                 WHERE (a.due_ms <= $1 AND NOT EXISTS (
                            SELECT 1 FROM rookery_nodes n
                            WHERE n.session = o.session AND n.lease_until > now()))
                    OR (a.due_ms <= $1 - $2 AND o.session = $3)
                 ORDER BY a.due_ms LIMIT $4",
                &[&now, &OWN_SLACK_MS, &&*session, &PER_LOOK],
            )
            .await?
    };
    for row in due {
        let (class, object, due_ms): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        // A class this node does not run stays for a node that does.
        let Ok(namespace) = runtime.namespace_of_class(&class) else {
            continue;
        };
        let Ok(id) = namespace.id_from_string(&object) else {
            tracing::warn!(
                class,
                object,
                "an alarm row with an id this cluster did not mint"
            );
            continue;
        };
        match namespace.get(id).fire_alarm().await {
            Ok(AlarmOutcome::NotDue) => {
                // The object's own record says no alarm is due: the row is stale (its
                // deletion never reached the table). Removed unless it changed meanwhile.
                let client = pool.get().await?;
                client
                    .execute(
                        "DELETE FROM rookery_alarms WHERE class = $1 AND object = $2 AND due_ms = $3",
                        &[&class, &object, &due_ms],
                    )
                    .await?;
            }
            Ok(outcome) => {
                tracing::info!(
                    class,
                    object,
                    ?outcome,
                    "ran the alarm of an object whose node was gone"
                );
            }
            // Owned by a live node after all, or storage trouble: the next look tries again.
            Err(e) => {
                tracing::debug!(class, object, error = %e, "could not wake an alarm's object")
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
