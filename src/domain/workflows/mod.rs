//! Routing workflows: the typed model ([`model`]), business-hours calendars ([`calendar`]),
//! selection of the workflow for a visitor ([`select`]), the brief's JSON import format
//! ([`import`]), and the tenant operations on them: create, get, list, update, delete,
//! reorder (admins), and the ExplainRouting dry run (any agent).
//!
//! A tenant has at most [`MAX_WORKFLOWS`] workflows; at most one is the tenant default,
//! whose trigger is empty and which applies only when no other matches (see [`select`]).

pub mod calendar;
pub mod import;
pub mod model;
pub mod select;

use chrono::{DateTime, Utc};

use super::events::FRESH_FOR;
use super::routing::{self, AgentSnapshot, ChatNeeds, Decision};
use super::{Engine, require_admin_or_system, require_agent};
use crate::domain::agents::AgentStatus;
use crate::error::{AppError, AppResult, FieldViolation};
use crate::ids::WorkflowId;
use crate::storage::TenantTx;
use crate::storage::routing as agents_store;
use crate::storage::workflows::{self as store, NewWorkflowRow, WorkflowChanges, WorkflowRow};
use crate::tenancy::TenantScope;
use model::{Actions, Definition, Trigger};
pub use select::{Selection, VisitorContext, Workflow};

/// Most workflows a tenant may have.
pub const MAX_WORKFLOWS: i64 = 100;

/// A validated new workflow.
#[derive(Clone, Debug)]
pub struct NewWorkflow {
    /// Name.
    pub name: String,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// The tenant default.
    pub is_default: bool,
    /// Triggers and actions.
    pub definition: Definition,
}

/// Validated changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct WorkflowUpdate {
    /// New name.
    pub name: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New default flag.
    pub is_default: Option<bool>,
    /// New trigger, whole.
    pub trigger: Option<Trigger>,
    /// New actions, whole.
    pub actions: Option<Actions>,
}

/// The outcome of [`explain`].
#[derive(Clone, Debug)]
pub struct Explanation {
    /// Which workflow applies and why the others do not.
    pub selection: Selection,
    /// Which agent would be chosen and why each would or would not be.
    pub decision: Decision,
}

fn to_workflow(row: WorkflowRow) -> Workflow {
    let parsed = serde_json::from_value::<Definition>(row.definition)
        .ok()
        .filter(|d| d.version == model::DEFINITION_VERSION);
    let (enabled, definition) = match parsed {
        Some(d) => (row.enabled, d),
        None => {
            // Only a row written before the typed form (an early demo seed) gets here; it is
            // shown disabled with defaults rather than routing by a guess.
            tracing::warn!(workflow = %row.workflow_id, "workflow definition is not the typed form; treated as disabled");
            (false, Definition::default())
        }
    };
    Workflow {
        id: row.workflow_id,
        name: row.name,
        enabled,
        is_default: row.is_default,
        position: row.position,
        definition,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

fn stored(d: &Definition) -> AppResult<serde_json::Value> {
    serde_json::to_value(d).map_err(|e| AppError::Internal(format!("workflow definition: {e}")))
}

fn default_needs_empty_trigger(is_default: bool, trigger: &Trigger) -> AppResult<()> {
    if is_default && !trigger.is_empty() {
        return Err(FieldViolation::new(
            "trigger",
            "must be empty on the default workflow (it applies when no other matches)",
        )
        .into());
    }
    Ok(())
}

async fn insert(tx: &mut TenantTx, new: &NewWorkflow, now: DateTime<Utc>) -> AppResult<WorkflowId> {
    default_needs_empty_trigger(new.is_default, &new.definition.trigger)?;
    store::lock_writes(tx).await?;
    if store::count(tx).await? >= MAX_WORKFLOWS {
        return Err(AppError::FailedPrecondition(
            "a tenant has at most 100 workflows",
        ));
    }
    let id = WorkflowId::new();
    if new.is_default {
        store::clear_default_except(tx, id).await?;
    }
    let row = NewWorkflowRow {
        workflow_id: id,
        name: new.name.clone(),
        enabled: new.enabled,
        position: store::next_position(tx).await?,
        definition: stored(&new.definition)?,
        is_default: new.is_default,
        created_at: now,
        updated_at: now,
    };
    store::insert(tx, &row).await?;
    Ok(id)
}

/// Stores `definition` as the tenant's first workflow when it has none yet (admins and the
/// engine only); returns whether it was stored.
pub async fn seed_first(
    e: &Engine,
    scope: &TenantScope,
    name: &str,
    definition: Definition,
) -> AppResult<bool> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    if store::count(&mut tx).await? > 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let new = NewWorkflow {
        name: name.to_owned(),
        enabled: true,
        is_default: false,
        definition,
    };
    insert(&mut tx, &new, e.now()).await?;
    tx.commit().await?;
    Ok(true)
}

/// Creates a workflow at the end of the order (admins only).
pub async fn create(e: &Engine, scope: &TenantScope, new: NewWorkflow) -> AppResult<Workflow> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let id = insert(&mut tx, &new, e.now()).await?;
    let w = store::get(&mut tx, id)
        .await?
        .ok_or(AppError::NotFound("workflow"))?;
    tx.commit().await?;
    Ok(to_workflow(w))
}

/// Creates every workflow of an import, in file order after the existing ones, all or none
/// (admins and the engine only).
pub async fn import(
    e: &Engine,
    scope: &TenantScope,
    items: Vec<import::Imported>,
) -> AppResult<Vec<Workflow>> {
    require_admin_or_system(scope)?;
    if items.iter().filter(|i| i.is_default).count() > 1 {
        return Err(AppError::field(
            "default",
            "at most one workflow may be the default",
        ));
    }
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let mut ids = Vec::new();
    for i in items {
        let new = NewWorkflow {
            name: i.name,
            enabled: i.enabled,
            is_default: i.is_default,
            definition: i.definition,
        };
        ids.push(insert(&mut tx, &new, now).await?);
    }
    let all = store::list(&mut tx).await?;
    tx.commit().await?;
    Ok(all
        .into_iter()
        .filter(|r| ids.contains(&r.workflow_id))
        .map(to_workflow)
        .collect())
}

/// One workflow (admins only); another tenant's id is NOT_FOUND.
pub async fn get(e: &Engine, scope: &TenantScope, id: WorkflowId) -> AppResult<Workflow> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let w = store::get(&mut tx, id)
        .await?
        .ok_or(AppError::NotFound("workflow"))?;
    tx.commit().await?;
    Ok(to_workflow(w))
}

/// Every workflow in evaluation order (admins only).
pub async fn list(e: &Engine, scope: &TenantScope) -> AppResult<Vec<Workflow>> {
    require_admin_or_system(scope)?;
    ordered(e, scope).await
}

/// Every workflow in evaluation order, for routing: any agent, or the engine (the
/// dispatcher), may read them.
pub async fn ordered(e: &Engine, scope: &TenantScope) -> AppResult<Vec<Workflow>> {
    let mut tx = e.db.tenant_tx(scope).await?;
    let list = ordered_in(&mut tx).await?;
    tx.commit().await?;
    Ok(list)
}

/// [`ordered`] inside a transaction the caller holds (the dispatcher's).
pub async fn ordered_in(tx: &mut TenantTx) -> AppResult<Vec<Workflow>> {
    Ok(store::list(tx)
        .await?
        .into_iter()
        .map(to_workflow)
        .collect())
}

/// The whole routing decision, pure: the workflow for `visitor` at `at` and, with its
/// actions and `waited_seconds` of waiting (relaxation, overflow after the max wait), the
/// agent from `agents`. ExplainRouting shows exactly this; a dispatcher calls it with the
/// snapshots it locked.
pub fn route(
    workflows: &[Workflow],
    visitor: &VisitorContext,
    at: DateTime<Utc>,
    agents: &[AgentSnapshot],
    waited_seconds: u64,
) -> Explanation {
    let selection = select::select(workflows, visitor, at);
    let decision = routing::decide(
        agents,
        &ChatNeeds::for_actions(&selection.actions, waited_seconds),
    );
    Explanation {
        selection,
        decision,
    }
}

/// Changes a workflow (admins only).
pub async fn update(
    e: &Engine,
    scope: &TenantScope,
    id: WorkflowId,
    upd: WorkflowUpdate,
) -> AppResult<Workflow> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    store::lock_writes(&mut tx).await?;
    let current = to_workflow(
        store::get(&mut tx, id)
            .await?
            .ok_or(AppError::NotFound("workflow"))?,
    );
    let mut definition = current.definition.clone();
    if let Some(t) = upd.trigger {
        definition.trigger = t;
    }
    if let Some(a) = upd.actions {
        definition.actions = a;
    }
    let is_default = upd.is_default.unwrap_or(current.is_default);
    default_needs_empty_trigger(is_default, &definition.trigger)?;
    if upd.is_default == Some(true) {
        store::clear_default_except(&mut tx, id).await?;
    }
    let changes = WorkflowChanges {
        name: upd.name,
        enabled: upd.enabled,
        definition: Some(stored(&definition)?),
        is_default: upd.is_default,
        updated_at: Some(e.now()),
    };
    let row = store::update(&mut tx, id, &changes)
        .await?
        .ok_or(AppError::NotFound("workflow"))?;
    tx.commit().await?;
    Ok(to_workflow(row))
}

/// Deletes a workflow (admins only).
pub async fn delete(e: &Engine, scope: &TenantScope, id: WorkflowId) -> AppResult<()> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    if !store::delete(&mut tx, id).await? {
        return Err(AppError::NotFound("workflow"));
    }
    tx.commit().await
}

/// Sets the evaluation order: `ids` must name every workflow of the tenant exactly once
/// (admins only). An id the tenant does not have is NOT_FOUND.
pub async fn reorder(
    e: &Engine,
    scope: &TenantScope,
    ids: &[WorkflowId],
) -> AppResult<Vec<Workflow>> {
    require_admin_or_system(scope)?;
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(AppError::field(
                &format!("workflow_ids[{i}]"),
                "is listed twice",
            ));
        }
    }
    let mut tx = e.db.tenant_tx(scope).await?;
    store::lock_writes(&mut tx).await?;
    let rows = store::list(&mut tx).await?;
    if ids
        .iter()
        .any(|id| !rows.iter().any(|r| r.workflow_id == *id))
    {
        return Err(AppError::NotFound("workflow"));
    }
    if let Some(missing) = rows.iter().find(|r| !ids.contains(&r.workflow_id)) {
        return Err(AppError::field(
            "workflow_ids",
            format!(
                "must list every workflow of the tenant; {} is missing",
                missing.workflow_id
            ),
        ));
    }
    for (pos, id) in ids.iter().enumerate() {
        store::set_position(&mut tx, *id, i32::try_from(pos).unwrap_or(i32::MAX)).await?;
    }
    let rows = store::list(&mut tx).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(to_workflow).collect())
}

/// Every active agent of the tenant as routing sees them; "online" means some node with a
/// fresh heartbeat holds a stream for them (the presence table, see `realtime::presence`).
pub async fn agent_snapshots(
    tx: &mut TenantTx,
    now: DateTime<Utc>,
) -> AppResult<Vec<AgentSnapshot>> {
    let rows = agents_store::agents(tx, now - FRESH_FOR).await?;
    Ok(rows
        .into_iter()
        .map(|r| AgentSnapshot {
            id: r.user_id,
            name: r.display_name,
            status: AgentStatus::parse(&r.status).unwrap_or(AgentStatus::Offline),
            online: r.online,
            open_chats: u32::try_from(r.open_chats).unwrap_or(u32::MAX),
            capacity: u32::try_from(r.max_concurrent_chats).unwrap_or(0),
            skills: r.skills,
            last_assigned_at: r.last_assigned_at,
        })
        .collect())
}

/// Dry run (any agent): which workflow would apply to `visitor` at `at` and why the others
/// would not, and which agent would be chosen with `waited_seconds` of waiting behind it.
pub async fn explain(
    e: &Engine,
    scope: &TenantScope,
    visitor: &VisitorContext,
    at: Option<DateTime<Utc>>,
    waited_seconds: u64,
) -> AppResult<Explanation> {
    require_agent(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let rows = store::list(&mut tx).await?;
    let agents = agent_snapshots(&mut tx, now).await?;
    tx.commit().await?;
    let workflows: Vec<Workflow> = rows.into_iter().map(to_workflow).collect();
    Ok(route(
        &workflows,
        visitor,
        at.unwrap_or(now),
        &agents,
        waited_seconds,
    ))
}
