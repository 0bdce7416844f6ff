//! What live queue positions read about a tenant: every waiting chat with its visitor, in
//! one query, and how long the tenant's recently closed chats were handled.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::schema::queue_entries;
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{ConversationId, VisitorId};

/// A chat waiting in the tenant's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable)]
pub struct WaitingRow {
    /// The chat.
    pub conversation_id: ConversationId,
    /// Its visitor.
    pub visitor_id: VisitorId,
    /// Higher is served first.
    pub priority: i32,
    /// When it started waiting.
    pub enqueued_at: DateTime<Utc>,
}

/// Every chat waiting in the tenant's queue, in serving order.
pub async fn waiting(tx: &mut TenantTx) -> AppResult<Vec<WaitingRow>> {
    let t = tx.tenant_id();
    Ok(queue_entries::table
        .filter(queue_entries::tenant_id.eq(t))
        .select((
            queue_entries::conversation_id,
            queue_entries::visitor_id,
            queue_entries::priority,
            queue_entries::enqueued_at,
        ))
        .order((
            queue_entries::priority.desc(),
            queue_entries::enqueued_at.asc(),
            queue_entries::conversation_id.asc(),
        ))
        .load(tx.conn())
        .await?)
}

/// How long the tenant's served chats closed after `closed_after` took.
#[derive(Debug, Clone, Copy, PartialEq, QueryableByName)]
pub struct HandlingRow {
    /// Mean seconds from assignment (the assignee joining; the chat's start when that is
    /// unknown) to close; None without such chats.
    #[diesel(sql_type = Nullable<Double>)]
    pub mean_seconds: Option<f64>,
    /// How many chats the mean is over.
    #[diesel(sql_type = BigInt)]
    pub chats: i64,
}

/// The handling time of the tenant's external chats that an agent served and that closed
/// after `closed_after`, among those whose id is at least `ids_from`. Ids are time-ordered
/// (UUIDv7), so `ids_from` turns a scan of every chat the tenant ever had into a range of
/// its primary key; there is no index on `closed_at`.
pub async fn handling_time(
    tx: &mut TenantTx,
    closed_after: DateTime<Utc>,
    ids_from: ConversationId,
) -> AppResult<HandlingRow> {
    let t = tx.tenant_id();
    Ok(sql::prepared(
        "SELECT avg(extract(epoch FROM c.closed_at - coalesce(m.joined_at, c.created_at)))::float8
                AS mean_seconds,
                count(*) AS chats
           FROM conversations c
           LEFT JOIN conversation_members m
             ON m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id
            AND m.user_id = c.assigned_agent_id
          WHERE c.tenant_id = $1 AND c.conversation_id >= $2 AND c.kind = 'external'
            AND c.status = 'closed' AND c.assigned_agent_id IS NOT NULL AND c.closed_at > $3",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<SqlUuid, _>(ids_from)
    .bind::<Timestamptz, _>(closed_after)
    .get_result(tx.conn())
    .await?)
}
