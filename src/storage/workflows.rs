//! Routing workflows: ordered rows whose `definition` jsonb holds the typed form
//! (`domain::workflows::model::Definition`, versioned inside).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::TenantTx;
use super::schema::workflows;
use crate::error::AppResult;
use crate::ids::{TenantId, WorkflowId};

/// A stored workflow.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = workflows)]
pub struct WorkflowRow {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Id.
    pub workflow_id: WorkflowId,
    /// Name.
    pub name: String,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// Evaluation order.
    pub position: i32,
    /// Triggers and actions as JSON.
    pub definition: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The tenant default.
    pub is_default: bool,
}

/// A new workflow; the tenant comes from the transaction.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = workflows)]
pub struct NewWorkflowRow {
    /// Id.
    pub workflow_id: WorkflowId,
    /// Name.
    pub name: String,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// Evaluation order.
    pub position: i32,
    /// Triggers and actions as JSON.
    pub definition: serde_json::Value,
    /// The tenant default.
    pub is_default: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Changes to a workflow; `None` leaves a column alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = workflows)]
pub struct WorkflowChanges {
    /// New name.
    pub name: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New definition.
    pub definition: Option<serde_json::Value>,
    /// New default flag.
    pub is_default: Option<bool>,
    /// Change time.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Serialises the tenant's workflow writes until the transaction ends (a transaction-scoped
/// advisory lock), so that the workflow limit, the next position and a reorder's "every id
/// once" hold under concurrent admins. Reads do not take it.
pub async fn lock_writes(tx: &mut TenantTx) -> AppResult<()> {
    let key = format!("chatengine.workflows:{}", tx.tenant_id());
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(key)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Stores a workflow.
pub async fn insert(tx: &mut TenantTx, row: &NewWorkflowRow) -> AppResult<()> {
    diesel::insert_into(workflows::table)
        .values((workflows::tenant_id.eq(tx.tenant_id()), row))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Number of workflows of the tenant.
pub async fn count(tx: &mut TenantTx) -> AppResult<i64> {
    let t = tx.tenant_id();
    Ok(workflows::table
        .filter(workflows::tenant_id.eq(t))
        .count()
        .get_result(tx.conn())
        .await?)
}

/// The position after the last workflow (0 when there is none).
pub async fn next_position(tx: &mut TenantTx) -> AppResult<i32> {
    let t = tx.tenant_id();
    let max: Option<i32> = workflows::table
        .filter(workflows::tenant_id.eq(t))
        .select(diesel::dsl::max(workflows::position))
        .first(tx.conn())
        .await?;
    Ok(max.map_or(0, |m| m.saturating_add(1)))
}

/// Every workflow of the tenant in evaluation order (position, then age, then id).
pub async fn list(tx: &mut TenantTx) -> AppResult<Vec<WorkflowRow>> {
    let t = tx.tenant_id();
    Ok(workflows::table
        .filter(workflows::tenant_id.eq(t))
        .order((
            workflows::position,
            workflows::created_at,
            workflows::workflow_id,
        ))
        .select(WorkflowRow::as_select())
        .load(tx.conn())
        .await?)
}

/// One workflow.
pub async fn get(tx: &mut TenantTx, id: WorkflowId) -> AppResult<Option<WorkflowRow>> {
    let t = tx.tenant_id();
    Ok(workflows::table
        .find((t, id))
        .select(WorkflowRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Applies `changes`; the row after, or None when there is no such workflow.
pub async fn update(
    tx: &mut TenantTx,
    id: WorkflowId,
    changes: &WorkflowChanges,
) -> AppResult<Option<WorkflowRow>> {
    let t = tx.tenant_id();
    Ok(diesel::update(workflows::table.find((t, id)))
        .set(changes)
        .returning(WorkflowRow::as_returning())
        .get_result(tx.conn())
        .await
        .optional()?)
}

/// Clears the default flag of every workflow but `keep`.
pub async fn clear_default_except(tx: &mut TenantTx, keep: WorkflowId) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(
        workflows::table.filter(
            workflows::tenant_id
                .eq(t)
                .and(workflows::is_default)
                .and(workflows::workflow_id.ne(keep)),
        ),
    )
    .set(workflows::is_default.eq(false))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Sets one workflow's position.
pub async fn set_position(tx: &mut TenantTx, id: WorkflowId, position: i32) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(workflows::table.find((t, id)))
        .set(workflows::position.eq(position))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Deletes a workflow; whether it existed.
pub async fn delete(tx: &mut TenantTx, id: WorkflowId) -> AppResult<bool> {
    let t = tx.tenant_id();
    let n = diesel::delete(workflows::table.find((t, id)))
        .execute(tx.conn())
        .await?;
    Ok(n > 0)
}
