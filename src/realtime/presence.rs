//! Presence from open streams: each node records how many streams it holds per agent (with a
//! heartbeat), so an agent is online while any live node holds one, and changes are announced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::task::TaskTracker;

use crate::domain::Engine;
use crate::domain::events::{Event, FRESH_FOR, PresenceState, presence_of};
use crate::domain::spine::{self, SpineEvent};
use crate::error::AppResult;
use crate::ids::{TenantId, UserId};
use crate::storage::presence as store;
use crate::tenancy::{SystemCap, TenantScope};

/// How often a node refreshes its presence rows.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// Counts this node's streams and keeps the shared table current.
pub struct PresenceTracker {
    node: uuid::Uuid,
    local: Mutex<HashMap<(TenantId, UserId), i32>>,
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
        let snap = store::snapshot(&mut tx, now - FRESH_FOR).await?;
        tx.commit().await?;
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

    /// Refreshes this node's rows; run every [`HEARTBEAT`].
    pub async fn heartbeat(&self, e: &Engine) {
        let mut by_tenant: HashMap<TenantId, Vec<UserId>> = HashMap::new();
        for (t, u) in self.local.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            by_tenant.entry(*t).or_default().push(*u);
        }
        let now: DateTime<Utc> = e.now();
        for (tenant, users) in by_tenant {
            let scope = TenantScope::system(&self.system, tenant);
            let r = async {
                let mut tx = e.db.tenant_tx(&scope).await?;
                store::heartbeat(&mut tx, &users, self.node, now).await?;
                tx.commit().await
            }
            .await;
            if let Err(err) = r {
                tracing::warn!(error = %err, "presence heartbeat failed");
            }
        }
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
