//! Presence from open streams: each node records how many streams it holds per agent (with a
//! heartbeat), so an agent is online while any live node holds one, and changes are announced.
//!
//! A node that dies cannot say goodbye, so each node keeps a durable timer per tenant it holds
//! streams in ([`LAPSE`]), pushed forward by every heartbeat. When a node stops beating, its
//! timer fires on another node (or after the restart): that node deletes the dead node's
//! stale rows and records `AgentChanged` for their agents, so the dispatcher starts their
//! grace periods as it does for an agent who closed their app.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio_util::task::TaskTracker;

use crate::domain::events::{Event, FRESH_FOR, PresenceState, presence_of};
use crate::domain::spine::{self, SpineEvent};
use crate::domain::timers::{self, Timer, TimerHandler};
use crate::domain::{Clock, Engine};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::storage::{TenantTx, presence as store, timers as timer_store};
use crate::tenancy::{SystemCap, TenantScope};

/// How often a node refreshes its presence rows.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// Timer kind: a node's presence rows in a tenant may have gone stale.
pub const LAPSE: &str = "presence_lapse";

/// Counts this node's streams and keeps the shared table current.
pub struct PresenceTracker {
    node: uuid::Uuid,
    local: Mutex<HashMap<(TenantId, UserId), i32>>,
    /// Tenants where this node's [`LAPSE`] timer is known to be set.
    armed: Mutex<HashSet<TenantId>>,
    writes: TaskTracker,
    /// Writes presence rows for streams that open and close, and on every heartbeat.
    system: SystemCap,
}

impl PresenceTracker {
    /// A tracker for a node with a fresh id.
    pub fn new(system: SystemCap) -> Arc<Self> {
        Arc::new(Self {
            node: uuid::Uuid::new_v4(),
            local: Mutex::new(HashMap::new()),
            armed: Mutex::new(HashSet::new()),
            writes: TaskTracker::new(),
            system,
        })
    }

    /// Waits (at most `limit`) for presence writes still in flight, at shutdown.
    pub async fn drain(&self, limit: Duration) {
        self.writes.close();
        let _ = tokio::time::timeout(limit, self.writes.wait()).await;
    }

    fn change(&self, tenant: TenantId, user: UserId, delta: i32) -> i32 {
        let mut m = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry((tenant, user)).or_insert(0);
        *n = (*n + delta).max(0);
        let now = *n;
        if now == 0 {
            m.remove(&(tenant, user));
        }
        now
    }

    async fn record(
        &self,
        e: &Engine,
        tenant: TenantId,
        user: UserId,
        streams: i32,
    ) -> AppResult<()> {
        let scope = TenantScope::system(&self.system, tenant);
        let now = e.now();
        let mut tx = e.db.tenant_tx(&scope).await?;
        store::set_streams(&mut tx, user, self.node, streams, now).await?;
        store::touch_last_seen(&mut tx, user, now).await?;
        // Coming online (or going offline) changes who can be given chats.
        spine::record(&tx, &[SpineEvent::AgentChanged { agent: user }], now).await?;
        let arm = streams > 0 && !self.is_armed(tenant);
        if arm {
            self.arm(&mut tx, now).await?;
        }
        let snap = store::snapshot(&mut tx, now - FRESH_FOR).await?;
        tx.commit().await?;
        if arm {
            self.armed_lock().insert(tenant);
        }
        if let Some((_, status, online, seen)) = snap.into_iter().find(|(u, ..)| *u == user) {
            e.publisher.publish(Event::Presence {
                tenant,
                state: PresenceState {
                    agent: user,
                    presence: presence_of(online, &status),
                    status,
                    last_seen: seen,
                },
            });
        }
        Ok(())
    }

    fn armed_lock(&self) -> std::sync::MutexGuard<'_, HashSet<TenantId>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_armed(&self, tenant: TenantId) -> bool {
        self.armed_lock().contains(&tenant)
    }

    /// Sets (or moves) this node's [`LAPSE`] timer in the transaction's tenant to just after
    /// its rows, beaten at `now`, would go stale.
    async fn arm(&self, tx: &mut TenantTx, now: DateTime<Utc>) -> AppResult<()> {
        let node = self.node.to_string();
        timer_store::delete_keyed(tx, LAPSE, "node", &node).await?;
        let due = now + FRESH_FOR + chrono::Duration::seconds(1);
        timers::schedule(tx, LAPSE, due, serde_json::json!({ "node": node })).await?;
        Ok(())
    }

    /// Counts a new stream of `user`; the guard uncounts it when dropped.
    pub async fn enter(
        self: &Arc<Self>,
        e: &Arc<Engine>,
        tenant: TenantId,
        user: UserId,
    ) -> AppResult<PresenceGuard> {
        let n = self.change(tenant, user, 1);
        let guard = PresenceGuard {
            tracker: self.clone(),
            engine: e.clone(),
            tenant,
            user,
        };
        if n == 1 {
            self.record(e, tenant, user, n).await?;
        }
        Ok(guard)
    }

    /// Every agent of the tenant with their presence.
    pub async fn snapshot(&self, e: &Engine, scope: &TenantScope) -> AppResult<Vec<PresenceState>> {
        let mut tx = e.db.tenant_tx(scope).await?;
        let rows = store::snapshot(&mut tx, e.now() - FRESH_FOR).await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(agent, status, online, last_seen)| PresenceState {
                agent,
                presence: presence_of(online, &status),
                status,
                last_seen,
            })
            .collect())
    }

    /// Refreshes this node's rows and moves its [`LAPSE`] timers; run every [`HEARTBEAT`].
    pub async fn heartbeat(&self, e: &Engine) {
        let mut by_tenant: HashMap<TenantId, Vec<(UserId, i32)>> = HashMap::new();
        for ((t, u), n) in self.local.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            by_tenant.entry(*t).or_default().push((*u, *n));
        }
        let now: DateTime<Utc> = e.now();
        let mut armed = HashSet::new();
        for (tenant, here) in by_tenant {
            let scope = TenantScope::system(&self.system, tenant);
            let r = async {
                let mut tx = e.db.tenant_tx(&scope).await?;
                store::heartbeat(&mut tx, &here, self.node, now).await?;
                self.arm(&mut tx, now).await?;
                tx.commit().await
            }
            .await;
            match r {
                Ok(()) => {
                    armed.insert(tenant);
                }
                Err(err) => tracing::warn!(error = %err, "presence heartbeat failed"),
            }
        }
        // A tenant left out here has no streams on this node; its timer lapses harmlessly.
        *self.armed_lock() = armed;
    }
}

/// Uncounts a stream when dropped.
pub struct PresenceGuard {
    tracker: Arc<PresenceTracker>,
    engine: Arc<Engine>,
    tenant: TenantId,
    user: UserId,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let n = self.tracker.change(self.tenant, self.user, -1);
        if n == 0 {
            let (t, e, tenant, user) = (
                self.tracker.clone(),
                self.engine.clone(),
                self.tenant,
                self.user,
            );
            // Drop cannot wait; the last stream's goodbye is written in the background.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tracker.writes.spawn(async move {
                    if let Err(err) = t.record(&e, tenant, user, 0).await {
                        tracing::warn!(error = %err, "recording presence failed");
                    }
                });
            }
        }
    }
}

/// Fires [`LAPSE`]: reaps a silent node's stale rows in the tenant and tells the dispatcher
/// (through `AgentChanged` on the spine) that their agents may be gone.
pub struct PresenceLapse {
    clock: Arc<dyn Clock>,
}

impl PresenceLapse {
    /// The handler, reading the time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self { clock })
    }
}

impl TimerHandler for PresenceLapse {
    fn kind(&self) -> &'static str {
        LAPSE
    }

    fn fire<'a>(&'a self, tx: &'a mut TenantTx, timer: &'a Timer) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let node = timer
                .payload
                .get("node")
                .and_then(|n| n.as_str())
                .and_then(|n| uuid::Uuid::parse_str(n).ok())
                .ok_or_else(|| AppError::Internal("presence timer without a node".into()))?;
            let now = self.clock.now();
            let gone = store::reap(tx, node, now - FRESH_FOR).await?;
            if store::node_present(tx, node).await? {
                // Still beating (its heartbeat raced this timer): look again when it could lapse.
                let due = now + FRESH_FOR + chrono::Duration::seconds(1);
                timers::schedule(tx, LAPSE, due, timer.payload.clone()).await?;
            }
            if !gone.is_empty() {
                tracing::info!(agents = gone.len(), %node, "a silent node's presence lapsed");
                let events: Vec<_> = gone
                    .into_iter()
                    .map(|agent| SpineEvent::AgentChanged { agent })
                    .collect();
                spine::record(tx, &events, now).await?;
            }
            Ok(())
        })
    }
}
