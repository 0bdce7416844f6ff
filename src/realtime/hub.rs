//! The node-local hub: routes announced events to the open streams on this node, each stream
//! registered for one participant of one tenant (an agent or a visitor), and an agent's for
//! the session its token came from, so it can end with that session. Each stream has a
//! bounded queue; a stream that falls behind is cut off (told to resync) instead of slowing
//! the publisher or growing memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::domain::events::{Event, EventKind};
use crate::domain::participants::Participant;
use crate::ids::{ConversationId, TenantId, TokenFamilyId, UserId};

/// Why a stream was cut off.
pub type EndReason = &'static str;

/// Cut off because its queue was full.
pub const SLOW_CONSUMER: EndReason = "slow_consumer";
/// Cut off because this node lost the bus to other nodes.
pub const BUS_LOST: EndReason = "bus_lost";
/// Cut off because its participant was deactivated.
pub const DEACTIVATED: EndReason = "deactivated";
/// Cut off because the session it was opened in was signed out or revoked.
pub const SESSION_ENDED: EndReason = "session_ended";

struct Entry {
    tx: mpsc::Sender<Arc<Event>>,
    tenant: TenantId,
    who: Participant,
    session: Option<TokenFamilyId>,
    convs: HashSet<ConversationId>,
    ended: Arc<OnceLock<EndReason>>,
}

/// How long a typing signal counts without a refresh.
const TYPING_FOR: Duration = Duration::from_secs(6);
/// Size of the typing map at which expired entries are swept on insert.
const TYPING_SWEEP_AT: usize = 4096;

#[derive(Default)]
struct State {
    subs: HashMap<u64, Entry>,
    /// Who is typing where, so a stream that starts learns the current state.
    typing: HashMap<(TenantId, ConversationId, Participant), Instant>,
    by_conv: HashMap<(TenantId, ConversationId), HashSet<u64>>,
    /// Highest seq dispatched per followed conversation, so a spine notice for what already
    /// arrived on the fast path costs nothing.
    seen: HashMap<(TenantId, ConversationId), i64>,
    by_participant: HashMap<(TenantId, Participant), HashSet<u64>>,
    /// Streams that see the tenant's agent presence: agents'. A visitor learns who serves
    /// them from their chat, not the tenant's roster.
    by_tenant: HashMap<TenantId, HashSet<u64>>,
}

impl State {
    fn remove(&mut self, id: u64, reason: Option<EndReason>) {
        let Some(e) = self.subs.remove(&id) else {
            return;
        };
        if let Some(r) = reason {
            let _ = e.ended.set(r);
        }
        for c in &e.convs {
            self.detach_conv((e.tenant, *c), id);
        }
        detach(&mut self.by_participant, (e.tenant, e.who), id);
        detach(&mut self.by_tenant, e.tenant, id);
    }

    fn detach_conv(&mut self, key: (TenantId, ConversationId), id: u64) {
        detach(&mut self.by_conv, key, id);
        if !self.by_conv.contains_key(&key) {
            self.seen.remove(&key);
        }
    }
}

fn detach<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<u64>>, key: K, id: u64) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

/// Told what suggests that a tenant's queue changed (`realtime::queue` implements it). Its
/// methods are called with no hub lock held and must not block.
pub trait QueueObserver: Send + Sync {
    /// Whether anything of `tenant` matters here (a visitor or queue-watching stream of it
    /// is open).
    fn interested(&self, tenant: TenantId) -> bool;
    /// A chat's status changed at `seq` (queued, assigned, ended), seen on the fast path.
    fn status_changed(&self, tenant: TenantId, conv: ConversationId, seq: i64);
    /// The spine says `conv` committed up to `up_to` (`entering`: as a visitor's new chat),
    /// and the fast path had its grace to bring it.
    fn committed(&self, tenant: TenantId, conv: ConversationId, up_to: i64, entering: bool);
    /// The spine says an agent's routing state changed (status, capacity, presence).
    fn agents_changed(&self, tenant: TenantId);
}

/// Routes events to local subscribers.
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    buffer: usize,
    queue: OnceLock<Arc<dyn QueueObserver>>,
}

impl Hub {
    /// A hub whose subscribers may queue at most `buffer` events.
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            buffer: buffer.max(1),
            queue: OnceLock::new(),
        })
    }

    /// Sets who learns of status changes (once; later calls are ignored).
    pub fn observe_queue(&self, observer: Arc<dyn QueueObserver>) {
        let _ = self.queue.set(observer);
    }

    /// Who learns of status changes, if anyone.
    pub fn queue_observer(&self) -> Option<&Arc<dyn QueueObserver>> {
        self.queue.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing delivery; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream of `who` in `tenant`, opened in `session` when `who` is an agent.
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: TenantId,
        who: Participant,
        session: Option<TokenFamilyId>,
    ) -> Subscriber {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        let ended = Arc::new(OnceLock::new());
        let mut s = self.lock();
        s.subs.insert(
            id,
            Entry {
                tx,
                tenant,
                who,
                session,
                convs: HashSet::new(),
                ended: ended.clone(),
            },
        );
        s.by_participant
            .entry((tenant, who))
            .or_default()
            .insert(id);
        match who {
            Participant::Agent(_) => {
                s.by_tenant.entry(tenant).or_default().insert(id);
            }
            Participant::Visitor(_) | Participant::System => {}
        }
        Subscriber {
            id,
            rx,
            ended,
            hub: self.clone(),
        }
    }

    /// Starts routing a conversation's events to a subscriber.
    pub fn follow(&self, sub: &Subscriber, conv: ConversationId) {
        let mut s = self.lock();
        let Some(e) = s.subs.get_mut(&sub.id) else {
            return;
        };
        e.convs.insert(conv);
        let tenant = e.tenant;
        s.by_conv.entry((tenant, conv)).or_default().insert(sub.id);
    }

    /// Stops routing a conversation's events to a subscriber.
    pub fn unfollow(&self, sub: &Subscriber, conv: ConversationId) {
        let mut s = self.lock();
        let Some(e) = s.subs.get_mut(&sub.id) else {
            return;
        };
        e.convs.remove(&conv);
        let tenant = e.tenant;
        s.detach_conv((tenant, conv), sub.id);
    }

    /// Delivers an event to every local subscriber it concerns. Never blocks.
    pub fn dispatch(&self, event: Event) {
        if let Event::Durable { tenant, event: ev } = &event
            && let EventKind::StatusChanged { .. } = ev.kind
            && let Some(q) = self.queue.get()
        {
            q.status_changed(*tenant, ev.conversation_id, ev.seq);
        }
        let event = Arc::new(event);
        let mut s = self.lock();
        if let Event::Typing {
            tenant,
            conversation,
            sender,
            typing,
        } = &*event
        {
            let key = (*tenant, *conversation, *sender);
            if *typing {
                let now = Instant::now();
                // Typists who never said "stopped" expire; sweep them before the map grows.
                if s.typing.len() >= TYPING_SWEEP_AT {
                    s.typing.retain(|_, until| *until > now);
                }
                s.typing.insert(key, now + TYPING_FOR);
            } else {
                s.typing.remove(&key);
            }
        }
        let mut targets: Vec<u64> = Vec::new();
        match &*event {
            Event::Durable { tenant, event: ev } => {
                let key = (*tenant, ev.conversation_id);
                if let Some(set) = s.by_conv.get(&key) {
                    targets.extend(set);
                    let seen = s.seen.entry(key).or_default();
                    *seen = (*seen).max(ev.seq);
                }
                // New members, and the visitor of a new chat, are not following the
                // conversation yet.
                if let EventKind::MembersAdded { agents, .. } = &ev.kind {
                    for a in agents {
                        if let Some(set) = s.by_participant.get(&(*tenant, Participant::Agent(*a)))
                        {
                            targets.extend(set);
                        }
                    }
                }
                if let EventKind::StatusChanged {
                    visitor: Some(v), ..
                } = &ev.kind
                    && let Some(set) = s.by_participant.get(&(*tenant, Participant::Visitor(*v)))
                {
                    targets.extend(set);
                }
            }
            Event::Read {
                tenant,
                conversation,
                ..
            }
            | Event::Committed {
                tenant,
                conversation,
                ..
            }
            | Event::Typing {
                tenant,
                conversation,
                ..
            } => {
                if let Some(set) = s.by_conv.get(&(*tenant, *conversation)) {
                    targets.extend(set);
                }
            }
            Event::Invited { tenant, who, .. } => {
                if let Some(set) = s.by_participant.get(&(*tenant, *who)) {
                    targets.extend(set);
                }
            }
            Event::Presence { tenant, .. } => {
                if let Some(set) = s.by_tenant.get(tenant) {
                    targets.extend(set);
                }
            }
        }
        targets.sort_unstable();
        targets.dedup();
        for id in targets {
            let full = match s.subs.get(&id) {
                Some(e) => matches!(
                    e.tx.try_send(event.clone()),
                    Err(mpsc::error::TrySendError::Full(_))
                ),
                None => false,
            };
            if full {
                s.remove(id, Some(SLOW_CONSUMER));
            }
        }
    }

    /// Whether a conversation followed here has not yet been dispatched up to `up_to`.
    pub fn behind(&self, tenant: TenantId, conv: ConversationId, up_to: i64) -> bool {
        let s = self.lock();
        s.by_conv.contains_key(&(tenant, conv))
            && s.seen.get(&(tenant, conv)).is_none_or(|seen| *seen < up_to)
    }

    /// Told by the spine that `conv` committed up to `up_to`: if the fast path has still not
    /// brought that far, its followers are told to fetch the rest from PostgreSQL.
    pub fn committed(&self, tenant: TenantId, conv: ConversationId, up_to: i64) {
        if !self.behind(tenant, conv, up_to) {
            return;
        }
        self.lock().seen.insert((tenant, conv), up_to);
        self.dispatch(Event::Committed {
            tenant,
            conversation: conv,
            up_to,
        });
    }

    /// Whether `who` has a stream on this node.
    pub fn hosts(&self, tenant: TenantId, who: Participant) -> bool {
        self.lock()
            .by_participant
            .get(&(tenant, who))
            .is_some_and(|set| !set.is_empty())
    }

    /// Told by the spine that `who` joined `conv` at `seq`: their streams that do not follow
    /// it yet are told to join it from PostgreSQL.
    pub fn invited(&self, tenant: TenantId, who: Participant, conv: ConversationId, seq: i64) {
        self.dispatch(Event::Invited {
            tenant,
            who,
            conversation: conv,
            seq,
        });
    }

    /// Cuts off every subscriber (e.g. the bus to other nodes was lost).
    pub fn end_all(&self, reason: EndReason) {
        let mut s = self.lock();
        let ids: Vec<u64> = s.subs.keys().copied().collect();
        for id in ids {
            s.remove(id, Some(reason));
        }
    }

    /// Who is typing now in the given conversations of a tenant.
    pub fn typing_in(
        &self,
        tenant: TenantId,
        convs: &HashSet<ConversationId>,
    ) -> Vec<(ConversationId, Participant)> {
        let now = Instant::now();
        let mut s = self.lock();
        s.typing.retain(|_, until| *until > now);
        s.typing
            .keys()
            .filter(|(t, c, _)| *t == tenant && convs.contains(c))
            .map(|(_, c, u)| (*c, *u))
            .collect()
    }

    /// Number of registered subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().subs.len()
    }

    /// Cuts off every stream of one participant on this node (e.g. an agent was
    /// deactivated); returns how many there were.
    pub fn end_participant(&self, tenant: TenantId, who: Participant, reason: EndReason) -> usize {
        let mut s = self.lock();
        let ids: Vec<u64> = s
            .by_participant
            .get(&(tenant, who))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for id in &ids {
            s.remove(*id, Some(reason));
        }
        ids.len()
    }

    /// Cuts off the streams of an agent opened in one of `sessions` on this node (they
    /// were signed out), with [`SESSION_ENDED`]; returns how many there were.
    pub fn end_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        sessions: &[TokenFamilyId],
    ) -> usize {
        let mut s = self.lock();
        let ids: Vec<u64> = s
            .by_participant
            .get(&(tenant, Participant::Agent(user)))
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                s.subs
                    .get(id)
                    .and_then(|e| e.session)
                    .is_some_and(|session| sessions.contains(&session))
            })
            .collect();
        for id in &ids {
            s.remove(*id, Some(SESSION_ENDED));
        }
        ids.len()
    }
}

/// One stream's end of the hub; unregisters itself when dropped.
pub struct Subscriber {
    id: u64,
    rx: mpsc::Receiver<Arc<Event>>,
    ended: Arc<OnceLock<EndReason>>,
    hub: Arc<Hub>,
}

impl Subscriber {
    /// The next event; `Err(reason)` once the hub cut this subscriber off.
    pub async fn recv(&mut self) -> Result<Arc<Event>, EndReason> {
        match self.rx.recv().await {
            Some(ev) if self.ended.get().is_none() => Ok(ev),
            _ => Err(self.ended.get().copied().unwrap_or(BUS_LOST)),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{Event, Presence, PresenceState};
    use crate::ids::{UserId, VisitorId};

    fn typing(t: TenantId, c: ConversationId) -> Event {
        Event::Typing {
            tenant: t,
            conversation: c,
            sender: Participant::System,
            typing: true,
        }
    }

    fn agent() -> Participant {
        Participant::Agent(UserId::new())
    }

    #[tokio::test]
    async fn routes_by_tenant_and_conversation_and_cuts_off_slow_subscribers() {
        let hub = Hub::new(2);
        let (t1, t2) = (TenantId::new(), TenantId::new());
        let conv = ConversationId::new();
        let mut a = hub.subscribe(t1, agent(), None);
        let mut b = hub.subscribe(t2, agent(), None);
        hub.follow(&a, conv);
        // Same conversation id in another tenant: never crosses.
        hub.follow(&b, conv);
        hub.dispatch(typing(t1, conv));
        assert!(a.recv().await.is_ok());
        assert!(b.rx.try_recv().is_err());

        for _ in 0..3 {
            hub.dispatch(typing(t1, conv));
        }
        // The third event found the queue full: the two queued ones are not delivered and
        // the subscriber learns why it was cut off.
        assert_eq!(a.recv().await.unwrap_err(), SLOW_CONSUMER);
        assert_eq!(hub.subscribers(), 1);
        drop(b);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test]
    async fn a_new_chat_reaches_its_visitor_before_they_follow_it_and_nobody_else() {
        use crate::domain::conversations::Status;
        use crate::domain::events::{ConversationEvent, EventKind};
        let hub = Hub::new(8);
        let tenant = TenantId::new();
        let (vera, walt) = (VisitorId::new(), VisitorId::new());
        let mut hers = hub.subscribe(tenant, Participant::Visitor(vera), None);
        let mut his = hub.subscribe(tenant, Participant::Visitor(walt), None);
        let mut elsewhere = hub.subscribe(TenantId::new(), Participant::Visitor(vera), None);
        hub.dispatch(Event::Durable {
            tenant,
            event: ConversationEvent {
                conversation_id: ConversationId::new(),
                seq: 1,
                at: chrono::Utc::now(),
                kind: EventKind::StatusChanged {
                    status: Status::Queued,
                    assigned: None,
                    assigned_name: None,
                    visitor: Some(vera),
                },
            },
        });
        assert!(matches!(*hers.recv().await.unwrap(), Event::Durable { .. }));
        assert!(his.rx.try_recv().is_err());
        assert!(
            elsewhere.rx.try_recv().is_err(),
            "another tenant's visitor id"
        );
    }

    #[tokio::test]
    async fn a_visitor_stream_gets_its_chat_but_not_the_tenants_agent_presence() {
        let hub = Hub::new(8);
        let tenant = TenantId::new();
        let chat = ConversationId::new();
        let vera = Participant::Visitor(VisitorId::new());
        let mut visitor = hub.subscribe(tenant, vera, None);
        let mut colleague = hub.subscribe(tenant, agent(), None);
        hub.follow(&visitor, chat);
        hub.dispatch(Event::Presence {
            tenant,
            state: PresenceState {
                agent: UserId::new(),
                presence: Presence::Online,
                status: "available".into(),
                last_seen: None,
            },
        });
        hub.dispatch(typing(tenant, chat));
        assert!(matches!(
            *colleague.recv().await.unwrap(),
            Event::Presence { .. }
        ));
        assert!(matches!(
            *visitor.recv().await.unwrap(),
            Event::Typing { .. }
        ));
        assert!(visitor.rx.try_recv().is_err(), "presence reached a visitor");

        // Ending one participant's streams leaves the others alone.
        assert_eq!(hub.end_participant(tenant, vera, DEACTIVATED), 1);
        assert_eq!(visitor.recv().await.unwrap_err(), DEACTIVATED);
        assert_eq!(hub.subscribers(), 1);
    }

    #[tokio::test]
    async fn ending_a_session_ends_its_streams_only() {
        let hub = Hub::new(8);
        let tenant = TenantId::new();
        let ann = UserId::new();
        let (signed_out, other) = (TokenFamilyId::new(), TokenFamilyId::new());
        let mut ended = hub.subscribe(tenant, Participant::Agent(ann), Some(signed_out));
        let mut kept = hub.subscribe(tenant, Participant::Agent(ann), Some(other));
        // The same ids in another tenant are another agent's.
        let _elsewhere = hub.subscribe(TenantId::new(), Participant::Agent(ann), Some(signed_out));
        assert_eq!(hub.end_sessions(tenant, ann, &[signed_out]), 1);
        assert_eq!(ended.recv().await.unwrap_err(), SESSION_ENDED);
        let conv = ConversationId::new();
        hub.follow(&kept, conv);
        hub.dispatch(typing(tenant, conv));
        assert!(kept.recv().await.is_ok());
        assert_eq!(hub.subscribers(), 2);
        assert_eq!(hub.end_sessions(tenant, UserId::new(), &[other]), 0);
    }
}
