//! Durable timers (max wait, offer timeouts, re-routes, grace periods): a row with a due time,
//! written in the transaction that needs it, fired once that time has passed, after a restart
//! too. The firing node claims due rows with `FOR UPDATE SKIP LOCKED`, runs the handler for
//! their kind inside that transaction and deletes them there, so a timer's database effects
//! happen once even when several nodes wake for it; a node that dies mid-fire rolls back and
//! the timer fires elsewhere or after the restart.
//!
//! Nodes sleep until the nearest due time they know of, learn new timers from
//! `NOTIFY chatengine_timers` (sent at commit by [`schedule`]), and look at every tenant's
//! nearest due time at start and after the listening connection was lost. No polling sweep.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Clock;
use crate::error::AppResult;
use crate::ids::{TenantId, TimerId};
use crate::storage::listen::Notice as Heard;
use crate::storage::{Db, TenantTx, timers as store};
use crate::tenancy::{SystemCap, TenantScope};

/// The `LISTEN` channel of new timers.
pub const CHANNEL: &str = "chatengine_timers";
/// Timers fired per transaction.
const BATCH: i64 = 100;
/// A tenant whose timers failed to fire is tried again after this.
const RETRY_FAILED: chrono::Duration = chrono::Duration::seconds(2);
/// Longest sleep without looking again (also bounds the effect of a wrong clock).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A timer being fired.
#[derive(Clone, Debug, PartialEq)]
pub struct Timer {
    /// Id.
    pub id: TimerId,
    /// Tenant.
    pub tenant: TenantId,
    /// Kind.
    pub kind: String,
    /// When it was due.
    pub due_at: DateTime<Utc>,
    /// The data it was scheduled with.
    pub payload: serde_json::Value,
}

/// What runs when a timer of one kind fires.
pub trait TimerHandler: Send + Sync + 'static {
    /// The kind it handles.
    fn kind(&self) -> &'static str;
    /// Fires `timer` inside `tx`, which deletes the timer when it commits. An error rolls
    /// both back and the timer fires again later.
    fn fire<'a>(&'a self, tx: &'a mut TenantTx, timer: &'a Timer) -> BoxFuture<'a, AppResult<()>>;
}

/// Schedules a timer in `tx`; it exists (and every node learns of it) once `tx` commits.
pub async fn schedule(
    tx: &mut TenantTx,
    kind: &str,
    due_at: DateTime<Utc>,
    payload: serde_json::Value,
) -> AppResult<TimerId> {
    let id = TimerId::new();
    let notice = encode(tx.tenant_id(), due_at);
    store::insert(tx, id, kind, due_at, payload, &notice).await?;
    Ok(id)
}

/// Cancels a timer in `tx`; false when it already fired.
pub async fn cancel(tx: &mut TenantTx, id: TimerId) -> AppResult<bool> {
    store::delete(tx, id).await
}

fn encode(tenant: TenantId, due: DateTime<Utc>) -> String {
    format!("{tenant} {}", due.timestamp_micros())
}

fn decode(payload: &str) -> Option<(TenantId, DateTime<Utc>)> {
    let (t, micros) = payload.split_once(' ')?;
    Some((
        TenantId::parse(t)?,
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
    ))
}

/// Fires due timers with `handlers` until `shutdown`, learning of new ones from `heard`;
/// `sys` reads and fires every tenant's timers.
pub fn start(
    db: Db,
    clock: Arc<dyn Clock>,
    handlers: Vec<Arc<dyn TimerHandler>>,
    heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    if handlers.is_empty() {
        return;
    }
    let handlers = handlers.into_iter().map(|h| (h.kind(), h)).collect();
    tokio::spawn(run(db, clock, handlers, heard, sys, shutdown));
}

type Handlers = HashMap<&'static str, Arc<dyn TimerHandler>>;

async fn run(
    db: Db,
    clock: Arc<dyn Clock>,
    handlers: Handlers,
    mut heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    let kinds: Vec<String> = handlers.keys().map(|k| k.to_string()).collect();
    // The nearest due time known per tenant; stale entries only cost a look.
    let mut due: BTreeSet<(DateTime<Utc>, TenantId)> = BTreeSet::new();
    let mut rescan = true;
    loop {
        if rescan {
            match scan(&db, &sys, &kinds).await {
                Ok(found) => {
                    due.extend(found);
                    rescan = false;
                }
                Err(e) => tracing::warn!(error = %e, "timers could not be scanned; retrying"),
            }
        }
        let now = clock.now();
        while let Some(&(at, tenant)) = due.first() {
            if at > now {
                break;
            }
            due.pop_first();
            match fire_due(&db, &sys, clock.as_ref(), &handlers, &kinds, tenant).await {
                Ok(Some(next)) => {
                    due.insert((next, tenant));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "firing timers failed; retrying");
                    due.insert((clock.now() + RETRY_FAILED, tenant));
                }
            }
        }
        let mut sleep = due
            .first()
            .map(|(at, _)| (*at - clock.now()).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        if rescan {
            sleep = sleep.min(RETRY_FAILED.to_std().unwrap_or(MAX_SLEEP));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            h = heard.recv() => match h {
                Some(Heard::Payload(p)) => match decode(&p) {
                    Some((tenant, at)) => {
                        due.insert((at, tenant));
                    }
                    None => tracing::warn!("undecodable timer notice"),
                },
                Some(Heard::Reconnected) => rescan = true,
                None => return,
            },
        }
    }
}

/// Every tenant's nearest due time.
async fn scan(
    db: &Db,
    sys: &SystemCap,
    kinds: &[String],
) -> AppResult<Vec<(DateTime<Utc>, TenantId)>> {
    let mut out = Vec::new();
    for tenant in super::tenants::all_ids(db, sys).await? {
        let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
        if let Some(at) = store::next_due(&mut tx, kinds).await? {
            out.push((at, tenant));
        }
        tx.commit().await?;
    }
    Ok(out)
}

/// Fires the tenant's due timers; returns its next due time.
async fn fire_due(
    db: &Db,
    sys: &SystemCap,
    clock: &dyn Clock,
    handlers: &Handlers,
    kinds: &[String],
    tenant: TenantId,
) -> AppResult<Option<DateTime<Utc>>> {
    let scope = TenantScope::system(sys, tenant);
    loop {
        let mut tx = db.tenant_tx(&scope).await?;
        let rows = store::claim_due(&mut tx, clock.now(), kinds, BATCH).await?;
        let full = rows.len() as i64 == BATCH;
        for row in rows {
            let timer = Timer {
                id: row.timer_id,
                tenant,
                kind: row.kind,
                due_at: row.due_at,
                payload: row.payload,
            };
            let Some(h) = handlers.get(timer.kind.as_str()) else {
                continue;
            };
            h.fire(&mut tx, &timer).await?;
            store::delete(&mut tx, timer.id).await?;
        }
        if full {
            tx.commit().await?;
            continue;
        }
        let next = store::next_due(&mut tx, kinds).await?;
        tx.commit().await?;
        return Ok(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_notices_round_trip() {
        let t = TenantId::new();
        let at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        assert_eq!(decode(&encode(t, at)), Some((t, at)));
        assert_eq!(decode("junk"), None);
        assert_eq!(decode(&format!("{t} soon")), None);
    }
}
