//! Conversations, their members with read positions, and the per-conversation event log.
//! `last_seq` on the conversation row is the gapless counter: taking the next value locks the
//! row, so concurrent writers to one conversation are serialised and numbers never repeat.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::schema::{conversation_events, conversation_members, conversations};
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{ConversationId, MessageId, TenantId, UserId, VisitorId};

/// A stored conversation; its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = conversations)]
pub struct ConversationRow {
    /// Id.
    pub conversation_id: ConversationId,
    /// `direct`, `group` or `external`.
    pub kind: String,
    /// `open`, `queued` or `closed`.
    pub status: String,
    /// Group title.
    pub title: String,
    /// Sorted pair of agent ids of a direct conversation.
    pub direct_key: Option<String>,
    /// Visitor of an external conversation.
    pub visitor_id: Option<VisitorId>,
    /// Assigned agent of an external conversation.
    pub assigned_agent_id: Option<UserId>,
    /// Seq of the newest event.
    pub last_seq: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last message time.
    pub last_activity_at: DateTime<Utc>,
    /// Closing time.
    pub closed_at: Option<DateTime<Utc>>,
}

/// A member row; its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = conversation_members)]
pub struct MemberRow {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Agent.
    pub user_id: UserId,
    /// Highest seq read.
    pub read_seq: i64,
    /// Join time.
    pub joined_at: DateTime<Utc>,
}

/// A stored conversation event other than a posted message (a message row is its own
/// `message_posted` event); its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = conversation_events)]
pub struct EventRow {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Gapless number.
    pub seq: i64,
    /// `message_edited`, `message_deleted`, `members_added`, `member_removed` or
    /// `status_changed`.
    pub kind: String,
    /// Message concerned, for message events.
    pub message_id: Option<MessageId>,
    /// Agent or visitor who caused it.
    pub actor_id: Option<uuid::Uuid>,
    /// Kind-specific data (member ids, status).
    pub payload: serde_json::Value,
    /// Time.
    pub created_at: DateTime<Utc>,
}

/// The join condition between a conversation and its member rows.
type MemberOn = diesel::dsl::And<
    diesel::dsl::Eq<conversation_members::tenant_id, conversations::tenant_id>,
    diesel::dsl::Eq<conversation_members::conversation_id, conversations::conversation_id>,
>;

/// Conversations joined with their member rows (filter on the member to scope to one agent).
fn with_members()
-> diesel::dsl::InnerJoinOn<conversations::table, conversation_members::table, MemberOn> {
    conversations::table.inner_join(
        conversation_members::table.on(conversation_members::tenant_id
            .eq(conversations::tenant_id)
            .and(conversation_members::conversation_id.eq(conversations::conversation_id))),
    )
}

/// Stores a conversation.
pub async fn insert(tx: &mut TenantTx, row: &ConversationRow) -> AppResult<()> {
    diesel::insert_into(conversations::table)
        .values((conversations::tenant_id.eq(tx.tenant_id()), row))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Adds members (existing ones are left as they are); returns the ids actually added.
pub async fn add_members(
    tx: &mut TenantTx,
    conv: ConversationId,
    users: &[UserId],
    now: DateTime<Utc>,
) -> AppResult<Vec<UserId>> {
    let pairs: Vec<(ConversationId, UserId)> = users.iter().map(|u| (conv, *u)).collect();
    Ok(add_member_pairs(tx, &pairs, now)
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .collect())
}

/// Adds each (conversation, user) pair as a member (existing ones are left as they are);
/// returns the pairs actually added.
pub async fn add_member_pairs(
    tx: &mut TenantTx,
    pairs: &[(ConversationId, UserId)],
    now: DateTime<Utc>,
) -> AppResult<Vec<(ConversationId, UserId)>> {
    let t = tx.tenant_id();
    let rows: Vec<_> = pairs
        .iter()
        .map(|(conv, user)| {
            let row = MemberRow {
                conversation_id: *conv,
                user_id: *user,
                read_seq: 0,
                joined_at: now,
            };
            (conversation_members::tenant_id.eq(t), row)
        })
        .collect();
    Ok(diesel::insert_into(conversation_members::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning((
            conversation_members::conversation_id,
            conversation_members::user_id,
        ))
        .get_results(tx.conn())
        .await?)
}

/// Removes a member; false when they were not one.
pub async fn remove_member(
    tx: &mut TenantTx,
    conv: ConversationId,
    user: UserId,
) -> AppResult<bool> {
    let t = tx.tenant_id();
    let n = diesel::delete(conversation_members::table.find((t, conv, user)))
        .execute(tx.conn())
        .await?;
    Ok(n == 1)
}

/// The conversations with these ids; missing ones are left out.
pub async fn get_many(
    tx: &mut TenantTx,
    ids: &[ConversationId],
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(ids)),
        )
        .select(ConversationRow::as_select())
        .load(tx.conn())
        .await?)
}

/// The direct conversation with this key.
pub async fn find_direct(tx: &mut TenantTx, key: &str) -> AppResult<Option<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::direct_key.eq(key)),
        )
        .select(ConversationRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// A conversation, with `agent`'s read position when they are a member of it (no agent, or
/// one who is not a member: no position).
pub async fn get_with_member(
    tx: &mut TenantTx,
    conv: ConversationId,
    agent: Option<UserId>,
) -> AppResult<Option<(ConversationRow, Option<i64>)>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .left_join(
            conversation_members::table.on(conversation_members::tenant_id
                .eq(conversations::tenant_id)
                .and(conversation_members::conversation_id.eq(conversations::conversation_id))
                .and(conversation_members::user_id.nullable().eq(agent))),
        )
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq(conv)),
        )
        .select((
            ConversationRow::as_select(),
            conversation_members::read_seq.nullable(),
        ))
        .first(tx.conn())
        .await
        .optional()?)
}

/// The caller's conversations, newest activity first, before `before`.
pub async fn list_for_member(
    tx: &mut TenantTx,
    user: UserId,
    before: Option<(DateTime<Utc>, ConversationId)>,
    limit: i64,
) -> AppResult<Vec<(ConversationRow, i64)>> {
    let t = tx.tenant_id();
    let mut q = with_members()
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversation_members::user_id.eq(user)),
        )
        .select((ConversationRow::as_select(), conversation_members::read_seq))
        .order((
            conversations::last_activity_at.desc(),
            conversations::conversation_id.desc(),
        ))
        .limit(limit)
        .into_boxed();
    if let Some((at, id)) = before {
        q = q.filter(
            conversations::last_activity_at
                .lt(at)
                .or(conversations::last_activity_at
                    .eq(at)
                    .and(conversations::conversation_id.lt(id))),
        );
    }
    Ok(q.load(tx.conn()).await?)
}

/// Every membership of these agents, with the conversation's current `last_seq`: the
/// memberships first, then their conversations by key.
pub async fn memberships_of(
    tx: &mut TenantTx,
    users: &[UserId],
) -> AppResult<Vec<(UserId, ConversationId, i64)>> {
    let t = tx.tenant_id();
    let pairs: Vec<(UserId, ConversationId)> = conversation_members::table
        .filter(
            conversation_members::tenant_id
                .eq(t)
                .and(conversation_members::user_id.eq_any(users)),
        )
        .select((
            conversation_members::user_id,
            conversation_members::conversation_id,
        ))
        .load(tx.conn())
        .await?;
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<ConversationId> = pairs.iter().map(|(_, c)| *c).collect();
    ids.sort();
    ids.dedup();
    let seqs: std::collections::HashMap<ConversationId, i64> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(&ids)),
        )
        .select((conversations::conversation_id, conversations::last_seq))
        .load::<(ConversationId, i64)>(tx.conn())
        .await?
        .into_iter()
        .collect();
    Ok(pairs
        .into_iter()
        .filter_map(|(u, c)| seqs.get(&c).map(|s| (u, c, *s)))
        .collect())
}

/// The external conversations of these visitors, with their current `last_seq`. Only an
/// external conversation has a visitor; the kind is checked here rather than in the
/// statement, whose generic plan could otherwise walk the index of every external chat.
pub async fn visitors_conversations(
    tx: &mut TenantTx,
    visitors: &[VisitorId],
) -> AppResult<Vec<(VisitorId, ConversationId, i64)>> {
    let t = tx.tenant_id();
    let rows: Vec<(Option<VisitorId>, ConversationId, i64, String)> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::visitor_id.eq_any(visitors)),
        )
        .select((
            conversations::visitor_id,
            conversations::conversation_id,
            conversations::last_seq,
            conversations::kind,
        ))
        .load(tx.conn())
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.3 == "external")
        .filter_map(|(v, c, s, _)| v.map(|v| (v, c, s)))
        .collect())
}

/// (conversation, member) pairs of the given conversations.
pub async fn members_of(
    tx: &mut TenantTx,
    convs: &[ConversationId],
) -> AppResult<Vec<(ConversationId, UserId)>> {
    let t = tx.tenant_id();
    Ok(conversation_members::table
        .filter(
            conversation_members::tenant_id
                .eq(t)
                .and(conversation_members::conversation_id.eq_any(convs)),
        )
        .select((
            conversation_members::conversation_id,
            conversation_members::user_id,
        ))
        .order((
            conversation_members::conversation_id,
            conversation_members::joined_at,
        ))
        .load(tx.conn())
        .await?)
}

/// Takes the next seq of an open conversation (locking its row until commit); None when it
/// does not exist or is closed.
pub async fn next_seq(tx: &mut TenantTx, conv: ConversationId) -> AppResult<Option<i64>> {
    let t = tx.tenant_id();
    let target = conversations::table
        .find((t, conv))
        .filter(conversations::status.ne("closed"));
    Ok(diesel::update(target)
        .set(conversations::last_seq.eq(conversations::last_seq + 1))
        .returning(conversations::last_seq)
        .get_result(tx.conn())
        .await
        .optional()?)
}

/// Appends an event.
pub async fn insert_event(tx: &mut TenantTx, row: &EventRow) -> AppResult<()> {
    diesel::insert_into(conversation_events::table)
        .values((conversation_events::tenant_id.eq(tx.tenant_id()), row))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Appends several events in one statement.
pub async fn insert_events(tx: &mut TenantTx, rows: &[EventRow]) -> AppResult<()> {
    let t = tx.tenant_id();
    let rows: Vec<_> = rows
        .iter()
        .map(|r| (conversation_events::tenant_id.eq(t), r))
        .collect();
    diesel::insert_into(conversation_events::table)
        .values(rows)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Events with `after < seq <= up_to`, oldest first, at most `limit` (posted messages are
/// read from the messages table).
pub async fn events_between(
    tx: &mut TenantTx,
    conv: ConversationId,
    after: i64,
    up_to: i64,
    limit: i64,
) -> AppResult<Vec<EventRow>> {
    let t = tx.tenant_id();
    Ok(conversation_events::table
        .filter(
            conversation_events::tenant_id
                .eq(t)
                .and(conversation_events::conversation_id.eq(conv))
                .and(conversation_events::seq.gt(after))
                .and(conversation_events::seq.le(up_to)),
        )
        .select(EventRow::as_select())
        .order(conversation_events::seq)
        .limit(limit)
        .load(tx.conn())
        .await?)
}

/// Events in each of `ranges` (a conversation's `after < seq <= up_to`), in one statement
/// (a reactor's batch names many ranges; a round trip each fell behind under load).
pub async fn events_in(
    tx: &mut TenantTx,
    ranges: &[(ConversationId, i64, i64)],
) -> AppResult<Vec<EventRow>> {
    // One index range per conversation range.
    Ok(over_ranges(
        "SELECT e.conversation_id, e.seq, e.kind, e.message_id, e.actor_id, e.payload,
                e.created_at
           FROM unnest($2::uuid[], $3::bigint[], $4::bigint[]) AS r(c, after, up_to)
           CROSS JOIN LATERAL (
             SELECT x.* FROM conversation_events x
              WHERE x.tenant_id = $1 AND x.conversation_id = r.c
                AND x.seq > r.after AND x.seq <= r.up_to
             OFFSET 0
           ) e",
        tx.tenant_id(),
        ranges,
    )
    .load(tx.conn())
    .await?)
}

/// A statement over `ranges` (a conversation's `after < seq <= up_to` each): `$1` is the
/// tenant, and `$2`, `$3`, `$4` the ranges' conversations, `after`s and `up_to`s as arrays.
pub fn over_ranges(
    text: &'static str,
    tenant: TenantId,
    ranges: &[(ConversationId, i64, i64)],
) -> sql::Sql<'static> {
    let convs: Vec<ConversationId> = ranges.iter().map(|r| r.0).collect();
    let afters: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let up_tos: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    sql::prepared(text)
        .bind::<SqlUuid, _>(tenant)
        .bind::<Array<SqlUuid>, _>(convs)
        .bind::<Array<BigInt>, _>(afters)
        .bind::<Array<BigInt>, _>(up_tos)
}

/// Moves a member's read position forward (never back, never past `last_seq`); returns the
/// position after the call, or None when the agent is not a member.
pub async fn mark_read(
    tx: &mut TenantTx,
    conv: ConversationId,
    user: UserId,
    seq: i64,
) -> AppResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = BigInt)]
        read_seq: i64,
    }
    let t = tx.tenant_id();
    let r: Option<R> = sql::prepared(
        "UPDATE conversation_members m
            SET read_seq = GREATEST(m.read_seq, LEAST($4, c.last_seq))
           FROM conversations c
          WHERE m.tenant_id = $1 AND m.conversation_id = $2 AND m.user_id = $3
            AND c.tenant_id = m.tenant_id AND c.conversation_id = m.conversation_id
      RETURNING m.read_seq",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<SqlUuid, _>(conv)
    .bind::<SqlUuid, _>(user)
    .bind::<BigInt, _>(seq)
    .get_result(tx.conn())
    .await
    .optional()?;
    Ok(r.map(|r| r.read_seq))
}

/// A number per conversation, as a hand-written statement returns it: the columns
/// `conversation_id` and `n`.
#[derive(QueryableByName)]
pub(super) struct PerConversation {
    #[diesel(sql_type = SqlUuid)]
    conversation_id: ConversationId,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Rows of [`PerConversation`] as pairs.
pub(super) fn pairs(rows: Vec<PerConversation>) -> Vec<(ConversationId, i64)> {
    rows.into_iter().map(|r| (r.conversation_id, r.n)).collect()
}

/// Unread messages per conversation for `user`: not their own, not deleted, after their
/// read position.
pub async fn unread_counts(
    tx: &mut TenantTx,
    user: UserId,
    convs: &[ConversationId],
) -> AppResult<Vec<(ConversationId, i64)>> {
    let t = tx.tenant_id();
    let rows: Vec<PerConversation> = sql::prepared(
        "SELECT m.conversation_id, count(msg.message_id) AS n
           FROM conversation_members m
           LEFT JOIN messages msg
             ON msg.tenant_id = m.tenant_id AND msg.conversation_id = m.conversation_id
            AND msg.seq > m.read_seq AND msg.deleted_at IS NULL
            AND msg.sender_id IS DISTINCT FROM m.user_id
          WHERE m.tenant_id = $1 AND m.user_id = $2 AND m.conversation_id = ANY($3)
          GROUP BY m.conversation_id",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<SqlUuid, _>(user)
    .bind::<Array<SqlUuid>, _>(convs)
    .load(tx.conn())
    .await?;
    Ok(pairs(rows))
}

/// Which of the (conversation, agent) pairs are memberships.
pub async fn memberships_among(
    tx: &TenantTx,
    convs: &[ConversationId],
    users: &[UserId],
) -> AppResult<Vec<(ConversationId, UserId)>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = SqlUuid)]
        conversation_id: ConversationId,
        #[diesel(sql_type = SqlUuid)]
        user_id: UserId,
    }
    let t = tx.tenant_id();
    let rows: Vec<R> = sql::prepared(
        // One primary-key lookup per pair; OFFSET 0 keeps the planner from flattening it
        // into a scan of the tenant's members when its statistics are stale.
        "SELECT m.conversation_id, m.user_id
           FROM unnest($2::uuid[], $3::uuid[]) AS p(conversation_id, user_id)
           CROSS JOIN LATERAL (
             SELECT x.conversation_id, x.user_id FROM conversation_members x
              WHERE x.tenant_id = $1 AND x.conversation_id = p.conversation_id
                AND x.user_id = p.user_id
             OFFSET 0
           ) m",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(convs)
    .bind::<Array<SqlUuid>, _>(users)
    .load(&mut tx.shared())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.conversation_id, r.user_id))
        .collect())
}

/// What a send batch learns about a conversation it locked: whose it is, and the seqs it took.
#[derive(Debug, Clone, QueryableByName)]
pub struct LockedRow {
    /// Tenant.
    #[diesel(sql_type = SqlUuid)]
    pub tenant_id: TenantId,
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// `direct`, `group` or `external`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    /// Visitor of an external conversation.
    #[diesel(sql_type = diesel::sql_types::Nullable<SqlUuid>)]
    pub visitor_id: Option<VisitorId>,
    /// Its last activity before this transaction.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub last_activity_at: DateTime<Utc>,
    /// Its new `last_seq` after the seqs asked for were taken; None when it is closed or
    /// none were asked for.
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    pub reserved: Option<i64>,
}

/// Locks the conversations' rows until commit and takes `counts[i]` consecutive seqs from
/// `convs[i]` when it is open (a count may be 0), marking its activity time; one statement,
/// since a send batch always needs both. Rows are locked in id order (`convs` must be
/// sorted), so that batches which share conversations (on other nodes, say) wait for each
/// other instead of deadlocking; a seq is only taken from a row already locked. The answer
/// says whose each conversation is, which the lock reads anyway: the send path learns
/// visitor ownership without a statement of its own. Missing ones are left out.
pub async fn lock_and_reserve(
    tx: &TenantTx,
    convs: &[ConversationId],
    counts: &[i64],
    at: DateTime<Utc>,
) -> AppResult<Vec<LockedRow>> {
    let t = tx.tenant_id();
    // NO KEY UPDATE: inserts that only reference these rows need not wait for the batch.
    // The update's EXISTS reads `locked` up to the row it updates, so the rows are locked
    // in the lock's order whatever plan the update gets.
    Ok(sql::prepared(
        "WITH locked AS (
           SELECT tenant_id, conversation_id, kind, visitor_id, last_activity_at
             FROM conversations
            WHERE tenant_id = $1 AND conversation_id = ANY($2)
            ORDER BY conversation_id FOR NO KEY UPDATE
         ), moved AS (
           UPDATE conversations c
              SET last_seq = c.last_seq + v.k, last_activity_at = $4
             FROM unnest($2::uuid[], $3::bigint[]) AS v(conversation_id, k)
            WHERE c.tenant_id = $1 AND c.conversation_id = ANY($2) AND c.conversation_id = v.conversation_id AND v.k > 0
              AND c.status <> 'closed'
              AND EXISTS (SELECT FROM locked l WHERE l.conversation_id = c.conversation_id)
        RETURNING c.conversation_id, c.last_seq
         )
         SELECT l.*, m.last_seq AS reserved
           FROM locked l LEFT JOIN moved m ON m.conversation_id = l.conversation_id",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(convs)
    .bind::<Array<BigInt>, _>(counts)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .load(&mut tx.shared())
    .await?)
}

/// Gives back the last `back` seqs a [`lock_and_reserve`] of this transaction took from each
/// conversation and sets its activity time to `at` (the rows are still locked, so nobody saw
/// the seqs): for sends reserved for that were then refused.
pub async fn give_back_seqs(
    tx: &TenantTx,
    convs: &[ConversationId],
    back: &[i64],
    at: &[DateTime<Utc>],
) -> AppResult<()> {
    sql::prepared(
        "UPDATE conversations c
            SET last_seq = c.last_seq - v.back, last_activity_at = v.at
           FROM unnest($2::uuid[], $3::bigint[], $4::timestamptz[]) AS v(conversation_id, back, at)
          WHERE c.tenant_id = $1 AND c.conversation_id = ANY($2) AND c.conversation_id = v.conversation_id",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(convs)
    .bind::<Array<BigInt>, _>(back)
    .bind::<Array<diesel::sql_types::Timestamptz>, _>(at)
    .execute(&mut tx.shared())
    .await?;
    Ok(())
}
