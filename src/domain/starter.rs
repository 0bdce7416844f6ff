//! Group commit for chat starts (`StartChat`'s transaction). Concurrent starts queue here;
//! one loop takes everything queued and starts each tenant's share in one
//! transaction, then answers every caller after that commit, as the writer does for sends.
//! A batch is a fixed handful of statements whatever it starts: the visitors locked in id
//! order (so two starts of one visitor make one chat), their chats not ended yet, the
//! tenant's workflows, then the new chats with their first event's seq already taken, their
//! queue entries, their `queued` events, the queue counted once by priority (each new
//! chat's place, so that StartChat needs no read of its own) and one spine entry. A batch's
//! new chats are drawn in one shard, so it touches one spine shard; the next batch takes the
//! next shard.
//!
//! What a start makes is [`plan`], a pure function: a visitor's chat that has not ended is
//! resumed, otherwise the tenant's workflows route a new one. A batch that fails as a whole
//! is started again one chat at a time.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::Clock;
use super::batch::{Batcher, Outcome, answer_each, by_tenant};
use super::conversations::{Status, event_row, record_events};
use super::events::{EventKind, Publisher};
use super::participants::Participant;
use super::spine::{SHARDS, new_conversation_in};
use super::timers;
use super::visitors::{
    self, MAX_WAIT, QueueEntry, QueueStatus, RELAX, places_on_joining, queue_entry, relax_times,
    routing_context, wait_payload,
};
use super::workflows::{self, Selection, Workflow, select::select};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, UserId, VisitorId};
use crate::storage::Db;
use crate::storage::conversations::{self as conv_store, ConversationRow};
use crate::storage::visitors::{self as store, NewChat, VisitorRow};
use crate::tenancy::TenantScope;

/// Most starts in one transaction.
const MAX_BATCH: usize = 256;
/// Starting loops. One: a tenant's start batches join its queue one at a time anyway
/// ([`store::lock_queue_joins`]), so more loops only made smaller batches that waited.
const LOOPS: usize = 1;

/// A started (or resumed) chat, committed.
#[derive(Debug, Clone)]
pub struct Begun {
    /// The chat's row as committed.
    pub row: ConversationRow,
    /// Its members.
    pub members: Vec<UserId>,
    /// The visitor's chat that had not ended, returned instead of a new one.
    pub resumed: bool,
    /// For a new chat, its workflow's welcome and queue messages (empty: none).
    pub said: Option<(String, String)>,
    /// For a new chat, where it stood in the queue as the batch committed.
    pub status: Option<QueueStatus>,
}

#[derive(Clone, Copy)]
struct StartJob {
    scope: TenantScope,
    visitor: VisitorId,
}

type Reply = oneshot::Sender<AppResult<Begun>>;

/// The queues in front of the starting loops.
pub struct Starter {
    loops: Batcher<(StartJob, Reply)>,
}

impl Starter {
    /// Starts the starting loop.
    pub fn start(db: Db, publisher: Arc<dyn Publisher>, clock: Arc<dyn Clock>) -> Self {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let loops = Batcher::start(LOOPS, MAX_BATCH, move |_, batch: Vec<(StartJob, Reply)>| {
            let (db, publisher, clock) = (db.clone(), publisher.clone(), clock.clone());
            // A batch's new chats live in one shard (one spine entry), the next batch's
            // in the next.
            let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let s = (turn % SHARDS as usize) as i16;
            async move {
                let groups = by_tenant(batch, |(j, _)| j.scope.tenant_id())
                    .into_iter()
                    .map(|jobs| start_group(&db, publisher.as_ref(), clock.as_ref(), s, jobs));
                futures_util::future::join_all(groups).await;
            }
        });
        Self { loops }
    }

    /// Starts (or resumes) the visitor's chat once its batch has committed.
    pub async fn begin(&self, scope: TenantScope, visitor: VisitorId) -> AppResult<Begun> {
        let (tx, rx) = oneshot::channel();
        if !self.loops.push(0, (StartJob { scope, visitor }, tx)).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the chat starter stopped".into())
}

/// What one start makes.
#[derive(Debug)]
pub enum Plan {
    /// The visitor's chat that has not ended.
    Resume(ConversationId),
    /// A new chat routed by this selection.
    New(Box<Selection>),
}

/// What a start of `visitor` (None: no such visitor) makes, given their chat that has not
/// ended (if any) and the tenant's workflows, at `now`.
pub fn plan(
    visitor: Option<&VisitorRow>,
    open: Option<ConversationId>,
    workflows: &[Workflow],
    now: DateTime<Utc>,
) -> AppResult<Plan> {
    let v = visitor.ok_or(AppError::NotFound("visitor"))?;
    if let Some(c) = open {
        return Ok(Plan::Resume(c));
    }
    let ctx = routing_context(&visitors::visitor(v.clone())?);
    Ok(Plan::New(Box::new(select(workflows, &ctx, now))))
}

async fn start_group(
    db: &Db,
    publisher: &dyn Publisher,
    clock: &dyn Clock,
    shard: i16,
    jobs: Vec<(StartJob, Reply)>,
) {
    let tenant = jobs[0].0.scope.tenant_id();
    answer_each(tenant, publisher, jobs, |jobs| {
        start_batch(db, clock, shard, jobs)
    })
    .await;
}

async fn start_batch(
    db: &Db,
    clock: &dyn Clock,
    shard: i16,
    jobs: Vec<StartJob>,
) -> AppResult<Outcome<Begun>> {
    let scope = jobs[0].scope;
    let mut ids: Vec<VisitorId> = jobs.iter().map(|j| j.visitor).collect();
    ids.sort();
    ids.dedup();

    let mut tx = db.tenant_tx(&scope).await?;
    // The tenant's batches join the queue one at a time, each at a `now` taken once it may:
    // a batch's count of the queue then holds every chat enqueued before its own.
    store::lock_queue_joins(&mut tx).await?;
    let now = clock.now();
    let visitors: HashMap<VisitorId, VisitorRow> = store::lock_many(&mut tx, &ids)
        .await?
        .into_iter()
        .map(|v| (v.visitor_id, v))
        .collect();
    let mut open: HashMap<VisitorId, ConversationRow> = HashMap::new();
    for row in store::open_chats(&mut tx, &ids).await? {
        let Some(v) = row.visitor_id else { continue };
        // Never more than one; the newest if the data says otherwise.
        if open.get(&v).is_none_or(|o| o.created_at < row.created_at) {
            open.insert(v, row);
        }
    }
    let workflows = match ids.iter().any(|v| !open.contains_key(v)) {
        true => workflows::ordered_in(&mut tx).await?,
        false => Vec::new(),
    };

    let mut plans: Vec<AppResult<ConversationId>> = Vec::with_capacity(jobs.len());
    let mut new_chats = Vec::new();
    let mut entries = Vec::new();
    let mut timers_due = Vec::new();
    let mut event_rows = Vec::new();
    let mut events = Vec::new();
    let mut said: HashMap<ConversationId, (String, String)> = HashMap::new();
    // Chats this batch makes, by visitor: a second start of theirs resumes it.
    let mut made: HashMap<VisitorId, ConversationId> = HashMap::new();
    for j in &jobs {
        let current = open
            .get(&j.visitor)
            .map(|r| r.conversation_id)
            .or_else(|| made.get(&j.visitor).copied());
        let p = match plan(visitors.get(&j.visitor), current, &workflows, now) {
            Ok(Plan::Resume(c)) => Ok(c),
            Ok(Plan::New(selection)) => {
                let conv = new_conversation_in(shard);
                made.insert(j.visitor, conv);
                new_chats.push(NewChat {
                    id: conv,
                    visitor: j.visitor,
                    workflow: selection.applied.workflow_id(),
                });
                let entry = queue_entry(conv, j.visitor, &selection, now)?;
                if let Some(due) = entry.max_wait_at {
                    timers_due.push((MAX_WAIT, due, conv));
                }
                for due in relax_times(&selection, now) {
                    timers_due.push((RELAX, due, conv));
                }
                entries.push(entry);
                let kind = EventKind::StatusChanged {
                    status: Status::Queued,
                    assigned: None,
                    assigned_name: None,
                    visitor: Some(j.visitor),
                };
                let (row, event) = event_row(conv, 1, kind, Participant::Visitor(j.visitor), now)?;
                event_rows.push(row);
                events.push(event);
                let a = selection.actions;
                said.insert(conv, (a.welcome_message, a.queue_message));
                Ok(conv)
            }
            Err(e) => Err(e),
        };
        plans.push(p);
    }

    let mut rows: HashMap<ConversationId, ConversationRow> =
        open.into_values().map(|r| (r.conversation_id, r)).collect();
    let resumed: Vec<ConversationId> = rows.keys().copied().collect();
    let mut places = HashMap::new();
    if !new_chats.is_empty() {
        let joined: Vec<QueueEntry> = entries
            .iter()
            .map(|e| QueueEntry {
                conversation: e.conversation_id,
                priority: e.priority,
                enqueued_at: e.enqueued_at,
            })
            .collect();
        for row in store::insert_queued_chats(&mut tx, &new_chats, now).await? {
            rows.insert(row.conversation_id, row);
        }
        for (kind, due, conv) in timers_due {
            timers::schedule(&mut tx, kind, due, wait_payload(conv)).await?;
        }
        store::enqueue_many(&mut tx, entries).await?;
        conv_store::insert_events(&mut tx, &event_rows).await?;
        // Counted here rather than per start afterwards: one pass of the queue for the batch.
        let counts = store::counts_by_priority(&mut tx, now).await?;
        places = places_on_joining(&counts, &joined)
            .into_iter()
            .map(|(c, position, length)| (c, (position, length)))
            .collect();
    }
    let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    if !resumed.is_empty() {
        for (c, u) in conv_store::members_of(&mut tx, &resumed).await? {
            members.entry(c).or_default().push(u);
        }
    }
    record_events(&tx, &events, now).await?;
    tx.commit().await?;

    // The first start of a visitor in the batch made the chat; later ones resume it.
    let mut answered_new: std::collections::HashSet<ConversationId> = Default::default();
    let answers = plans
        .into_iter()
        .map(|p| {
            let conv = p?;
            let row = rows
                .get(&conv)
                .cloned()
                .ok_or(AppError::NotFound("conversation"))?;
            let fresh = said.contains_key(&conv) && answered_new.insert(conv);
            let status = places
                .get(&conv)
                .filter(|_| fresh)
                .map(|&(position, queue_length)| QueueStatus {
                    conversation_id: conv,
                    status: Status::Queued,
                    position: Some(position),
                    estimated_wait_seconds: 0,
                    queue_length,
                    enqueued_at: Some(now),
                    assigned: None,
                    assigned_name: None,
                });
            Ok(Begun {
                row,
                members: members.get(&conv).cloned().unwrap_or_default(),
                resumed: !fresh,
                said: fresh.then(|| said[&conv].clone()),
                status,
            })
        })
        .collect();
    Ok((answers, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: VisitorId) -> VisitorRow {
        let now = Utc::now();
        VisitorRow {
            visitor_id: id,
            name: "Vera".into(),
            email: String::new(),
            country: "de".into(),
            language: "de".into(),
            visitor_type: "new".into(),
            attributes: serde_json::json!({}),
            external_user_id: None,
            tenant_id: crate::ids::TenantId::new(),
            created_at: now,
            last_seen_at: now,
            page_url: "https://shop.example/".into(),
            referrer: String::new(),
        }
    }

    #[test]
    fn a_visitor_with_a_chat_not_ended_resumes_it_and_others_get_a_routed_one() {
        let v = row(VisitorId::new());
        let open = ConversationId::new();
        let now = Utc::now();
        assert!(matches!(plan(Some(&v), Some(open), &[], now), Ok(Plan::Resume(c)) if c == open));
        match plan(Some(&v), None, &[], now).unwrap() {
            Plan::New(s) => assert_eq!(s.applied.workflow_id(), None),
            other => panic!("expected a new chat, got {other:?}"),
        }
    }

    #[test]
    fn a_start_for_a_missing_visitor_is_not_found() {
        let e = plan(None, None, &[], Utc::now()).unwrap_err();
        assert!(matches!(e, AppError::NotFound("visitor")));
    }
}
