//! Routing workflows as the domain keeps them: ordered JSON definitions per tenant. The
//! workflow engine and WorkflowService come with external chat; for now workflows are seeded.

use super::{Engine, require_admin_or_system};
use crate::error::AppResult;
use crate::ids::WorkflowId;
use crate::storage::workflows::{self as store, WorkflowRow};
use crate::tenancy::TenantScope;

/// Stores `definition` as the tenant's first workflow when it has none yet (admins and the
/// engine only); returns whether it was stored.
pub async fn seed_first(
    e: &Engine,
    scope: &TenantScope,
    name: &str,
    definition: serde_json::Value,
) -> AppResult<bool> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    if store::count(&mut tx).await? > 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let now = e.now();
    let row = WorkflowRow {
        tenant_id: tx.tenant_id(),
        workflow_id: WorkflowId::new(),
        name: name.to_owned(),
        enabled: true,
        position: 0,
        definition,
        created_at: now,
        updated_at: now,
    };
    store::insert(&mut tx, &row).await?;
    tx.commit().await?;
    Ok(true)
}
