//! What routing reads about a tenant's agents: status, capacity, skills, open external chats
//! (assigned and not closed), last assignment, and whether a live node holds a stream.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::TenantTx;
use super::schema::{conversations, users};
use super::users::skills_of;
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
    let open: Vec<(Option<UserId>, i64)> = conversations::table
        .filter(
            conversations::tenant_id
                .eq(t)
                .and(conversations::kind.eq("external"))
                .and(conversations::status.ne("closed"))
                .and(conversations::assigned_agent_id.is_not_null()),
        )
        .group_by(conversations::assigned_agent_id)
        .select((conversations::assigned_agent_id, diesel::dsl::count_star()))
        .load(tx.conn())
        .await?;
    let online = super::presence::online(tx, fresh_after).await?;
    let ids: Vec<UserId> = rows.iter().map(|r| r.0).collect();
    let mut skills = skills_of(tx, &ids).await?;
    Ok(rows
        .into_iter()
        .map(
            |(user_id, display_name, status, max, last)| AgentRoutingRow {
                open_chats: open
                    .iter()
                    .find(|(a, _)| *a == Some(user_id))
                    .map_or(0, |(_, n)| *n),
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
