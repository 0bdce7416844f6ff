//! The conversation's event log: taking the next seq for a change, committing changes with
//! their spine entry and announcing them after commit, and reading stored events back in seq
//! order (posted messages live in the messages table, every other change in
//! conversation_events).

use super::*;
use std::collections::HashMap;

#[derive(Serialize, Deserialize)]
struct MembersPayload {
    agents: Vec<UserId>,
    actor: Option<UserId>,
}

#[derive(Serialize, Deserialize)]
struct StatusPayload {
    status: Status,
    assigned: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assigned_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    visitor: Option<VisitorId>,
}

/// Takes the next seq and stores an event (not a posted message: those are written by the
/// writer); the caller commits with [`commit_events`].
pub(crate) async fn append(
    tx: &mut TenantTx,
    conv: ConversationId,
    kind: EventKind,
    actor: Participant,
    at: DateTime<Utc>,
) -> AppResult<ConversationEvent> {
    let seq = store::next_seq(tx, conv)
        .await?
        .ok_or(AppError::FailedPrecondition("the conversation is closed"))?;
    let (row, event) = event_row(conv, seq, kind, actor, at)?;
    store::insert_event(tx, &row).await?;
    Ok(event)
}

/// The row that stores an event at `seq` (taken by the caller), and the event itself.
pub(crate) fn event_row(
    conv: ConversationId,
    seq: i64,
    kind: EventKind,
    actor: Participant,
    at: DateTime<Utc>,
) -> AppResult<(EventRow, ConversationEvent)> {
    let (message_id, payload) = match &kind {
        EventKind::MessagePosted(_) => {
            return Err(AppError::Internal("posts go through the writer".into()));
        }
        EventKind::MessageEdited(m) | EventKind::MessageDeleted(m) => {
            (Some(m.id), serde_json::Value::Null)
        }
        EventKind::MembersAdded { agents, actor } | EventKind::MemberRemoved { agents, actor } => (
            None,
            serde_json::to_value(MembersPayload {
                agents: agents.clone(),
                actor: *actor,
            })
            .map_err(|e| AppError::Internal(e.to_string()))?,
        ),
        EventKind::StatusChanged {
            status,
            assigned,
            assigned_name,
            visitor,
        } => (
            None,
            serde_json::to_value(StatusPayload {
                status: *status,
                assigned: *assigned,
                assigned_name: assigned_name.clone(),
                visitor: *visitor,
            })
            .map_err(|e| AppError::Internal(e.to_string()))?,
        ),
    };
    let row = EventRow {
        conversation_id: conv,
        seq,
        kind: kind.name().to_owned(),
        message_id,
        actor_id: actor.id(),
        payload,
        created_at: at,
    };
    Ok((
        row,
        ConversationEvent {
            conversation_id: conv,
            seq,
            at,
            kind,
        },
    ))
}

/// Records the events in the spine, commits, and only then announces them.
pub(crate) async fn commit_events(
    e: &Engine,
    scope: &TenantScope,
    tx: TenantTx,
    events: Vec<ConversationEvent>,
) -> AppResult<()> {
    record_events(&tx, &events, e.now()).await?;
    tx.commit().await?;
    for event in events {
        e.publisher.publish(Event::Durable {
            tenant: scope.tenant_id(),
            event,
        });
    }
    Ok(())
}

/// Records the events in the spine of `tx`, for a transaction the caller commits (a timer's):
/// every node learns of them from the spine notice at commit.
pub(crate) async fn record_events(
    tx: &TenantTx,
    events: &[ConversationEvent],
    at: DateTime<Utc>,
) -> AppResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut committed: Vec<SpineEvent> = events
        .iter()
        .map(|ev| SpineEvent::Conversation {
            c: ev.conversation_id,
            from: ev.seq,
            to: ev.seq,
            posts: false,
            quiet: !ev.kind.concerns_routing(),
        })
        .collect();
    // Streams of new members on other nodes do not follow the conversation yet: the
    // spine names them, so those nodes can tell them.
    for ev in events {
        let (c, seq) = (ev.conversation_id, ev.seq);
        match &ev.kind {
            EventKind::MembersAdded { agents, .. } => {
                committed.extend(agents.iter().map(|a| SpineEvent::Joined {
                    c,
                    seq,
                    who: Joiner::Agent(*a),
                }));
            }
            EventKind::StatusChanged {
                visitor: Some(v), ..
            } => committed.push(SpineEvent::Joined {
                c,
                seq,
                who: Joiner::Visitor(*v),
            }),
            _ => {}
        }
    }
    spine::record(tx, &committed, at).await
}

/// Stored events of a conversation the caller takes part in with `after < seq <= up_to`,
/// oldest first, at most `limit`; None when the caller takes no part in it.
pub async fn events_between(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    after: i64,
    up_to: i64,
    limit: i64,
) -> AppResult<Option<Vec<ConversationEvent>>> {
    let who = Participant::of(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    if admitted(&mut tx, conv, who).await?.is_none() {
        tx.commit().await?;
        return Ok(None);
    }
    let out = stored_events(&mut tx, conv, after, up_to, limit).await?;
    tx.commit().await?;
    Ok(Some(out))
}

/// What a stream shows when it starts following a conversation, read in one transaction:
/// the conversation, for an agent its visitor (an external chat), and the first `limit`
/// stored events after `after`, up to the last seq committed when read.
pub struct Opening {
    /// The conversation.
    pub conversation: Conversation,
    /// Its visitor, for an agent.
    pub visitor: Option<crate::domain::visitors::Visitor>,
    /// Stored events after `after`, oldest first.
    pub events: Vec<ConversationEvent>,
}

/// One stream's ask for an [`Opening`]: who, of which conversation, the events after which
/// seq, and at most how many.
pub(crate) type OpeningAsk = (Participant, ConversationId, i64, i64);

/// The [`Opening`] of each ask, in order (None where its caller may not see the
/// conversation), read in the transaction's tenant with a fixed number of statements
/// whatever their number: the streams of a dispatcher pass's agents join their chats at the
/// same moment.
pub(crate) async fn openings_in(
    tx: &mut TenantTx,
    asks: &[OpeningAsk],
) -> AppResult<Vec<Option<Opening>>> {
    let tenant = tx.tenant_id();
    let mut ids: Vec<ConversationId> = asks.iter().map(|a| a.1).collect();
    ids.sort();
    ids.dedup();
    let rows: HashMap<ConversationId, ConversationRow> = store::get_many(tx, &ids)
        .await?
        .into_iter()
        .map(|r| (r.conversation_id, r))
        .collect();
    let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    for (c, u) in store::members_of(tx, &ids).await? {
        members.entry(c).or_default().push(u);
    }
    let mut admitted: Vec<Option<&ConversationRow>> = Vec::with_capacity(asks.len());
    for (who, c, _, _) in asks {
        let row = match rows.get(c) {
            Some(row) => {
                let access = ConversationAccess {
                    tenant,
                    kind: Kind::parse(&row.kind)?,
                    visitor: row.visitor_id,
                    agents: members.get(c).map(Vec::as_slice).unwrap_or_default(),
                };
                admits(tenant, who, &access).then_some(row)
            }
            None => None,
        };
        admitted.push(row);
    }
    // An agent sees the visitor of an external chat.
    let mut visitor_ids: Vec<VisitorId> = asks
        .iter()
        .zip(&admitted)
        .filter_map(|((who, ..), row)| match who {
            Participant::Agent(_) => row.and_then(|r| r.visitor_id),
            _ => None,
        })
        .collect();
    visitor_ids.sort();
    visitor_ids.dedup();
    let mut visitors = HashMap::new();
    if !visitor_ids.is_empty() {
        for v in crate::storage::visitors::get_many(tx, &visitor_ids).await? {
            visitors.insert(v.visitor_id, crate::domain::visitors::visitor(v)?);
        }
    }
    // Seqs are gapless, so the first `limit` events after `after` end at `after + limit`.
    let ranges: Vec<(ConversationId, i64, i64)> = asks
        .iter()
        .zip(&admitted)
        .filter_map(|((_, c, after, limit), row)| {
            let up_to = (*row)?.last_seq.min(after.saturating_add(*limit));
            (*after < up_to).then_some((*c, *after, up_to))
        })
        .collect();
    let events = stored_events_in(tx, &ranges).await?;
    asks.iter()
        .zip(admitted)
        .map(|((who, c, after, limit), row)| {
            let Some(row) = row else { return Ok(None) };
            let up_to = row.last_seq.min(after.saturating_add(*limit));
            let visitor = match who {
                Participant::Agent(_) => row.visitor_id.and_then(|v| visitors.get(&v).cloned()),
                _ => None,
            };
            let mine = events
                .iter()
                .filter(|ev| ev.conversation_id == *c && ev.seq > *after && ev.seq <= up_to)
                .cloned()
                .collect();
            Ok(Some(Opening {
                conversation: conversation(
                    row.clone(),
                    members.get(c).cloned().unwrap_or_default(),
                )?,
                visitor,
                events: mine,
            }))
        })
        .collect()
}

/// Stored events of a conversation with `after < seq <= up_to`, oldest first, at most
/// `limit`, whoever asks: callers check membership first, or are the engine itself.
async fn stored_events(
    tx: &mut TenantTx,
    conv: ConversationId,
    after: i64,
    up_to: i64,
    limit: i64,
) -> AppResult<Vec<ConversationEvent>> {
    let rows = store::events_between(tx, conv, after, up_to, limit).await?;
    let posted = messages::posted_between(tx, conv, after, up_to, limit).await?;
    let mut out = assemble(tx, rows, posted).await?;
    // Seqs are gapless over both tables, so the first `limit` of the merge are exactly the
    // events that follow `after`.
    out.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(out)
}

/// Stored events of each of `ranges` (a conversation's `after < seq <= up_to`), with a
/// fixed number of statements whatever their number, ordered by conversation, then seq.
pub(crate) async fn stored_events_in(
    tx: &mut TenantTx,
    ranges: &[(ConversationId, i64, i64)],
) -> AppResult<Vec<ConversationEvent>> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let rows = store::events_in(tx, ranges).await?;
    let posted = messages::posted_in(tx, ranges).await?;
    let mut out = assemble(tx, rows, posted).await?;
    out.sort_by_key(|e| (e.conversation_id, e.seq));
    // Ranges that overlap name an event once.
    out.dedup_by_key(|e| (e.conversation_id, e.seq));
    Ok(out)
}

/// Conversation events from their rows and the posted messages, in seq order.
async fn assemble(
    tx: &mut TenantTx,
    rows: Vec<store::EventRow>,
    posted: Vec<messages::MessageRow>,
) -> AppResult<Vec<ConversationEvent>> {
    let ids: Vec<MessageId> = rows.iter().filter_map(|r| r.message_id).collect();
    let msgs = if ids.is_empty() {
        Vec::new()
    } else {
        messages::by_ids(tx, &ids).await?
    };
    let mut out = Vec::with_capacity(rows.len() + posted.len());
    for r in rows {
        let msg = || {
            r.message_id
                .and_then(|id| msgs.iter().find(|m| m.message_id == id))
                .cloned()
                .map(message)
                .ok_or_else(|| AppError::Internal(format!("event {} lost its message", r.seq)))?
        };
        let members = || {
            serde_json::from_value::<MembersPayload>(r.payload.clone())
                .map_err(|err| AppError::Internal(err.to_string()))
        };
        let kind = match r.kind.as_str() {
            "message_edited" => EventKind::MessageEdited(msg()?),
            "message_deleted" => EventKind::MessageDeleted(msg()?),
            "members_added" => {
                let p = members()?;
                EventKind::MembersAdded {
                    agents: p.agents,
                    actor: p.actor,
                }
            }
            "member_removed" => {
                let p = members()?;
                EventKind::MemberRemoved {
                    agents: p.agents,
                    actor: p.actor,
                }
            }
            "status_changed" => {
                let p = serde_json::from_value::<StatusPayload>(r.payload.clone())
                    .map_err(|err| AppError::Internal(err.to_string()))?;
                EventKind::StatusChanged {
                    status: p.status,
                    assigned: p.assigned,
                    assigned_name: p.assigned_name,
                    visitor: p.visitor,
                }
            }
            other => return Err(AppError::Internal(format!("unknown event kind {other}"))),
        };
        out.push(ConversationEvent {
            conversation_id: r.conversation_id,
            seq: r.seq,
            at: r.created_at,
            kind,
        });
    }
    for m in posted {
        out.push(ConversationEvent {
            conversation_id: m.conversation_id,
            seq: m.seq,
            at: m.created_at,
            kind: EventKind::MessagePosted(message(m)?),
        });
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}
