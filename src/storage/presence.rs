//! Open-stream counts per agent and node, for presence across nodes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;

use super::TenantTx;
use super::schema::{agent_presence, users};
use crate::error::AppResult;
use crate::ids::UserId;

/// Sets this node's stream count for an agent and refreshes its heartbeat.
pub async fn set_streams(
    tx: &mut TenantTx,
    user: UserId,
    node: uuid::Uuid,
    streams: i32,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    if streams == 0 {
        diesel::delete(agent_presence::table.find((t, user, node)))
            .execute(tx.conn())
            .await?;
        return Ok(());
    }
    heartbeat(tx, &[(user, streams)], node, now).await
}

/// Refreshes this node's rows for the given agents and their stream counts, writing them
/// again where another node reaped them as stale (this node was unreachable for a while).
pub async fn heartbeat(
    tx: &mut TenantTx,
    here: &[(UserId, i32)],
    node: uuid::Uuid,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    let rows: Vec<_> = here
        .iter()
        .map(|(user, streams)| {
            (
                agent_presence::tenant_id.eq(t),
                agent_presence::user_id.eq(*user),
                agent_presence::node_id.eq(node),
                agent_presence::streams.eq(*streams),
                agent_presence::heartbeat_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(agent_presence::table)
        .values(rows)
        .on_conflict((
            agent_presence::tenant_id,
            agent_presence::user_id,
            agent_presence::node_id,
        ))
        .do_update()
        .set((
            agent_presence::streams.eq(excluded(agent_presence::streams)),
            agent_presence::heartbeat_at.eq(excluded(agent_presence::heartbeat_at)),
        ))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Deletes `node`'s rows whose heartbeat is not after `fresh_after` (the node stopped
/// refreshing them: it died or lost the database); returns whose they were.
pub async fn reap(
    tx: &mut TenantTx,
    node: uuid::Uuid,
    fresh_after: DateTime<Utc>,
) -> AppResult<Vec<UserId>> {
    let t = tx.tenant_id();
    Ok(diesel::delete(
        agent_presence::table.filter(
            agent_presence::tenant_id
                .eq(t)
                .and(agent_presence::node_id.eq(node))
                .and(agent_presence::heartbeat_at.le(fresh_after)),
        ),
    )
    .returning(agent_presence::user_id)
    .get_results(tx.conn())
    .await?)
}

/// Whether `node` still has rows in this tenant.
pub async fn node_present(tx: &mut TenantTx, node: uuid::Uuid) -> AppResult<bool> {
    let t = tx.tenant_id();
    Ok(diesel::select(diesel::dsl::exists(
        agent_presence::table.filter(
            agent_presence::tenant_id
                .eq(t)
                .and(agent_presence::node_id.eq(node)),
        ),
    ))
    .get_result(tx.conn())
    .await?)
}

/// Every active agent with their status, whether any live node holds a stream for them, and
/// when they were last seen.
pub async fn snapshot(
    tx: &mut TenantTx,
    fresh_after: DateTime<Utc>,
) -> AppResult<Vec<(UserId, String, bool, Option<DateTime<Utc>>)>> {
    let t = tx.tenant_id();
    let rows: Vec<(UserId, String, Option<DateTime<Utc>>)> = users::table
        .filter(users::tenant_id.eq(t).and(users::active.eq(true)))
        .select((users::user_id, users::status, users::last_seen_at))
        .order(users::user_id)
        .load(tx.conn())
        .await?;
    let online = online(tx, fresh_after).await?;
    Ok(rows
        .into_iter()
        .map(|(u, s, seen)| (u, s, online.contains(&u), seen))
        .collect())
}

/// The agents of the tenant with a stream on a node whose heartbeat came after
/// `fresh_after`: who is online, for presence and for routing alike.
pub async fn online(tx: &mut TenantTx, fresh_after: DateTime<Utc>) -> AppResult<Vec<UserId>> {
    let t = tx.tenant_id();
    Ok(agent_presence::table
        .filter(
            agent_presence::tenant_id
                .eq(t)
                .and(agent_presence::streams.gt(0))
                .and(agent_presence::heartbeat_at.gt(fresh_after)),
        )
        .select(agent_presence::user_id)
        .distinct()
        .load(tx.conn())
        .await?)
}

/// Stamps an agent's last-seen time.
pub async fn touch_last_seen(tx: &mut TenantTx, user: UserId, now: DateTime<Utc>) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(users::table.find((t, user)))
        .set(users::last_seen_at.eq(now))
        .execute(tx.conn())
        .await?;
    Ok(())
}
