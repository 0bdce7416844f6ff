//! Durable reactors: in-process consumers of every committed domain event (the coming
//! dispatcher, queue positions, analytics projections, webhook delivery). They are added
//! here, not threaded through the send path.
//!
//! A reactor sees each event at least once, in commit order per conversation (a conversation
//! lives in one shard, and a shard's spine positions follow commit order), resuming from its
//! stored cursor after a restart. Its work on one tenant is split into [`SHARDS`] shares; a
//! node works on a share only while it holds that share's cursor row (`FOR UPDATE SKIP
//! LOCKED`), so two nodes never process the same share at once, and a node that dies lets go
//! of it with its connection. The cursor moves after the reactor returns: an event whose
//! batch was handled but whose cursor was not stored is seen again, and nothing else is.
//!
//! Work is woken by spine notices (every node gets them); at start and after the listening
//! connection was lost, every tenant's shares are checked once. When no reactor wants posted
//! messages, a notice of posts only marks its share for the next [`LAZY`] tick instead: the
//! send path commits many batches a second, and each wake-up costs a cursor transaction. A share held by another
//! node is tried again a moment later, so work that node did not pick up is not left behind.
//!
//! Kept small and hand-written: the outbox and job crates for PostgreSQL bring sqlx or
//! tokio-postgres as a second driver beside diesel-async.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Clock;
use super::conversations::stored_events;
use super::events::ConversationEvent;
use super::spine::{Notice, SHARDS, SpineEvent};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, TenantId, UserId};
use crate::storage::listen::Notice as Heard;
use crate::storage::{Db, spine as store};
use crate::tenancy::{SystemCap, TenantScope};

/// Spine entries read per round trip, unless a reactor asks for more
/// ([`Reactor::batch_size`]).
const BATCH: i64 = 100;
/// A share another node held is tried again after this.
const RETRY_HELD: Duration = Duration::from_millis(500);
/// Shares that only saw posts are caught up this often when no reactor wants posts (their
/// cursors move past the posts; nothing in them is for those reactors).
const LAZY: Duration = Duration::from_secs(1);
/// A share that failed (database trouble, a reactor error) is tried again after this.
const RETRY_FAILED: Duration = Duration::from_secs(2);

/// A committed domain event as reactors see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    /// A durable conversation event (message posted, edited, members changed, ...).
    Conversation(ConversationEvent),
    /// An agent's routing state changed; read the agent for the new state.
    AgentChanged {
        /// The agent.
        agent: UserId,
    },
    /// A waiting chat's needs changed with time (max wait passed, a skill relaxed).
    QueueChanged {
        /// The chat.
        conversation: ConversationId,
    },
    /// Messages were posted in a conversation (for reactors that want to know where, not
    /// what: [`Reactor::wants_post_notices`]); read the conversation for them.
    Posted {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A visitor rated an ended chat; read the rating for the score.
    Rated {
        /// The chat.
        conversation: ConversationId,
    },
}

/// One delivery to a reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Tenant.
    pub tenant: TenantId,
    /// Shard of the spine.
    pub shard: i16,
    /// Position of the spine entry that recorded it.
    pub pos: i64,
    /// When the entry was written.
    pub at: DateTime<Utc>,
    /// The event.
    pub event: DomainEvent,
}

/// An in-process consumer of committed domain events.
pub trait Reactor: Send + Sync + 'static {
    /// Stable name; its cursors are stored under it.
    fn name(&self) -> &'static str;
    /// Whether it wants posted messages. One that does not (the dispatcher) is spared reading
    /// them back: the writer's spine entries say they hold posts only.
    fn wants_posts(&self) -> bool {
        true
    }
    /// Whether one that does not want posted messages wants to hear, without their content
    /// and no later than the next [`LAZY`] tick, in which conversations messages were posted
    /// ([`DomainEvent::Posted`], one per spine entry): the send path still wakes no reactor
    /// per batch, and nothing is read back for it.
    fn wants_post_notices(&self) -> bool {
        false
    }
    /// Spine entries per batch. One whose cost grows with the distinct conversations of a
    /// batch rather than its entries (the same open chats post in entry after entry) keeps
    /// up better with bigger batches.
    fn batch_size(&self) -> i64 {
        BATCH
    }
    /// Handles a batch of one share, in order. An error leaves the cursor where it was, so
    /// the batch comes again.
    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, AppResult<()>>;
}

/// Runs `reactors` until `shutdown`, woken by the spine notices in `heard`; `sys` reads
/// every tenant's spine.
pub fn start(
    db: Db,
    clock: Arc<dyn Clock>,
    reactors: Vec<Arc<dyn Reactor>>,
    heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    if reactors.is_empty() {
        return;
    }
    tokio::spawn(run(db, clock, reactors, heard, sys, shutdown));
}

type Share = (TenantId, i16);

async fn run(
    db: Db,
    clock: Arc<dyn Clock>,
    reactors: Vec<Arc<dyn Reactor>>,
    mut heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    let mut dirty: BTreeSet<Share> = BTreeSet::new();
    let mut later: HashSet<Share> = HashSet::new();
    let mut lazy: HashSet<Share> = HashSet::new();
    let posts_wanted = reactors.iter().any(|r| r.wants_posts());
    let mut rescan = true;
    let mut retry = tokio::time::interval(RETRY_HELD);
    let mut lazy_tick = tokio::time::interval(LAZY);
    loop {
        if rescan {
            match all_behind(&db, &sys, &reactors).await {
                Ok(shares) => {
                    dirty.extend(shares);
                    rescan = false;
                }
                Err(e) => tracing::warn!(error = %e, "reactors could not scan the spine"),
            }
        }
        while let Some(share) = dirty.pop_first() {
            for r in &reactors {
                match drain(&db, &sys, clock.as_ref(), r.as_ref(), share).await {
                    Ok(true) => {}
                    Ok(false) => {
                        later.insert(share);
                    }
                    Err(e) => {
                        tracing::warn!(reactor = r.name(), error = %e, "reactor failed; retrying");
                        later.insert(share);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_FAILED) => {}
                        }
                    }
                }
            }
            // New notices are taken in between shares, so a busy share does not starve.
            while let Ok(h) = heard.try_recv() {
                note(h, &mut dirty, &mut lazy, posts_wanted, &mut rescan);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            h = heard.recv() => match h {
                Some(h) => note(h, &mut dirty, &mut lazy, posts_wanted, &mut rescan),
                None => return,
            },
            // Held or failed shares, and a scan that failed, are tried again.
            _ = retry.tick(), if rescan || !later.is_empty() => dirty.extend(later.drain()),
            _ = lazy_tick.tick(), if !lazy.is_empty() => dirty.extend(lazy.drain()),
        }
    }
}

/// Marks a notice's share for work now, or, when it holds posts only and no reactor wants
/// posts, for the next [`LAZY`] tick (a busy send path then wakes no reactor per batch).
fn note(
    h: Heard,
    dirty: &mut BTreeSet<Share>,
    lazy: &mut HashSet<Share>,
    posts_wanted: bool,
    rescan: &mut bool,
) {
    match h {
        Heard::Payload(p) => match Notice::decode(&p) {
            Some(n) if n.posts_only && !posts_wanted => {
                lazy.insert((n.tenant, n.shard));
            }
            Some(n) => {
                dirty.insert((n.tenant, n.shard));
            }
            None => tracing::warn!("undecodable spine notice"),
        },
        // Notices of the gap are lost: look at every share again.
        Heard::Reconnected => *rescan = true,
    }
}

/// Every share that some reactor has not consumed to its head.
async fn all_behind(
    db: &Db,
    sys: &SystemCap,
    reactors: &[Arc<dyn Reactor>],
) -> AppResult<Vec<Share>> {
    let mut out = Vec::new();
    for tenant in super::tenants::all_ids(db, sys).await? {
        let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
        for r in reactors {
            for shard in store::shards_behind(&mut tx, r.name()).await? {
                out.push((tenant, shard));
            }
        }
        tx.commit().await?;
    }
    Ok(out)
}

/// Feeds one share to one reactor until it is at the head. False when another node holds
/// the share right now.
async fn drain(
    db: &Db,
    sys: &SystemCap,
    clock: &dyn Clock,
    r: &dyn Reactor,
    (tenant, shard): Share,
) -> AppResult<bool> {
    debug_assert!((0..SHARDS).contains(&shard));
    loop {
        let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
        let Some(pos) = store::claim_cursor(&mut tx, r.name(), shard).await? else {
            return Ok(false);
        };
        let size = r.batch_size();
        let entries = store::entries_after(&mut tx, shard, pos, size).await?;
        let Some(last) = entries.last().map(|e| e.pos) else {
            tx.commit().await?;
            return Ok(true);
        };
        let full = entries.len() as i64 == size;
        let mut batch = Vec::new();
        for entry in entries {
            let recorded: Vec<SpineEvent> = serde_json::from_value(entry.events)
                .map_err(|e| AppError::Internal(format!("spine entry {}: {e}", entry.pos)))?;
            for ev in recorded {
                let at = entry.created_at;
                let delivery = |event| Delivery {
                    tenant,
                    shard,
                    pos: entry.pos,
                    at,
                    event,
                };
                match ev {
                    SpineEvent::Conversation { c, posts: true, .. } if !r.wants_posts() => {
                        if r.wants_post_notices() {
                            batch.push(delivery(DomainEvent::Posted { conversation: c }));
                        }
                    }
                    SpineEvent::Conversation { c, from, to, .. } => {
                        let events = stored_events(&mut tx, c, from - 1, to, to - from + 1).await?;
                        batch.extend(
                            events
                                .into_iter()
                                .map(|e| delivery(DomainEvent::Conversation(e))),
                        );
                    }
                    SpineEvent::AgentChanged { agent } => {
                        batch.push(delivery(DomainEvent::AgentChanged { agent }));
                    }
                    SpineEvent::QueueChanged { c } => {
                        batch.push(delivery(DomainEvent::QueueChanged { conversation: c }));
                    }
                    SpineEvent::Rated { c } => {
                        batch.push(delivery(DomainEvent::Rated { conversation: c }));
                    }
                    // The event that made them a member is in its conversation's range.
                    SpineEvent::Joined { .. } => {}
                }
            }
        }
        r.handle(&batch).await?;
        store::store_cursor(&mut tx, r.name(), shard, last, clock.now()).await?;
        tx.commit().await?;
        if !full {
            return Ok(true);
        }
    }
}
