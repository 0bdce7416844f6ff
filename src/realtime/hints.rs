//! Spine notices to this node's streams. Every node hears each commit's notice from
//! PostgreSQL; when a followed conversation's events have not arrived on the fast path (the
//! local hub or NATS) a moment later, its streams are told to fetch them from PostgreSQL;
//! a participant who joined a conversation has their streams here told to join it, and the
//! queue watch (`realtime::queue`) hears of commits and agent changes in tenants it
//! watches. With the follower (`domain::follower`), this is what delivers an event whose
//! committing node died right after its commit, and what lets nodes without NATS see each
//! other's events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::{BUS_LOST, Hub};
use crate::domain::participants::Participant;
use crate::domain::spine::{Joiner, Notice};
use crate::ids::{ConversationId, TenantId};
use crate::storage::listen::Notice as Heard;

/// How long the fast path gets before a stream fetches from PostgreSQL itself.
const FAST_PATH_GRACE: Duration = Duration::from_millis(100);

/// What a notice asks of this node's streams, once the grace has passed.
#[derive(Clone, Copy)]
enum Hint {
    /// Fetch what the fast path did not bring of this conversation, up to this seq.
    Committed(TenantId, ConversationId, i64),
    /// This participant joined this conversation at this seq.
    Joined(TenantId, Participant, ConversationId, i64),
    /// Tell the queue watch this conversation committed up to this seq (and whether as a
    /// visitor's new chat).
    Queue(TenantId, ConversationId, i64, bool),
}

/// Feeds spine notices from `heard` to `hub` until `shutdown`.
pub fn start(hub: Arc<Hub>, mut heard: mpsc::Receiver<Heard>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        // Every entry waits the same grace, so arrival order is deadline order.
        let mut waiting: VecDeque<(Instant, Hint)> = VecDeque::new();
        loop {
            let next = waiting.front().map(|w| w.0);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                h = heard.recv() => match h {
                    Some(Heard::Payload(p)) => {
                        let Some(n) = Notice::decode(&p) else {
                            tracing::warn!("undecodable spine notice");
                            continue;
                        };
                        let due = Instant::now() + FAST_PATH_GRACE;
                        if let Some(q) = hub.queue_observer()
                            && q.interested(n.tenant)
                        {
                            let entering = n.joined.iter().filter_map(|(c, seq, who)| {
                                matches!(who, Joiner::Visitor(_)).then_some((*c, *seq, true))
                            });
                            let hints = n.committed.iter().map(|(c, s)| (*c, *s, false));
                            for (c, seq, entering) in hints.chain(entering) {
                                waiting.push_back((due, Hint::Queue(n.tenant, c, seq, entering)));
                            }
                            // Agent changes have no fast path to wait for.
                            if !n.agents.is_empty() {
                                q.agents_changed(n.tenant);
                            }
                        }
                        for (c, up_to) in n.committed {
                            if hub.behind(n.tenant, c, up_to) {
                                waiting.push_back((due, Hint::Committed(n.tenant, c, up_to)));
                            }
                        }
                        for (c, seq, who) in n.joined {
                            let who = who.participant();
                            if hub.hosts(n.tenant, who) {
                                waiting.push_back((due, Hint::Joined(n.tenant, who, c, seq)));
                            }
                        }
                    }
                    // Notices of the gap are lost: streams resume from their cursors.
                    Some(Heard::Reconnected) => hub.end_all(BUS_LOST),
                    None => return,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(&(at, hint)) = waiting.front() {
                        if at > now {
                            break;
                        }
                        waiting.pop_front();
                        match hint {
                            Hint::Committed(t, c, up_to) => hub.committed(t, c, up_to),
                            // A stream that joined on the fast path ignores it.
                            Hint::Joined(t, who, c, seq) => hub.invited(t, who, c, seq),
                            Hint::Queue(t, c, seq, entering) => {
                                if let Some(q) = hub.queue_observer() {
                                    q.committed(t, c, seq, entering);
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}
