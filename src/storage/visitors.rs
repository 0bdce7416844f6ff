//! External chat, the visitor side: visitors and the widget sessions that resume them, the
//! tenant's identity-verification setting, a visitor's chats, their queue entries and their
//! satisfaction ratings. Inserts take the tenant from the transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};

use super::conversations::ConversationRow;
use super::schema::{
    conversations, csat_ratings, identity_settings, queue_entries, visitor_sessions, visitors,
};
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{ConversationId, TenantId, UserId, VisitorId, WorkflowId};

/// A stored visitor.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = visitors)]
pub struct VisitorRow {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Id.
    pub visitor_id: VisitorId,
    /// Name as the widget reported it.
    pub name: String,
    /// Email as the widget reported it.
    pub email: String,
    /// ISO 3166-1 alpha-2 country reported by the embedding site.
    pub country: String,
    /// BCP 47 language.
    pub language: String,
    /// `new`, `returning` or `identified`.
    pub visitor_type: String,
    /// Tenant-defined attributes (a JSON object of strings).
    pub attributes: serde_json::Value,
    /// First seen.
    pub created_at: DateTime<Utc>,
    /// Last InitVisitor.
    pub last_seen_at: DateTime<Utc>,
    /// The tenant's user id, once verified.
    pub external_user_id: Option<String>,
    /// Page the visitor was last on.
    pub page_url: String,
    /// Referrer of that page.
    pub referrer: String,
}

/// What a widget reports about its visitor, written on every InitVisitor.
#[derive(Debug, Clone, Insertable, AsChangeset)]
#[diesel(table_name = visitors)]
pub struct VisitorFields {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Country.
    pub country: String,
    /// Language.
    pub language: String,
    /// `new`, `returning` or `identified`.
    pub visitor_type: String,
    /// Attributes.
    pub attributes: serde_json::Value,
    /// Last seen.
    pub last_seen_at: DateTime<Utc>,
    /// Page URL.
    pub page_url: String,
    /// Referrer.
    pub referrer: String,
}

/// Serialises, until commit, the transactions that resolve the same widget session or
/// external user id of the transaction's tenant, so two concurrent InitVisitor calls of one
/// visitor never create two. Take session locks before external-user locks.
pub async fn lock_identity_key(tx: &TenantTx, kind: &str, value: &str) -> AppResult<()> {
    sql::prepared("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(lock_key(tx.tenant_id(), kind, value))
        .execute(&mut tx.shared())
        .await?;
    Ok(())
}

/// The lock of [`lock_identity_key`] for each of the widget sessions, in one statement,
/// taken in the order of the sessions' keys (so two batches sharing sessions never wait for
/// each other in a circle).
pub async fn lock_sessions(tx: &mut TenantTx, sessions: &[&str]) -> AppResult<()> {
    let mut keys: Vec<String> = sessions
        .iter()
        .map(|s| lock_key(tx.tenant_id(), "session", s))
        .collect();
    keys.sort();
    keys.dedup();
    // A function scan yields the array in order, and each row's lock is taken as it comes.
    sql::prepared(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k",
    )
    .bind::<Array<Text>, _>(keys)
    .execute(tx.conn())
    .await?;
    Ok(())
}

fn lock_key(tenant: TenantId, kind: &str, value: &str) -> String {
    format!("{tenant}|{kind}|{value}")
}

/// The visitors the widget sessions belong to, by session: the sessions first, then their
/// visitors by key.
pub async fn by_sessions(
    tx: &mut TenantTx,
    sessions: &[&str],
) -> AppResult<Vec<(String, VisitorRow)>> {
    let t = tx.tenant_id();
    let tied: Vec<(String, VisitorId)> = visitor_sessions::table
        .filter(
            visitor_sessions::tenant_id
                .eq(t)
                .and(visitor_sessions::session_id.eq_any(sessions)),
        )
        .select((visitor_sessions::session_id, visitor_sessions::visitor_id))
        .load(tx.conn())
        .await?;
    if tied.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<VisitorId> = tied.iter().map(|(_, v)| *v).collect();
    let rows: std::collections::HashMap<VisitorId, VisitorRow> = get_many(tx, &ids)
        .await?
        .into_iter()
        .map(|v| (v.visitor_id, v))
        .collect();
    Ok(tied
        .into_iter()
        .filter_map(|(s, v)| rows.get(&v).map(|row| (s, row.clone())))
        .collect())
}

/// The visitor a widget session belongs to.
pub async fn by_session(tx: &TenantTx, session: &str) -> AppResult<Option<VisitorRow>> {
    let t = tx.tenant_id();
    Ok(visitor_sessions::table
        .inner_join(
            visitors::table.on(visitors::tenant_id
                .eq(visitor_sessions::tenant_id)
                .and(visitors::visitor_id.eq(visitor_sessions::visitor_id))),
        )
        .filter(
            visitor_sessions::tenant_id
                .eq(t)
                .and(visitor_sessions::session_id.eq(session)),
        )
        .select(VisitorRow::as_select())
        .first(&mut tx.shared())
        .await
        .optional()?)
}

/// The visitor verified as the tenant's user `external`.
pub async fn by_external_user(tx: &TenantTx, external: &str) -> AppResult<Option<VisitorRow>> {
    let t = tx.tenant_id();
    Ok(visitors::table
        .filter(
            visitors::tenant_id
                .eq(t)
                .and(visitors::external_user_id.eq(external)),
        )
        .select(VisitorRow::as_select())
        .first(&mut tx.shared())
        .await
        .optional()?)
}

/// One visitor.
pub async fn get(tx: &mut TenantTx, id: VisitorId) -> AppResult<Option<VisitorRow>> {
    let t = tx.tenant_id();
    Ok(visitors::table
        .find((t, id))
        .select(VisitorRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// The visitors with these ids; missing ones are left out.
pub async fn get_many(tx: &mut TenantTx, ids: &[VisitorId]) -> AppResult<Vec<VisitorRow>> {
    let t = tx.tenant_id();
    Ok(visitors::table
        .filter(
            visitors::tenant_id
                .eq(t)
                .and(visitors::visitor_id.eq_any(ids)),
        )
        .select(VisitorRow::as_select())
        .load(tx.conn())
        .await?)
}

/// The visitors, locked until commit in id order (their chats start one at a time); missing
/// ones are left out.
pub async fn lock_many(tx: &mut TenantTx, ids: &[VisitorId]) -> AppResult<Vec<VisitorRow>> {
    let t = tx.tenant_id();
    Ok(visitors::table
        .filter(
            visitors::tenant_id
                .eq(t)
                .and(visitors::visitor_id.eq_any(ids)),
        )
        .select(VisitorRow::as_select())
        .order(visitors::visitor_id)
        .for_update()
        .load(tx.conn())
        .await?)
}

/// Stores a new visitor.
pub async fn insert(
    tx: &TenantTx,
    id: VisitorId,
    fields: &VisitorFields,
    external_user_id: Option<&str>,
    now: DateTime<Utc>,
) -> AppResult<VisitorRow> {
    let t = tx.tenant_id();
    Ok(diesel::insert_into(visitors::table)
        .values((
            visitors::tenant_id.eq(t),
            visitors::visitor_id.eq(id),
            fields,
            visitors::external_user_id.eq(external_user_id),
            visitors::created_at.eq(now),
        ))
        .returning(VisitorRow::as_returning())
        .get_result(&mut tx.shared())
        .await?)
}

/// Overwrites what the widget reported; sets the external user id when one is given.
pub async fn update(
    tx: &TenantTx,
    id: VisitorId,
    fields: &VisitorFields,
    external_user_id: Option<&str>,
) -> AppResult<VisitorRow> {
    let t = tx.tenant_id();
    let target = visitors::table.find((t, id));
    let q = diesel::update(target);
    Ok(match external_user_id {
        Some(ext) => {
            q.set((fields, visitors::external_user_id.eq(ext)))
                .returning(VisitorRow::as_returning())
                .get_result(&mut tx.shared())
                .await?
        }
        None => {
            q.set(fields)
                .returning(VisitorRow::as_returning())
                .get_result(&mut tx.shared())
                .await?
        }
    })
}

/// Stores new visitors (none verified yet), in one statement.
pub async fn insert_many(
    tx: &mut TenantTx,
    new: &[(VisitorId, &VisitorFields)],
    now: DateTime<Utc>,
) -> AppResult<Vec<VisitorRow>> {
    let t = tx.tenant_id();
    let rows: Vec<_> = new
        .iter()
        .map(|(id, fields)| {
            (
                visitors::tenant_id.eq(t),
                visitors::visitor_id.eq(*id),
                *fields,
                visitors::created_at.eq(now),
            )
        })
        .collect();
    Ok(diesel::insert_into(visitors::table)
        .values(rows)
        .returning(VisitorRow::as_returning())
        .get_results(tx.conn())
        .await?)
}

/// [`add_session`] for many distinct sessions, in one statement.
pub async fn add_sessions(
    tx: &mut TenantTx,
    sessions: &[(&str, VisitorId)],
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    let rows: Vec<_> = sessions
        .iter()
        .map(|(s, v)| {
            (
                visitor_sessions::tenant_id.eq(t),
                visitor_sessions::session_id.eq(*s),
                visitor_sessions::visitor_id.eq(*v),
                visitor_sessions::created_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(visitor_sessions::table)
        .values(rows)
        .on_conflict((visitor_sessions::tenant_id, visitor_sessions::session_id))
        .do_update()
        .set(
            visitor_sessions::visitor_id.eq(diesel::upsert::excluded(visitor_sessions::visitor_id)),
        )
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Ties a widget session to a visitor (a session tied to another visitor moves to this one).
pub async fn add_session(
    tx: &TenantTx,
    session: &str,
    visitor: VisitorId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::insert_into(visitor_sessions::table)
        .values((
            visitor_sessions::tenant_id.eq(t),
            visitor_sessions::session_id.eq(session),
            visitor_sessions::visitor_id.eq(visitor),
            visitor_sessions::created_at.eq(now),
        ))
        .on_conflict((visitor_sessions::tenant_id, visitor_sessions::session_id))
        .do_update()
        .set(visitor_sessions::visitor_id.eq(visitor))
        .execute(&mut tx.shared())
        .await?;
    Ok(())
}

/// The tenant's identity-verification setting.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = identity_settings)]
pub struct IdentityRow {
    /// The HMAC secret, raw: verifying a proof needs it.
    pub secret: Option<Vec<u8>>,
    /// Whether visitors must prove who they are.
    pub required: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The tenant's identity setting; None when never set.
pub async fn identity(tx: &TenantTx) -> AppResult<Option<IdentityRow>> {
    let t = tx.tenant_id();
    Ok(identity_settings::table
        .find(t)
        .select(IdentityRow::as_select())
        .first(&mut tx.shared())
        .await
        .optional()?)
}

/// Sets the requirement and, when `secret` is given, replaces the secret.
pub async fn set_identity(
    tx: &mut TenantTx,
    secret: Option<&[u8]>,
    required: bool,
    now: DateTime<Utc>,
) -> AppResult<IdentityRow> {
    let t = tx.tenant_id();
    let insert = diesel::insert_into(identity_settings::table).values((
        identity_settings::tenant_id.eq(t),
        identity_settings::secret.eq(secret),
        identity_settings::required.eq(required),
        identity_settings::updated_at.eq(now),
    ));
    let conflict = insert.on_conflict(identity_settings::tenant_id).do_update();
    Ok(match secret {
        Some(s) => {
            conflict
                .set((
                    identity_settings::secret.eq(s),
                    identity_settings::required.eq(required),
                    identity_settings::updated_at.eq(now),
                ))
                .returning(IdentityRow::as_returning())
                .get_result(tx.conn())
                .await?
        }
        None => {
            conflict
                .set((
                    identity_settings::required.eq(required),
                    identity_settings::updated_at.eq(now),
                ))
                .returning(IdentityRow::as_returning())
                .get_result(tx.conn())
                .await?
        }
    })
}

/// A new external chat, queued for its visitor, with its first event (seq 1) taken.
#[derive(Debug, Clone)]
pub struct NewChat {
    /// Id.
    pub id: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// The workflow that routed it.
    pub workflow: Option<WorkflowId>,
}

/// Stores new queued chats, each with its first seq taken by the caller's event.
pub async fn insert_queued_chats(
    tx: &mut TenantTx,
    chats: &[NewChat],
    now: DateTime<Utc>,
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    let rows: Vec<_> = chats
        .iter()
        .map(|c| {
            (
                conversations::tenant_id.eq(t),
                conversations::conversation_id.eq(c.id),
                conversations::kind.eq("external"),
                conversations::status.eq("queued"),
                conversations::title.eq(""),
                conversations::visitor_id.eq(c.visitor),
                conversations::workflow_id.eq(c.workflow),
                conversations::last_seq.eq(1_i64),
                conversations::created_at.eq(now),
                conversations::last_activity_at.eq(now),
            )
        })
        .collect();
    Ok(diesel::insert_into(conversations::table)
        .values(rows)
        .returning(ConversationRow::as_returning())
        .get_results(tx.conn())
        .await?)
}

/// The visitors' chats that are not closed yet (a visitor has one at most), locked until
/// commit in id order, as every other path locks conversations. Found first without a lock
/// through the visitor index (usually nothing: most starts are a visitor's first), then
/// locked by id and checked again: a chat closed meanwhile is not resumed. One statement
/// that orders by id, or filters on the kind, gets a generic plan that walks every chat of
/// the tenant instead.
pub async fn open_chats(
    tx: &mut TenantTx,
    visitors: &[VisitorId],
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    let found: Vec<ConversationId> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::visitor_id.eq_any(visitors))
                .and(conversations::status.ne("closed")),
        )
        .select(conversations::conversation_id)
        .load(tx.conn())
        .await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let locked: Vec<ConversationRow> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(&found))
                .and(conversations::status.ne("closed")),
        )
        .select(ConversationRow::as_select())
        .order(conversations::conversation_id)
        .for_no_key_update()
        .load(tx.conn())
        .await?;
    Ok(locked
        .into_iter()
        .filter(|r| r.kind == "external")
        .collect())
}

/// The visitor's chats, newest first, at most `limit`.
pub async fn chats(
    tx: &mut TenantTx,
    visitor: VisitorId,
    limit: i64,
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::visitor_id.eq(visitor))
                .and(conversations::kind.eq("external")),
        )
        .select(ConversationRow::as_select())
        .order((
            conversations::created_at.desc(),
            conversations::conversation_id.desc(),
        ))
        .limit(limit)
        .load(tx.conn())
        .await?)
}

/// One conversation, locked until commit.
pub async fn lock_chat(
    tx: &mut TenantTx,
    conv: ConversationId,
) -> AppResult<Option<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .find((t, conv))
        .select(ConversationRow::as_select())
        .for_no_key_update()
        .first(tx.conn())
        .await
        .optional()?)
}

/// A chat's row, not locked.
pub async fn chat(tx: &mut TenantTx, conv: ConversationId) -> AppResult<Option<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(conversations::table
        .find((t, conv))
        .select(ConversationRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Sets a chat's status and assignee.
pub async fn set_chat_state(
    tx: &mut TenantTx,
    conv: ConversationId,
    status: &str,
    assigned: Option<UserId>,
    closed_at: Option<DateTime<Utc>>,
) -> AppResult<ConversationRow> {
    let t = tx.tenant_id();
    Ok(diesel::update(conversations::table.find((t, conv)))
        .set((
            conversations::status.eq(status),
            conversations::assigned_agent_id.eq(assigned),
            conversations::closed_at.eq(closed_at),
        ))
        .returning(ConversationRow::as_returning())
        .get_result(tx.conn())
        .await?)
}

/// Closes the chats that are not closed yet, keeping their assignees, and takes the seq of
/// each one's closing event (lock them first); returns the closed rows.
pub async fn close_chats(
    tx: &mut TenantTx,
    convs: &[ConversationId],
    at: DateTime<Utc>,
) -> AppResult<Vec<ConversationRow>> {
    let t = tx.tenant_id();
    Ok(diesel::update(
        conversations::table.filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::conversation_id.eq_any(convs))
                .and(conversations::status.ne("closed")),
        ),
    )
    .set((
        conversations::last_seq.eq(conversations::last_seq + 1),
        conversations::status.eq("closed"),
        conversations::closed_at.eq(at),
    ))
    .returning(ConversationRow::as_returning())
    .load(tx.conn())
    .await?)
}

/// A chat entering the queue; the tenant comes from the transaction.
#[derive(Debug, Clone)]
pub struct NewQueueEntry {
    /// The chat.
    pub conversation_id: ConversationId,
    /// Its visitor.
    pub visitor_id: VisitorId,
    /// The workflow that routed it.
    pub workflow_id: Option<WorkflowId>,
    /// Higher is served first.
    pub priority: i32,
    /// The routing actions (JSON of `workflows::model::Actions`).
    pub actions: serde_json::Value,
    /// When it starts waiting.
    pub enqueued_at: DateTime<Utc>,
    /// When its max wait passes.
    pub max_wait_at: Option<DateTime<Utc>>,
    /// Agents it is not given to again.
    pub excluded: Vec<UserId>,
}

/// Puts a chat in the queue.
pub async fn enqueue(tx: &mut TenantTx, e: NewQueueEntry) -> AppResult<()> {
    enqueue_many(tx, vec![e]).await
}

/// Puts chats in the queue.
pub async fn enqueue_many(tx: &mut TenantTx, entries: Vec<NewQueueEntry>) -> AppResult<()> {
    let t = tx.tenant_id();
    let rows: Vec<_> = entries
        .into_iter()
        .map(|e| {
            (
                queue_entries::tenant_id.eq(t),
                queue_entries::conversation_id.eq(e.conversation_id),
                queue_entries::visitor_id.eq(e.visitor_id),
                queue_entries::workflow_id.eq(e.workflow_id),
                queue_entries::priority.eq(e.priority),
                queue_entries::actions.eq(e.actions),
                queue_entries::enqueued_at.eq(e.enqueued_at),
                queue_entries::max_wait_at.eq(e.max_wait_at),
                queue_entries::excluded.eq(e.excluded),
            )
        })
        .collect();
    diesel::insert_into(queue_entries::table)
        .values(rows)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Takes a chat out of the queue; false when it was not in it.
pub async fn dequeue(tx: &mut TenantTx, conv: ConversationId) -> AppResult<bool> {
    let t = tx.tenant_id();
    let n = diesel::delete(queue_entries::table.find((t, conv)))
        .execute(tx.conn())
        .await?;
    Ok(n == 1)
}

/// Where a chat stands, read in one statement: its queue entry and the chats served before
/// it (the order of `dispatch::served_before`), the queue's length, and the display name of
/// `assigned`. Asked on every chat start and status call, so one round trip, not four, and
/// one pass over the queue for both counts (a queue of 10,000 is 10,000 index entries a
/// pass).
#[derive(Debug, Clone, QueryableByName)]
pub struct Standing {
    /// Its queue priority, while it waits.
    #[diesel(sql_type = Nullable<Int4>)]
    pub priority: Option<i32>,
    /// Since when it waits.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Chats served before it (0 when it does not wait).
    #[diesel(sql_type = BigInt)]
    pub ahead: i64,
    /// Chats waiting in the tenant's queue.
    #[diesel(sql_type = BigInt)]
    pub length: i64,
    /// The assigned agent's display name.
    #[diesel(sql_type = Nullable<Text>)]
    pub assigned_name: Option<String>,
}

/// Reads a chat's [`Standing`], with the name of `assigned` when there is one.
pub async fn standing(
    tx: &mut TenantTx,
    conv: ConversationId,
    assigned: Option<UserId>,
) -> AppResult<Standing> {
    Ok(sql::prepared(
        "SELECT q.priority, q.enqueued_at, n.ahead, n.length, u.display_name AS assigned_name
           FROM (SELECT 1) AS one
           LEFT JOIN queue_entries q ON q.tenant_id = $1 AND q.conversation_id = $2
           CROSS JOIN LATERAL (
             SELECT count(*) FILTER (
                      WHERE a.priority > q.priority
                         OR (a.priority = q.priority
                             AND (a.enqueued_at < q.enqueued_at
                                  OR (a.enqueued_at = q.enqueued_at
                                      AND a.conversation_id < q.conversation_id)))) AS ahead,
                    count(*) AS length
               FROM queue_entries a
              WHERE a.tenant_id = $1) AS n
           LEFT JOIN users u ON u.tenant_id = $1 AND u.user_id = $3",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<SqlUuid, _>(conv)
    .bind::<Nullable<SqlUuid>, _>(assigned)
    .get_result(tx.conn())
    .await?)
}

/// Serialises, until commit, the transactions that put the tenant's new chats in the queue
/// and count it (chat starts), so that each count holds every start committed before it.
pub async fn lock_queue_joins(tx: &mut TenantTx) -> AppResult<()> {
    sql::prepared("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(lock_key(tx.tenant_id(), "queue", "joins"))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// One priority's share of the tenant's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct PriorityCount {
    /// The priority.
    #[diesel(sql_type = Int4)]
    pub priority: i32,
    /// Chats of it that have waited since before the moment asked about.
    #[diesel(sql_type = BigInt)]
    pub before: i64,
    /// Chats of it waiting.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
}

/// The tenant's queue counted by priority, with how many of each have waited since before
/// `at`: one pass of the queue's index, whatever a batch of starts needs placed.
pub async fn counts_by_priority(
    tx: &mut TenantTx,
    at: DateTime<Utc>,
) -> AppResult<Vec<PriorityCount>> {
    Ok(sql::prepared(
        "SELECT priority, count(*) FILTER (WHERE enqueued_at < $2) AS before, count(*) AS total
           FROM queue_entries
          WHERE tenant_id = $1
          GROUP BY priority",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Timestamptz, _>(at)
    .load(tx.conn())
    .await?)
}

/// How many chats wait in the tenant's queue.
pub async fn queue_length(tx: &mut TenantTx) -> AppResult<i64> {
    let t = tx.tenant_id();
    Ok(queue_entries::table
        .filter(queue_entries::tenant_id.eq(t))
        .count()
        .get_result(tx.conn())
        .await?)
}

/// A stored rating.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = csat_ratings)]
pub struct RatingRow {
    /// The rated chat.
    pub conversation_id: ConversationId,
    /// 1-5.
    pub score: i16,
    /// Free text.
    pub comment: String,
    /// The agent who served the chat.
    pub agent_id: Option<UserId>,
    /// When it was given.
    pub created_at: DateTime<Utc>,
}

/// Stores a chat's rating; None when the chat was rated before.
pub async fn insert_rating(
    tx: &mut TenantTx,
    conv: ConversationId,
    score: i16,
    comment: &str,
    agent: Option<UserId>,
    now: DateTime<Utc>,
) -> AppResult<Option<RatingRow>> {
    let t = tx.tenant_id();
    Ok(diesel::insert_into(csat_ratings::table)
        .values((
            csat_ratings::tenant_id.eq(t),
            csat_ratings::conversation_id.eq(conv),
            csat_ratings::score.eq(score),
            csat_ratings::comment.eq(comment),
            csat_ratings::agent_id.eq(agent),
            csat_ratings::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .returning(RatingRow::as_returning())
        .get_result(tx.conn())
        .await
        .optional()?)
}
