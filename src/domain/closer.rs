//! Group commit for chat ends (`EndChat`, `CloseChat`). Concurrent ends queue here; one loop
//! takes everything queued and ends each tenant's share in one transaction,
//! then answers every caller after that commit, as the writer does for sends. A batch is a
//! fixed handful of statements whatever it ends: the chats' rows locked in id order (as the
//! writer and the dispatcher lock theirs), their members, then for the chats still open the
//! queue entries and current assignments ended, the rows closed with the seq of their
//! closing event, the events, and a spine entry per shard the chats are in.
//!
//! The rule for who may end a chat is [`decide`], a pure function: its visitor, or an agent
//! taking part in it; an internal conversation never ends; ending an ended chat returns it
//! unchanged. A batch that fails as a whole is ended again one chat at a time, so one bad
//! end never fails its neighbours.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Clock;
use super::batch::{Batcher, Outcome, answer_each, by_tenant};
use super::conversations::{Conversation, Kind, Status, conversation, event_row, record_events};
use super::events::{EventKind, Publisher};
use super::participants::{ConversationAccess, Participant, admits};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, TenantId, UserId};
use crate::storage::Db;
use crate::storage::conversations::{self as conv_store, ConversationRow};
use crate::storage::dispatch as dispatch_store;
use crate::storage::visitors as store;
use crate::tenancy::TenantScope;

/// Most ends in one transaction.
const MAX_BATCH: usize = 256;
/// Ending loops. One: a batch holds every end that came while the previous one ran, of
/// chats in any shard (a spine entry per shard it touched).
const LOOPS: usize = 1;

/// One queued end.
#[derive(Clone, Copy)]
pub struct CloseJob {
    /// Scope of the caller.
    pub scope: TenantScope,
    /// The chat.
    pub conv: ConversationId,
    /// Who ends it.
    pub who: Participant,
}

type Reply = oneshot::Sender<AppResult<Conversation>>;

/// The queues in front of the ending loops.
pub struct Closer {
    loops: Batcher<(CloseJob, Reply)>,
}

impl Closer {
    /// Starts the ending loop.
    pub fn start(db: Db, publisher: Arc<dyn Publisher>, clock: Arc<dyn Clock>) -> Self {
        let loops = Batcher::start(LOOPS, MAX_BATCH, move |_, batch: Vec<(CloseJob, Reply)>| {
            let (db, publisher, clock) = (db.clone(), publisher.clone(), clock.clone());
            async move {
                let groups = by_tenant(batch, |(j, _)| j.scope.tenant_id())
                    .into_iter()
                    .map(|jobs| close_group(&db, publisher.as_ref(), clock.as_ref(), jobs));
                futures_util::future::join_all(groups).await;
            }
        });
        Self { loops }
    }

    /// Ends the chat once its batch has committed: the chat as it is then.
    pub async fn close(&self, job: CloseJob) -> AppResult<Conversation> {
        let (tx, rx) = oneshot::channel();
        if !self.loops.push(0, (job, tx)).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the chat closer stopped".into())
}

/// What a locked chat says about one end asked of it.
#[derive(Debug)]
pub enum Decision {
    /// Refused with this error.
    Refused(AppError),
    /// Already ended (or ended earlier in the same batch): answered as it is.
    Unchanged,
    /// Ends it.
    Ends,
}

/// Whether `who`, in `tenant`, may end the chat whose locked row is `row` (None: missing)
/// with these members, and what happens. `closing` says an earlier end of the same batch
/// already ends it.
pub fn decide(
    tenant: TenantId,
    who: &Participant,
    row: Option<&ConversationRow>,
    members: &[UserId],
    closing: bool,
) -> AppResult<Decision> {
    let Some(row) = row else {
        return Ok(Decision::Refused(AppError::NotFound("conversation")));
    };
    let kind = Kind::parse(&row.kind)?;
    let access = ConversationAccess {
        // Read in the transaction's tenant: the row carries no tenant of its own.
        tenant,
        kind,
        visitor: row.visitor_id,
        agents: members,
    };
    if !admits(tenant, who, &access) {
        return Ok(Decision::Refused(AppError::NotFound("conversation")));
    }
    if kind != Kind::External {
        return Ok(Decision::Refused(AppError::FailedPrecondition(
            "only external chats end",
        )));
    }
    if closing || Status::parse(&row.status)? == Status::Closed {
        return Ok(Decision::Unchanged);
    }
    Ok(Decision::Ends)
}

async fn close_group(
    db: &Db,
    publisher: &dyn Publisher,
    clock: &dyn Clock,
    jobs: Vec<(CloseJob, Reply)>,
) {
    let tenant = jobs[0].0.scope.tenant_id();
    answer_each(tenant, publisher, jobs, |jobs| close_batch(db, clock, jobs)).await;
}

async fn close_batch(
    db: &Db,
    clock: &dyn Clock,
    jobs: Vec<CloseJob>,
) -> AppResult<Outcome<Conversation>> {
    let scope = jobs[0].scope;
    let tenant = scope.tenant_id();
    let now = clock.now();
    let mut convs: Vec<ConversationId> = jobs.iter().map(|j| j.conv).collect();
    convs.sort();
    convs.dedup();

    let mut tx = db.tenant_tx(&scope).await?;
    let locked = dispatch_store::lock_chats(&mut tx, &convs).await?;
    let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    for (c, u) in conv_store::members_of(&mut tx, &convs).await? {
        members.entry(c).or_default().push(u);
    }
    let mut rows: HashMap<ConversationId, ConversationRow> =
        locked.into_iter().map(|r| (r.conversation_id, r)).collect();
    let no_members = Vec::new();
    let mut decisions = Vec::with_capacity(jobs.len());
    let mut ending: Vec<ConversationId> = Vec::new();
    let mut enders: HashMap<ConversationId, Participant> = HashMap::new();
    for j in &jobs {
        let m = members.get(&j.conv).unwrap_or(&no_members);
        let closing = enders.contains_key(&j.conv);
        let d = decide(tenant, &j.who, rows.get(&j.conv), m, closing)?;
        if matches!(d, Decision::Ends) {
            ending.push(j.conv);
            enders.insert(j.conv, j.who);
        }
        decisions.push(d);
    }

    let mut events = Vec::with_capacity(ending.len());
    if !ending.is_empty() {
        ending.sort();
        dispatch_store::dequeue_all(&mut tx, &ending).await?;
        dispatch_store::end_assignments(&mut tx, &ending, now).await?;
        let mut event_rows = Vec::with_capacity(ending.len());
        for row in store::close_chats(&mut tx, &ending, now).await? {
            let kind = EventKind::StatusChanged {
                status: Status::Closed,
                assigned: row.assigned_agent_id,
                assigned_name: None,
                visitor: None,
            };
            let who = enders[&row.conversation_id];
            let (stored, event) = event_row(row.conversation_id, row.last_seq, kind, who, now)?;
            event_rows.push(stored);
            events.push(event);
            rows.insert(row.conversation_id, row);
        }
        conv_store::insert_events(&mut tx, &event_rows).await?;
    }
    record_events(&tx, &events, now).await?;
    tx.commit().await?;

    let answers = jobs
        .iter()
        .zip(decisions)
        .map(|(j, d)| match d {
            Decision::Refused(e) => Err(e),
            Decision::Unchanged | Decision::Ends => {
                let row = rows
                    .get(&j.conv)
                    .cloned()
                    .ok_or(AppError::NotFound("conversation"))?;
                conversation(row, members.get(&j.conv).cloned().unwrap_or_default())
            }
        })
        .collect();
    Ok((answers, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VisitorId;

    fn chat(visitor: Option<VisitorId>, kind: &str, status: &str) -> ConversationRow {
        let now = chrono::Utc::now();
        ConversationRow {
            conversation_id: ConversationId::new(),
            kind: kind.into(),
            status: status.into(),
            title: String::new(),
            direct_key: None,
            visitor_id: visitor,
            assigned_agent_id: None,
            last_seq: 3,
            created_at: now,
            last_activity_at: now,
            closed_at: None,
        }
    }

    fn name(d: AppResult<Decision>) -> String {
        match d.unwrap() {
            Decision::Refused(e) => format!("refused: {e}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn its_visitor_or_a_serving_agent_ends_an_open_chat_once() {
        let (t, v, ann) = (TenantId::new(), VisitorId::new(), UserId::new());
        let row = chat(Some(v), "external", "open");
        let visitor = Participant::Visitor(v);
        let d =
            |who, members: &[UserId], closing| name(decide(t, &who, Some(&row), members, closing));
        assert_eq!(d(visitor, &[], false), "Ends");
        assert_eq!(d(Participant::Agent(ann), &[ann], false), "Ends");
        // The second end of one batch finds it ended by the first.
        assert_eq!(d(visitor, &[], true), "Unchanged");
    }

    #[test]
    fn strangers_find_no_chat_and_internal_conversations_never_end() {
        let (t, v, ann) = (TenantId::new(), VisitorId::new(), UserId::new());
        let row = chat(Some(v), "external", "queued");
        let not_found = name(Ok(Decision::Refused(AppError::NotFound("conversation"))));
        let other_visitor = Participant::Visitor(VisitorId::new());
        let outsider = Participant::Agent(ann);
        assert_eq!(
            name(decide(t, &other_visitor, Some(&row), &[], false)),
            not_found
        );
        assert_eq!(
            name(decide(t, &outsider, Some(&row), &[], false)),
            not_found
        );
        assert_eq!(name(decide(t, &outsider, None, &[ann], false)), not_found);
        let internal = chat(None, "group", "open");
        assert_eq!(
            name(decide(t, &outsider, Some(&internal), &[ann], false)),
            name(Ok(Decision::Refused(AppError::FailedPrecondition(
                "only external chats end"
            ))))
        );
    }

    #[test]
    fn an_ended_chat_is_answered_as_it_is() {
        let (t, v) = (TenantId::new(), VisitorId::new());
        let row = chat(Some(v), "external", "closed");
        let d = decide(t, &Participant::Visitor(v), Some(&row), &[], false);
        assert_eq!(name(d), "Unchanged");
    }
}
