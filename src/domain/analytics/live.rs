//! Live figures: read from the live tables (queue entries, open chats, agents' states,
//! visitors seen and chats started since the local midnight), as a call and as a stream.
//!
//! The stream is coalesced per tenant and zone ([`LiveWatch`]): while anyone on this node
//! watches a tenant, one task reads its figures every [`EVERY`] and sends them to every
//! watcher when they differ from the last ones sent, so what a watcher sees is at most a
//! second and a read behind, and many watchers cost one read a second. The task ends with
//! its last watcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::buckets::{BucketSize, floor};
use crate::domain::agents::AgentStatus;
use crate::domain::workflows::agent_snapshots;
use crate::domain::{Engine, require_admin};
use crate::error::AppResult;
use crate::ids::{TenantId, UserId};
use crate::storage::analytics as store;
use crate::tenancy::{SystemCap, TenantScope};

/// How often a watched tenant's live figures are read.
pub const EVERY: Duration = Duration::from_secs(1);

/// One agent's live state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLive {
    /// Agent.
    pub agent: UserId,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: AgentStatus,
    /// Holds an open stream.
    pub online: bool,
    /// Open external chats.
    pub open_chats: u32,
    /// Capacity.
    pub capacity: u32,
}

/// The tenant's live figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveStats {
    /// When they were read.
    pub at: DateTime<Utc>,
    /// Chats in the queue.
    pub waiting: u32,
    /// Chats offered to an agent and not accepted yet.
    pub offered: u32,
    /// Open external chats.
    pub active: u32,
    /// The longest current wait in the queue, whole seconds.
    pub longest_wait_seconds: u32,
    /// Visitors seen since the local midnight.
    pub visitors_today: u32,
    /// External chats started since the local midnight.
    pub chats_today: u32,
    /// Start of "today".
    pub day_start: DateTime<Utc>,
    /// Every active agent.
    pub agents: Vec<AgentLive>,
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

async fn read(e: &Engine, scope: &TenantScope, zone: Option<Tz>) -> AppResult<LiveStats> {
    let mut tx = e.db.tenant_tx(scope).await?;
    let zone = match zone {
        Some(z) => z,
        None => super::tenant_zone(&mut tx).await?,
    };
    let now = e.now();
    let day_start = floor(now, BucketSize::Day, zone);
    let c = store::live_counts(&mut tx, day_start).await?;
    let agents = agent_snapshots(&mut tx, now).await?;
    tx.commit().await?;
    Ok(LiveStats {
        at: now,
        waiting: count(c.waiting),
        offered: count(c.offered),
        active: count(c.active),
        longest_wait_seconds: c.oldest.map_or(0, |o| count((now - o).num_seconds())),
        visitors_today: count(c.visitors),
        chats_today: count(c.started),
        day_start,
        agents: agents
            .into_iter()
            .map(|a| AgentLive {
                agent: a.id,
                name: a.name,
                status: a.status,
                online: a.online,
                open_chats: a.open_chats,
                capacity: a.capacity,
            })
            .collect(),
    })
}

/// The tenant's live figures now (admins only), "today" in `zone` (None: the tenant's own).
pub async fn get(e: &Engine, scope: &TenantScope, zone: Option<Tz>) -> AppResult<LiveStats> {
    require_admin(scope)?;
    read(e, scope, zone).await
}

type Key = (TenantId, Option<Tz>);

/// This node's watched tenants (see the module doc).
pub struct LiveWatch {
    engine: Arc<Engine>,
    system: SystemCap,
    shutdown: CancellationToken,
    watched: Mutex<HashMap<Key, watch::Receiver<Option<Arc<LiveStats>>>>>,
}

impl LiveWatch {
    /// The node's watch.
    pub fn new(engine: Arc<Engine>, system: SystemCap, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            engine,
            system,
            shutdown,
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// Follows the tenant's live figures (admins only): the receiver holds the latest and
    /// changes whenever they do.
    pub fn watch(
        self: &Arc<Self>,
        scope: &TenantScope,
        zone: Option<Tz>,
    ) -> AppResult<watch::Receiver<Option<Arc<LiveStats>>>> {
        require_admin(scope)?;
        let key = (scope.tenant_id(), zone);
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = watched.get(&key) {
            return Ok(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        watched.insert(key, rx.clone());
        tokio::spawn(self.clone().poll(key, tx));
        Ok(rx)
    }

    async fn poll(self: Arc<Self>, key: Key, tx: watch::Sender<Option<Arc<LiveStats>>>) {
        let scope = TenantScope::system(&self.system, key.0);
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            {
                // The map holds one receiver; anything beyond it is a watcher.
                let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
                if tx.receiver_count() <= 1 {
                    watched.remove(&key);
                    return;
                }
            }
            match read(&self.engine, &scope, key.1).await {
                Ok(s) => {
                    tx.send_if_modified(|old| {
                        // The reading time alone is no change.
                        let same = old.as_ref().is_some_and(|o| {
                            LiveStats {
                                at: s.at,
                                ..(**o).clone()
                            } == s
                        });
                        if !same {
                            *old = Some(Arc::new(s));
                        }
                        !same
                    });
                }
                Err(e) => tracing::warn!(error = %e, "live analytics read failed"),
            }
        }
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}
