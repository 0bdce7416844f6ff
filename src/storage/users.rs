//! Agents (users) of a tenant and their skills, and the directory notices: every transaction
//! that changes who an agent is allowed to be (role, active flag, revoked sessions) also sends
//! a `NOTIFY` on [`DIRECTORY_CHANNEL`], which PostgreSQL delivers to every node when, and only
//! if, it commits.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::schema::{agent_skills, users};
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{TokenFamilyId, UserId};

/// The channel that carries `<tenant>:<user>` whenever an agent's role, active flag or
/// sessions changed.
pub const DIRECTORY_CHANNEL: &str = "chatengine_directory";

/// A stored agent; its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// Agent id.
    pub user_id: UserId,
    /// Lower-cased email.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// `admin` or `agent`.
    pub role: String,
    /// `available`, `busy`, `away` or `offline`.
    pub status: String,
    /// Capacity for external chats.
    pub max_concurrent_chats: i32,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// False once deactivated.
    pub active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A skill row; its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = agent_skills)]
pub struct SkillRow {
    /// Agent.
    pub user_id: UserId,
    /// Skill name.
    pub skill: String,
    /// Level 1-10.
    pub level: i16,
}

/// Changes to an agent; None leaves a column as is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// New status.
    pub status: Option<String>,
    /// New capacity.
    pub max_concurrent_chats: Option<i32>,
    /// New active flag.
    pub active: Option<bool>,
    /// Change time.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Inserts an agent.
pub async fn insert(tx: &mut TenantTx, row: &UserRow) -> AppResult<()> {
    diesel::insert_into(users::table)
        .values((users::tenant_id.eq(tx.tenant_id()), row))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// One agent by id.
pub async fn get(tx: &mut TenantTx, id: UserId) -> AppResult<Option<UserRow>> {
    let t = tx.tenant_id();
    Ok(users::table
        .find((t, id))
        .select(UserRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// The display name of `id`, when there is one (who serves a chat, for its visitor).
pub async fn display_name(tx: &mut TenantTx, id: Option<UserId>) -> AppResult<Option<String>> {
    let Some(id) = id else {
        return Ok(None);
    };
    let t = tx.tenant_id();
    Ok(users::table
        .find((t, id))
        .select(users::display_name)
        .first(tx.conn())
        .await
        .optional()?)
}

/// One agent by (lower-cased) email.
pub async fn find_by_email(tx: &mut TenantTx, email: &str) -> AppResult<Option<UserRow>> {
    let t = tx.tenant_id();
    Ok(users::table
        .filter(users::tenant_id.eq(t).and(users::email.eq(email)))
        .select(UserRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Agents ordered by email, after `after_email`.
pub async fn list(
    tx: &mut TenantTx,
    after_email: Option<&str>,
    limit: i64,
) -> AppResult<Vec<UserRow>> {
    let t = tx.tenant_id();
    let mut q = users::table
        .filter(users::tenant_id.eq(t))
        .select(UserRow::as_select())
        .order(users::email)
        .limit(limit)
        .into_boxed();
    if let Some(e) = after_email {
        q = q.filter(users::email.gt(e.to_owned()));
    }
    Ok(q.load(tx.conn()).await?)
}

/// Applies changes; None when the agent does not exist. A change of role or active flag is
/// announced on [`DIRECTORY_CHANNEL`] with the commit.
pub async fn update(
    tx: &mut TenantTx,
    id: UserId,
    changes: &UserChanges,
) -> AppResult<Option<UserRow>> {
    let t = tx.tenant_id();
    let row = diesel::update(users::table.find((t, id)))
        .set(changes)
        .returning(UserRow::as_returning())
        .get_result(tx.conn())
        .await
        .optional()?;
    if row.is_some() && (changes.role.is_some() || changes.active.is_some()) {
        notify_directory(tx, id).await?;
    }
    Ok(row)
}

/// Tells every node, once this transaction commits, that `user`'s directory entry changed.
/// PostgreSQL folds identical notices of one transaction into one.
pub(crate) async fn notify_directory(tx: &mut TenantTx, user: UserId) -> AppResult<()> {
    let payload = format!("{}:{user}", tx.tenant_id());
    sql::prepared("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(DIRECTORY_CHANNEL)
        .bind::<Text, _>(payload)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// What authorization needs to know about an agent.
#[derive(Debug, Clone, QueryableByName)]
pub struct DirectoryRow {
    /// `admin` or `agent`.
    #[diesel(sql_type = Text)]
    pub role: String,
    /// False once deactivated.
    #[diesel(sql_type = Bool)]
    pub active: bool,
    /// Session families revoked after the cutoff given to [`directory`].
    #[diesel(sql_type = Array<SqlUuid>)]
    pub revoked_families: Vec<TokenFamilyId>,
}

/// An agent's role, active flag and the session families revoked since `revoked_since`, in
/// one statement; None when there is no such agent.
pub async fn directory(
    tx: &mut TenantTx,
    user: UserId,
    revoked_since: DateTime<Utc>,
) -> AppResult<Option<DirectoryRow>> {
    let t = tx.tenant_id();
    Ok(sql::prepared(
        "SELECT u.role, u.active,
                ARRAY(SELECT DISTINCT r.family_id FROM refresh_tokens r
                       WHERE r.tenant_id = u.tenant_id AND r.user_id = u.user_id
                         AND r.revoked_at > $3) AS revoked_families
           FROM users u
          WHERE u.tenant_id = $1 AND u.user_id = $2",
    )
    .bind::<SqlUuid, _>(t)
    .bind::<SqlUuid, _>(user)
    .bind::<Timestamptz, _>(revoked_since)
    .get_result(tx.conn())
    .await
    .optional()?)
}

/// Replaces an agent's skills.
pub async fn replace_skills(
    tx: &mut TenantTx,
    id: UserId,
    skills: &[(String, i16)],
) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::delete(
        agent_skills::table.filter(
            agent_skills::tenant_id
                .eq(t)
                .and(agent_skills::user_id.eq(id)),
        ),
    )
    .execute(tx.conn())
    .await?;
    let rows: Vec<_> = skills
        .iter()
        .map(|(skill, level)| {
            let row = SkillRow {
                user_id: id,
                skill: skill.clone(),
                level: *level,
            };
            (agent_skills::tenant_id.eq(t), row)
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(agent_skills::table)
            .values(&rows)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}

/// Skills of the given agents, ordered by agent then skill.
pub async fn skills_of(tx: &mut TenantTx, ids: &[UserId]) -> AppResult<Vec<SkillRow>> {
    let t = tx.tenant_id();
    Ok(agent_skills::table
        .filter(
            agent_skills::tenant_id
                .eq(t)
                .and(agent_skills::user_id.eq_any(ids)),
        )
        .select(SkillRow::as_select())
        .order((agent_skills::user_id, agent_skills::skill))
        .load(tx.conn())
        .await?)
}

/// Number of active agents whose status is `available`.
pub async fn count_available(tx: &mut TenantTx) -> AppResult<i64> {
    let t = tx.tenant_id();
    Ok(users::table
        .filter(
            users::tenant_id
                .eq(t)
                .and(users::active.eq(true))
                .and(users::status.eq("available")),
        )
        .count()
        .get_result(tx.conn())
        .await?)
}

/// Replaces an agent's password hash.
pub async fn set_password_hash(tx: &mut TenantTx, id: UserId, hash: &str) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(users::table.find((t, id)))
        .set(users::password_hash.eq(hash))
        .execute(tx.conn())
        .await?;
    Ok(())
}
