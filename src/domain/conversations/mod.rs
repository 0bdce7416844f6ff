//! Conversations and their messages: one pipeline for internal and external chat.
//!
//! Every durable change takes the conversation's next seq inside its transaction, stores an
//! event with that seq, commits, and only then is announced. A send answers after commit.
//! This module owns conversations and their members; [`messaging`] what is said in them;
//! [`log`] the numbered event log and how it is committed and read back.

mod log;
mod messaging;

pub use log::{Opening, events_between};
pub(crate) use log::{OpeningAsk, openings_in, stored_events_in};
pub(crate) use log::{append, commit_events, event_row, record_events};
pub(crate) use messaging::submit_as_engine;
pub use messaging::{change_message, list_messages, mark_read, set_typing, submit};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::events::{ConversationEvent, Event, EventKind, Message};
use super::paging::{Page, page_size, split_page};
use super::participants::{ConversationAccess, Participant, admits};
use super::spine::{self, Joiner, SpineEvent};
use super::writer::SendJob;
use super::{Engine, require_agent};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, MessageId, UserId, VisitorId};
use crate::storage::TenantTx;
use crate::storage::conversations::{self as store, ConversationRow, EventRow};
use crate::storage::messages::{self, MessageRow};
use crate::storage::users;
use crate::tenancy::{Role, TenantScope};

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 8000;
/// Most members a group may have.
pub const MAX_MEMBERS: usize = 500;

/// Kind of conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Two agents.
    Direct,
    /// Several agents with a title.
    Group,
    /// A visitor and agents.
    External,
}

impl Kind {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Group => "group",
            Kind::External => "external",
        }
    }
    /// Parses the storage spelling; anything else is corrupt data, never some default kind.
    pub fn parse(s: &str) -> AppResult<Self> {
        match s {
            "direct" => Ok(Kind::Direct),
            "group" => Ok(Kind::Group),
            "external" => Ok(Kind::External),
            other => Err(AppError::Internal(format!(
                "unknown conversation kind {other:?}"
            ))),
        }
    }
}

/// Where a conversation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Members talk.
    Open,
    /// An external chat waiting for an agent.
    Queued,
    /// Over; nothing more is posted.
    Closed,
}

impl Status {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Queued => "queued",
            Status::Closed => "closed",
        }
    }
    /// Parses the storage spelling; anything else is corrupt data, never some default.
    pub fn parse(s: &str) -> AppResult<Self> {
        match s {
            "open" => Ok(Status::Open),
            "queued" => Ok(Status::Queued),
            "closed" => Ok(Status::Closed),
            other => Err(AppError::Internal(format!(
                "unknown conversation status {other:?}"
            ))),
        }
    }
}

/// A conversation with its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// Id.
    pub id: ConversationId,
    /// Kind.
    pub kind: Kind,
    /// Where it stands.
    pub status: Status,
    /// Group title.
    pub title: String,
    /// Agent members (an external chat's visitor is [`Conversation::visitor_id`]).
    pub members: Vec<UserId>,
    /// Visitor of an external conversation.
    pub visitor_id: Option<VisitorId>,
    /// Agent serving an external conversation (kept after it ends, for its rating).
    pub assigned: Option<UserId>,
    /// Seq of the newest event.
    pub last_seq: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last message time.
    pub last_activity_at: DateTime<Utc>,
}

/// A conversation as one member sees it in their list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The conversation.
    pub conversation: Conversation,
    /// Unread messages.
    pub unread: i64,
    /// Newest message.
    pub last_message: Option<Message>,
    /// The member's read position.
    pub read_seq: i64,
}

/// The stored answer to a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Message id.
    pub id: MessageId,
    /// Its seq.
    pub seq: i64,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// A conversation from its stored row and agent members.
pub(crate) fn conversation(row: ConversationRow, members: Vec<UserId>) -> AppResult<Conversation> {
    Ok(Conversation {
        id: row.conversation_id,
        kind: Kind::parse(&row.kind)?,
        status: Status::parse(&row.status)?,
        title: row.title,
        members,
        visitor_id: row.visitor_id,
        assigned: row.assigned_agent_id,
        last_seq: row.last_seq,
        created_at: row.created_at,
        last_activity_at: row.last_activity_at,
    })
}

/// A message as members see it; a corrupt stored sender is an internal error.
pub fn message(row: MessageRow) -> AppResult<Message> {
    Ok(Message {
        id: row.message_id,
        conversation_id: row.conversation_id,
        seq: row.seq,
        sender: Participant::from_stored(&row.sender_type, row.sender_id)?,
        text: row.body,
        created_at: row.created_at,
        edited_at: row.edited_at,
        deleted: row.deleted_at.is_some(),
    })
}

/// The stored form of a new message (no idempotency key).
pub(super) fn message_row(tenant: crate::ids::TenantId, m: &Message) -> MessageRow {
    MessageRow {
        tenant_id: tenant,
        message_id: m.id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        sender_type: m.sender.kind_str().to_owned(),
        sender_id: m.sender.id(),
        body: m.text.clone(),
        request_id: None,
        request_hash: None,
        created_at: m.created_at,
        edited_at: None,
        deleted_at: None,
    }
}

/// The conversation, if `who` takes part in it (see [`admits`]), with an agent member's read
/// position.
async fn admitted(
    tx: &mut TenantTx,
    conv: ConversationId,
    who: Participant,
) -> AppResult<Option<(ConversationRow, Option<i64>)>> {
    let agent = who.agent();
    let Some((row, read_seq)) = store::get_with_member(tx, conv, agent).await? else {
        return Ok(None);
    };
    let members: &[UserId] = match (agent, read_seq) {
        (Some(u), Some(_)) => &[u],
        _ => &[],
    };
    let access = ConversationAccess {
        // The row was read in the transaction's tenant, and carries no tenant of its own.
        tenant: tx.tenant_id(),
        kind: Kind::parse(&row.kind)?,
        visitor: row.visitor_id,
        agents: members,
    };
    Ok(admits(tx.tenant_id(), &who, &access).then_some((row, read_seq)))
}

/// [`admitted`], or NOT_FOUND (another tenant's conversation, or one the caller takes no
/// part in, looks exactly like a missing one).
pub(crate) async fn require_admitted(
    tx: &mut TenantTx,
    conv: ConversationId,
    who: Participant,
) -> AppResult<(ConversationRow, Option<i64>)> {
    admitted(tx, conv, who)
        .await?
        .ok_or(AppError::NotFound("conversation"))
}

/// The conversation and the agent's read position; NOT_FOUND unless they are a member.
async fn member_of(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: UserId,
) -> AppResult<(ConversationRow, i64)> {
    match require_admitted(tx, conv, Participant::Agent(agent)).await? {
        (row, Some(read_seq)) => Ok((row, read_seq)),
        (_, None) => Err(AppError::NotFound("conversation")),
    }
}

pub(crate) async fn require_active_agents(tx: &mut TenantTx, ids: &[UserId]) -> AppResult<()> {
    for id in ids {
        match users::get(tx, *id).await? {
            Some(u) if u.active => {}
            _ => return Err(AppError::NotFound("agent")),
        }
    }
    Ok(())
}

pub(crate) async fn load_members(
    tx: &mut TenantTx,
    conv: ConversationId,
) -> AppResult<Vec<UserId>> {
    Ok(store::members_of(tx, &[conv])
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .collect())
}

/// Creates a direct conversation (returning the existing one between the same two agents) or
/// a group. The creation is the conversation's first event (seq 1: members added).
pub async fn create(
    e: &Engine,
    scope: &TenantScope,
    kind: Kind,
    others: Vec<UserId>,
    title: String,
) -> AppResult<Conversation> {
    let (me, _) = require_agent(scope)?;
    let mut members: Vec<UserId> = others.into_iter().filter(|u| *u != me).collect();
    members.sort();
    members.dedup();
    let direct_key = match kind {
        Kind::Direct => {
            if members.len() != 1 {
                return Err(AppError::field(
                    "member_agent_ids",
                    "a direct conversation has exactly one other agent",
                ));
            }
            let mut pair = [me, members[0]];
            pair.sort();
            Some(format!("{}:{}", pair[0], pair[1]))
        }
        Kind::Group => {
            if members.is_empty() || members.len() >= MAX_MEMBERS {
                return Err(AppError::field(
                    "member_agent_ids",
                    format!("a group has 1-{} other agents", MAX_MEMBERS - 1),
                ));
            }
            None
        }
        Kind::External => {
            return Err(AppError::field(
                "kind",
                "external chats are started by visitors",
            ));
        }
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    if let Some(key) = &direct_key
        && let Some(existing) = store::find_direct(&mut tx, key).await?
    {
        let members = load_members(&mut tx, existing.conversation_id).await?;
        tx.commit().await?;
        return conversation(existing, members);
    }
    require_active_agents(&mut tx, &members).await?;
    members.push(me);
    members.sort();
    let now = e.now();
    let row = ConversationRow {
        conversation_id: ConversationId::new(),
        kind: kind.as_str().into(),
        status: Status::Open.as_str().into(),
        title,
        direct_key: direct_key.clone(),
        visitor_id: None,
        assigned_agent_id: None,
        last_seq: 0,
        created_at: now,
        last_activity_at: now,
        closed_at: None,
    };
    match store::insert(&mut tx, &row).await {
        // The same pair created it concurrently: answer with theirs.
        Err(AppError::AlreadyExists(_)) if direct_key.is_some() => {
            drop(tx);
            let mut tx = e.db.tenant_tx(scope).await?;
            let key = direct_key.unwrap_or_default();
            let existing = store::find_direct(&mut tx, &key)
                .await?
                .ok_or(AppError::Unavailable("direct conversation race".into()))?;
            let members = load_members(&mut tx, existing.conversation_id).await?;
            tx.commit().await?;
            return conversation(existing, members);
        }
        other => other?,
    }
    store::add_members(&mut tx, row.conversation_id, &members, now).await?;
    let ev = append(
        &mut tx,
        row.conversation_id,
        EventKind::MembersAdded {
            agents: members.clone(),
            actor: Some(me),
        },
        Participant::Agent(me),
        now,
    )
    .await?;
    let created = Conversation {
        last_seq: ev.seq,
        ..conversation(row, members)?
    };
    commit_events(e, scope, tx, vec![ev]).await?;
    Ok(created)
}

/// One conversation the caller belongs to, with their unread count.
pub async fn get(e: &Engine, scope: &TenantScope, id: ConversationId) -> AppResult<Summary> {
    let (me, _) = require_agent(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let (row, read_seq) = member_of(&mut tx, id, me).await?;
    let mut s = summaries(&mut tx, me, vec![(row, read_seq)]).await?;
    tx.commit().await?;
    Ok(s.remove(0))
}

async fn summaries(
    tx: &mut TenantTx,
    me: UserId,
    rows: Vec<(ConversationRow, i64)>,
) -> AppResult<Vec<Summary>> {
    let ids: Vec<ConversationId> = rows.iter().map(|(r, _)| r.conversation_id).collect();
    let members = store::members_of(tx, &ids).await?;
    let unread = store::unread_counts(tx, me, &ids).await?;
    let mut latest = messages::latest(tx, &ids).await?;
    rows.into_iter()
        .map(|(row, read_seq)| {
            let id = row.conversation_id;
            let m = members
                .iter()
                .filter(|(c, _)| *c == id)
                .map(|(_, u)| *u)
                .collect();
            let last = latest
                .iter()
                .position(|l| l.conversation_id == id)
                .map(|i| message(latest.swap_remove(i)))
                .transpose()?;
            Ok(Summary {
                conversation: conversation(row, m)?,
                unread: unread.iter().find(|(c, _)| *c == id).map_or(0, |(_, n)| *n),
                last_message: last,
                read_seq,
            })
        })
        .collect()
}

/// The caller's conversations, newest activity first.
pub async fn list(
    e: &Engine,
    scope: &TenantScope,
    requested_size: i32,
    token: &str,
) -> AppResult<Page<Summary>> {
    let (me, _) = require_agent(scope)?;
    let size = page_size(requested_size)?;
    let binding = format!("tenant:{}|user:{me}|ListConversations", scope.tenant_id());
    let before = e
        .pages
        .open::<(DateTime<Utc>, ConversationId)>(&binding, token)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let rows = store::list_for_member(&mut tx, me, before, size + 1).await?;
    let (rows, more) = split_page(rows, size);
    let next_page_token = match rows.last() {
        Some((last, _)) if more => e
            .pages
            .seal(&binding, &(last.last_activity_at, last.conversation_id)),
        _ => String::new(),
    };
    let items = summaries(&mut tx, me, rows).await?;
    tx.commit().await?;
    Ok(Page {
        items,
        next_page_token,
    })
}

/// Adds agents to a group the caller belongs to.
pub async fn add_members(
    e: &Engine,
    scope: &TenantScope,
    id: ConversationId,
    agents: Vec<UserId>,
) -> AppResult<Conversation> {
    let (me, _) = require_agent(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let (row, _) = member_of(&mut tx, id, me).await?;
    if Kind::parse(&row.kind)? != Kind::Group {
        return Err(AppError::FailedPrecondition("only groups change members"));
    }
    require_active_agents(&mut tx, &agents).await?;
    let now = e.now();
    let added = store::add_members(&mut tx, id, &agents, now).await?;
    let mut events = Vec::new();
    if !added.is_empty() {
        let mut members = load_members(&mut tx, id).await?;
        if members.len() > MAX_MEMBERS {
            return Err(AppError::field(
                "agent_ids",
                format!("a group has at most {MAX_MEMBERS} members"),
            ));
        }
        members.sort();
        events.push(
            append(
                &mut tx,
                id,
                EventKind::MembersAdded {
                    agents: added,
                    actor: Some(me),
                },
                Participant::Agent(me),
                now,
            )
            .await?,
        );
    }
    let (row, _) = member_of(&mut tx, id, me).await?;
    let members = load_members(&mut tx, id).await?;
    commit_events(e, scope, tx, events).await?;
    conversation(row, members)
}

/// Removes an agent from a group: anyone may leave; admins may remove others.
pub async fn remove_member(
    e: &Engine,
    scope: &TenantScope,
    id: ConversationId,
    agent: UserId,
) -> AppResult<Conversation> {
    let (me, role) = require_agent(scope)?;
    if agent != me && role != Role::Admin {
        return Err(AppError::PermissionDenied(
            "only admins remove other members",
        ));
    }
    let mut tx = e.db.tenant_tx(scope).await?;
    let (row, _) = member_of(&mut tx, id, me).await?;
    if Kind::parse(&row.kind)? != Kind::Group {
        return Err(AppError::FailedPrecondition("only groups change members"));
    }
    let now = e.now();
    let mut events = Vec::new();
    if store::remove_member(&mut tx, id, agent).await? {
        events.push(
            append(
                &mut tx,
                id,
                EventKind::MemberRemoved {
                    agents: vec![agent],
                    actor: Some(me),
                },
                Participant::Agent(me),
                now,
            )
            .await?,
        );
    } else {
        return Err(AppError::NotFound("member"));
    }
    let members = load_members(&mut tx, id).await?;
    let last_seq = events.last().map_or(row.last_seq, |ev| ev.seq);
    commit_events(e, scope, tx, events).await?;
    Ok(Conversation {
        last_seq,
        ..conversation(row, members)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_kinds_and_statuses_round_trip_and_unknown_ones_are_errors() {
        for k in [Kind::Direct, Kind::Group, Kind::External] {
            assert_eq!(Kind::parse(k.as_str()).unwrap(), k);
        }
        for st in [Status::Open, Status::Queued, Status::Closed] {
            assert_eq!(Status::parse(st.as_str()).unwrap(), st);
        }
        for junk in ["", "Group", "groups", "channel"] {
            assert!(
                matches!(Kind::parse(junk), Err(AppError::Internal(_))),
                "{junk}"
            );
        }
        for junk in ["", "Open", "archived"] {
            assert!(
                matches!(Status::parse(junk), Err(AppError::Internal(_))),
                "{junk}"
            );
        }
    }
}
