//! Routing workflows, stored as ordered JSON definitions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::TenantTx;
use super::schema::workflows;
use crate::error::AppResult;
use crate::ids::{TenantId, WorkflowId};

/// A stored workflow.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
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
}

/// Stores a workflow.
pub async fn insert(tx: &mut TenantTx, row: &WorkflowRow) -> AppResult<()> {
    diesel::insert_into(workflows::table)
        .values(row)
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
