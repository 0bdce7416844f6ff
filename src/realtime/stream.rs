//! One subscriber's stream: register with the hub and follow the conversations first, replay
//! from PostgreSQL what the client missed since its cursors, then forward live events,
//! skipping what was already sent and fetching any gap from PostgreSQL, so the client sees
//! every seq once and in order.
//! The subscriber is a participant: an agent (their conversations, and the tenant's agent
//! presence) or a visitor (their own external chats only); the same code serves both.
//! A visitor's stream also carries the places of their waiting chats (from
//! [`super::queue`]): after CaughtUp, then whenever one changes, and never again for a chat
//! once the stream has seen it leave the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::hub::{EndReason, Hub, SESSION_ENDED, Subscriber};
use super::presence::PresenceTracker;
use super::queue::{QueueFeed, QueueWatch};
use crate::domain::Engine;
use crate::domain::conversations::{self, Conversation, Status};
use crate::domain::events::{ConversationEvent, Event, EventKind, PresenceState};
use crate::domain::participants::Participant;
use crate::domain::queue_view::Place;
use crate::domain::visitors::Visitor;
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, UserId};
use crate::tenancy::TenantScope;

/// Events fetched from PostgreSQL per round trip while replaying.
const REPLAY_PAGE: i64 = 500;

/// Why a stream asks its client to reconnect.
pub const SHUTDOWN: EndReason = "shutdown";

/// An item of a subscriber's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A durable event.
    Event(ConversationEvent),
    /// A read position moved.
    Read {
        /// Conversation.
        conversation: ConversationId,
        /// Reader.
        reader: Participant,
        /// New position.
        read_seq: i64,
    },
    /// Typing changed.
    Typing {
        /// Conversation.
        conversation: ConversationId,
        /// Typist.
        sender: Participant,
        /// Whether typing.
        typing: bool,
    },
    /// An agent's presence.
    Presence(PresenceState),
    /// The subscriber was added to a conversation; an agent joining an external chat gets
    /// its visitor too.
    Joined(Conversation, Option<Box<Visitor>>),
    /// The replay is over.
    CaughtUp,
    /// A waiting chat's place in the queue (visitor streams only).
    QueuePosition {
        /// The chat.
        conversation: ConversationId,
        /// 1 for the next chat to be served.
        position: u32,
        /// Estimated wait in seconds; 0 when unknown.
        estimated_wait_seconds: u32,
    },
    /// Reconnect and resume from these cursors; the stream ends after this.
    Resync {
        /// Why.
        reason: EndReason,
        /// Last seq delivered per conversation.
        cursors: Vec<(ConversationId, i64)>,
    },
}

/// What a stream needs from the node.
pub struct StreamContext {
    /// Domain access.
    pub engine: Arc<Engine>,
    /// Local delivery.
    pub hub: Arc<Hub>,
    /// Presence bookkeeping.
    pub presence: Arc<PresenceTracker>,
    /// Queue positions for visitor streams.
    pub queue: Arc<QueueWatch>,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

struct Delivery {
    me: Participant,
    delivered: HashMap<ConversationId, i64>,
    /// The latest places of the visitor's waiting chats.
    places: Vec<Place>,
    /// (position, estimate) last sent per chat.
    shown: HashMap<ConversationId, (u32, u32)>,
    /// Chats this stream saw leave the queue: a place read before they left is stale.
    left: HashSet<ConversationId>,
}

impl Delivery {
    fn new(me: Participant) -> Self {
        Self {
            me,
            delivered: HashMap::new(),
            places: Vec::new(),
            shown: HashMap::new(),
            left: HashSet::new(),
        }
    }

    /// Takes note of an event on its way to the client.
    fn note(&mut self, ev: &ConversationEvent) {
        if let EventKind::StatusChanged { status, .. } = &ev.kind {
            if *status == Status::Queued {
                self.left.remove(&ev.conversation_id);
            } else {
                self.left.insert(ev.conversation_id);
                self.shown.remove(&ev.conversation_id);
            }
        }
    }

    /// The places to send now: of chats this stream follows, still waiting as far as it
    /// knows, and different from what it sent last.
    fn queue_items(&mut self) -> Vec<Item> {
        if self.places.is_empty() && self.shown.is_empty() {
            return Vec::new();
        }
        let places = &self.places;
        self.shown
            .retain(|c, _| places.iter().any(|p| p.conversation == *c));
        let mut out = Vec::new();
        for p in &self.places {
            let c = p.conversation;
            if self.left.contains(&c) || !self.delivered.contains_key(&c) {
                continue;
            }
            let now = (p.position, p.estimated_wait_seconds);
            if self.shown.insert(c, now) != Some(now) {
                out.push(Item::QueuePosition {
                    conversation: c,
                    position: p.position,
                    estimated_wait_seconds: p.estimated_wait_seconds,
                });
            }
        }
        out
    }

    /// Whether `agents` name this subscriber.
    fn among(&self, agents: &[UserId]) -> bool {
        self.me.agent().is_some_and(|u| agents.contains(&u))
    }

    fn cursors(&self) -> Vec<(ConversationId, i64)> {
        let mut c: Vec<_> = self.delivered.iter().map(|(k, v)| (*k, *v)).collect();
        c.sort();
        c
    }
}

/// Opens a subscriber's stream. `cursors` name the last seq the client has per conversation;
/// a cursor for a conversation the caller takes no part in fails with NOT_FOUND.
///
/// Every await inside is boxed: the stream lives as long as the client stays connected, and
/// inline futures would size it by its largest step (4.4 KiB) for its whole life.
pub fn subscribe(
    ctx: Arc<StreamContext>,
    scope: TenantScope,
    cursors: Vec<(ConversationId, i64)>,
) -> impl Stream<Item = AppResult<Item>> + Send + 'static {
    async_stream::try_stream! {
        let me = Participant::of(&scope)?;
        let e = ctx.engine.clone();
        let mut sub = ctx.hub.subscribe(scope.tenant_id(), me, scope.session());
        // Registering asks for a read of the tenant's queue: the first places follow it.
        let mut feed = match me {
            Participant::Visitor(v) => Some(ctx.queue.register(scope.tenant_id(), v)),
            Participant::Agent(_) | Participant::System => None,
        };
        // Agent presence counts agents' streams; a visitor's stream is no agent online.
        let agent = me.agent();
        let _presence = match agent {
            Some(u) => Some(Box::pin(ctx.presence.enter(&e, scope.tenant_id(), u)).await?),
            None => None,
        };

        // Registered before reading memberships: a conversation joined from here on comes as
        // a join. But its events reach this stream only once it follows the conversation:
        // the cursors' conversations are followed before the read, so what committed before
        // the follow is in that read and what commits after it comes live. Any other
        // membership is followed after the read, and the positions are read again then.
        let asked: HashSet<ConversationId> =
            cursors.iter().map(|(c, _)| *c).collect();
        for c in &asked {
            ctx.hub.follow(&sub, *c);
        }
        let memberships = Box::pin(e.openings.memberships(scope)).await?;
        let mut d = Delivery::new(me);
        let mut unfollowed = false;
        for (c, seq) in &memberships {
            if !asked.contains(c) {
                ctx.hub.follow(&sub, *c);
                unfollowed = true;
            }
            d.delivered.insert(*c, *seq);
        }
        for c in &asked {
            if !d.delivered.contains_key(c) {
                Err(AppError::NotFound("conversation"))?;
            }
        }
        if unfollowed {
            // A conversation joined since the first read stays to its join.
            for (c, seq) in Box::pin(e.openings.memberships(scope)).await? {
                if let Some(at) = d.delivered.get_mut(&c) {
                    *at = (*at).max(seq);
                }
            }
        }
        let last = d.delivered.clone();
        if agent.is_some() {
            for state in Box::pin(ctx.presence.snapshot(&e, &scope)).await? {
                yield Item::Presence(state);
            }
        }
        let followed = d.delivered.keys().copied().collect();
        for (conversation, sender) in ctx.hub.typing_in(scope.tenant_id(), &followed) {
            if sender != me {
                yield Item::Typing { conversation, sender, typing: true };
            }
        }
        for (c, from) in cursors {
            let up_to = last[&c];
            d.delivered.insert(c, from.min(up_to));
            for ev in Box::pin(fetch(&e, &scope, c, from, up_to)).await? {
                d.delivered.insert(c, ev.seq);
                d.note(&ev);
                yield Item::Event(ev);
            }
        }
        yield Item::CaughtUp;

        loop {
            let next = tokio::select! {
                _ = ctx.shutdown.cancelled() => Err(SHUTDOWN),
                ev = sub.recv() => ev.map(Next::Event),
                places = next_places(&mut feed) => Ok(Next::Places(places)),
            };
            let ev = match next {
                Ok(Next::Places(places)) => {
                    match places {
                        Some(p) => d.places = p,
                        None => feed = None,
                    }
                    for item in d.queue_items() {
                        yield item;
                    }
                    continue;
                }
                Ok(Next::Event(ev)) => ev,
                // A resync asks the client to come back with the same credentials, which
                // a signed-out session no longer has: it must sign in again.
                Err(SESSION_ENDED) => {
                    Err(AppError::Unauthenticated("this session has ended"))?;
                    unreachable!();
                }
                Err(reason) => {
                    yield Item::Resync { reason, cursors: d.cursors() };
                    Err(AppError::Resync(reason))?;
                    unreachable!();
                }
            };
            for item in Box::pin(handle(&ctx, &scope, &sub, &mut d, &ev)).await? {
                if let Item::Event(ev) = &item {
                    d.note(ev);
                }
                yield item;
            }
            // A chat the stream just joined may have its place waiting already.
            for item in d.queue_items() {
                yield item;
            }
        }
    }
}

/// What woke a stream's loop.
enum Next {
    Event(Arc<Event>),
    Places(Option<Vec<Place>>),
}

/// The next places of a visitor's waiting chats; never, for a stream without a feed. None
/// when the feed ended.
async fn next_places(feed: &mut Option<QueueFeed>) -> Option<Vec<Place>> {
    match feed {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

/// Stored events `from < seq <= up_to` of a conversation, in order.
/// Starts following `conv`, which the stream's participant joined at `from_seq`: follows
/// first, then reads, so whatever the hub dispatched before the follow had committed before
/// the read, and the rest comes live. Nothing when they may not see it (any more).
async fn join(
    ctx: &StreamContext,
    scope: &TenantScope,
    sub: &Subscriber,
    d: &mut Delivery,
    conv: ConversationId,
    from_seq: i64,
) -> AppResult<Vec<Item>> {
    ctx.hub.follow(sub, conv);
    let opened = ctx
        .engine
        .openings
        .open(*scope, conv, from_seq - 1, REPLAY_PAGE);
    let Some(o) = opened.await? else {
        ctx.hub.unfollow(sub, conv);
        return Ok(Vec::new());
    };
    let committed = o.conversation.last_seq;
    let full = o.events.len() as i64 >= REPLAY_PAGE;
    let mut out = vec![Item::Joined(o.conversation, o.visitor.map(Box::new))];
    d.delivered.insert(conv, from_seq - 1);
    let mut events = o.events;
    if full && let Some(last) = events.last().map(|ev| ev.seq) {
        events.extend(fetch(&ctx.engine, scope, conv, last, committed).await?);
    }
    for ev in events {
        d.delivered.insert(conv, ev.seq);
        out.push(Item::Event(ev));
    }
    Ok(out)
}

async fn fetch(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    mut from: i64,
    up_to: i64,
) -> AppResult<Vec<ConversationEvent>> {
    let mut out = Vec::new();
    while from < up_to {
        let page = conversations::events_between(e, scope, conv, from, up_to, REPLAY_PAGE)
            .await?
            .unwrap_or_default();
        let Some(last) = page.last() else { break };
        from = last.seq;
        let short = (page.len() as i64) < REPLAY_PAGE;
        out.extend(page);
        if short {
            break;
        }
    }
    Ok(out)
}

/// Turns one hub event into what this subscriber must see.
async fn handle(
    ctx: &StreamContext,
    scope: &TenantScope,
    sub: &Subscriber,
    d: &mut Delivery,
    ev: &Event,
) -> AppResult<Vec<Item>> {
    let mut out = Vec::new();
    match ev {
        Event::Durable { event, .. } => {
            let conv = event.conversation_id;
            if !d.delivered.contains_key(&conv) {
                let joined = match &event.kind {
                    EventKind::MembersAdded { agents, .. } => d.among(agents),
                    EventKind::StatusChanged {
                        visitor: Some(v), ..
                    } => d.me == Participant::Visitor(*v),
                    _ => false,
                };
                if !joined {
                    return Ok(out);
                }
                // The join read what committed, this event included.
                return join(ctx, scope, sub, d, conv, event.seq).await;
            }
            let done = d.delivered[&conv];
            if event.seq <= done {
                return Ok(out);
            }
            if event.seq > done + 1 {
                // Something was lost or overtaken on the way: PostgreSQL has it.
                for missed in fetch(&ctx.engine, scope, conv, done, event.seq - 1).await? {
                    d.delivered.insert(conv, missed.seq);
                    out.push(Item::Event(missed));
                }
            }
            d.delivered.insert(conv, event.seq);
            out.push(Item::Event(event.clone()));
            if let EventKind::MemberRemoved { agents, .. } = &event.kind
                && d.among(agents)
            {
                ctx.hub.unfollow(sub, conv);
                d.delivered.remove(&conv);
            }
        }
        Event::Read {
            conversation,
            reader,
            read_seq,
            ..
        } => {
            if d.delivered.contains_key(conversation) {
                out.push(Item::Read {
                    conversation: *conversation,
                    reader: *reader,
                    read_seq: *read_seq,
                });
            }
        }
        Event::Typing {
            conversation,
            sender,
            typing,
            ..
        } => {
            if d.delivered.contains_key(conversation) && *sender != d.me {
                out.push(Item::Typing {
                    conversation: *conversation,
                    sender: *sender,
                    typing: *typing,
                });
            }
        }
        Event::Committed {
            conversation,
            up_to,
            ..
        } => {
            // The committing node's own announcement never came (it may have died right
            // after its commit): PostgreSQL has what this stream lacks.
            if let Some(done) = d.delivered.get(conversation).copied()
                && *up_to > done
            {
                for missed in fetch(&ctx.engine, scope, *conversation, done, *up_to).await? {
                    d.delivered.insert(*conversation, missed.seq);
                    out.push(Item::Event(missed));
                }
            }
        }
        Event::Invited {
            conversation, seq, ..
        } => {
            if !d.delivered.contains_key(conversation) {
                return join(ctx, scope, sub, d, *conversation, *seq).await;
            }
        }
        // The hub routes presence to agents' streams only.
        Event::Presence { state, .. } => out.push(Item::Presence(state.clone())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VisitorId;

    fn place(conversation: ConversationId, visitor: VisitorId, position: u32) -> Place {
        Place {
            conversation,
            visitor,
            position,
            estimated_wait_seconds: 0,
        }
    }

    fn status(conv: ConversationId, seq: i64, status: Status) -> ConversationEvent {
        ConversationEvent {
            conversation_id: conv,
            seq,
            at: chrono::Utc::now(),
            kind: EventKind::StatusChanged {
                status,
                assigned: None,
                assigned_name: None,
                visitor: None,
            },
        }
    }

    fn positions(items: Vec<Item>) -> Vec<u32> {
        items
            .into_iter()
            .map(|i| match i {
                Item::QueuePosition { position, .. } => position,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn places_are_sent_once_per_change_and_never_after_the_chat_left() {
        let v = VisitorId::new();
        let chat = ConversationId::new();
        let mut d = Delivery::new(Participant::Visitor(v));
        // Not followed yet (the stream has not joined the new chat): kept for later.
        d.places = vec![place(chat, v, 2)];
        assert!(d.queue_items().is_empty());
        d.delivered.insert(chat, 1);
        d.note(&status(chat, 1, Status::Queued));
        assert_eq!(positions(d.queue_items()), [2]);
        // The same place again (a read that changed nothing for this visitor): nothing.
        assert!(d.queue_items().is_empty());
        d.places = vec![place(chat, v, 1)];
        assert_eq!(positions(d.queue_items()), [1]);

        // Assigned: a place from a read that began before is stale and not shown.
        d.note(&status(chat, 2, Status::Open));
        d.places = vec![place(chat, v, 1)];
        assert!(d.queue_items().is_empty());
        // Queued again (e.g. back from an agent who went away): shown again.
        d.note(&status(chat, 3, Status::Queued));
        assert_eq!(positions(d.queue_items()), [1]);
    }
}
