//! The live queue for this node's streams: when to read a tenant's queue again, telling each
//! waiting visitor's stream its place when it changed, and each supervisor's stream the
//! queue and the agents' states ([`Board`]) when they changed.
//!
//! A visitor stream registers here ([`QueueWatch::register`]) and gets a [`QueueFeed`]: the
//! latest places of that visitor's waiting chats, overwritten in place (a slow stream sees
//! the newest value, never a backlog). A supervisor's stream (QueueService.WatchQueue)
//! registers with [`QueueWatch::watch_board`] and gets a [`BoardFeed`]: the latest board,
//! likewise overwritten in place, and only when it differs from the last one. Per tenant
//! with streams here, the queue is read again (one read for the whole tenant, however many
//! of its streams are here: [`queue_view::read`] for visitors' places, [`queue_view::board`]
//! for supervisors) when:
//!
//! - a chat's status changed on the fast path (the hub sees every `status_changed` event:
//!   queued, assigned, ended);
//! - a spine notice names a chat that was waiting at the last read, or a visitor's new chat,
//!   and the fast path did not bring that seq within its grace (`realtime::hints`; this is
//!   how nodes without NATS, and nodes whose NATS lost the event, learn of it);
//! - a spine notice says an agent's status, capacity or presence changed (agents' changes
//!   have no fast path; every node hears the notice);
//! - a stream registers (its first place or board);
//! - every [`REFRESH`] while one of this node's visitors waits, since estimates drift
//!   (agents come and go, chats close) without any chat's status changing;
//! - every [`BOARD_REFRESH`] while a supervisor watches here: a chat that ends after it was
//!   assigned frees its agent's seat, and a node without NATS hears of that only as a commit
//!   of a chat that was not waiting, which is not worth a read on its own (most such commits
//!   are messages); time also relaxes skills. This keeps a board at most about a second
//!   behind whatever changed.
//!
//! Reads are coalesced per tenant ([`Coalescer`]): at most one every [`SPACING`], and a
//! change that arrives while a read runs starts another after it, so what a stream sees is
//! at most a read's duration plus [`SPACING`] behind.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::hub::{QueueObserver, SESSION_ENDED};
use super::stream::{SHUTDOWN, StreamContext};
use crate::domain::Engine;
use crate::domain::participants::Participant;
use crate::domain::queue_view::{self, Board, Place, QueueRead};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, TenantId, VisitorId};
use crate::tenancy::{SystemCap, TenantScope};

/// Least time between two reads of one tenant's queue.
pub const SPACING: Duration = Duration::from_millis(250);
/// How often the queue of a tenant with visitors waiting here is read without a change.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How often the board of a tenant with supervisors watching here is read without a change.
pub const BOARD_REFRESH: Duration = Duration::from_secs(1);
/// How often a tenant's handling time is measured again.
const HANDLING_REFRESH: Duration = Duration::from_secs(60);
/// A read that failed is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// When each tenant's queue is read next: pure bookkeeping over instants the caller passes.
#[derive(Debug)]
pub struct Coalescer {
    spacing: Duration,
    tenants: HashMap<TenantId, Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Something changed since the last read started, from this instant on.
    dirty_since: Option<Instant>,
    running: bool,
    started: Option<Instant>,
}

impl Slot {
    fn ready_at(&self, spacing: Duration) -> Option<Instant> {
        let since = self.dirty_since.filter(|_| !self.running)?;
        Some(match self.started {
            Some(s) => since.max(s + spacing),
            None => since,
        })
    }
}

impl Coalescer {
    /// Reads of one tenant at least `spacing` apart.
    pub fn new(spacing: Duration) -> Self {
        Self {
            spacing,
            tenants: HashMap::new(),
        }
    }

    /// The tenant's queue may have changed at `at` (a read is wanted from then on).
    pub fn touch(&mut self, tenant: TenantId, at: Instant) {
        let slot = self.tenants.entry(tenant).or_default();
        slot.dirty_since = Some(slot.dirty_since.map_or(at, |d| d.min(at)));
    }

    /// The tenants whose read starts now; they count as running until [`Self::finished`].
    pub fn start_due(&mut self, now: Instant) -> Vec<TenantId> {
        let spacing = self.spacing;
        let mut due = Vec::new();
        for (t, slot) in &mut self.tenants {
            if slot.ready_at(spacing).is_some_and(|at| at <= now) {
                slot.dirty_since = None;
                slot.running = true;
                slot.started = Some(now);
                due.push(*t);
            }
        }
        // Forget tenants that are idle and whose spacing has passed: nothing to remember.
        self.tenants.retain(|_, s| {
            s.running || s.dirty_since.is_some() || s.started.is_some_and(|st| st + spacing > now)
        });
        due
    }

    /// When the next read becomes due, if one is wanted.
    pub fn next_due(&self) -> Option<Instant> {
        self.tenants
            .values()
            .filter_map(|s| s.ready_at(self.spacing))
            .min()
    }

    /// The tenant's read ended.
    pub fn finished(&mut self, tenant: TenantId) {
        if let Some(s) = self.tenants.get_mut(&tenant) {
            s.running = false;
        }
    }
}

/// One registered stream's view of its visitor's waiting chats.
pub struct QueueFeed {
    id: u64,
    tenant: TenantId,
    rx: watch::Receiver<Vec<Place>>,
    watch: Arc<QueueWatch>,
}

impl QueueFeed {
    /// The visitor's waiting chats once they changed; None if the watch went away.
    pub async fn changed(&mut self) -> Option<Vec<Place>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}

impl Drop for QueueFeed {
    fn drop(&mut self) {
        self.watch.unregister(self.tenant, self.id);
    }
}

/// One supervisor stream's view of its tenant's board.
pub struct BoardFeed {
    id: u64,
    tenant: TenantId,
    rx: watch::Receiver<Option<Arc<Board>>>,
    watch: Arc<QueueWatch>,
}

impl BoardFeed {
    /// The board once it changed (the first call: the latest board as soon as there is
    /// one); None if the watch went away.
    pub async fn changed(&mut self) -> Option<Arc<Board>> {
        loop {
            self.rx.changed().await.ok()?;
            if let Some(b) = self.rx.borrow_and_update().clone() {
                return Some(b);
            }
        }
    }
}

impl Drop for BoardFeed {
    fn drop(&mut self) {
        self.watch.unwatch_board(self.tenant, self.id);
    }
}

/// A supervisor's stream of boards: the first as soon as it is read, then each one that
/// differs from the one before. It ends like the agent's other streams: with
/// UNAUTHENTICATED when its session is signed out (or revoked) on any node, and with a
/// resync error when the agent is deactivated, the node loses the bus or shuts down (the
/// client reconnects and gets a fresh board).
pub fn board_stream(
    ctx: &StreamContext,
    scope: TenantScope,
) -> AppResult<impl futures_util::Stream<Item = AppResult<Arc<Board>>> + Send + 'static> {
    let me = Participant::of(&scope)?;
    // Registered in the hub only so that a signed-out session or a deactivated agent ends
    // the stream where the hub ends the agent's others; it follows no conversation, and
    // what it is sent (the tenant's agent presence) is read and dropped.
    let mut sub = ctx.hub.subscribe(scope.tenant_id(), me, scope.session());
    let mut feed = ctx.queue.watch_board(scope);
    let shutdown = ctx.shutdown.clone();
    Ok(async_stream::try_stream! {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => Err(SHUTDOWN),
                ev = sub.recv() => match ev {
                    Ok(_) => continue,
                    Err(reason) => Err(reason),
                },
                b = feed.changed() => b.ok_or(SHUTDOWN),
            };
            match next {
                Ok(b) => yield b,
                Err(SESSION_ENDED) => Err(AppError::Unauthenticated("this session has ended"))?,
                Err(reason) => Err(AppError::Resync(reason))?,
            }
        }
    })
}

/// The node's queue positions and boards (see the module doc).
pub struct QueueWatch {
    inner: Mutex<Inner>,
    wake: Notify,
}

struct Inner {
    coalescer: Coalescer,
    tenants: HashMap<TenantId, Tenant>,
    next_id: u64,
}

#[derive(Default)]
struct Tenant {
    feeds: HashMap<u64, (VisitorId, watch::Sender<Vec<Place>>)>,
    /// Supervisors' streams, each with the scope it was opened with: a board is read with
    /// one of them, so it shows only what that agent may see (the same for every agent).
    boards: HashMap<u64, TenantScope>,
    /// The latest board, shared by every supervisor's stream here; None while there is none
    /// or nobody watches.
    board: Option<watch::Sender<Option<Arc<Board>>>>,
    /// The chats waiting at the last read, so spine notices about others cost nothing.
    queued: HashSet<ConversationId>,
    /// The highest status seq the fast path brought per waiting chat, so the spine notice
    /// of the same change does not read the queue a second time.
    seen: HashMap<ConversationId, i64>,
    /// Whether one of this node's visitors waited at the last read.
    waiting_here: bool,
    /// When the handling time was last measured, and what it was.
    handling: Option<(Instant, Option<f64>)>,
}

impl Tenant {
    fn idle(&self) -> bool {
        self.feeds.is_empty() && self.boards.is_empty()
    }

    /// The scope to read the board with, if anyone watches it.
    fn board_scope(&self) -> Option<TenantScope> {
        // The oldest stream's: any would do, and this one changes least often.
        self.boards
            .iter()
            .min_by_key(|(id, _)| **id)
            .map(|(_, s)| *s)
    }

    /// Takes a board in and tells every supervisor's stream, unless it is what they have.
    fn apply_board(&mut self, board: Board, places_read: bool) {
        if !places_read {
            // Without visitors here the board is what knows which chats wait.
            self.queued = board.chats.iter().map(|c| c.chat.id).collect();
            let queued = &self.queued;
            self.seen.retain(|c, _| queued.contains(c));
        }
        if let Some(tx) = &self.board {
            tx.send_if_modified(|current| {
                let changed = current.as_deref() != Some(&board);
                if changed {
                    *current = Some(Arc::new(board));
                }
                changed
            });
        }
    }

    fn handling_due(&self, now: Instant) -> bool {
        self.handling
            .is_none_or(|(at, _)| now.duration_since(at) >= HANDLING_REFRESH)
    }

    /// Takes a read in and tells every stream whose places changed; returns how many.
    fn apply(&mut self, read: QueueRead, measured: bool, now: Instant) -> usize {
        if measured {
            self.handling = Some((now, read.handling_seconds));
        }
        let handling = queue_view::handling_time(self.handling.and_then(|(_, h)| h));
        self.queued = read.waiting.iter().map(|w| w.conversation_id).collect();
        let queued = &self.queued;
        self.seen.retain(|c, _| queued.contains(c));
        let here: HashSet<VisitorId> = self.feeds.values().map(|(v, _)| *v).collect();
        let mut mine: HashMap<VisitorId, Vec<Place>> = HashMap::new();
        for p in queue_view::places(&read.waiting, handling, read.seats) {
            if here.contains(&p.visitor) {
                mine.entry(p.visitor).or_default().push(p);
            }
        }
        self.waiting_here = !mine.is_empty();
        let mut told = 0usize;
        for (visitor, tx) in self.feeds.values() {
            let new = mine.get(visitor).cloned().unwrap_or_default();
            told += usize::from(tx.send_if_modified(|current| {
                let changed = *current != new;
                if changed {
                    *current = new;
                }
                changed
            }));
        }
        told
    }
}

impl QueueWatch {
    /// Starts the node's watch; it reads through `engine` with the engine's own authority.
    pub fn start(engine: Arc<Engine>, sys: SystemCap, shutdown: CancellationToken) -> Arc<Self> {
        let watch = Arc::new(Self {
            inner: Mutex::new(Inner {
                coalescer: Coalescer::new(SPACING),
                tenants: HashMap::new(),
                next_id: 1,
            }),
            wake: Notify::new(),
        });
        tokio::spawn(watch.clone().run(engine, sys, shutdown));
        watch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Losing a half-made update matters less than stopping positions for the node.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream of `visitor`; its places come through the feed, the first ones
    /// after the next read (which this asks for).
    pub fn register(self: &Arc<Self>, tenant: TenantId, visitor: VisitorId) -> QueueFeed {
        let (tx, rx) = watch::channel(Vec::new());
        let id = {
            let mut s = self.lock();
            let id = s.next_id;
            s.next_id += 1;
            s.tenants
                .entry(tenant)
                .or_default()
                .feeds
                .insert(id, (visitor, tx));
            s.coalescer.touch(tenant, Instant::now());
            id
        };
        self.wake.notify_one();
        QueueFeed {
            id,
            tenant,
            rx,
            watch: self.clone(),
        }
    }

    fn unregister(&self, tenant: TenantId, id: u64) {
        let mut s = self.lock();
        if let Some(t) = s.tenants.get_mut(&tenant) {
            t.feeds.remove(&id);
            if t.idle() {
                s.tenants.remove(&tenant);
            }
        }
    }

    /// Registers a supervisor's stream of the scope's tenant; its boards come through the
    /// feed, the latest one at once if there is one, and a fresh one after the next read
    /// (which this asks for) if it differs.
    pub fn watch_board(self: &Arc<Self>, scope: TenantScope) -> BoardFeed {
        let tenant = scope.tenant_id();
        let (id, rx) = {
            let mut s = self.lock();
            let id = s.next_id;
            s.next_id += 1;
            let t = s.tenants.entry(tenant).or_default();
            t.boards.insert(id, scope);
            let mut rx = t
                .board
                .get_or_insert_with(|| watch::channel(None).0)
                .subscribe();
            // What the others were last shown is the new stream's first board.
            rx.mark_changed();
            s.coalescer.touch(tenant, Instant::now());
            (id, rx)
        };
        self.wake.notify_one();
        BoardFeed {
            id,
            tenant,
            rx,
            watch: self.clone(),
        }
    }

    fn unwatch_board(&self, tenant: TenantId, id: u64) {
        let mut s = self.lock();
        if let Some(t) = s.tenants.get_mut(&tenant) {
            t.boards.remove(&id);
            if t.boards.is_empty() {
                // Nobody to show it to: the next watcher starts from a fresh read.
                t.board = None;
            }
            if t.idle() {
                s.tenants.remove(&tenant);
            }
        }
    }

    fn touch(&self, tenant: TenantId) {
        self.lock().coalescer.touch(tenant, Instant::now());
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, engine: Arc<Engine>, sys: SystemCap, stop: CancellationToken) {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut board_refresh = tokio::time::interval(BOARD_REFRESH);
        board_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (due, next) = {
                let mut s = self.lock();
                let due = s.coalescer.start_due(Instant::now());
                (due, s.coalescer.next_due())
            };
            for tenant in due {
                tokio::spawn(self.clone().read(engine.clone(), sys, tenant));
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()),
                    if next.is_some() => {}
                _ = refresh.tick() => {
                    let now = Instant::now();
                    let mut s = self.lock();
                    let Inner { coalescer, tenants, .. } = &mut *s;
                    for (t, state) in tenants.iter() {
                        if state.waiting_here {
                            coalescer.touch(*t, now);
                        }
                    }
                }
                _ = board_refresh.tick() => {
                    let now = Instant::now();
                    let mut s = self.lock();
                    let Inner { coalescer, tenants, .. } = &mut *s;
                    for (t, state) in tenants.iter() {
                        if !state.boards.is_empty() {
                            coalescer.touch(*t, now);
                        }
                    }
                }
            }
        }
    }

    /// One read of `tenant`'s queue, applied to its streams here: the places if visitors'
    /// streams are here, the board if supervisors' are.
    async fn read(self: Arc<Self>, engine: Arc<Engine>, sys: SystemCap, tenant: TenantId) {
        let started = Instant::now();
        // Who is here decides what is read; a tenant whose last stream went while the read
        // waited to start reads nothing.
        let (measure, board_scope) = {
            let s = self.lock();
            match s.tenants.get(&tenant) {
                Some(t) => (
                    (!t.feeds.is_empty()).then(|| t.handling_due(started)),
                    t.board_scope(),
                ),
                None => (None, None),
            }
        };
        let places = match measure {
            Some(measure) => {
                let scope = TenantScope::system(&sys, tenant);
                let read = queue_view::read(&engine, &scope, engine.now(), measure).await;
                Some(read.map(|r| (r, measure)))
            }
            None => None,
        };
        let board = match board_scope {
            Some(scope) => Some(queue_view::board(&engine, &scope).await),
            None => None,
        };
        {
            let mut s = self.lock();
            s.coalescer.finished(tenant);
            let mut failed = false;
            let places_read = matches!(places, Some(Ok(_)));
            if let Some(t) = s.tenants.get_mut(&tenant) {
                match places {
                    Some(Ok((read, measured))) => {
                        let waiting = read.waiting.len();
                        let read_ms = started.elapsed().as_millis() as u64;
                        let told = t.apply(read, measured, started);
                        tracing::debug!(
                            tenant.id = %tenant,
                            waiting,
                            told,
                            read_ms,
                            ms = started.elapsed().as_millis() as u64,
                            "queue read"
                        );
                    }
                    Some(Err(error)) => {
                        tracing::warn!(tenant.id = %tenant, %error, "reading the queue failed");
                        failed = true;
                    }
                    None => {}
                }
                match board {
                    Some(Ok(board)) => t.apply_board(board, places_read),
                    Some(Err(error)) => {
                        tracing::warn!(tenant.id = %tenant, %error, "reading the board failed");
                        failed = true;
                    }
                    None => {}
                }
            }
            if failed {
                s.coalescer.touch(tenant, Instant::now() + RETRY);
            }
        }
        self.wake.notify_one();
    }
}

impl QueueObserver for QueueWatch {
    fn interested(&self, tenant: TenantId) -> bool {
        self.lock().tenants.contains_key(&tenant)
    }

    fn status_changed(&self, tenant: TenantId, conv: ConversationId, seq: i64) {
        {
            let mut s = self.lock();
            let Some(t) = s.tenants.get_mut(&tenant) else {
                return;
            };
            let seen = t.seen.entry(conv).or_default();
            *seen = (*seen).max(seq);
            s.coalescer.touch(tenant, Instant::now());
        }
        self.wake.notify_one();
    }

    fn agents_changed(&self, tenant: TenantId) {
        if self.interested(tenant) {
            self.touch(tenant);
        }
    }

    fn committed(&self, tenant: TenantId, conv: ConversationId, up_to: i64, entering: bool) {
        let wanted = {
            let s = self.lock();
            s.tenants.get(&tenant).is_some_and(|t| {
                let arrived = t.seen.get(&conv).is_some_and(|seen| *seen >= up_to);
                !arrived && (entering || t.queued.contains(&conv))
            })
        };
        if wanted {
            self.touch(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_change_is_read_at_once_and_changes_during_a_read_once_more_after_it() {
        let mut c = Coalescer::new(250 * MS);
        let t = TenantId::new();
        let t0 = Instant::now();
        assert!(c.start_due(t0).is_empty());
        assert_eq!(c.next_due(), None);

        c.touch(t, t0);
        assert_eq!(c.next_due(), Some(t0));
        assert_eq!(c.start_due(t0), vec![t]);
        // Three changes while it reads: one more read, not before the spacing.
        for ms in [10, 20, 30] {
            c.touch(t, t0 + ms * MS);
        }
        assert_eq!(c.next_due(), None, "nothing starts while a read runs");
        c.finished(t);
        assert_eq!(c.next_due(), Some(t0 + 250 * MS));
        assert!(c.start_due(t0 + 100 * MS).is_empty());
        assert_eq!(c.start_due(t0 + 250 * MS), vec![t]);
        c.finished(t);
        // No change since: nothing more.
        assert_eq!(c.next_due(), None);
        assert!(c.start_due(t0 + 10_000 * MS).is_empty());
    }

    #[test]
    fn tenants_are_spaced_apart_independently() {
        let mut c = Coalescer::new(250 * MS);
        let (a, b) = (TenantId::new(), TenantId::new());
        let t0 = Instant::now();
        c.touch(a, t0);
        assert_eq!(c.start_due(t0), vec![a]);
        c.finished(a);
        c.touch(a, t0 + 10 * MS);
        c.touch(b, t0 + 10 * MS);
        assert_eq!(c.start_due(t0 + 10 * MS), vec![b]);
        assert_eq!(c.next_due(), Some(t0 + 250 * MS));
    }

    #[test]
    fn a_board_equal_to_the_last_one_is_not_sent_again() {
        let mut t = Tenant::default();
        let (tx, mut rx) = watch::channel(None);
        t.board = Some(tx);
        let one = Board {
            total: 1,
            ..Board::default()
        };
        t.apply_board(one.clone(), false);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_deref(), Some(&one));
        // The same board from the next read: nothing for the streams.
        t.apply_board(one.clone(), false);
        assert!(!rx.has_changed().unwrap());
        t.apply_board(Board::default(), false);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_deref(), Some(&Board::default()));
    }

    #[test]
    fn a_retry_in_the_future_waits_for_its_time() {
        let mut c = Coalescer::new(250 * MS);
        let t = TenantId::new();
        let t0 = Instant::now();
        c.touch(t, t0 + 1000 * MS);
        assert!(c.start_due(t0 + 500 * MS).is_empty());
        // An earlier change brings it forward.
        c.touch(t, t0 + 600 * MS);
        assert_eq!(c.start_due(t0 + 600 * MS), vec![t]);
    }
}
