//! Durable timers: rows with a due time, claimed with `FOR UPDATE SKIP LOCKED` by the node
//! that fires them and deleted in the same transaction.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::TimerId;

/// A stored timer.
#[derive(Debug, Clone, QueryableByName)]
pub struct TimerRow {
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub timer_id: TimerId,
    /// What it is for; picks the handler.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// When it fires.
    #[diesel(sql_type = Timestamptz)]
    pub due_at: DateTime<Utc>,
    /// The handler's data.
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
}

/// Stores a timer and tells every node its due time (at commit).
pub async fn insert(
    tx: &mut TenantTx,
    id: TimerId,
    kind: &str,
    due_at: DateTime<Utc>,
    payload: serde_json::Value,
    notice: &str,
) -> AppResult<()> {
    sql::prepared(
        "WITH t AS (
           INSERT INTO timers (tenant_id, timer_id, kind, due_at, payload)
           VALUES ($1, $2, $3, $4, $5) RETURNING 1
         )
         SELECT pg_notify('chatengine_timers', $6) FROM t",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(kind)
    .bind::<Timestamptz, _>(due_at)
    .bind::<Jsonb, _>(payload)
    .bind::<Text, _>(notice)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Cancels a timer; false when it had already fired or never existed.
pub async fn delete(tx: &mut TenantTx, id: TimerId) -> AppResult<bool> {
    let n = sql::prepared("DELETE FROM timers WHERE tenant_id = $1 AND timer_id = $2")
        .bind::<SqlUuid, _>(tx.tenant_id())
        .bind::<SqlUuid, _>(id)
        .execute(tx.conn())
        .await?;
    Ok(n > 0)
}

/// Cancels every timer of `kind` whose payload's `key` is `value`; how many there were.
pub async fn delete_keyed(
    tx: &mut TenantTx,
    kind: &str,
    key: &str,
    value: &str,
) -> AppResult<usize> {
    Ok(sql::prepared(
        "DELETE FROM timers WHERE tenant_id = $1 AND kind = $2 AND payload ->> $3 = $4",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Text, _>(kind)
    .bind::<Text, _>(key)
    .bind::<Text, _>(value)
    .execute(tx.conn())
    .await?)
}

/// Claims up to `limit` timers of `kinds` due at `now`, oldest first, skipping those another
/// node holds.
pub async fn claim_due(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
    kinds: &[String],
    limit: i64,
) -> AppResult<Vec<TimerRow>> {
    Ok(sql::prepared(
        "SELECT timer_id, kind, due_at, payload FROM timers
          WHERE tenant_id = $1 AND due_at <= $2 AND kind = ANY($3)
          ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Text>, _>(kinds)
    .bind::<BigInt, _>(limit)
    .load(tx.conn())
    .await?)
}

/// The tenant's earliest due time among timers of `kinds`.
pub async fn next_due(tx: &mut TenantTx, kinds: &[String]) -> AppResult<Option<DateTime<Utc>>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        due: Option<DateTime<Utc>>,
    }
    let rows: Vec<R> = sql::prepared(
        "SELECT min(due_at) AS due FROM timers WHERE tenant_id = $1 AND kind = ANY($2)",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Array<Text>, _>(kinds)
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().next().and_then(|r| r.due))
}
