//! The live queue as waiting visitors see it: each waiting chat's place and an estimated
//! wait, from one read of the tenant's queue, its agents' free seats and its recent handling
//! time. The node-local work that pushes these to streams (when to read, whom to tell) is
//! `realtime::queue`; what is here is the read and the pure arithmetic.
//!
//! Places follow the queue's one order (`visitors::served_before`: priority, then waiting
//! time). The estimate for the chat at place `p` is
//!
//! ```text
//! ahead   = p - free                     (chats that must wait for a seat to free up)
//! wait    = ceil(ahead * handling / seats), at least 1 s
//! ```
//!
//! where `seats` is the total capacity of the agents who are available and online, `free`
//! the part of it not taken by open chats, and `handling` the mean time from assignment to
//! close of the tenant's chats closed in the last [`HANDLING_WINDOW`] ([`DEFAULT_HANDLING`]
//! when there are none). Why: with `seats` seats each freeing every `handling` seconds on
//! average, seats free up at `seats / handling` per second, so the `ahead`-th chat beyond
//! the free seats gets one after about `ahead * handling / seats`. It needs only numbers one
//! read gives, it moves the moment capacity or the queue moves, and it errs long rather
//! than short (a seat that is half way through its chat frees sooner than `handling`), which
//! visitors mind less. A chat that fits a free seat now is told 1 s: it is about to be
//! assigned, and 0 means unknown. With no seat at all (no agent available and online) the
//! estimate is 0, unknown, not a guess.
//!
//! Supervisors watch a [`Board`] instead: the head of the queue as `ListWaitingChats` gives
//! it and every agent's state as `ListAgentStates` does, read by [`board`] with the scope of
//! one of the watching agents (the same rules as the lists, so the stream shows nothing the
//! lists would not).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Engine;
use super::agents::AgentStatus;
use super::assignment::{self, QueuedChat};
use super::routing::AgentSnapshot;
use super::visitors::{QueueEntry, served_before};
use super::workflows::agent_snapshots;
use crate::error::AppResult;
use crate::ids::{ConversationId, VisitorId};
use crate::storage::queue::{self as store, WaitingRow};
use crate::tenancy::TenantScope;

/// Handling time assumed when no chat closed within the window.
pub const DEFAULT_HANDLING: Duration = Duration::from_secs(300);
/// Chats closed within this long count towards the handling time.
pub const HANDLING_WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// Chats started longer ago than this are left out of the handling time, which keeps its
/// query to a range of recent ids; a chat that lasted a day says little about the next one.
pub const HANDLING_MAX_AGE: chrono::Duration = chrono::Duration::hours(24);

/// Seats of the agents who can take chats now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seats {
    /// Seats not taken by open chats.
    pub free: u32,
    /// Every seat.
    pub total: u32,
}

/// The seats of the agents who are available and online.
pub fn seats(agents: &[AgentSnapshot]) -> Seats {
    agents
        .iter()
        .filter(|a| a.online && a.status == AgentStatus::Available)
        .fold(Seats::default(), |s, a| Seats {
            free: s
                .free
                .saturating_add(a.capacity.saturating_sub(a.open_chats)),
            total: s.total.saturating_add(a.capacity),
        })
}

/// The handling time to estimate with: the measured mean, or [`DEFAULT_HANDLING`] when
/// nothing was measured.
pub fn handling_time(mean_seconds: Option<f64>) -> Duration {
    match mean_seconds {
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(1e9)),
        _ => DEFAULT_HANDLING,
    }
}

/// Estimated wait in seconds of the chat at 1-based `position` (see the module doc); 0 when
/// unknown.
pub fn estimated_wait(position: u32, handling: Duration, seats: Seats) -> u32 {
    if seats.total == 0 {
        return 0;
    }
    let ahead = position.saturating_sub(seats.free);
    let secs = (f64::from(ahead) * handling.as_secs_f64() / f64::from(seats.total)).ceil();
    // `as` saturates; the estimate never says 0 (unknown) when it is known.
    (secs as u32).max(1)
}

/// A waiting chat's place as its visitor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The chat.
    pub conversation: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// 1 for the next chat to be served.
    pub position: u32,
    /// Estimated wait in seconds; 0 when unknown.
    pub estimated_wait_seconds: u32,
}

/// Every waiting chat's place, in serving order.
pub fn places(waiting: &[WaitingRow], handling: Duration, seats: Seats) -> Vec<Place> {
    let mut order: Vec<(QueueEntry, VisitorId)> = waiting
        .iter()
        .map(|w| {
            let entry = QueueEntry {
                conversation: w.conversation_id,
                priority: w.priority,
                enqueued_at: w.enqueued_at,
            };
            (entry, w.visitor_id)
        })
        .collect();
    // The storage order is only a head start; the queue's order is `served_before`.
    order.sort_by(|(a, _), (b, _)| {
        if served_before(a, b) {
            std::cmp::Ordering::Less
        } else if served_before(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    order
        .into_iter()
        .zip(1u32..)
        .map(|((entry, visitor), position)| Place {
            conversation: entry.conversation,
            visitor,
            position,
            estimated_wait_seconds: estimated_wait(position, handling, seats),
        })
        .collect()
}

/// One read of a tenant's queue and what its estimates need.
#[derive(Clone, Debug, Default)]
pub struct QueueRead {
    /// Waiting chats, in storage order.
    pub waiting: Vec<WaitingRow>,
    /// Seats of the agents who can take chats.
    pub seats: Seats,
    /// The measured mean handling time in seconds, when it was asked for and measurable.
    pub handling_seconds: Option<f64>,
}

/// Reads the queue of the scope's tenant in one transaction; with `handling`, also the
/// handling time of its recently closed chats (it changes slowly: callers ask for it now
/// and then, not on every read).
pub async fn read(
    e: &Engine,
    scope: &TenantScope,
    now: DateTime<Utc>,
    handling: bool,
) -> AppResult<QueueRead> {
    let started = std::time::Instant::now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let begun = started.elapsed();
    let waiting = store::waiting(&mut tx).await?;
    let listed = started.elapsed();
    // Nobody waits: no estimate to make, so no agents to read.
    let seats = if waiting.is_empty() {
        Seats::default()
    } else {
        seats(&agent_snapshots(&mut tx, now).await?)
    };
    let counted = started.elapsed();
    let handling_seconds = if handling {
        let from = ConversationId::from_uuid(v7_floor(now - HANDLING_MAX_AGE));
        store::handling_time(&mut tx, now - HANDLING_WINDOW, from)
            .await?
            .mean_seconds
    } else {
        None
    };
    let measured = started.elapsed();
    tx.commit().await?;
    // Where a slow read spent its time (a pool connection, which statement, the commit).
    tracing::debug!(
        waiting = waiting.len(),
        begin_ms = begun.as_millis() as u64,
        waiting_ms = (listed - begun).as_millis() as u64,
        agents_ms = (counted - listed).as_millis() as u64,
        handling_ms = (measured - counted).as_millis() as u64,
        commit_ms = (started.elapsed() - measured).as_millis() as u64,
        "queue read steps"
    );
    Ok(QueueRead {
        waiting,
        seats,
        handling_seconds,
    })
}

/// One waiting chat's place and estimated wait now, read on demand (GetQueueStatus); None
/// when it does not wait.
pub async fn place_of(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<Option<Place>> {
    let q = read(e, scope, e.now(), true).await?;
    let handling = handling_time(q.handling_seconds);
    Ok(places(&q.waiting, handling, q.seats)
        .into_iter()
        .find(|p| p.conversation == conv))
}

/// Waiting chats a [`Board`] shows at most; `total` counts the rest.
pub const BOARD_CHATS: i64 = 200;

/// The queue and the agents as a supervisor watches them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Board {
    /// The first [`BOARD_CHATS`] waiting chats, in serving order.
    pub chats: Vec<QueuedChat>,
    /// Chats waiting in all.
    pub total: u32,
    /// Every active agent of the tenant, by id.
    pub agents: Vec<AgentSnapshot>,
}

/// Reads the scope's tenant's [`Board`] (any agent of the tenant may). Two reads, the
/// queue's and the agents': a change between them shows in the next board, which that
/// change asks for.
pub async fn board(e: &Engine, scope: &TenantScope) -> AppResult<Board> {
    let (page, total) = assignment::waiting_list(e, scope, BOARD_CHATS, "").await?;
    let agents = assignment::agent_states(e, scope).await?;
    Ok(Board {
        chats: page.items,
        total,
        agents,
    })
}

/// The smallest UUIDv7 of the millisecond `at`: every id minted at or after `at` sorts at
/// or above it (PostgreSQL compares uuids bytewise, and a v7 id starts with its time).
fn v7_floor(at: DateTime<Utc>) -> uuid::Uuid {
    let ms = u128::try_from(at.timestamp_millis()).unwrap_or(0) & ((1 << 48) - 1);
    uuid::Uuid::from_u128(ms << 80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use chrono::TimeZone;

    fn agent(status: AgentStatus, online: bool, open: u32, capacity: u32) -> AgentSnapshot {
        AgentSnapshot {
            id: UserId::new(),
            name: "a".into(),
            status,
            online,
            open_chats: open,
            capacity,
            skills: Vec::new(),
            last_assigned_at: None,
        }
    }

    #[test]
    fn only_available_online_agents_bring_seats() {
        let agents = [
            agent(AgentStatus::Available, true, 1, 3),
            agent(AgentStatus::Available, true, 5, 2), // over capacity: no free seat
            agent(AgentStatus::Available, false, 0, 4), // offline
            agent(AgentStatus::Busy, true, 0, 4),
            agent(AgentStatus::Away, true, 0, 4),
        ];
        assert_eq!(seats(&agents), Seats { free: 2, total: 5 });
        assert_eq!(seats(&[]), Seats::default());
    }

    #[test]
    fn the_wait_grows_with_the_place_and_shrinks_with_seats() {
        let five_min = Duration::from_secs(300);
        let busy = |total| Seats { free: 0, total };
        // One agent, one seat, busy: each place waits one more handling time.
        assert_eq!(estimated_wait(1, five_min, busy(1)), 300);
        assert_eq!(estimated_wait(3, five_min, busy(1)), 900);
        // Three seats turn over three times as fast.
        assert_eq!(estimated_wait(3, five_min, busy(3)), 300);
        assert_eq!(estimated_wait(4, five_min, busy(3)), 400);
        // Free seats take the first chats at once: "about now", never "unknown".
        let two_free = Seats { free: 2, total: 3 };
        assert_eq!(estimated_wait(1, five_min, two_free), 1);
        assert_eq!(estimated_wait(2, five_min, two_free), 1);
        assert_eq!(estimated_wait(3, five_min, two_free), 100);
        // Rounded up to whole seconds.
        assert_eq!(
            estimated_wait(1, Duration::from_millis(10_200), busy(1)),
            11
        );
        // Nobody who could take a chat: unknown.
        assert_eq!(estimated_wait(1, five_min, Seats::default()), 0);
        // Absurd inputs saturate instead of wrapping.
        assert_eq!(
            estimated_wait(u32::MAX, Duration::from_secs(1 << 40), busy(1)),
            u32::MAX
        );
    }

    #[test]
    fn the_handling_time_is_measured_or_the_default() {
        assert_eq!(handling_time(None), DEFAULT_HANDLING);
        assert_eq!(handling_time(Some(42.5)), Duration::from_millis(42_500));
        assert_eq!(handling_time(Some(f64::NAN)), DEFAULT_HANDLING);
        assert_eq!(handling_time(Some(-1.0)), DEFAULT_HANDLING);
    }

    fn row(priority: i32, secs: i64) -> WaitingRow {
        WaitingRow {
            conversation_id: ConversationId::new(),
            visitor_id: VisitorId::new(),
            priority,
            enqueued_at: Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap(),
        }
    }

    #[test]
    fn places_follow_the_queue_order_whatever_order_storage_gave() {
        let (old, new, urgent) = (row(0, 0), row(0, 10), row(5, 20));
        let seats = Seats { free: 0, total: 2 };
        let p = places(&[new, old, urgent], Duration::from_secs(60), seats);
        let order: Vec<_> = p.iter().map(|p| (p.conversation, p.position)).collect();
        assert_eq!(
            order,
            vec![
                (urgent.conversation_id, 1),
                (old.conversation_id, 2),
                (new.conversation_id, 3)
            ]
        );
        assert_eq!(p[0].visitor, urgent.visitor_id);
        let waits: Vec<_> = p.iter().map(|p| p.estimated_wait_seconds).collect();
        assert_eq!(waits, vec![30, 60, 90]);
    }

    #[test]
    fn the_id_floor_sorts_below_every_later_id_and_above_earlier_ones() {
        let now = Utc::now();
        let floor = v7_floor(now - chrono::Duration::seconds(5));
        assert!(ConversationId::new().as_uuid() > floor);
        assert!(v7_floor(now - chrono::Duration::hours(1)) < floor);
    }
}
