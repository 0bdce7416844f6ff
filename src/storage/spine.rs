//! The spine tables: heads (the gapless position per tenant and shard), entries, and the
//! cursors of in-process consumers. See the migration `event_spine` for why positions are
//! taken under the head row's lock.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Jsonb, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::{FollowerTx, TenantTx, sql};
use crate::error::AppResult;
use crate::ids::TenantId;

/// The statement head that takes a shard's next position and stores an entry there, as a
/// CTE named `entry` returning `pos` (binds: `$1` tenant, `$2` shard, `$3` time, `$4` the
/// events); a statement that writes other rows too puts its own CTEs after it, so the entry
/// costs no statement of its own. The head row exists after a shard's first entry, so the
/// plain update almost always does it; the insert is for that first entry (and a concurrent
/// first one, which the conflict clause turns into an update).
macro_rules! with_entry {
    () => {
        "WITH moved AS (
           UPDATE spine_heads SET last_pos = last_pos + 1
            WHERE tenant_id = $1 AND shard = $2
           RETURNING last_pos
         ), first AS (
           INSERT INTO spine_heads (tenant_id, shard, last_pos)
           SELECT $1, $2, 1 WHERE NOT EXISTS (SELECT FROM moved)
           ON CONFLICT (tenant_id, shard) DO UPDATE SET last_pos = spine_heads.last_pos + 1
           RETURNING last_pos
         ), entry AS (
           INSERT INTO spine_entries (tenant_id, shard, pos, created_at, events)
           SELECT $1, $2, last_pos, $3, $4 FROM (TABLE moved UNION ALL TABLE first) head
           RETURNING pos
         )"
    };
}
pub(crate) use with_entry;

/// Takes the shard's next position and stores an entry there, to become visible at commit;
/// returns the position. One round trip.
pub async fn append(
    tx: &TenantTx,
    shard: i16,
    events: serde_json::Value,
    at: DateTime<Utc>,
) -> AppResult<i64> {
    Ok(
        sql::prepared(concat!(with_entry!(), " SELECT pos FROM entry"))
            .bind::<SqlUuid, _>(tx.tenant_id())
            .bind::<SmallInt, _>(shard)
            .bind::<Timestamptz, _>(at)
            .bind::<Jsonb, _>(events)
            .get_result::<Pos>(&mut tx.shared())
            .await
            .map(|r| r.pos)?,
    )
}

/// A position, as a statement answers it.
#[derive(QueryableByName)]
pub(crate) struct Pos {
    #[diesel(sql_type = BigInt)]
    pub(crate) pos: i64,
}

/// A stored spine entry.
#[derive(Debug, Clone, QueryableByName)]
pub struct EntryRow {
    /// Position in its shard.
    #[diesel(sql_type = BigInt)]
    pub pos: i64,
    /// When it was written.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The recorded events (a JSON list).
    #[diesel(sql_type = Jsonb)]
    pub events: serde_json::Value,
}

/// Entries of a shard after `pos`, oldest first, at most `limit`.
pub async fn entries_after(
    tx: &mut TenantTx,
    shard: i16,
    pos: i64,
    limit: i64,
) -> AppResult<Vec<EntryRow>> {
    let t = tx.tenant_id();
    Ok(sql::prepared(
        "SELECT pos, created_at, events FROM spine_entries
          WHERE tenant_id = $1 AND shard = $2 AND pos > $3 ORDER BY pos LIMIT $4",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<SmallInt, _>(shard)
    .bind::<BigInt, _>(pos)
    .bind::<BigInt, _>(limit)
    .load(tx.conn())
    .await?)
}

/// Claims a consumer's cursor in one shard until commit: its position, or None when another
/// node holds it right now.
pub async fn claim_cursor(tx: &mut TenantTx, consumer: &str, shard: i16) -> AppResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = BigInt)]
        pos: i64,
    }
    let t = tx.tenant_id();
    sql::prepared(
        "INSERT INTO reactor_cursors (tenant_id, consumer, shard) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Text, _>(consumer)
    .bind::<SmallInt, _>(shard)
    .execute(tx.conn())
    .await?;
    let rows: Vec<R> = sql::prepared(
        "SELECT pos FROM reactor_cursors WHERE tenant_id = $1 AND consumer = $2 AND shard = $3
         FOR UPDATE SKIP LOCKED",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Text, _>(consumer)
    .bind::<SmallInt, _>(shard)
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().next().map(|r| r.pos))
}

/// Moves a claimed cursor.
pub async fn store_cursor(
    tx: &mut TenantTx,
    consumer: &str,
    shard: i16,
    pos: i64,
    at: DateTime<Utc>,
) -> AppResult<()> {
    sql::prepared(
        "UPDATE reactor_cursors SET pos = $4, updated_at = $5
          WHERE tenant_id = $1 AND consumer = $2 AND shard = $3",
    )
    .bind::<SqlUuid, _>(tx.tenant_id())
    .bind::<Text, _>(consumer)
    .bind::<SmallInt, _>(shard)
    .bind::<BigInt, _>(pos)
    .bind::<Timestamptz, _>(at)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Shards of the tenant whose head is past the consumer's cursor.
pub async fn shards_behind(tx: &mut TenantTx, consumer: &str) -> AppResult<Vec<i16>> {
    #[derive(QueryableByName)]
    struct R {
        #[diesel(sql_type = SmallInt)]
        shard: i16,
    }
    let t = tx.tenant_id();
    let rows: Vec<R> = sql::prepared(
        "SELECT h.shard FROM spine_heads h
           LEFT JOIN reactor_cursors c
             ON c.tenant_id = h.tenant_id AND c.shard = h.shard AND c.consumer = $2
          WHERE h.tenant_id = $1 AND h.last_pos > coalesce(c.pos, 0)
          ORDER BY h.shard",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<Text, _>(consumer)
    .load(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| r.shard).collect())
}

/// Where one tenant's shard stands.
#[derive(Debug, Clone, QueryableByName)]
pub struct HeadRow {
    /// Tenant.
    #[diesel(sql_type = SqlUuid)]
    pub tenant_id: TenantId,
    /// Shard.
    #[diesel(sql_type = SmallInt)]
    pub shard: i16,
    /// Its last position.
    #[diesel(sql_type = BigInt)]
    pub last_pos: i64,
}

/// Every tenant's shard heads.
pub async fn all_heads(tx: &mut FollowerTx) -> AppResult<Vec<HeadRow>> {
    Ok(
        sql::prepared("SELECT tenant_id, shard, last_pos FROM spine_heads")
            .load(tx.conn())
            .await?,
    )
}

/// The entries of a tenant's shard at `positions`, oldest first.
pub async fn entries_at(
    tx: &mut FollowerTx,
    tenant: TenantId,
    shard: i16,
    positions: &[i64],
) -> AppResult<Vec<EntryRow>> {
    Ok(sql::prepared(
        "SELECT pos, created_at, events FROM spine_entries
          WHERE tenant_id = $1 AND shard = $2 AND pos = ANY($3) ORDER BY pos",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<SmallInt, _>(shard)
    .bind::<diesel::sql_types::Array<BigInt>, _>(positions)
    .load(tx.conn())
    .await?)
}
