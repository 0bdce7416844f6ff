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
//! connection was lost, every tenant's shares are checked once. Each reactor runs on its own
//! task. For a reactor that does not want posted messages, a notice of posts only marks its
//! share for the next [`LAZY`] tick instead: the send path commits many batches a second,
//! and each wake-up costs a cursor transaction. A share held by another node is tried again
//! a moment later, so work that node did not pick up is not left behind.
//!
//! Kept small and hand-written: the outbox and job crates for PostgreSQL bring sqlx or
//! tokio-postgres as a second driver beside diesel-async.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Clock;
use super::conversations::stored_events_in;
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
/// Shares that only saw posts are caught up this often for a reactor that does not want
/// posts (its cursor moves past them; nothing in them is for it but post notices).
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
    /// A conversation's events may have queued a chat or freed a seat (a status change or a
    /// member leaving), for reactors that do not read conversation events
    /// ([`Reactor::reads_conversation_events`]).
    RoutingChanged {
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
    /// Whether it reads conversation events. One that does not (the dispatcher, which only
    /// wakes on them) gets [`DomainEvent::RoutingChanged`] for each range the spine does not mark as
    /// quiet, and nothing is read back for it.
    fn reads_conversation_events(&self) -> bool {
        true
    }
    /// Spine entries per batch. One whose cost grows with the distinct conversations of a
    /// batch rather than its entries (the same open chats post in entry after entry) keeps
    /// up better with bigger batches.
    fn batch_size(&self) -> i64 {
        BATCH
    }
    /// The least time between the starts of two rounds of its work, unless a share is behind
    /// by a full batch. One whose cost is per batch and per distinct conversation rather than
    /// per event (analytics recomputes each chat of a batch once) does far less work when the
    /// events of a moment come together than one batch per commit.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }
    /// Handles a batch of one share, in order. An error leaves the cursor where it was, so
    /// the batch comes again.
    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, AppResult<()>>;
}

/// Runs `reactors` until `shutdown`, woken by the spine notices in `heard`; `sys` reads
/// every tenant's spine. Each reactor runs on its own task with its own copy of the
/// notices, so a slow one (a dispatcher pass under load) never holds back another.
pub fn start(
    db: Db,
    clock: Arc<dyn Clock>,
    reactors: Vec<Arc<dyn Reactor>>,
    heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    let mut outs = Vec::new();
    for r in reactors {
        let (tx, rx) = mpsc::channel(NOTICES);
        outs.push(tx);
        tokio::spawn(run(db.clone(), clock.clone(), r, rx, sys, shutdown.clone()));
    }
    if !outs.is_empty() {
        tokio::spawn(fan_out(heard, outs));
    }
}

/// Notices buffered per reactor.
const NOTICES: usize = 4096;

/// Copies every notice to each reactor without waiting for any: a reactor whose buffer is
/// full misses notices, and is told to look at every share again once it has room (what a
/// lost listening connection gets too), so no work is left behind.
async fn fan_out(mut heard: mpsc::Receiver<Heard>, outs: Vec<mpsc::Sender<Heard>>) {
    let mut overflowed = vec![false; outs.len()];
    while let Some(h) = heard.recv().await {
        for (out, over) in outs.iter().zip(overflowed.iter_mut()) {
            if *over {
                if out.try_send(Heard::Reconnected).is_err() {
                    continue;
                }
                *over = false;
            }
            match out.try_send(h.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => *over = true,
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

type Share = (TenantId, i16);

async fn run(
    db: Db,
    clock: Arc<dyn Clock>,
    r: Arc<dyn Reactor>,
    mut heard: mpsc::Receiver<Heard>,
    sys: SystemCap,
    shutdown: CancellationToken,
) {
    let mut dirty: BTreeSet<Share> = BTreeSet::new();
    let mut later: HashSet<Share> = HashSet::new();
    let mut lazy: HashSet<Share> = HashSet::new();
    let posts_wanted = r.wants_posts();
    let mut rescan = true;
    let mut retry = tokio::time::interval(RETRY_HELD);
    let mut lazy_tick = tokio::time::interval(LAZY);
    let linger = r.linger();
    let mut next_round = tokio::time::Instant::now();
    // A share that returned a full batch goes on at once: lingering would cap catching up.
    let mut behind = false;
    loop {
        if rescan {
            match all_behind(&db, &sys, r.as_ref()).await {
                Ok(shares) => {
                    dirty.extend(shares);
                    rescan = false;
                }
                Err(e) => {
                    tracing::warn!(reactor = r.name(), error = %e, "a reactor could not scan the spine")
                }
            }
        }
        // Rounds: every share that was dirty when a round began gets one batch before any
        // gets a second, so a share that is always busy cannot starve the others (taking the
        // lowest share each time left three of four shares unread for seconds under load).
        while !dirty.is_empty() {
            if !behind && !linger.is_zero() {
                // Notices keep being read meanwhile, so the channel never fills.
                let wake = tokio::time::sleep_until(next_round);
                tokio::pin!(wake);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = &mut wake => break,
                        h = heard.recv() => match h {
                            Some(h) => note(h, &mut dirty, &mut lazy, posts_wanted, &mut rescan),
                            None => return,
                        },
                    }
                }
            }
            next_round = tokio::time::Instant::now() + linger;
            behind = false;
            for share in std::mem::take(&mut dirty) {
                match drain(&db, &sys, clock.as_ref(), r.as_ref(), share).await {
                    Ok(Drained::AtHead) => {}
                    Ok(Drained::More) => {
                        dirty.insert(share);
                        behind = true;
                    }
                    Ok(Drained::Held) => {
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
                while let Ok(h) = heard.try_recv() {
                    note(h, &mut dirty, &mut lazy, posts_wanted, &mut rescan);
                }
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

/// Marks a notice's share for work now, or, when it holds posts only and the reactor does not
/// want posts, for the next [`LAZY`] tick (a busy send path then wakes no reactor per batch).
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

/// Every share that `r` has not consumed to its head.
async fn all_behind(db: &Db, sys: &SystemCap, r: &dyn Reactor) -> AppResult<Vec<Share>> {
    let mut out = Vec::new();
    for tenant in super::tenants::all_ids(db, sys).await? {
        let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
        for shard in store::shards_behind(&mut tx, r.name()).await? {
            out.push((tenant, shard));
        }
        tx.commit().await?;
    }
    Ok(out)
}

/// What one [`drain`] left.
enum Drained {
    /// The share is consumed to its head.
    AtHead,
    /// A full batch was handled; more may follow.
    More,
    /// Another node holds the share right now.
    Held,
}

/// Feeds one batch of one share to one reactor.
async fn drain(
    db: &Db,
    sys: &SystemCap,
    clock: &dyn Clock,
    r: &dyn Reactor,
    (tenant, shard): Share,
) -> AppResult<Drained> {
    debug_assert!((0..SHARDS).contains(&shard));
    let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
    let Some(pos) = store::claim_cursor(&mut tx, r.name(), shard).await? else {
        return Ok(Drained::Held);
    };
    let began = std::time::Instant::now();
    let size = r.batch_size();
    let entries = store::entries_after(&mut tx, shard, pos, size).await?;
    let Some(last) = entries.last().map(|e| e.pos) else {
        tx.commit().await?;
        return Ok(Drained::AtHead);
    };
    let full = entries.len() as i64 == size;
    let recorded = entries
        .into_iter()
        .map(|entry| {
            let events: Vec<SpineEvent> = serde_json::from_value(entry.events)
                .map_err(|e| AppError::Internal(format!("spine entry {}: {e}", entry.pos)))?;
            Ok((entry.pos, entry.created_at, events))
        })
        .collect::<AppResult<Vec<_>>>()?;
    // The conversation events the reactor reads back, in one go.
    let reads = r.reads_conversation_events();
    let wanted = |ev: &SpineEvent| match ev {
        SpineEvent::Conversation { posts, .. } => reads && (!posts || r.wants_posts()),
        _ => false,
    };
    let ranges: Vec<(ConversationId, i64, i64)> = recorded
        .iter()
        .flat_map(|(.., events)| events)
        .filter(|ev| wanted(ev))
        .filter_map(|ev| match ev {
            SpineEvent::Conversation { c, from, to, .. } => Some((*c, from - 1, *to)),
            _ => None,
        })
        .collect();
    let mut read: HashMap<ConversationId, VecDeque<ConversationEvent>> = HashMap::new();
    for ev in stored_events_in(&mut tx, &ranges).await? {
        read.entry(ev.conversation_id).or_default().push_back(ev);
    }
    let mut batch = Vec::new();
    for (pos, at, events) in recorded {
        for ev in events {
            let delivery = |event| Delivery {
                tenant,
                shard,
                pos,
                at,
                event,
            };
            match ev {
                SpineEvent::Conversation { c, posts: true, .. } if !r.wants_posts() => {
                    if r.wants_post_notices() {
                        batch.push(delivery(DomainEvent::Posted { conversation: c }));
                    }
                }
                SpineEvent::Conversation { c, quiet, .. } if !reads => {
                    if !quiet {
                        batch.push(delivery(DomainEvent::RoutingChanged { conversation: c }));
                    }
                }
                SpineEvent::Conversation { c, to, .. } => {
                    // This range's events are the conversation's next ones read.
                    let queue = read.entry(c).or_default();
                    while queue.front().is_some_and(|e| e.seq <= to) {
                        if let Some(e) = queue.pop_front() {
                            batch.push(delivery(DomainEvent::Conversation(e)));
                        }
                    }
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
    let read_ms = began.elapsed().as_millis() as u64;
    r.handle(&batch).await?;
    store::store_cursor(&mut tx, r.name(), shard, last, clock.now()).await?;
    tx.commit().await?;
    tracing::debug!(
        reactor = r.name(),
        %tenant,
        shard,
        deliveries = batch.len(),
        read_ms,
        ms = began.elapsed().as_millis() as u64,
        "reactor batch done"
    );
    Ok(if full { Drained::More } else { Drained::AtHead })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: u32) -> Heard {
        Heard::Payload(n.to_string())
    }

    #[tokio::test]
    async fn a_reactor_whose_buffer_filled_is_told_to_look_again_and_the_others_miss_nothing() {
        let (tx, heard) = mpsc::channel(16);
        let (fast, mut fast_rx) = mpsc::channel(16);
        let (slow, mut slow_rx) = mpsc::channel(1);
        let fan = tokio::spawn(fan_out(heard, vec![fast, slow]));
        for n in 0..3 {
            tx.send(payload(n)).await.unwrap();
        }
        // The slow reactor took nothing yet: its buffer holds the first notice only.
        while fast_rx.len() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(slow_rx.recv().await, Some(payload(0)));
        // Once it has room, the next notice it gets says that some were lost.
        tx.send(payload(3)).await.unwrap();
        assert_eq!(slow_rx.recv().await, Some(Heard::Reconnected));
        drop(tx);
        fan.await.unwrap();
        let mut got = Vec::new();
        while let Some(h) = fast_rx.recv().await {
            got.push(h);
        }
        assert_eq!(got, (0..4).map(payload).collect::<Vec<_>>());
        // Notice 3 found the buffer full again behind that word: lost too, and covered by the
        // same look at every share.
        assert_eq!(slow_rx.recv().await, None);
    }
}
