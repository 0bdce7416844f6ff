//! What routing reads about a tenant's agents: status, capacity, skills, open external chats
//! (assigned and not closed), last assignment, and whether a live node holds a stream.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::schema::users;
use super::users::skills_of;
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::UserId;

/// One active agent as routing sees them.
#[derive(Debug, Clone)]
pub struct AgentRoutingRow {
    /// Agent id.
    pub user_id: UserId,
    /// Display name.
    pub display_name: String,
    /// Status spelling.
    pub status: String,
    /// Capacity.
    pub max_concurrent_chats: i32,
    /// Last assignment.
    pub last_assigned_at: Option<DateTime<Utc>>,
    /// Open external chats assigned to them.
    pub open_chats: i64,
    /// Whether a node with a heartbeat after `fresh_after` holds a stream for them.
    pub online: bool,
    /// (skill, level).
    pub skills: Vec<(String, i16)>,
}

/// Open external chats (assigned, not closed) per agent. The constants are part of the
/// text, not binds: connections plan generically (`Db::connect`), and with `status` bound
/// the planner cannot use the partial index `conversations_by_assignee`, so every
/// dispatcher pass read all of the tenant's conversations, however old (a sequential scan
/// of 16,000 rows a pass 20 s into run 1 of BENCHMARKS.md, and growing).
pub const OPEN_CHATS_BY_AGENT: &str = "SELECT assigned_agent_id AS agent, count(*) AS n
       FROM conversations
      WHERE tenant_id = $1 AND assigned_agent_id IS NOT NULL
        AND status <> 'closed' AND kind = 'external'
      GROUP BY assigned_agent_id";

#[derive(QueryableByName)]
struct OpenChats {
    #[diesel(sql_type = SqlUuid)]
    agent: UserId,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// (id, display name, status, capacity, last assignment) of a user row.
type UserCols = (UserId, String, String, i32, Option<DateTime<Utc>>);

/// Every active agent of the tenant, by id.
pub async fn agents(
    tx: &mut TenantTx,
    fresh_after: DateTime<Utc>,
) -> AppResult<Vec<AgentRoutingRow>> {
    let t = tx.tenant_id();
    let rows: Vec<UserCols> = users::table
        .filter(users::tenant_id.eq(t).and(users::active.eq(true)))
        .select((
            users::user_id,
            users::display_name,
            users::status,
            users::max_concurrent_chats,
            users::last_assigned_at,
        ))
        .order(users::user_id)
        .load(tx.conn())
        .await?;
    let open: Vec<OpenChats> = sql::prepared(OPEN_CHATS_BY_AGENT)
        .bind::<SqlUuid, _>(t)
        .load(tx.conn())
        .await?;
    let online = super::presence::online(tx, fresh_after).await?;
    let ids: Vec<UserId> = rows.iter().map(|r| r.0).collect();
    let mut skills = skills_of(tx, &ids).await?;
    Ok(rows
        .into_iter()
        .map(
            |(user_id, display_name, status, max, last)| AgentRoutingRow {
                open_chats: open.iter().find(|o| o.agent == user_id).map_or(0, |o| o.n),
                online: online.contains(&user_id),
                skills: skills
                    .extract_if(.., |s| s.user_id == user_id)
                    .map(|s| (s.skill, s.level))
                    .collect(),
                user_id,
                display_name,
                status,
                max_concurrent_chats: max,
                last_assigned_at: last,
            },
        )
        .collect())
}
