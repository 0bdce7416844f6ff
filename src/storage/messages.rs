//! Messages: the current state of each message (text, edit and delete markers). A message
//! row is also its conversation's `message_posted` event, numbered by its seq.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::schema::messages;
use super::{TenantTx, spine, sql};
use crate::error::AppResult;
use crate::ids::{ConversationId, MessageId, TenantId};

/// A stored message.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Id.
    pub message_id: MessageId,
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Seq of the posting event.
    pub seq: i64,
    /// `agent`, `visitor` or `system`.
    pub sender_type: String,
    /// Agent or visitor id.
    pub sender_id: Option<uuid::Uuid>,
    /// Text; empty once deleted.
    pub body: String,
    /// Client idempotency key.
    pub request_id: Option<uuid::Uuid>,
    /// SHA-256 of the request payload.
    pub request_hash: Option<Vec<u8>>,
    /// Send time.
    pub created_at: DateTime<Utc>,
    /// Last edit.
    pub edited_at: Option<DateTime<Utc>>,
    /// Deletion time.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One message of a conversation.
pub async fn get(
    tx: &mut TenantTx,
    conv: ConversationId,
    id: MessageId,
) -> AppResult<Option<MessageRow>> {
    let t = tx.tenant_id();
    Ok(messages::table
        .find((t, id))
        .filter(messages::conversation_id.eq(conv))
        .select(MessageRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Messages by id.
pub async fn by_ids(tx: &mut TenantTx, ids: &[MessageId]) -> AppResult<Vec<MessageRow>> {
    let t = tx.tenant_id();
    Ok(messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::message_id.eq_any(ids)),
        )
        .select(MessageRow::as_select())
        .load(tx.conn())
        .await?)
}

/// A page of messages: seq greater than `anchor` ascending (forward), or lower than `anchor`
/// descending (backward; `None` means from the newest).
pub async fn page(
    tx: &mut TenantTx,
    conv: ConversationId,
    forward: bool,
    anchor: Option<i64>,
    limit: i64,
) -> AppResult<Vec<MessageRow>> {
    let t = tx.tenant_id();
    let mut q = messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq(conv)),
        )
        .select(MessageRow::as_select())
        .limit(limit)
        .into_boxed();
    q = match (forward, anchor) {
        (true, a) => q
            .filter(messages::seq.gt(a.unwrap_or(0)))
            .order(messages::seq.asc()),
        (false, Some(a)) => q.filter(messages::seq.lt(a)).order(messages::seq.desc()),
        (false, None) => q.order(messages::seq.desc()),
    };
    Ok(q.load(tx.conn()).await?)
}

/// The newest message of each conversation.
pub async fn latest(tx: &mut TenantTx, convs: &[ConversationId]) -> AppResult<Vec<MessageRow>> {
    let t = tx.tenant_id();
    Ok(messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq_any(convs)),
        )
        .distinct_on(messages::conversation_id)
        .select(MessageRow::as_select())
        .order((messages::conversation_id, messages::seq.desc()))
        .load(tx.conn())
        .await?)
}

/// Replaces a message's text.
pub async fn edit(
    tx: &mut TenantTx,
    id: MessageId,
    body: &str,
    at: DateTime<Utc>,
) -> AppResult<MessageRow> {
    let t = tx.tenant_id();
    Ok(diesel::update(messages::table.find((t, id)))
        .set((messages::body.eq(body), messages::edited_at.eq(at)))
        .returning(MessageRow::as_returning())
        .get_result(tx.conn())
        .await?)
}

/// Marks a message deleted and drops its text.
pub async fn delete(tx: &mut TenantTx, id: MessageId, at: DateTime<Utc>) -> AppResult<MessageRow> {
    let t = tx.tenant_id();
    Ok(diesel::update(messages::table.find((t, id)))
        .set((messages::body.eq(""), messages::deleted_at.eq(at)))
        .returning(MessageRow::as_returning())
        .get_result(tx.conn())
        .await?)
}

/// Stores posted messages, and the spine entry `events` that records them in `shard`, in one
/// statement; returns the entry's position. The rows travel as arrays, so the statement text
/// is the same for any batch size and stays prepared.
pub async fn insert_posted(
    tx: &TenantTx,
    rows: &[MessageRow],
    shard: i16,
    events: serde_json::Value,
) -> AppResult<i64> {
    use diesel::sql_types::{BigInt, Bytea, Jsonb, Nullable, SmallInt, Text, Timestamptz};
    let t = tx.tenant_id();
    let at = rows.first().map(|r| r.created_at).unwrap_or_default();
    let entry: spine::Pos = sql::prepared(concat!(
        spine::with_entry!(),
        ", posted AS (
           INSERT INTO messages (tenant_id, message_id, conversation_id, seq, sender_type,
                                 sender_id, body, request_id, request_hash, created_at)
           SELECT $1, x.*, $3
             FROM unnest($5::uuid[], $6::uuid[], $7::bigint[], $8::text[], $9::uuid[],
                         $10::text[], $11::uuid[], $12::bytea[]) AS x
         )
         SELECT pos FROM entry"
    ))
    .bind::<SqlUuid, _>(t)
    .bind::<SmallInt, _>(shard)
    .bind::<Timestamptz, _>(at)
    .bind::<Jsonb, _>(events)
    .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.conversation_id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.sender_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<SqlUuid>>, _>(rows.iter().map(|r| r.sender_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
    .bind::<Array<Nullable<SqlUuid>>, _>(rows.iter().map(|r| r.request_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Bytea>>, _>(
        rows.iter()
            .map(|r| r.request_hash.as_deref())
            .collect::<Vec<_>>(),
    )
    .get_result(&mut tx.shared())
    .await?;
    Ok(entry.pos)
}

/// Messages posted with `after < seq <= up_to`, oldest first, at most `limit`: the
/// `message_posted` events of a conversation.
pub async fn posted_between(
    tx: &mut TenantTx,
    conv: ConversationId,
    after: i64,
    up_to: i64,
    limit: i64,
) -> AppResult<Vec<MessageRow>> {
    let t = tx.tenant_id();
    Ok(messages::table
        .filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq(conv))
                .and(messages::seq.gt(after))
                .and(messages::seq.le(up_to)),
        )
        .select(MessageRow::as_select())
        .order(messages::seq)
        .limit(limit)
        .load(tx.conn())
        .await?)
}

/// Messages in each of `ranges` (a conversation's `after < seq <= up_to`), in one
/// statement.
pub async fn posted_in(
    tx: &mut TenantTx,
    ranges: &[(ConversationId, i64, i64)],
) -> AppResult<Vec<MessageRow>> {
    Ok(super::conversations::over_ranges(
        "SELECT m.* FROM unnest($2::uuid[], $3::bigint[], $4::bigint[]) AS r(c, after, up_to)
           CROSS JOIN LATERAL (
             SELECT x.* FROM messages x
              WHERE x.tenant_id = $1 AND x.conversation_id = r.c
                AND x.seq > r.after AND x.seq <= r.up_to
             OFFSET 0
           ) m",
        tx.tenant_id(),
        ranges,
    )
    .load(tx.conn())
    .await?)
}

/// Whether the engine posted `text` into `conv` at or after `since`: how a timer that posts
/// a message tells, when it fires again after a crash, that its first try already did (the
/// engine's sends have no request id).
pub async fn engine_said_since(
    tx: &mut TenantTx,
    conv: ConversationId,
    text: &str,
    since: DateTime<Utc>,
) -> AppResult<bool> {
    let t = tx.tenant_id();
    Ok(diesel::select(diesel::dsl::exists(
        messages::table.filter(
            messages::tenant_id
                .eq(t)
                .and(messages::conversation_id.eq(conv))
                .and(messages::sender_type.eq("system"))
                .and(messages::created_at.ge(since))
                .and(messages::body.eq(text)),
        ),
    ))
    .get_result(tx.conn())
    .await?)
}

/// Messages stored under any of the (sender, request id) pairs.
pub async fn find_by_requests(
    tx: &TenantTx,
    senders: &[uuid::Uuid],
    request_ids: &[uuid::Uuid],
) -> AppResult<Vec<MessageRow>> {
    let t = tx.tenant_id();
    Ok(sql::prepared(
        // One index lookup on (tenant_id, sender_id, request_id) per pair. OFFSET 0 keeps
        // the planner from flattening the lookup: for a young tenant its statistics say
        // "no rows" and it would scan all of the tenant's messages for every batch.
        "SELECT m.* FROM unnest($2::uuid[], $3::uuid[]) AS r(sender_id, request_id)
           CROSS JOIN LATERAL (
             SELECT * FROM messages x
              WHERE x.tenant_id = $1 AND x.sender_id = r.sender_id
                AND x.request_id = r.request_id
             OFFSET 0
           ) m",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(senders)
    .bind::<Array<SqlUuid>, _>(request_ids)
    .load(&mut tx.shared())
    .await?)
}
