//! Who serves an external chat: the dispatcher's rounds (the tenant's waiting chats given to
//! eligible agents by [`dispatch::plan`]), an agent accepting a waiting chat, a transfer to
//! another agent or back to the queue for a skill, an admin's assignment, and the stored
//! record of every assignment with its reasons (ExplainAssignment).
//!
//! Seats are never over-filled: whatever gives an agent a chat first locks that agent's row
//! (the dispatcher locks every active agent of the tenant, in id order), then reads open
//! chats, then writes, then commits. So two dispatchers on two nodes, or a dispatcher and an
//! agent accepting, take turns on the same agents, and each sees the other's assignments.
//! Lock order is agents, then the chat row: the visitor ending a chat locks only the chat, so
//! no cycle can form. A chat the plan chose but that meanwhile left the queue is skipped and
//! the round runs again.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::conversations::{
    Conversation, Kind, Status, append, commit_events, conversation, event_row, load_members,
    require_active_agents,
};
use super::dispatch::{self, Waiting};
use super::events::{ConversationEvent, EventKind};
use super::participants::Participant;
use super::routing::{self, AgentSnapshot, ChatNeeds, Decision};
use super::timers;
use super::workflows::{
    self,
    model::{Actions, SkillNeed, Strategy},
};
use super::{Engine, require_admin_or_system, require_agent};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, UserId, WorkflowId};
use crate::storage::TenantTx;
use crate::storage::conversations::{self as conv_store, ConversationRow};
use crate::storage::dispatch::{self as store, NewAssignment, WaitingRow};
use crate::storage::users;
use crate::storage::visitors as visitor_store;
use crate::tenancy::{Actor, Role, TenantScope};

/// Waiting chats one dispatcher round considers (the oldest within priority).
const ROUND: i64 = 500;
/// Assignments one round writes before it commits: a round holds every agent row of the
/// tenant, and the chats it assigns, until then, so closes and other rounds wait for it.
const ROUND_ASSIGNMENTS: usize = 100;
/// Rounds run back to back when chats the plan chose had left the queue meanwhile.
const MAX_ROUNDS: usize = 4;

/// How an assignment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The dispatcher chose the agent.
    Dispatcher,
    /// The agent took the chat from the queue.
    Accepted,
    /// Another agent (or an admin) handed the chat over.
    Transfer,
    /// An admin assigned it.
    Admin,
    /// The dispatcher offered it; the agent has yet to accept.
    Offered,
}

impl Via {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Dispatcher => "dispatcher",
            Via::Accepted => "accepted",
            Via::Transfer => "transfer",
            Via::Admin => "admin",
            Via::Offered => "offered",
        }
    }
    /// Parses [`as_str`](Self::as_str); anything else is corrupt data.
    pub fn parse(s: &str) -> AppResult<Self> {
        Ok(match s {
            "dispatcher" => Via::Dispatcher,
            "accepted" => Via::Accepted,
            "transfer" => Via::Transfer,
            "admin" => Via::Admin,
            "offered" => Via::Offered,
            other => {
                return Err(AppError::Internal(format!(
                    "stored assignment via {other:?}"
                )));
            }
        })
    }
}

/// One stored assignment, as ExplainAssignment shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentRecord {
    /// The agent given the chat.
    pub agent: Option<UserId>,
    /// The workflow that routed the chat.
    pub workflow_id: Option<WorkflowId>,
    /// How it came about.
    pub via: Via,
    /// The routing decision, for the dispatcher's assignments.
    pub decision: Option<Decision>,
    /// When.
    pub assigned_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// What a chat waited with: kept with its assignment, so that a chat taken back from its agent
/// returns to the queue at its original place, with its original needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// Higher is served first.
    pub priority: i32,
    /// When it first started waiting.
    pub enqueued_at: DateTime<Utc>,
    /// The routing workflow.
    pub workflow_id: Option<WorkflowId>,
    /// Its actions.
    pub actions: Actions,
    /// Agents it is never given to again (they declined it, let its offer lapse, or had it
    /// taken back); kept across every return to the queue.
    #[serde(default)]
    pub excluded: Vec<UserId>,
}

impl Queued {
    /// What the queue entry `row` says.
    pub fn of(row: &WaitingRow) -> AppResult<Self> {
        Ok(Self {
            priority: row.priority,
            enqueued_at: row.enqueued_at,
            workflow_id: row.workflow_id,
            actions: actions_of(row)?,
            excluded: row.excluded.clone(),
        })
    }

    fn json(&self) -> AppResult<String> {
        serde_json::to_string(self).map_err(|e| AppError::Internal(e.to_string()))
    }
}

/// The actions a queued chat was routed with; an entry stored before they were kept gets
/// the built-in defaults.
pub fn actions_of(row: &WaitingRow) -> AppResult<Actions> {
    serde_json::from_value(row.actions.clone())
        .map_err(|e| AppError::Internal(format!("stored queue actions: {e}")))
}

/// What a waiting chat needs at `now`: its workflow's strategy and skills, relaxed or
/// overflowed by how long it has waited. None when it waits for an agent to pick it
/// (auto-assign off).
pub fn waiting_of(row: &WaitingRow, now: DateTime<Utc>) -> AppResult<Option<Waiting>> {
    let actions = actions_of(row)?;
    if !actions.auto_assign {
        return Ok(None);
    }
    let waited = u64::try_from((now - row.enqueued_at).num_seconds()).unwrap_or(0);
    Ok(Some(Waiting {
        conversation: row.conversation_id,
        priority: row.priority,
        enqueued_at: row.enqueued_at,
        needs: ChatNeeds::for_actions(&actions, waited),
        excluded: row.excluded.clone(),
    }))
}

/// Seats `to` (or nobody) on the chat inside `tx` (the chat row locked by the caller) with
/// `status`: a previous assignee leaves it, the new one joins, and everyone sees the status.
/// Returns the new row and the events to commit.
async fn reseat(
    tx: &mut TenantTx,
    row: &ConversationRow,
    to: Option<UserId>,
    status: Status,
    actor: Participant,
    now: DateTime<Utc>,
) -> AppResult<(ConversationRow, Vec<ConversationEvent>)> {
    let conv = row.conversation_id;
    let mut changes = Vec::new();
    if let Some(prev) = row.assigned_agent_id.filter(|p| Some(*p) != to)
        && conv_store::remove_member(tx, conv, prev).await?
    {
        changes.push(EventKind::MemberRemoved {
            agents: vec![prev],
            actor: actor.agent(),
        });
    }
    if let Some(agent) = to {
        let added = conv_store::add_members(tx, conv, &[agent], now).await?;
        if !added.is_empty() {
            changes.push(EventKind::MembersAdded {
                agents: added,
                actor: actor.agent(),
            });
        }
    }
    let assigned_name = users::display_name(tx, to).await?;
    changes.push(EventKind::StatusChanged {
        status,
        assigned: to,
        assigned_name,
        visitor: None,
    });
    let mut events = Vec::with_capacity(changes.len());
    for kind in changes {
        events.push(append(tx, conv, kind, actor, now).await?);
    }
    let row = visitor_store::set_chat_state(tx, conv, status.as_str(), to, None).await?;
    Ok((row, events))
}

/// Makes `agent` the chat's assignee: it leaves the queue and opens (see [`reseat`]).
async fn hand_over(
    tx: &mut TenantTx,
    row: &ConversationRow,
    agent: UserId,
    actor: Participant,
    now: DateTime<Utc>,
) -> AppResult<(ConversationRow, Vec<ConversationEvent>)> {
    visitor_store::dequeue(tx, row.conversation_id).await?;
    reseat(tx, row, Some(agent), Status::Open, actor, now).await
}

/// The locked external chat `conv`, or NOT_FOUND.
async fn lock_external(tx: &mut TenantTx, conv: ConversationId) -> AppResult<ConversationRow> {
    visitor_store::lock_chat(tx, conv)
        .await?
        .filter(|r| r.kind == Kind::External.as_str())
        .ok_or(AppError::NotFound("conversation"))
}

/// Whether a chat is offered to `agent`: still queued, with them holding its seat.
fn offered_to(row: &ConversationRow, agent: UserId) -> bool {
    row.status == Status::Queued.as_str() && row.assigned_agent_id == Some(agent)
}

/// Whether a locked chat still waits for an agent.
fn still_waiting(row: &ConversationRow) -> bool {
    row.status == Status::Queued.as_str() && row.assigned_agent_id.is_none()
}

/// What a dispatcher pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Chats assigned.
    pub assigned: usize,
    /// Whether an eligible agent still had a free seat when it ended: then the next pass
    /// can go straight for the agents' locks.
    pub seat_left: bool,
}

/// One dispatcher pass over the tenant: assigns every waiting chat an eligible agent can take
/// now, oldest first within priority. With `look_first`, it first looks without locks for
/// a free seat and ends there when there is none (every chat start while all agents are
/// busy); a pass after one that left a seat free goes without that look, which reads every
/// agent's open chats.
pub async fn dispatch(e: &Engine, scope: &TenantScope, look_first: bool) -> AppResult<Pass> {
    let (mut pass, mut retries, mut look) = (Pass::default(), 0, look_first);
    loop {
        let r = dispatch_round(e, scope, look).await?;
        pass.assigned += r.assigned;
        pass.seat_left = r.seat_left;
        // A round that assigned had seats: the next one need not look for them.
        look = false;
        if r.more && r.assigned > 0 {
            continue;
        }
        if r.skipped == 0 || retries == MAX_ROUNDS {
            return Ok(pass);
        }
        retries += 1;
    }
}

/// What one round did.
#[derive(Default)]
struct Round {
    /// Chats assigned.
    assigned: usize,
    /// Chats the plan chose that had left the queue meanwhile.
    skipped: usize,
    /// The plan had more than one round writes.
    more: bool,
    /// See [`Pass::seat_left`].
    seat_left: bool,
}

/// Free seats of the agents eligible now (skills aside).
fn free_seats(agents: &[AgentSnapshot]) -> u64 {
    agents
        .iter()
        .filter(|a| routing::ineligibility(a, &[]).is_none())
        .map(|a| u64::from(a.capacity - a.open_chats))
        .sum()
}

async fn dispatch_round(e: &Engine, scope: &TenantScope, look_first: bool) -> AppResult<Round> {
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    // A look without locks: with no free seat anywhere, the round ends here, without
    // queueing behind other passes for the agents' locks or reading the queue. A seat that
    // frees meanwhile commits an event of its own, which wakes another pass.
    if look_first && free_seats(&workflows::agent_snapshots(&mut tx, now).await?) == 0 {
        tx.commit().await?;
        return Ok(Round::default());
    }
    store::lock_agents(&mut tx).await?;
    let rows = store::waiting(&mut tx, ROUND).await?;
    let mut waiting = Vec::with_capacity(rows.len());
    for r in &rows {
        if let Some(w) = waiting_of(r, now)? {
            waiting.push(w);
        }
    }
    if waiting.is_empty() {
        tx.commit().await?;
        // Without the look, the last pass left a seat; with it, the look found one.
        return Ok(Round {
            seat_left: true,
            ..Round::default()
        });
    }
    let agents = workflows::agent_snapshots(&mut tx, now).await?;
    let free = free_seats(&agents);
    let mut plan = dispatch::plan(&waiting, &agents, now);
    let more = plan.len() > ROUND_ASSIGNMENTS;
    plan.truncate(ROUND_ASSIGNMENTS);
    let seat_left = free > plan.len() as u64;
    if plan.is_empty() {
        tx.commit().await?;
        return Ok(Round {
            seat_left,
            ..Round::default()
        });
    }
    let (events, skipped) = seat_planned(&mut tx, plan, &rows, now).await?;
    let assigned = events.seated;
    commit_events(e, scope, tx, events.events).await?;
    Ok(Round {
        assigned,
        skipped,
        more,
        seat_left,
    })
}

/// What [`seat_planned`] wrote.
struct Seated {
    /// Chats given (or offered) to their agent.
    seated: usize,
    /// Their events, to commit.
    events: Vec<ConversationEvent>,
}

/// Writes a round's planned assignments with a fixed number of statements, whatever their
/// number (the round holds the tenant's agent locks, so its length is everyone's wait):
/// locks the chats, leaves out those that stopped waiting meanwhile (counted as skipped), and
/// for the rest does what [`hand_over`] and [`record`] do for one chat. A chat whose workflow
/// wants offers is offered instead: its agent joins it and sees it on their stream, and it
/// stays `queued` with them as its assignee (their seat held) until they accept or the offer
/// lapses.
async fn seat_planned(
    tx: &mut TenantTx,
    plan: Vec<dispatch::Assignment>,
    rows: &[WaitingRow],
    now: DateTime<Utc>,
) -> AppResult<(Seated, usize)> {
    let convs: Vec<ConversationId> = plan.iter().map(|a| a.conversation).collect();
    let locked: HashMap<ConversationId, ConversationRow> = store::lock_chats(tx, &convs)
        .await?
        .into_iter()
        .map(|r| (r.conversation_id, r))
        .collect();
    let mut seats = Vec::with_capacity(plan.len());
    let mut skipped = 0;
    for a in plan {
        let entry = rows.iter().find(|r| r.conversation_id == a.conversation);
        match (locked.get(&a.conversation), entry) {
            (Some(row), Some(entry)) if still_waiting(row) => {
                let queued = Queued::of(entry)?;
                seats.push((a, queued));
            }
            _ => skipped += 1,
        }
    }
    if seats.is_empty() {
        return Ok((
            Seated {
                seated: 0,
                events: Vec::new(),
            },
            skipped,
        ));
    }
    let convs: Vec<ConversationId> = seats.iter().map(|(a, _)| a.conversation).collect();
    store::dequeue_all(tx, &convs).await?;
    let pairs: Vec<(ConversationId, UserId)> = seats
        .iter()
        .map(|(a, _)| (a.conversation, a.agent))
        .collect();
    let added: HashSet<(ConversationId, UserId)> = conv_store::add_member_pairs(tx, &pairs, now)
        .await?
        .into_iter()
        .collect();
    let status_of = |q: &Queued| match q.actions.offer_timeout_seconds {
        Some(_) => Status::Queued,
        None => Status::Open,
    };
    let kinds: Vec<Vec<EventKind>> = seats
        .iter()
        .map(|(a, q)| {
            let mut k = Vec::with_capacity(2);
            if added.contains(&(a.conversation, a.agent)) {
                k.push(EventKind::MembersAdded {
                    agents: vec![a.agent],
                    actor: None,
                });
            }
            let name = a.decision.candidates.iter().find(|c| c.agent == a.agent);
            k.push(EventKind::StatusChanged {
                status: status_of(q),
                assigned: Some(a.agent),
                assigned_name: name.map(|c| c.name.clone()),
                visitor: None,
            });
            k
        })
        .collect();
    let counts: Vec<i64> = kinds.iter().map(|k| k.len() as i64).collect();
    let statuses: Vec<&str> = seats.iter().map(|(_, q)| status_of(q).as_str()).collect();
    let agents: Vec<UserId> = seats.iter().map(|(a, _)| a.agent).collect();
    let last: HashMap<ConversationId, i64> =
        store::seat_chats(tx, &convs, &counts, &statuses, &agents, now)
            .await?
            .into_iter()
            .collect();
    let (mut rows_out, mut events) = (Vec::new(), Vec::new());
    for ((a, _), kinds) in seats.iter().zip(kinds) {
        let Some(&last) = last.get(&a.conversation) else {
            return Err(AppError::Internal("a locked waiting chat closed".into()));
        };
        let first = last - kinds.len() as i64 + 1;
        for (seq, kind) in (first..).zip(kinds) {
            let (row, event) = event_row(a.conversation, seq, kind, Participant::System, now)?;
            rows_out.push(row);
            events.push(event);
        }
    }
    conv_store::insert_events(tx, &rows_out).await?;
    // An agent given several chats in the round keeps the latest time.
    let mut latest: HashMap<UserId, DateTime<Utc>> = HashMap::new();
    for (a, _) in &seats {
        let t = latest.entry(a.agent).or_insert(a.assigned_at);
        *t = (*t).max(a.assigned_at);
    }
    let (who, when): (Vec<UserId>, Vec<DateTime<Utc>>) = latest.into_iter().unzip();
    store::set_last_assigned_many(tx, &who, &when).await?;
    let mut news = Vec::with_capacity(seats.len());
    for (a, queued) in &seats {
        let reasons = serde_json::to_string(&a.decision)
            .map_err(|err| AppError::Internal(err.to_string()))?;
        let via = match queued.actions.offer_timeout_seconds {
            Some(_) => Via::Offered,
            None => Via::Dispatcher,
        };
        news.push(new_assignment(
            a.conversation,
            a.agent,
            queued,
            (a.decision.strategy.as_str(), reasons),
            via,
            now,
        )?);
    }
    store::record_assignments(tx, news).await?;
    for (a, queued) in &seats {
        match queued.actions.offer_timeout_seconds {
            Some(t) => {
                let due = now + chrono::Duration::seconds(i64::from(t));
                let payload = taken_payload(a.conversation, a.agent, now);
                timers::schedule(tx, OFFER_LAPSE, due, payload).await?;
            }
            None => {
                schedule_reply_due(tx, a.conversation, a.agent, queued, Via::Dispatcher, now)
                    .await?
            }
        }
    }
    Ok((
        Seated {
            seated: seats.len(),
            events,
        },
        skipped,
    ))
}

/// Stores an assignment with what the chat waited with, and schedules its re-route when
/// its workflow wants the agent to answer in time.
async fn record(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: UserId,
    queued: &Queued,
    decision: (&str, String),
    via: Via,
    at: DateTime<Utc>,
) -> AppResult<()> {
    store::record_assignment(tx, new_assignment(conv, agent, queued, decision, via, at)?).await?;
    schedule_reply_due(tx, conv, agent, queued, via, at).await
}

/// The assignment record of `conv` given to `agent`.
fn new_assignment(
    conv: ConversationId,
    agent: UserId,
    queued: &Queued,
    (strategy, reasons): (&str, String),
    via: Via,
    at: DateTime<Utc>,
) -> AppResult<NewAssignment> {
    Ok(NewAssignment {
        conversation_id: conv,
        agent_id: agent,
        workflow_id: queued.workflow_id,
        strategy: strategy.to_owned(),
        reasons,
        via: via.as_str(),
        queued: queued.json()?,
        at,
    })
}

/// Schedules the re-route of a chat whose workflow wants its agent to answer in time.
async fn schedule_reply_due(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: UserId,
    queued: &Queued,
    via: Via,
    at: DateTime<Utc>,
) -> AppResult<()> {
    // An offer's answer time starts when it is accepted.
    if let Some(t) = queued
        .actions
        .reroute_after_seconds
        .filter(|_| via != Via::Offered)
    {
        let due = at + chrono::Duration::seconds(i64::from(t));
        timers::schedule(tx, REPLY_DUE, due, taken_payload(conv, agent, at)).await?;
    }
    Ok(())
}

/// A manual assignment records no routing decision.
fn manual() -> (&'static str, String) {
    ("manual", "{}".to_owned())
}

/// What a chat waited with: its queue entry while it waits, else what its latest
/// assignment kept (a transfer keeps the original place and needs).
async fn queued_of(tx: &mut TenantTx, row: &ConversationRow) -> AppResult<Queued> {
    let conv = row.conversation_id;
    if let Some(entry) = store::lock_entry(tx, conv).await? {
        return Queued::of(&entry);
    }
    let kept = store::assignments_of(tx, conv)
        .await?
        .into_iter()
        .next()
        .and_then(|a| serde_json::from_value::<Queued>(a.queued).ok());
    Ok(kept.unwrap_or_else(|| Queued {
        priority: 0,
        enqueued_at: row.created_at,
        workflow_id: None,
        actions: Actions::default(),
        excluded: Vec::new(),
    }))
}

/// Timer kind: an assigned agent's time to answer is up.
pub const REPLY_DUE: &str = "chat.reply_due";
/// Timer kind: an offer was not accepted in time.
pub const OFFER_LAPSE: &str = "chat.offer_lapse";
/// Timer kind: an agent who went offline is past their grace period for one chat.
pub const AGENT_GONE: &str = "chat.agent_gone";

/// The payload of a "take the chat back from this agent" timer: the chat, the agent, and
/// since when (their assignment, or when they went offline).
pub fn taken_payload(
    conv: ConversationId,
    agent: UserId,
    since: DateTime<Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": conv.to_string(),
        "agent_id": agent.to_string(),
        "since": since.to_rfc3339(),
    })
}

/// Reads [`taken_payload`].
pub fn taken_of(p: &serde_json::Value) -> AppResult<(ConversationId, UserId, DateTime<Utc>)> {
    let field = |k: &str| p.get(k).and_then(|v| v.as_str());
    let parsed = (
        field("conversation_id").and_then(ConversationId::parse),
        field("agent_id").and_then(UserId::parse),
        field("since")
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc)),
    );
    match parsed {
        (Some(c), Some(a), Some(t)) => Ok((c, a, t)),
        _ => Err(AppError::Internal(format!("take-back timer payload {p}"))),
    }
}

/// FAILED_PRECONDITION unless `agent` has a free seat (open external chats below capacity),
/// read with the agent's row locked.
async fn require_seat(tx: &mut TenantTx, agent: UserId, now: DateTime<Utc>) -> AppResult<()> {
    store::lock_agent(tx, agent)
        .await?
        .ok_or(AppError::NotFound("agent"))?;
    let me = workflows::agent_snapshots(tx, now)
        .await?
        .into_iter()
        .find(|a| a.id == agent)
        .ok_or(AppError::NotFound("agent"))?;
    if me.open_chats >= me.capacity {
        return Err(AppError::FailedPrecondition(
            "the agent has no free seat (open chats at capacity)",
        ));
    }
    Ok(())
}

/// The calling agent takes a waiting chat (within their capacity, whatever their status).
/// FAILED_PRECONDITION when it is no longer waiting or they have no free seat.
pub async fn accept(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<Conversation> {
    let (me, _) = require_agent(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    // A chat offered to the caller holds its seat already; locks go agents, then the chat.
    let peek = visitor_store::chat(&mut tx, conv).await?;
    if !peek.as_ref().is_some_and(|r| offered_to(r, me)) {
        require_seat(&mut tx, me, now).await?;
    }
    let row = lock_external(&mut tx, conv).await?;
    if !still_waiting(&row) && !offered_to(&row, me) {
        return Err(AppError::FailedPrecondition(
            "the chat is no longer waiting",
        ));
    }
    let queued = queued_of(&mut tx, &row).await?;
    let (row, events) = hand_over(&mut tx, &row, me, Participant::Agent(me), now).await?;
    store::set_last_assigned(&mut tx, me, now).await?;
    record(&mut tx, conv, me, &queued, manual(), Via::Accepted, now).await?;
    let members = load_members(&mut tx, conv).await?;
    commit_events(e, scope, tx, events).await?;
    conversation(row, members)
}

/// The calling agent declines a chat offered to them: it goes back to the queue at its
/// place, is never offered to them again, and the dispatcher (woken by its return) offers it
/// to the next agent. The offer's lapse timer then finds it no longer theirs and does
/// nothing. FAILED_PRECONDITION when no offer of that chat to them is pending.
pub async fn decline(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<Conversation> {
    let (me, _) = require_agent(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let row = lock_external(&mut tx, conv).await?;
    if !offered_to(&row, me) {
        return Err(AppError::FailedPrecondition(
            "the chat is not offered to you",
        ));
    }
    let queued = queued_of(&mut tx, &row).await?;
    let (row, events) =
        return_to_queue(&mut tx, &row, &queued, &[me], Participant::Agent(me), now).await?;
    let members = load_members(&mut tx, conv).await?;
    commit_events(e, scope, tx, events).await?;
    conversation(row, members)
}

/// Where a transfer sends a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferTarget {
    /// This agent (who must have a free seat).
    Agent(UserId),
    /// Back to the queue, for agents with this skill; it keeps its place (its start time).
    Skill(String),
}

/// Hands one's open external chat to another agent, or back to the queue for a skill. The
/// chat's assignee or an admin may; the previous assignee leaves the chat.
pub async fn transfer(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    target: TransferTarget,
) -> AppResult<Conversation> {
    let (me, role) = require_agent(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    // Whose it is is checked before any lock: locks go agents first, then the chat.
    let mine = |row: &ConversationRow| row.assigned_agent_id == Some(me) || role == Role::Admin;
    let peek = visitor_store::chat(&mut tx, conv)
        .await?
        .filter(|r| r.kind == Kind::External.as_str());
    if !peek.as_ref().is_some_and(mine) {
        // Not theirs to hand over; someone else's chat stays invisible to them.
        return Err(AppError::NotFound("conversation"));
    }
    if let TransferTarget::Agent(to) = &target {
        require_active_agents(&mut tx, &[*to]).await?;
        require_seat(&mut tx, *to, now).await?;
    }
    let row = lock_external(&mut tx, conv).await?;
    if !mine(&row) {
        return Err(AppError::NotFound("conversation"));
    }
    if Status::parse(&row.status)? != Status::Open {
        return Err(AppError::FailedPrecondition(
            "only an open chat is transferred",
        ));
    }
    let queued = queued_of(&mut tx, &row).await?;
    let actor = Participant::Agent(me);
    let (row, events) = match target {
        TransferTarget::Agent(to) if Some(to) == row.assigned_agent_id => {
            return Err(AppError::FailedPrecondition(
                "the chat is already served by that agent",
            ));
        }
        TransferTarget::Agent(to) => {
            let (row, events) = hand_over(&mut tx, &row, to, actor, now).await?;
            record(&mut tx, conv, to, &queued, manual(), Via::Transfer, now).await?;
            (row, events)
        }
        TransferTarget::Skill(skill) => {
            let for_skill = Queued {
                actions: Actions {
                    strategy: Strategy::SkillBased,
                    required_skills: vec![SkillNeed {
                        skill,
                        min_level: None,
                        relax_after_seconds: None,
                    }],
                    auto_assign: true,
                    ..queued.actions
                },
                ..queued
            };
            return_to_queue(&mut tx, &row, &for_skill, &[], actor, now).await?
        }
    };
    let members = load_members(&mut tx, conv).await?;
    commit_events(e, scope, tx, events).await?;
    conversation(row, members)
}

/// Puts an open (or offered) chat back in the queue at its original place with `queued`'s
/// needs, never again for the `excluded` agents nor for those `queued` already excludes; its
/// agent leaves it. The caller holds the chat's lock.
pub(crate) async fn return_to_queue(
    tx: &mut TenantTx,
    row: &ConversationRow,
    queued: &Queued,
    excluded: &[UserId],
    actor: Participant,
    now: DateTime<Utc>,
) -> AppResult<(ConversationRow, Vec<ConversationEvent>)> {
    let conv = row.conversation_id;
    let visitor = row.visitor_id.ok_or(AppError::FailedPrecondition(
        "only a visitor's chat can wait",
    ))?;
    store::end_assignments(tx, &[conv], now).await?;
    visitor_store::enqueue(
        tx,
        visitor_store::NewQueueEntry {
            conversation_id: conv,
            visitor_id: visitor,
            workflow_id: queued.workflow_id,
            priority: queued.priority,
            actions: serde_json::to_value(&queued.actions)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            enqueued_at: queued.enqueued_at,
            // Its max wait was spent the first time.
            max_wait_at: None,
            excluded: queued
                .excluded
                .iter()
                .chain(excluded)
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        },
    )
    .await?;
    reseat(tx, row, None, Status::Queued, actor, now).await
}

/// Why a chat is taken back from its agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeBack {
    /// The agent did not answer within the workflow's re-route time.
    NoReply,
    /// The agent went offline and stayed away past the grace period.
    AgentGone,
    /// The agent did not accept an offer in time.
    OfferLapsed,
}

/// Inside a timer's transaction: gives the chat back to the queue (at its place, never again
/// to `agent`) when it is still `agent`'s and the reason still holds; None otherwise.
pub(crate) async fn take_back(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: UserId,
    since: DateTime<Utc>,
    why: TakeBack,
    now: DateTime<Utc>,
) -> AppResult<Option<Vec<ConversationEvent>>> {
    let Some(row) = visitor_store::chat(tx, conv).await? else {
        return Ok(None);
    };
    // An offer is taken back while it waits for its answer; a chat while it is served.
    let held = match why {
        TakeBack::OfferLapsed => Status::Queued,
        TakeBack::NoReply | TakeBack::AgentGone => Status::Open,
    };
    if row.kind != Kind::External.as_str()
        || row.status != held.as_str()
        || row.assigned_agent_id != Some(agent)
    {
        return Ok(None);
    }
    let still = match why {
        TakeBack::OfferLapsed => true,
        TakeBack::NoReply => !store::replied_since(tx, conv, agent, since).await?,
        TakeBack::AgentGone => {
            let back = store::last_seen(tx, agent)
                .await?
                .is_some_and(|t| t > since);
            let online = workflows::agent_snapshots(tx, now)
                .await?
                .iter()
                .any(|a| a.id == agent && a.online);
            !back && !online && store::awaits_answer(tx, conv).await?
        }
    };
    if !still {
        return Ok(None);
    }
    let row = lock_external(tx, conv).await?;
    if row.assigned_agent_id != Some(agent) || row.status != held.as_str() {
        return Ok(None);
    }
    let queued = queued_of(tx, &row).await?;
    let (_, events) =
        return_to_queue(tx, &row, &queued, &[agent], Participant::System, now).await?;
    Ok(Some(events))
}

/// When an agent's routing state changed and they are offline now: each of their open chats
/// gets a grace timer (its workflow's grace period); a chat still waiting for their answer
/// when it fires goes back to the queue.
pub(crate) async fn on_agent_changed(
    e: &Engine,
    scope: &TenantScope,
    agent: UserId,
) -> AppResult<()> {
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let online = workflows::agent_snapshots(&mut tx, now)
        .await?
        .iter()
        .any(|a| a.id == agent && a.online);
    if online {
        return tx.commit().await;
    }
    for conv in store::open_chats_of(&mut tx, agent).await? {
        let Some(row) = visitor_store::chat(&mut tx, conv).await? else {
            continue;
        };
        let grace = queued_of(&mut tx, &row)
            .await?
            .actions
            .offline_grace_seconds;
        let due = now + chrono::Duration::seconds(i64::from(grace));
        timers::schedule(&mut tx, AGENT_GONE, due, taken_payload(conv, agent, now)).await?;
    }
    tx.commit().await
}

/// Gives an external chat to an agent (admins and the engine): the agent becomes its member
/// and assignee, it leaves the queue and opens. Assigning the chat's own assignee again
/// changes nothing; a chat served by another agent is FAILED_PRECONDITION (use a transfer).
pub async fn assign(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    agent: UserId,
) -> AppResult<Conversation> {
    require_admin_or_system(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    require_active_agents(&mut tx, &[agent]).await?;
    store::lock_agent(&mut tx, agent).await?;
    let row = lock_external(&mut tx, conv).await?;
    match (Status::parse(&row.status)?, row.assigned_agent_id) {
        (Status::Closed, _) => return Err(AppError::FailedPrecondition("the chat has ended")),
        (_, Some(a)) if a == agent => {
            let members = load_members(&mut tx, conv).await?;
            tx.commit().await?;
            return conversation(row, members);
        }
        (_, Some(_)) => {
            return Err(AppError::FailedPrecondition(
                "the chat is served by another agent",
            ));
        }
        (_, None) => {}
    }
    let actor = match scope.actor() {
        Actor::Agent { user_id, .. } => Participant::Agent(user_id),
        _ => Participant::System,
    };
    let queued = queued_of(&mut tx, &row).await?;
    let (row, events) = hand_over(&mut tx, &row, agent, actor, now).await?;
    store::set_last_assigned(&mut tx, agent, now).await?;
    record(&mut tx, conv, agent, &queued, manual(), Via::Admin, now).await?;
    let members = load_members(&mut tx, conv).await?;
    commit_events(e, scope, tx, events).await?;
    conversation(row, members)
}

/// The chat's assignments, newest first, with their reasons (any agent of the tenant).
pub async fn explain(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<Vec<AssignmentRecord>> {
    require_agent(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    visitor_store::lock_chat(&mut tx, conv)
        .await?
        .filter(|r| r.kind == Kind::External.as_str())
        .ok_or(AppError::NotFound("conversation"))?;
    let rows = store::assignments_of(&mut tx, conv).await?;
    tx.commit().await?;
    rows.into_iter()
        .map(|r| {
            let via = Via::parse(&r.via)?;
            let decision = match via {
                Via::Dispatcher | Via::Offered => Some(
                    serde_json::from_str(&r.reasons)
                        .map_err(|e| AppError::Internal(format!("stored reasons: {e}")))?,
                ),
                _ => None,
            };
            Ok(AssignmentRecord {
                agent: r.agent_id,
                workflow_id: r.workflow_id,
                via,
                decision,
                assigned_at: r.assigned_at,
                ended_at: r.ended_at,
            })
        })
        .collect()
}

/// A waiting chat as agents see the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedChat {
    /// The chat.
    pub chat: Conversation,
    /// 1-based place in the serving order.
    pub position: u32,
    /// Higher is served first.
    pub priority: i32,
    /// When it started waiting.
    pub enqueued_at: DateTime<Utc>,
    /// The workflow that routed it.
    pub workflow_id: Option<WorkflowId>,
    /// Skills an agent needs for it now.
    pub required_skills: Vec<String>,
    /// Whether the dispatcher assigns it.
    pub auto_assign: bool,
    /// The visitor's name.
    pub visitor_name: String,
}

/// A page of the queue (any agent of the tenant), in serving order, with the total waiting.
pub async fn waiting_list(
    e: &Engine,
    scope: &TenantScope,
    page_size: i64,
    page_token: &str,
) -> AppResult<(super::paging::Page<QueuedChat>, u32)> {
    require_agent(scope)?;
    let binding = format!("queue:{}", scope.tenant_id());
    let after: Option<store::QueueKey> = e.pages.open(&binding, page_token)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let rows = store::waiting_page(&mut tx, after, page_size + 1).await?;
    let (rows, more) = super::paging::split_page(rows, page_size);
    let first = match rows.first() {
        Some((w, ..)) => {
            store::served_before(&mut tx, (w.priority, w.enqueued_at, w.conversation_id)).await?
        }
        None => 0,
    };
    let total = visitor_store::queue_length(&mut tx).await?;
    let ids: Vec<ConversationId> = rows.iter().map(|(w, ..)| w.conversation_id).collect();
    let members = conv_store::members_of(&mut tx, &ids).await?;
    tx.commit().await?;
    let next_page_token = match (more, rows.last()) {
        (true, Some((w, ..))) => e
            .pages
            .seal(&binding, &(w.priority, w.enqueued_at, w.conversation_id)),
        _ => String::new(),
    };
    let mut items = Vec::with_capacity(rows.len());
    for (i, (w, row, visitor_name)) in rows.into_iter().enumerate() {
        let actions = actions_of(&w)?;
        let waited = u64::try_from((now - w.enqueued_at).num_seconds()).unwrap_or(0);
        let needs = ChatNeeds::for_actions(&actions, waited);
        let (skills, _) = super::routing::effective_skills(&needs.required_skills, waited);
        let m = members
            .iter()
            .filter(|(c, _)| *c == w.conversation_id)
            .map(|(_, u)| *u)
            .collect();
        items.push(QueuedChat {
            chat: conversation(row, m)?,
            position: u32::try_from(first + i as i64 + 1).unwrap_or(u32::MAX),
            priority: w.priority,
            enqueued_at: w.enqueued_at,
            workflow_id: w.workflow_id,
            required_skills: skills.into_iter().map(|s| s.skill).collect(),
            auto_assign: actions.auto_assign,
            visitor_name,
        });
    }
    Ok((
        super::paging::Page {
            items,
            next_page_token,
        },
        u32::try_from(total).unwrap_or(u32::MAX),
    ))
}

/// Every active agent of the tenant as routing sees them (any agent of the tenant).
pub async fn agent_states(
    e: &Engine,
    scope: &TenantScope,
) -> AppResult<Vec<super::routing::AgentSnapshot>> {
    require_agent(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let agents = workflows::agent_snapshots(&mut tx, e.now()).await?;
    tx.commit().await?;
    Ok(agents)
}
