//! What the dispatcher locks, reads and writes: the tenant's agent rows (locked, so that two
//! dispatchers, or a dispatcher and an agent accepting a chat, never both fill the same seat),
//! the waiting chats with the actions that routed them, agents' last-assignment times, and the
//! assignment records with their reasons.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::conversations::{ConversationRow, PerConversation, pairs};
use super::schema::{assignments, conversations, messages, queue_entries, users, visitors};
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{AssignmentId, ConversationId, UserId, VisitorId, WorkflowId};

/// Locks every active agent row of the tenant, in id order (so concurrent lockers never
/// deadlock). Whoever changes an agent's open chats holds these locks until commit.
///
/// `FOR NO KEY UPDATE`, here and on chat rows: lockers still wait for each other, but the
/// foreign-key checks of rows that reference the locked ones (`FOR KEY SHARE`) do not. With
/// `FOR UPDATE`, every chat close waited for the whole dispatcher pass in progress (8 ms a
/// close at 136 closes/s): its status update checks its assignee's row.
pub async fn lock_agents(tx: &mut TenantTx) -> AppResult<()> {
    let t = tx.tenant_id();
    let _: Vec<UserId> = users::table
        .filter(users::tenant_id.eq(t).and(users::active.eq(true)))
        .select(users::user_id)
        .order(users::user_id)
        .for_no_key_update()
        .load(tx.conn())
        .await?;
    Ok(())
}

/// Locks one agent row; None when there is no such active agent.
pub async fn lock_agent(tx: &mut TenantTx, agent: UserId) -> AppResult<Option<UserId>> {
    let t = tx.tenant_id();
    Ok(users::table
        .filter(
            users::tenant_id
                .eq(t)
                .and(users::user_id.eq(agent))
                .and(users::active.eq(true)),
        )
        .select(users::user_id)
        .for_no_key_update()
        .first(tx.conn())
        .await
        .optional()?)
}

/// A waiting chat as the dispatcher reads it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = queue_entries)]
pub struct WaitingRow {
    /// The chat.
    pub conversation_id: ConversationId,
    /// The workflow that routed it.
    pub workflow_id: Option<WorkflowId>,
    /// Higher is served first.
    pub priority: i32,
    /// When it started waiting.
    pub enqueued_at: DateTime<Utc>,
    /// The routing workflow's actions (JSON of `workflows::model::Actions`).
    pub actions: serde_json::Value,
    /// Whether its max-wait action already ran.
    pub max_wait_fired: bool,
    /// Agents it is not given to again.
    pub excluded: Vec<UserId>,
}

/// The first `limit` waiting chats in serving order. Not locked: the dispatcher locks each
/// chat it assigns and checks it still waits (see `domain::assignment`).
pub async fn waiting(tx: &mut TenantTx, limit: i64) -> AppResult<Vec<WaitingRow>> {
    let t = tx.tenant_id();
    Ok(queue_entries::table
        .filter(queue_entries::tenant_id.eq(t))
        .order((
            queue_entries::priority.desc(),
            queue_entries::enqueued_at,
            queue_entries::conversation_id,
        ))
        .limit(limit)
        .select(WaitingRow::as_select())
        .load(tx.conn())
        .await?)
}

/// One waiting chat.
pub async fn entry(tx: &mut TenantTx, conv: ConversationId) -> AppResult<Option<WaitingRow>> {
    let t = tx.tenant_id();
    Ok(queue_entries::table
        .find((t, conv))
        .select(WaitingRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// One waiting chat, locked.
pub async fn lock_entry(tx: &mut TenantTx, conv: ConversationId) -> AppResult<Option<WaitingRow>> {
    let t = tx.tenant_id();
    Ok(queue_entries::table
        .find((t, conv))
        .select(WaitingRow::as_select())
        .for_update()
        .first(tx.conn())
        .await
        .optional()?)
}

/// Records that a chat's max-wait action ran.
pub async fn mark_max_wait_fired(tx: &mut TenantTx, conv: ConversationId) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(queue_entries::table.find((t, conv)))
        .set(queue_entries::max_wait_fired.eq(true))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Stores when an agent was last given a chat (what round-robin rotates by).
pub async fn set_last_assigned(
    tx: &mut TenantTx,
    agent: UserId,
    at: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(users::table.find((t, agent)))
        .set(users::last_assigned_at.eq(at))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Stamps each agent's last-assignment time (one statement for a dispatcher round).
pub async fn set_last_assigned_many(
    tx: &mut TenantTx,
    agents: &[UserId],
    ats: &[DateTime<Utc>],
) -> AppResult<()> {
    sql::prepared(
        "UPDATE users u SET last_assigned_at = v.at
           FROM unnest($2::uuid[], $3::timestamptz[]) AS v(user_id, at)
          WHERE u.tenant_id = $1 AND u.user_id = ANY($2) AND u.user_id = v.user_id",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(agents)
    .bind::<Array<Timestamptz>, _>(ats)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The chats' rows, locked until commit in id order (as the writer locks its batches, so
/// the two wait for each other instead of deadlocking); missing ones are left out.
pub async fn lock_chats(
    tx: &mut TenantTx,
    convs: &[ConversationId],
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(convs)),
        )
        .select(ConversationRow::as_select())
        .order(conversations::conversation_id)
        .for_no_key_update()
        .load(tx.conn())
        .await?)
}

/// Takes the chats out of the queue.
pub async fn dequeue_all(tx: &mut TenantTx, convs: &[ConversationId]) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::delete(
        queue_entries::table.filter(
            queue_entries::tenant_id
                .eq(t)
                .and(queue_entries::conversation_id.eq_any(convs)),
        ),
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Seats each chat with its agent: sets its status and assignee (and clears its closing
/// time), takes `counts[i]` consecutive seqs from it for the events that say so, and marks
/// the activity time, in one update of each row. The chats must be locked by this
/// transaction. Returns each chat's new `last_seq`; closed or missing chats are left out.
pub async fn seat_chats(
    tx: &mut TenantTx,
    convs: &[ConversationId],
    counts: &[i64],
    statuses: &[&str],
    agents: &[UserId],
    at: DateTime<Utc>,
) -> AppResult<Vec<(ConversationId, i64)>> {
    let rows: Vec<PerConversation> = sql::prepared(
        "UPDATE conversations c
            SET last_seq = c.last_seq + v.k, last_activity_at = $6,
                status = v.status, assigned_agent_id = v.agent, closed_at = NULL
           FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::uuid[])
             AS v(conversation_id, k, status, agent)
          WHERE c.tenant_id = $1 AND c.conversation_id = ANY($2) AND c.conversation_id = v.conversation_id
            AND c.status <> 'closed'
      RETURNING c.conversation_id, c.last_seq AS n",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(convs)
    .bind::<Array<BigInt>, _>(counts)
    .bind::<Array<Text>, _>(statuses)
    .bind::<Array<SqlUuid>, _>(agents)
    .bind::<Timestamptz, _>(at)
    .load(tx.conn())
    .await?;
    Ok(pairs(rows))
}

/// A stored assignment.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = assignments)]
pub struct AssignmentRow {
    /// Id.
    pub assignment_id: AssignmentId,
    /// The chat.
    pub conversation_id: ConversationId,
    /// The agent given it.
    pub agent_id: Option<UserId>,
    /// The workflow that routed it.
    pub workflow_id: Option<WorkflowId>,
    /// The routing decision (JSON text of `routing::Decision`), or `{}` for a manual one.
    pub reasons: String,
    /// When.
    pub assigned_at: DateTime<Utc>,
    /// When it ended (closed, transferred, returned to the queue).
    pub ended_at: Option<DateTime<Utc>>,
    /// Strategy spelling.
    pub strategy: String,
    /// Who made it: `dispatcher`, `accepted`, `transfer` or `admin`.
    pub via: String,
    /// What the chat waited with (JSON of `assignment::Queued`).
    pub queued: serde_json::Value,
}

/// A new assignment; the tenant comes from the transaction.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    /// The chat.
    pub conversation_id: ConversationId,
    /// The agent.
    pub agent_id: UserId,
    /// The routing workflow.
    pub workflow_id: Option<WorkflowId>,
    /// The decision, as JSON text (serialised straight from the decision, and stored as
    /// that text: with every candidate listed it is the largest value a dispatcher pass
    /// writes).
    pub reasons: String,
    /// Strategy spelling.
    pub strategy: String,
    /// Who made it.
    pub via: &'static str,
    /// What the chat waited with (JSON text of `assignment::Queued`).
    pub queued: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Ends the chat's current assignment and stores a new one.
pub async fn record_assignment(tx: &mut TenantTx, new: NewAssignment) -> AppResult<()> {
    record_assignments(tx, vec![new]).await
}

/// Ends the chats' current assignments and stores the new ones (one chat at most once).
/// One statement text whatever the count, so it stays prepared (a `VALUES` list per row was
/// parsed and planned again for every new count).
pub async fn record_assignments(tx: &mut TenantTx, news: Vec<NewAssignment>) -> AppResult<()> {
    let Some(at) = news.iter().map(|n| n.at).max() else {
        return Ok(());
    };
    let convs: Vec<ConversationId> = news.iter().map(|n| n.conversation_id).collect();
    end_assignments(tx, &convs, at).await?;
    let mut ids = Vec::with_capacity(news.len());
    let mut agents = Vec::with_capacity(news.len());
    let mut workflows = Vec::with_capacity(news.len());
    let mut reasons = Vec::with_capacity(news.len());
    let mut times = Vec::with_capacity(news.len());
    let mut strategies = Vec::with_capacity(news.len());
    let mut vias = Vec::with_capacity(news.len());
    let mut queued = Vec::with_capacity(news.len());
    for n in news {
        ids.push(AssignmentId::new());
        agents.push(n.agent_id);
        workflows.push(n.workflow_id);
        reasons.push(n.reasons);
        times.push(n.at);
        strategies.push(n.strategy);
        vias.push(n.via.to_owned());
        queued.push(n.queued);
    }
    sql::prepared(
        "INSERT INTO assignments (tenant_id, assignment_id, conversation_id, agent_id,
                workflow_id, reasons, assigned_at, strategy, via, queued)
         SELECT $1, a, c, g, w, r, t, s, v, q::jsonb
           FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[],
                       $7::timestamptz[], $8::text[], $9::text[], $10::text[])
             AS n(a, c, g, w, r, t, s, v, q)",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<SqlUuid>, _>(convs)
    .bind::<Array<SqlUuid>, _>(agents)
    .bind::<Array<Nullable<SqlUuid>>, _>(workflows)
    .bind::<Array<Text>, _>(reasons)
    .bind::<Array<Timestamptz>, _>(times)
    .bind::<Array<Text>, _>(strategies)
    .bind::<Array<Text>, _>(vias)
    .bind::<Array<Text>, _>(queued)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Ends the chats' current assignments, if any.
pub async fn end_assignments(
    tx: &mut TenantTx,
    convs: &[ConversationId],
    at: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(
        assignments::table.filter(
            assignments::tenant_id
                .eq(t)
                .and(assignments::conversation_id.eq_any(convs))
                .and(assignments::ended_at.is_null()),
        ),
    )
    .set(assignments::ended_at.eq(at))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The chat's assignments, newest first.
pub async fn assignments_of(
    tx: &mut TenantTx,
    conv: ConversationId,
) -> AppResult<Vec<AssignmentRow>> {
    let t = tx.tenant_id();
    Ok(assignments::table
        .filter(
            assignments::tenant_id
                .eq(t)
                .and(assignments::conversation_id.eq(conv)),
        )
        .order(assignments::assigned_at.desc())
        .select(AssignmentRow::as_select())
        .load(tx.conn())
        .await?)
}

/// Where a page of the queue starts: after the entry with this serving key.
pub type QueueKey = (i32, DateTime<Utc>, ConversationId);

/// Up to `limit` waiting chats in serving order after `after`, each with its conversation
/// row and its visitor's name.
///
/// Three reads of one table each, by index: a page of the queue, then its chats and their
/// visitors by primary key. As one join its plan was the planner's choice, and a generic
/// plan prepared while the tables were small filters every row pair (see the
/// `queue_visitor` migration).
pub async fn waiting_page(
    tx: &mut TenantTx,
    after: Option<QueueKey>,
    limit: i64,
) -> AppResult<Vec<(WaitingRow, ConversationRow, String)>> {
    let t = tx.tenant_id();
    let mut q = queue_entries::table
        .filter(queue_entries::tenant_id.eq(t))
        .into_boxed();
    if let Some((p, at, c)) = after {
        q = q.filter(
            queue_entries::priority
                .lt(p)
                .or(queue_entries::priority.eq(p).and(
                    queue_entries::enqueued_at
                        .gt(at)
                        .or(queue_entries::enqueued_at
                            .eq(at)
                            .and(queue_entries::conversation_id.gt(c))),
                )),
        );
    }
    let page: Vec<(WaitingRow, VisitorId)> = q
        .order((
            queue_entries::priority.desc(),
            queue_entries::enqueued_at,
            queue_entries::conversation_id,
        ))
        .limit(limit)
        .select((WaitingRow::as_select(), queue_entries::visitor_id))
        .load(tx.conn())
        .await?;
    if page.is_empty() {
        return Ok(Vec::new());
    }
    let convs: Vec<ConversationId> = page.iter().map(|(w, _)| w.conversation_id).collect();
    let ids: Vec<VisitorId> = page.iter().map(|(_, v)| *v).collect();
    let rows: HashMap<ConversationId, ConversationRow> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(&convs)),
        )
        .select(ConversationRow::as_select())
        .load::<ConversationRow>(tx.conn())
        .await?
        .into_iter()
        .map(|r| (r.conversation_id, r))
        .collect();
    let names: HashMap<VisitorId, String> = visitors::table
        .filter(
            visitors::tenant_id
                .eq(t)
                .and(visitors::visitor_id.eq_any(&ids)),
        )
        .select((visitors::visitor_id, visitors::name))
        .load(tx.conn())
        .await?
        .into_iter()
        .collect();
    Ok(page
        .into_iter()
        .filter_map(|(w, v)| {
            // Both exist while the entry does (it references the chat, the chat its visitor).
            let row = rows.get(&w.conversation_id)?.clone();
            let name = names.get(&v)?.clone();
            Some((w, row, name))
        })
        .collect())
}

/// How many waiting chats are served before the one with `key`.
pub async fn served_before(tx: &mut TenantTx, key: QueueKey) -> AppResult<i64> {
    let t = tx.tenant_id();
    let (p, at, c) = key;
    Ok(queue_entries::table
        .filter(
            queue_entries::tenant_id.eq(t).and(
                queue_entries::priority
                    .gt(p)
                    .or(queue_entries::priority.eq(p).and(
                        queue_entries::enqueued_at
                            .lt(at)
                            .or(queue_entries::enqueued_at
                                .eq(at)
                                .and(queue_entries::conversation_id.lt(c))),
                    )),
            ),
        )
        .count()
        .get_result(tx.conn())
        .await?)
}

/// The open external chats assigned to `agent`.
pub async fn open_chats_of(tx: &mut TenantTx, agent: UserId) -> AppResult<Vec<ConversationId>> {
    let t = tx.tenant_id();
    // The constants are in the text, not bound, so that the generic plan can use the
    // partial index `conversations_external_open` (see `routing::OPEN_CHATS_BY_AGENT`).
    let open = diesel::dsl::sql::<diesel::sql_types::Bool>("kind = 'external' AND status = 'open'");
    Ok(conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::assigned_agent_id.eq(agent))
                .and(open),
        )
        .select(conversations::conversation_id)
        .load(tx.conn())
        .await?)
}

/// Whether the chat's latest message from a person (not the engine) is its visitor's, or no
/// one has written yet: the chat waits for an agent's answer.
pub async fn awaits_answer(tx: &mut TenantTx, conv: ConversationId) -> AppResult<bool> {
    let t = tx.tenant_id();
    let last: Option<String> = messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq(conv))
                .and(messages::sender_type.ne("system")),
        )
        .order(messages::seq.desc())
        .select(messages::sender_type)
        .first(tx.conn())
        .await
        .optional()?;
    Ok(last.is_none_or(|s| s == "visitor"))
}

/// Whether `agent` wrote in the chat at or after `since`.
pub async fn replied_since(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: UserId,
    since: DateTime<Utc>,
) -> AppResult<bool> {
    let t = tx.tenant_id();
    let n: i64 = messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq(conv))
                .and(messages::sender_type.eq("agent"))
                .and(messages::sender_id.eq(agent.as_uuid()))
                .and(messages::created_at.ge(since)),
        )
        .count()
        .get_result(tx.conn())
        .await?;
    Ok(n > 0)
}

/// When the agent's presence last changed (a stream opened or closed).
pub async fn last_seen(tx: &mut TenantTx, agent: UserId) -> AppResult<Option<DateTime<Utc>>> {
    let t = tx.tenant_id();
    Ok(users::table
        .find((t, agent))
        .select(users::last_seen_at)
        .first(tx.conn())
        .await
        .optional()?
        .flatten())
}
