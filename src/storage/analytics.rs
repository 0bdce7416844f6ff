//! Analytics storage: the aggregates (`analytics_slots`), what each chat contributes to them
//! (`analytics_chats`), the agents' state history (`agent_state_log`), and the reads the
//! figures come from (a chat's events, the live counts, ratings). Queries of the aggregates
//! are built once from the figure columns, so the upsert and the report read the same list.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{
    Array, BigInt, Bool, Date, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz,
    Uuid as SqlUuid,
};
use diesel_async::RunQueryDsl;

use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{ConversationId, UserId, VisitorId, WorkflowId};

/// Count columns of `analytics_slots` (integer).
pub const COUNTS: [&str; 10] = [
    "started",
    "answered",
    "missed",
    "abandoned",
    "wait_n",
    "frt_n",
    "resp_n",
    "dur_n",
    "csat_n",
    "csat_sum",
];
/// Millisecond columns (bigint).
pub const MILLIS: [&str; 7] = [
    "wait_ms",
    "frt_ms",
    "resp_ms",
    "dur_ms",
    "occupied_ms",
    "available_ms",
    "online_ms",
];
/// Histogram columns (integer[]) and their lengths (`domain::analytics::figures` has the
/// bounds; a test there checks the lengths agree).
pub const HISTS: [(&str, usize); 3] = [("wait_h", 20), ("frt_h", 20), ("csat_h", 5)];

/// `sum` of every count and millisecond column of the rows `x`, then the element-wise sums
/// of their histograms, all int8, in [`figure_columns`] order (an aggregate's select list).
fn summed(x: &str) -> Vec<String> {
    let mut out: Vec<String> = COUNTS
        .iter()
        .chain(MILLIS.iter())
        .map(|c| format!("coalesce(sum({x}.{c}), 0)::int8"))
        .collect();
    for (c, n) in HISTS {
        let items: Vec<String> = (1..=n)
            .map(|i| format!("coalesce(sum({x}.{c}[{i}]), 0)::int8"))
            .collect();
        out.push(format!("ARRAY[{}]", items.join(", ")));
    }
    out
}

/// The figure columns: counts, milliseconds, histograms.
fn figure_columns() -> Vec<&'static str> {
    COUNTS
        .iter()
        .chain(MILLIS.iter())
        .copied()
        .chain(HISTS.iter().map(|(c, _)| *c))
        .collect()
}

/// `ON CONFLICT` assignments that add the excluded row's figures to the stored ones.
fn additions() -> String {
    let mut sets: Vec<String> = COUNTS
        .iter()
        .chain(MILLIS.iter())
        .map(|c| format!("{c} = s.{c} + EXCLUDED.{c}"))
        .collect();
    for (c, _) in HISTS {
        sets.push(format!("{c} = analytics_add(s.{c}, EXCLUDED.{c})"));
    }
    sets.join(", ")
}

/// The local day of row `d`'s slot in the tenant's zone (`z.tz`, read from `tenants`).
const LOCAL_DAY: &str = "(d.slot AT TIME ZONE z.tz)::date";

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let mut defs = vec![
        "slot timestamptz".to_owned(),
        "dim int2".to_owned(),
        "dim_id uuid".to_owned(),
    ];
    let mut vals = Vec::new();
    for c in COUNTS {
        defs.push(format!("{c} int"));
        vals.push(format!("coalesce(d.{c}, 0)"));
    }
    for c in MILLIS {
        defs.push(format!("{c} int8"));
        vals.push(format!("coalesce(d.{c}, 0)"));
    }
    for (c, _) in HISTS {
        defs.push(format!("{c} int[]"));
        vals.push(format!("coalesce(d.{c}, '{{}}')"));
    }
    let cols = figure_columns().join(", ");
    // The slots and, in the same statement, the tenant's local days they fall in (grouped
    // first: one statement may not touch a day row twice).
    format!(
        "WITH d AS MATERIALIZED (SELECT * FROM jsonb_to_recordset($2) AS d({defs})),
         slots AS (
           INSERT INTO analytics_slots AS s (tenant_id, dim, dim_id, slot, {cols})
           SELECT $1, d.dim, d.dim_id, d.slot, {vals} FROM d
            ORDER BY d.dim, d.dim_id, d.slot
           ON CONFLICT (tenant_id, dim, dim_id, slot) DO UPDATE SET {sets})
         INSERT INTO analytics_days AS s (tenant_id, dim, dim_id, day, {cols})
         SELECT $1, d.dim, d.dim_id, {LOCAL_DAY}, {sums}
           FROM d, (SELECT time_zone AS tz FROM tenants WHERE tenant_id = $1) z
          GROUP BY d.dim, d.dim_id, {LOCAL_DAY}
          ORDER BY d.dim, d.dim_id, {LOCAL_DAY}
         ON CONFLICT (tenant_id, dim, dim_id, day) DO UPDATE SET {sets}",
        vals = vals.join(", "),
        defs = defs.join(", "),
        sets = additions(),
        sums = summed("d").join(", "),
    )
});

static RECOMPUTE_DAYS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO analytics_days (tenant_id, dim, dim_id, day, {cols})
         SELECT $1, d.dim, d.dim_id, {LOCAL_DAY}, {sums}
           FROM analytics_slots d, (SELECT time_zone AS tz FROM tenants WHERE tenant_id = $1) z
          WHERE d.tenant_id = $1
          GROUP BY d.dim, d.dim_id, {LOCAL_DAY}",
        cols = figure_columns().join(", "),
        sums = summed("d").join(", "),
    )
});

/// Recomputes the tenant's daily aggregates from its slots in its current time zone (after
/// the zone changed). Takes the aggregates' lock exclusively.
pub async fn recompute_days(tx: &mut TenantTx) -> AppResult<()> {
    no_statement_timeout(tx).await?;
    lock(tx, true).await?;
    let t = tx.tenant_id();
    sql::prepared("DELETE FROM analytics_days WHERE tenant_id = $1")
        .bind::<SqlUuid, _>(t)
        .execute(tx.conn())
        .await?;
    sql::prepared(RECOMPUTE_DAYS.as_str())
        .bind::<SqlUuid, _>(t)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Adds rows of figures (a JSON list of objects with `slot`, `dim`, `dim_id` and any figure
/// columns; histograms as arrays) to the aggregates, in key order so that concurrent writers
/// never deadlock.
pub async fn add(tx: &mut TenantTx, rows: serde_json::Value) -> AppResult<()> {
    sql::prepared(UPSERT.as_str())
        .bind::<SqlUuid, _>(tx.tenant_id())
        .bind::<Jsonb, _>(rows)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Serialises with the rebuild of the tenant's aggregates: reactors take it shared, the
/// rebuild exclusively, until commit.
pub async fn lock(tx: &mut TenantTx, exclusive: bool) -> AppResult<()> {
    let text = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtextextended('chatengine.analytics:' || $1::text, 0))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('chatengine.analytics:' || $1::text, 0))"
    };
    sql::prepared(text)
        .bind::<SqlUuid, _>(tx.tenant_id())
        .execute(tx.conn())
        .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: ConversationId,
}

/// Which of `ids` are external chats.
pub async fn external_among(
    tx: &mut TenantTx,
    ids: &[ConversationId],
) -> AppResult<Vec<ConversationId>> {
    let rows: Vec<Id> = sql::prepared(
        "SELECT conversation_id AS id FROM conversations
          WHERE tenant_id = $1 AND conversation_id = ANY($2) AND kind = 'external'",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// External chats after `after` in id order, at most `limit` (the rebuild's pages).
pub async fn chats_after(
    tx: &mut TenantTx,
    after: Option<ConversationId>,
    limit: i64,
) -> AppResult<Vec<ConversationId>> {
    // A plain `conversation_id > $2`: under row-level security PostgreSQL keeps a
    // `coalesce(...)` bound out of the index condition (it is not leakproof), and every page
    // then scanned the tenant's chats from the first (1.7 s a page at 1,000,000 chats).
    let after = after.map_or(uuid::Uuid::nil(), |a| a.as_uuid());
    let rows: Vec<Id> = sql::prepared(
        "SELECT conversation_id AS id FROM conversations
          WHERE tenant_id = $1 AND kind = 'external' AND conversation_id > $2
          ORDER BY conversation_id LIMIT $3",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<SqlUuid, _>(after)
    .bind::<BigInt, _>(limit)
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// An external chat's own facts.
#[derive(Debug, Clone, QueryableByName)]
pub struct ChatRow {
    /// The chat.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// Its visitor.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub visitor_id: Option<VisitorId>,
    /// The workflow that routed it.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub workflow_id: Option<WorkflowId>,
}

/// One status change of a chat.
#[derive(Debug, Clone, QueryableByName)]
pub struct StatusRow {
    /// The chat.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// Its seq.
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// The stored payload (status, assigned).
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    /// Who made it (an agent's or a visitor's id; none for the engine).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub actor_id: Option<uuid::Uuid>,
    /// When.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// One posted message of a chat, without its text.
#[derive(Debug, Clone, QueryableByName)]
pub struct PostRow {
    /// The chat.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// Its seq.
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// `agent`, `visitor`, `system` (later `bot`).
    #[diesel(sql_type = Text)]
    pub sender_type: String,
    /// The agent or visitor.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub sender_id: Option<uuid::Uuid>,
    /// When.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// A chat's rating as the figures see it.
#[derive(Debug, Clone, QueryableByName)]
pub struct ScoreRow {
    /// The chat.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// 1 to 5.
    #[diesel(sql_type = SmallInt)]
    pub score: i16,
    /// The agent it is kept with.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub agent_id: Option<UserId>,
}

/// Everything the figures of `ids` come from: the chats, their status changes, their posts
/// (sender and time only) and their ratings.
pub async fn histories(
    tx: &mut TenantTx,
    ids: &[ConversationId],
) -> AppResult<(Vec<ChatRow>, Vec<StatusRow>, Vec<PostRow>, Vec<ScoreRow>)> {
    let t = tx.tenant_id();
    let chats = sql::prepared(
        "SELECT conversation_id, visitor_id, workflow_id FROM conversations
          WHERE tenant_id = $1 AND conversation_id = ANY($2)",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    let statuses = sql::prepared(
        "SELECT conversation_id, seq, payload, actor_id, created_at FROM conversation_events
          WHERE tenant_id = $1 AND conversation_id = ANY($2) AND kind = 'status_changed'",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    let posts = sql::prepared(
        "SELECT conversation_id, seq, sender_type, sender_id, created_at FROM messages
          WHERE tenant_id = $1 AND conversation_id = ANY($2)",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    let scores = sql::prepared(
        "SELECT conversation_id, score, agent_id FROM csat_ratings
          WHERE tenant_id = $1 AND conversation_id = ANY($2)",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    Ok((chats, statuses, posts, scores))
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = SqlUuid)]
    conversation_id: ConversationId,
    #[diesel(sql_type = Jsonb)]
    contributions: serde_json::Value,
}

/// What each of `ids` contributed so far (chats never seen are left out).
pub async fn contributions_of(
    tx: &mut TenantTx,
    ids: &[ConversationId],
) -> AppResult<Vec<(ConversationId, serde_json::Value)>> {
    let rows: Vec<Stored> = sql::prepared(
        "SELECT conversation_id, contributions FROM analytics_chats
          WHERE tenant_id = $1 AND conversation_id = ANY($2) FOR UPDATE",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(ids.to_vec())
    .load(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.conversation_id, r.contributions))
        .collect())
}

/// Stores what each chat contributes now.
pub async fn store_contributions(
    tx: &mut TenantTx,
    rows: Vec<(ConversationId, serde_json::Value)>,
) -> AppResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, values): (Vec<ConversationId>, Vec<serde_json::Value>) = rows.into_iter().unzip();
    sql::prepared(
        "INSERT INTO analytics_chats (tenant_id, conversation_id, contributions)
         SELECT $1, c, j FROM unnest($2::uuid[], $3::jsonb[]) AS t(c, j)
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET contributions = EXCLUDED.contributions",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Jsonb>, _>(values)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Records the agent's state (status, capacity, active flag) from `at` on, when it differs
/// from the last one recorded. Called in the transaction that changed it.
pub async fn log_state(tx: &mut TenantTx, agent: UserId, at: DateTime<Utc>) -> AppResult<()> {
    sql::prepared(
        "INSERT INTO agent_state_log (tenant_id, user_id, at, status, capacity, active)
         SELECT u.tenant_id, u.user_id, $3, u.status, u.max_concurrent_chats, u.active
           FROM users u
          WHERE u.tenant_id = $1 AND u.user_id = $2
            AND NOT EXISTS (
              SELECT FROM (SELECT status, capacity, active FROM agent_state_log l
                            WHERE l.tenant_id = $1 AND l.user_id = $2
                            ORDER BY at DESC LIMIT 1) last
               WHERE last.status = u.status AND last.capacity = u.max_concurrent_chats
                 AND last.active = u.active)
         ON CONFLICT (tenant_id, user_id, at) DO UPDATE
           SET status = EXCLUDED.status, capacity = EXCLUDED.capacity, active = EXCLUDED.active",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<SqlUuid, _>(agent)
    .bind::<Timestamptz, _>(at)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A recorded agent state.
#[derive(Debug, Clone, QueryableByName)]
pub struct StateRow {
    /// The agent.
    #[diesel(sql_type = SqlUuid)]
    pub user_id: UserId,
    /// From when.
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    /// Status.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Capacity.
    #[diesel(sql_type = Integer)]
    pub capacity: i32,
    /// Active flag.
    #[diesel(sql_type = Bool)]
    pub active: bool,
}

/// The agents' states whose period has not been added yet (the last one of each agent, and
/// any before it not yet counted), oldest first per agent; locked until commit.
pub async fn uncounted_states(tx: &mut TenantTx, agents: &[UserId]) -> AppResult<Vec<StateRow>> {
    Ok(sql::prepared(
        "SELECT user_id, at, status, capacity, active FROM agent_state_log
          WHERE tenant_id = $1 AND user_id = ANY($2) AND NOT counted
          ORDER BY user_id, at FOR UPDATE",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(agents.to_vec())
    .load(tx.conn())
    .await?)
}

/// Every agent that has a recorded state.
pub async fn agents_with_states(tx: &mut TenantTx) -> AppResult<Vec<UserId>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = SqlUuid)]
        user_id: UserId,
    }
    let rows: Vec<R> = sql::prepared(
        "SELECT DISTINCT user_id FROM agent_state_log WHERE tenant_id = $1 ORDER BY user_id",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| r.user_id).collect())
}

/// Marks the periods starting at these states as added.
pub async fn mark_counted(tx: &mut TenantTx, states: &[(UserId, DateTime<Utc>)]) -> AppResult<()> {
    if states.is_empty() {
        return Ok(());
    }
    let (agents, ats): (Vec<UserId>, Vec<DateTime<Utc>>) = states.iter().copied().unzip();
    sql::prepared(
        "UPDATE agent_state_log l SET counted = true
           FROM unnest($2::uuid[], $3::timestamptz[]) AS t(u, at)
          WHERE l.tenant_id = $1 AND l.user_id = ANY($2) AND l.user_id = t.u AND l.at = t.at",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<SqlUuid>, _>(agents)
    .bind::<Array<Timestamptz>, _>(ats)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Lifts the pool's statement timeout for the rest of the transaction (the rebuild and the
/// generator run statements over a whole tenant's history).
pub async fn no_statement_timeout(tx: &mut TenantTx) -> AppResult<()> {
    sql::prepared("SET LOCAL statement_timeout = 0")
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Drops the tenant's aggregates and chat contributions and marks every state period as not
/// added (the start of a rebuild).
pub async fn clear(tx: &mut TenantTx) -> AppResult<()> {
    let t = tx.tenant_id();
    for text in [
        "DELETE FROM analytics_slots WHERE tenant_id = $1",
        "DELETE FROM analytics_days WHERE tenant_id = $1",
        "DELETE FROM analytics_chats WHERE tenant_id = $1",
        "UPDATE agent_state_log SET counted = false WHERE tenant_id = $1 AND counted",
    ] {
        sql::prepared(text)
            .bind::<SqlUuid, _>(t)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}

/// The live counts that are not agent states.
#[derive(Debug, Clone, QueryableByName)]
pub struct LiveCounts {
    /// Queue entries.
    #[diesel(sql_type = BigInt)]
    pub waiting: i64,
    /// The oldest queue entry's enqueue time.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
    /// Chats offered to an agent, not accepted yet.
    #[diesel(sql_type = BigInt)]
    pub offered: i64,
    /// Open external chats.
    #[diesel(sql_type = BigInt)]
    pub active: i64,
    /// External chats started since `since`.
    #[diesel(sql_type = BigInt)]
    pub started: i64,
    /// Visitors seen since `since`.
    #[diesel(sql_type = BigInt)]
    pub visitors: i64,
}

/// The live counts, with "today" starting at `since`.
pub async fn live_counts(tx: &mut TenantTx, since: DateTime<Utc>) -> AppResult<LiveCounts> {
    Ok(sql::prepared(
        "SELECT (SELECT count(*) FROM queue_entries WHERE tenant_id = $1) AS waiting,
                (SELECT min(enqueued_at) FROM queue_entries WHERE tenant_id = $1) AS oldest,
                (SELECT count(*) FROM conversations WHERE tenant_id = $1 AND kind = 'external'
                    AND status = 'queued' AND assigned_agent_id IS NOT NULL) AS offered,
                (SELECT count(*) FROM conversations WHERE tenant_id = $1 AND kind = 'external'
                    AND status = 'open') AS active,
                (SELECT count(*) FROM conversations WHERE tenant_id = $1 AND kind = 'external'
                    AND created_at >= $2) AS started,
                (SELECT count(*) FROM visitors WHERE tenant_id = $1 AND last_seen_at >= $2)
                  AS visitors",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Timestamptz, _>(since)
    .get_result(tx.conn())
    .await?)
}

/// Summed figures of one dimension id and bucket.
#[derive(Debug, Clone, QueryableByName)]
pub struct BucketRow {
    /// The agent or workflow (nil for the tenant and the built-in defaults).
    #[diesel(sql_type = SqlUuid)]
    pub dim_id: uuid::Uuid,
    /// 1-based bucket number.
    #[diesel(sql_type = Integer)]
    pub b: i32,
    /// Counts, then milliseconds, in [`COUNTS`] and [`MILLIS`] order.
    #[diesel(sql_type = Array<BigInt>)]
    pub sums: Vec<i64>,
    /// Wait histogram.
    #[diesel(sql_type = Array<BigInt>)]
    pub wait_h: Vec<i64>,
    /// First-response histogram.
    #[diesel(sql_type = Array<BigInt>)]
    pub frt_h: Vec<i64>,
    /// Scores 1..=5.
    #[diesel(sql_type = Array<BigInt>)]
    pub csat_h: Vec<i64>,
}

/// Which aggregates a report reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    /// UTC 15-minute slots: any zone, any bucket size.
    Slots,
    /// Local days of the tenant's zone: day and week buckets in that zone.
    Days,
}

/// The report statement over `grain` for one dimension, all its ids or (`one`) a single
/// id, which then bounds the primary-key range.
fn report_sql(grain: Grain, one: bool) -> String {
    let (table, key, kind) = match grain {
        Grain::Slots => ("analytics_slots", "slot", "timestamptz"),
        Grain::Days => ("analytics_days", "day", "date"),
    };
    let mut sums = summed("a");
    for (e, (c, _)) in sums[COUNTS.len() + MILLIS.len()..].iter_mut().zip(HISTS) {
        e.push_str(&format!(" AS {c}"));
    }
    let (counts, hists) = sums.split_at(COUNTS.len() + MILLIS.len());
    let which = if one { "AND dim_id = $6" } else { "" };
    format!(
        "SELECT dim_id, width_bucket({key}, $3::{kind}[]) AS b, ARRAY[{counts}] AS sums,
                {hists}
           FROM {table} a
          WHERE tenant_id = $1 AND dim = $2 {which} AND {key} >= $4 AND {key} < $5
          GROUP BY dim_id, b ORDER BY dim_id, b",
        counts = counts.join(", "),
        hists = hists.join(", "),
    )
}

static REPORTS: LazyLock<[String; 4]> = LazyLock::new(|| {
    [
        report_sql(Grain::Slots, false),
        report_sql(Grain::Slots, true),
        report_sql(Grain::Days, false),
        report_sql(Grain::Days, true),
    ]
});

/// The aggregates of dimension `dim` (optionally one id) summed per bucket: `starts` are the
/// buckets' starts, `end` the end of the last. With [`Grain::Days`] every bound must be a
/// local midnight of the tenant's zone.
pub async fn report(
    tx: &mut TenantTx,
    grain: Grain,
    dim: i16,
    only: Option<uuid::Uuid>,
    starts: &[DateTime<Utc>],
    end: DateTime<Utc>,
    zone: chrono_tz::Tz,
) -> AppResult<Vec<BucketRow>> {
    let first = starts.first().copied().unwrap_or(end);
    let index = match grain {
        Grain::Slots => 0,
        Grain::Days => 2,
    } + usize::from(only.is_some());
    let q = sql::prepared(REPORTS[index].as_str())
        .bind::<SqlUuid, _>(tx.tenant_id())
        .bind::<SmallInt, _>(dim);
    let q = match grain {
        Grain::Slots => q
            .bind::<Array<Timestamptz>, _>(starts.to_vec())
            .bind::<Timestamptz, _>(first)
            .bind::<Timestamptz, _>(end),
        Grain::Days => {
            let day = |t: DateTime<Utc>| t.with_timezone(&zone).date_naive();
            q.bind::<Array<Date>, _>(starts.iter().map(|t| day(*t)).collect::<Vec<_>>())
                .bind::<Date, _>(day(first))
                .bind::<Date, _>(day(end))
        }
    };
    let q = match only {
        Some(id) => q.bind::<SqlUuid, _>(id),
        None => q,
    };
    Ok(q.load(tx.conn()).await?)
}

/// A stored rating.
#[derive(Debug, Clone, QueryableByName)]
pub struct RatingRow {
    /// The chat.
    #[diesel(sql_type = SqlUuid)]
    pub conversation_id: ConversationId,
    /// 1 to 5.
    #[diesel(sql_type = SmallInt)]
    pub score: i16,
    /// The visitor's comment.
    #[diesel(sql_type = Text)]
    pub comment: String,
    /// The agent it is kept with.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub agent_id: Option<UserId>,
    /// When it was given.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// Ratings newest first (then by chat id, descending) matching the filters, strictly after
/// the page position `before` (time, chat) when given, at most `limit`.
#[allow(clippy::too_many_arguments)]
pub async fn ratings(
    tx: &mut TenantTx,
    agent: Option<UserId>,
    scores: (i16, i16),
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: Option<(DateTime<Utc>, ConversationId)>,
    limit: i64,
) -> AppResult<Vec<RatingRow>> {
    Ok(sql::prepared(
        "SELECT conversation_id, score, comment, agent_id, created_at FROM csat_ratings
          WHERE tenant_id = $1 AND ($2::uuid IS NULL OR agent_id = $2)
            AND score BETWEEN $3 AND $4
            AND ($5::timestamptz IS NULL OR created_at >= $5)
            AND ($6::timestamptz IS NULL OR created_at < $6)
            AND ($7::timestamptz IS NULL OR (created_at, conversation_id) < ($7, $8))
          ORDER BY created_at DESC, conversation_id DESC LIMIT $9",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Nullable<SqlUuid>, _>(agent)
    .bind::<SmallInt, _>(scores.0)
    .bind::<SmallInt, _>(scores.1)
    .bind::<Nullable<Timestamptz>, _>(from)
    .bind::<Nullable<Timestamptz>, _>(to)
    .bind::<Nullable<Timestamptz>, _>(before.map(|b| b.0))
    .bind::<SqlUuid, _>(before.map_or_else(uuid::Uuid::nil, |b| b.1.as_uuid()))
    .bind::<BigInt, _>(limit)
    .load(tx.conn())
    .await?)
}

/// Sizes of a generated history (the load generator's analytics mode).
#[derive(Debug, Clone, Copy)]
pub struct Generate {
    /// External chats.
    pub chats: i64,
    /// Messages of an answered chat (an unanswered one has its first only).
    pub messages_per_chat: i32,
    /// Days the chats spread over, ending at `end`.
    pub days: i32,
    /// Agents to create.
    pub agents: i32,
    /// End of the history.
    pub end: DateTime<Utc>,
}

/// Writes a synthetic history into the transaction's tenant with set-based SQL inside
/// PostgreSQL: agents (who cannot log in), visitors, external chats with their status
/// events, messages and ratings, and each agent's working hours in their state history;
/// nothing on the spine (the rebuild makes the aggregates). 94% of chats are answered after
/// 5-300 s and hold `messages_per_chat` messages alternating visitor and agent 10-60 s
/// apart; 3% are missed and 3% abandoned; 30% of the answered are rated. Returns the
/// messages written.
pub async fn generate(tx: &mut TenantTx, g: Generate) -> AppResult<i64> {
    let t = tx.tenant_id();
    let statements: [&str; 10] = [
        "CREATE TEMP TABLE gen_agents ON COMMIT DROP AS
         SELECT k, gen_random_uuid() AS id FROM generate_series(1, $2::int) k",
        "INSERT INTO users (tenant_id, user_id, email, display_name, role, status,
                            max_concurrent_chats, password_hash)
         SELECT $1, id, 'gen-' || k || '-' || left(id::text, 8) || '@load.example', 'Agent ' || k,
                'agent', 'offline', 4, '!' FROM gen_agents",
        "CREATE TEMP TABLE gen_visitors ON COMMIT DROP AS
         SELECT k, gen_random_uuid() AS id FROM generate_series(1, greatest($3::bigint / 4, 1)) k",
        "INSERT INTO visitors (tenant_id, visitor_id, name, created_at, last_seen_at)
         SELECT $1, id, 'Visitor ' || k, $4::timestamptz - make_interval(days => $5::int),
                $4::timestamptz FROM gen_visitors",
        "CREATE TEMP TABLE gen_chats ON COMMIT DROP AS
         SELECT c.*, c.t0 + make_interval(secs => c.wait_s) AS t1,
                c.t0 + make_interval(secs => c.wait_s + c.gap_s * ($6::int - 1)) AS t2
           FROM (SELECT i, gen_random_uuid() AS c,
                        va.arr[1 + i % cardinality(va.arr)] AS v,
                        aa.arr[1 + (i * 7919) % cardinality(aa.arr)] AS a,
                        ('00000000-0000-0000-0000-00000000000' || (1 + i % 3))::uuid AS wf,
                        $4::timestamptz - make_interval(secs => random() * $5::int * 86400) AS t0,
                        (5 + random() * 295)::int AS wait_s,
                        (10 + random() * 50)::int AS gap_s,
                        CASE WHEN i % 100 < 3 THEN 1 WHEN i % 100 < 6 THEN 2 ELSE 0 END AS outcome,
                        CASE WHEN i % 10 < 3 THEN 1 + (i / 10) % 5 ELSE 0 END AS score
                   FROM generate_series(1, $3::bigint) i,
                        (SELECT array_agg(id ORDER BY k) AS arr FROM gen_visitors) va,
                        (SELECT array_agg(id ORDER BY k) AS arr FROM gen_agents) aa) c",
        "INSERT INTO conversations (tenant_id, conversation_id, kind, status, title, visitor_id,
                                    assigned_agent_id, last_seq, created_at, last_activity_at,
                                    closed_at, workflow_id)
         SELECT $1, c, 'external', 'closed', '', v, CASE WHEN outcome = 0 THEN a END,
                CASE WHEN outcome = 0 THEN $6::int + 3 ELSE 3 END, t0,
                CASE WHEN outcome = 0 THEN t2 ELSE t1 END, CASE WHEN outcome = 0 THEN t2 ELSE t1 END,
                wf
           FROM gen_chats",
        "INSERT INTO conversation_events (tenant_id, conversation_id, seq, kind, actor_id, payload,
                                          created_at)
         SELECT $1, c, 1, 'status_changed', v,
                jsonb_build_object('status', 'Queued', 'assigned', NULL, 'visitor', v), t0
           FROM gen_chats
         UNION ALL
         SELECT $1, c, 3, 'status_changed', a,
                jsonb_build_object('status', 'Open', 'assigned', a), t1
           FROM gen_chats WHERE outcome = 0
         UNION ALL
         SELECT $1, c, CASE WHEN outcome = 0 THEN $6::int + 3 ELSE 3 END, 'status_changed',
                CASE outcome WHEN 0 THEN a WHEN 2 THEN v END,
                jsonb_build_object('status', 'Closed', 'assigned', CASE WHEN outcome = 0 THEN a END),
                CASE WHEN outcome = 0 THEN t2 ELSE t1 END
           FROM gen_chats",
        "INSERT INTO messages (tenant_id, message_id, conversation_id, seq, sender_type, sender_id,
                               body, created_at)
         SELECT $1, gen_random_uuid(), g.c, CASE WHEN k = 1 THEN 2 ELSE k + 2 END,
                CASE WHEN k % 2 = 1 THEN 'visitor' ELSE 'agent' END,
                CASE WHEN k % 2 = 1 THEN g.v ELSE g.a END, 'generated message',
                CASE WHEN k = 1 THEN g.t0 ELSE g.t1 + make_interval(secs => g.gap_s * (k - 1)) END
           FROM gen_chats g
          CROSS JOIN LATERAL generate_series(1, CASE WHEN g.outcome = 0 THEN $6::int ELSE 1 END) k",
        "INSERT INTO csat_ratings (tenant_id, conversation_id, score, agent_id, created_at)
         SELECT $1, c, score, a, t2 + interval '1 minute' FROM gen_chats
          WHERE outcome = 0 AND score > 0",
        // Every agent works 08:00-16:00 UTC each day: available, with a half-hour away.
        "INSERT INTO agent_state_log (tenant_id, user_id, at, status, capacity, active)
         SELECT $1, a.id, d + s.off, s.status, 4, true
           FROM gen_agents a
          CROSS JOIN generate_series(date_trunc('day', $4::timestamptz) - make_interval(days => $5::int),
                                     date_trunc('day', $4::timestamptz), interval '1 day') d
          CROSS JOIN (VALUES (interval '8 hours', 'available'), (interval '12 hours', 'away'),
                             (interval '12.5 hours', 'available'), (interval '16 hours', 'offline'))
                     AS s(off, status)",
    ];
    // Values go into the text (a UUID, numbers and an RFC 3339 instant this code made, never
    // input text): the statements use different subsets of them, which binds do not allow.
    no_statement_timeout(tx).await?;
    let end = format!("'{}'", g.end.to_rfc3339());
    for text in statements {
        let text = text
            .replace("$6", &g.messages_per_chat.to_string())
            .replace("$5", &g.days.to_string())
            .replace("$4", &end)
            .replace("$3", &g.chats.to_string())
            .replace("$2", &g.agents.to_string())
            .replace("$1", &format!("'{t}'::uuid"));
        diesel::sql_query(text).execute(tx.conn()).await?;
    }
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = sql::prepared("SELECT count(*) AS n FROM messages WHERE tenant_id = $1")
        .bind::<SqlUuid, _>(t)
        .get_result(tx.conn())
        .await?;
    Ok(n.n)
}
