//! The event-driven dispatcher and the waiting chats' timers. The dispatcher is a durable
//! reactor: every committed event that can make a waiting chat assignable (a chat queued or
//! ended, a member leaving, an agent's status, capacity or presence changing, a waiting chat's
//! needs widening with time) runs a dispatcher pass over its tenant
//! ([`assignment::dispatch`]). No periodic sweep: a missed notice is made up by the reactor's
//! cursor, which resumes after a restart.
//!
//! Timers: a chat's max wait ([`visitors::MAX_WAIT`]) carries out its workflow's action
//! (keep waiting, overflow, take an offline message, close) and tells the visitor; a skill's
//! relaxation time ([`visitors::RELAX`]) only wakes the dispatcher. Both fire after a restart
//! too. Taking a chat back from its agent (no answer in time, offline past the grace
//! period) is [`TakeBackTimer`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::Engine;
use super::assignment::{self, TakeBack, actions_of};
use super::conversations::{self, Kind, Status, append, record_events};
use super::events::EventKind;
use super::participants::Participant;
use super::reactors::{Delivery, DomainEvent, Reactor};
use super::spine::{self, SpineEvent};
use super::timers::{Timer, TimerHandler};
use super::visitors::{self, MAX_WAIT, RELAX};
use super::workflows::model::OnMaxWait;
use crate::error::AppResult;
use crate::ids::TenantId;
use crate::storage::TenantTx;
use crate::storage::dispatch as store;
use crate::storage::messages;
use crate::storage::visitors as visitor_store;
use crate::tenancy::{SystemCap, TenantScope};

/// Told to the visitor when the max wait ends their wait and the workflow set no text.
pub const DEFAULT_OFFLINE_TEXT: &str = "Sorry, nobody is available right now. Leave your email and your message, and we will get back to you.";
/// Told when the max wait closes the chat and the workflow set no text.
pub const DEFAULT_CLOSE_TEXT: &str =
    "Sorry, nobody is available right now. Please try again later.";

/// The dispatcher reactor.
pub struct Dispatcher {
    engine: Arc<Engine>,
    system: SystemCap,
    /// Tenants whose last pass on this node left an eligible agent a free seat.
    seats_left: Mutex<HashSet<TenantId>>,
}

impl Dispatcher {
    /// A dispatcher acting for the engine.
    pub fn new(engine: Arc<Engine>, system: SystemCap) -> Arc<Self> {
        Arc::new(Self {
            engine,
            system,
            seats_left: Mutex::default(),
        })
    }

    fn seats_left(&self) -> std::sync::MutexGuard<'_, HashSet<TenantId>> {
        self.seats_left.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether an event can make a waiting chat assignable.
fn wakes(event: &DomainEvent) -> bool {
    match event {
        DomainEvent::AgentChanged { .. }
        | DomainEvent::QueueChanged { .. }
        | DomainEvent::RoutingChanged { .. } => true,
        DomainEvent::Rated { .. } | DomainEvent::Posted { .. } => false,
        DomainEvent::Conversation(ev) => matches!(
            ev.kind,
            EventKind::StatusChanged { .. } | EventKind::MemberRemoved { .. }
        ),
    }
}

impl Reactor for Dispatcher {
    fn name(&self) -> &'static str {
        "dispatcher"
    }

    fn wants_posts(&self) -> bool {
        false
    }

    fn reads_conversation_events(&self) -> bool {
        false
    }

    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            // A batch is one tenant's share: one pass serves every event in it.
            let Some(d) = batch.iter().find(|d| wakes(&d.event)) else {
                return Ok(());
            };
            let began = std::time::Instant::now();
            let scope = TenantScope::system(&self.system, d.tenant);
            // An agent who went offline gets a grace period for the chats they hold; an agent
            // who changed several times in the batch is looked at once, as they are now.
            let mut changed: Vec<_> = batch
                .iter()
                .filter_map(|d| match d.event {
                    DomainEvent::AgentChanged { agent } => Some(agent),
                    _ => None,
                })
                .collect();
            changed.sort();
            changed.dedup();
            for agent in changed {
                assignment::on_agent_changed(&self.engine, &scope, agent).await?;
            }
            let look_first = !self.seats_left().contains(&d.tenant);
            let pass = assignment::dispatch(&self.engine, &scope, look_first).await?;
            if pass.seat_left {
                self.seats_left().insert(d.tenant);
            } else {
                self.seats_left().remove(&d.tenant);
            }
            tracing::debug!(
                tenant.id = %d.tenant,
                entries = batch.len(),
                assigned = pass.assigned,
                looked = look_first,
                ms = began.elapsed().as_millis() as u64,
                "dispatched"
            );
            Ok(())
        })
    }
}

/// Fires a chat's max wait: tells the visitor, then carries out the workflow's action.
pub struct MaxWait {
    engine: Arc<Engine>,
    system: SystemCap,
}

impl MaxWait {
    /// The handler.
    pub fn new(engine: Arc<Engine>, system: SystemCap) -> Arc<Self> {
        Arc::new(Self { engine, system })
    }
}

impl TimerHandler for MaxWait {
    fn kind(&self) -> &'static str {
        MAX_WAIT
    }

    fn fire<'a>(&'a self, tx: &'a mut TenantTx, timer: &'a Timer) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let conv = visitors::wait_conversation(&timer.payload)?;
            let scope = TenantScope::system(&self.system, timer.tenant);
            // Read without locks first: the message goes through the writer, which locks the
            // chat row, so this transaction must not hold it yet.
            let Some(entry) = store::entry(tx, conv).await? else {
                return Ok(()); // no longer waiting
            };
            if entry.max_wait_fired {
                return Ok(());
            }
            let actions = actions_of(&entry)?;
            let text = match (&actions.on_max_wait, actions.max_wait_message.as_str()) {
                (_, t) if !t.is_empty() => t.to_owned(),
                (OnMaxWait::OfflineMessage, _) => DEFAULT_OFFLINE_TEXT.to_owned(),
                (OnMaxWait::Close, _) => DEFAULT_CLOSE_TEXT.to_owned(),
                _ => String::new(),
            };
            // The post commits on its own, before this transaction: a node dying in between
            // fires the timer again, and the retry finds the first try's message.
            if !text.is_empty()
                && !messages::engine_said_since(tx, conv, &text, timer.due_at).await?
            {
                conversations::submit_as_engine(&self.engine, &scope, conv, text)
                    .await
                    .await?;
            }
            let Some(row) = visitor_store::lock_chat(tx, conv)
                .await?
                .filter(|r| r.kind == Kind::External.as_str())
            else {
                return Ok(());
            };
            let Some(entry) = store::lock_entry(tx, conv).await? else {
                return Ok(()); // assigned or ended meanwhile
            };
            if entry.max_wait_fired {
                return Ok(());
            }
            store::mark_max_wait_fired(tx, conv).await?;
            let now = self.engine.now();
            match actions.on_max_wait {
                OnMaxWait::KeepWaiting => {}
                // The chat's needs widen by themselves once the wait has passed
                // (`ChatNeeds::for_actions`); the dispatcher must look again.
                OnMaxWait::Overflow(_) => {
                    spine::record(tx, &[SpineEvent::QueueChanged { c: conv }], now).await?;
                }
                OnMaxWait::OfflineMessage | OnMaxWait::Close => {
                    visitor_store::dequeue(tx, conv).await?;
                    let ev = append(
                        tx,
                        conv,
                        EventKind::StatusChanged {
                            status: Status::Closed,
                            assigned: row.assigned_agent_id,
                            assigned_name: None,
                            visitor: None,
                        },
                        Participant::System,
                        now,
                    )
                    .await?;
                    visitor_store::set_chat_state(
                        tx,
                        conv,
                        Status::Closed.as_str(),
                        row.assigned_agent_id,
                        Some(now),
                    )
                    .await?;
                    record_events(tx, &[ev], now).await?;
                }
            }
            Ok(())
        })
    }
}

/// Fires a skill's relaxation time: the dispatcher looks at the queue again.
pub struct Relax;

impl TimerHandler for Relax {
    fn kind(&self) -> &'static str {
        RELAX
    }

    fn fire<'a>(&'a self, tx: &'a mut TenantTx, timer: &'a Timer) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let conv = visitors::wait_conversation(&timer.payload)?;
            if store::entry(tx, conv).await?.is_some() {
                spine::record(tx, &[SpineEvent::QueueChanged { c: conv }], timer.due_at).await?;
            }
            Ok(())
        })
    }
}

/// Takes a chat back from its agent when their time is up: an offer not accepted in time
/// ([`assignment::OFFER_LAPSE`]), no answer within the workflow's re-route time
/// ([`assignment::REPLY_DUE`]), or offline past the grace period ([`assignment::AGENT_GONE`]). The chat returns to the queue at its place, for others; the
/// dispatcher learns of it from its `status_changed` event.
pub struct TakeBackTimer {
    kind: &'static str,
    why: TakeBack,
    engine: Arc<Engine>,
}

impl TakeBackTimer {
    /// The three handlers.
    pub fn all(engine: Arc<Engine>) -> [Arc<dyn TimerHandler>; 3] {
        [
            Arc::new(Self {
                kind: assignment::OFFER_LAPSE,
                why: TakeBack::OfferLapsed,
                engine: engine.clone(),
            }),
            Arc::new(Self {
                kind: assignment::REPLY_DUE,
                why: TakeBack::NoReply,
                engine: engine.clone(),
            }),
            Arc::new(Self {
                kind: assignment::AGENT_GONE,
                why: TakeBack::AgentGone,
                engine,
            }),
        ]
    }
}

impl TimerHandler for TakeBackTimer {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn fire<'a>(&'a self, tx: &'a mut TenantTx, timer: &'a Timer) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let (conv, agent, since) = assignment::taken_of(&timer.payload)?;
            let now = self.engine.now();
            if let Some(events) =
                assignment::take_back(tx, conv, agent, since, self.why, now).await?
            {
                record_events(tx, &events, now).await?;
            }
            Ok(())
        })
    }
}
