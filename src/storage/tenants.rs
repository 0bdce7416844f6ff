//! The tenants table. Cross-tenant reads and writes go through an [`OperatorTx`]; a tenant
//! reads its own row through a [`TenantTx`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::tenants;
use super::{OperatorTx, TenantTx};
use crate::error::AppResult;
use crate::ids::TenantId;

/// A stored tenant.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
pub struct TenantRow {
    /// Tenant id.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Unique login handle.
    pub slug: String,
    /// Widget settings as JSON.
    pub widget: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// IANA time zone (validated on the way in).
    pub time_zone: String,
}

/// Inserts a tenant.
pub async fn insert(tx: &mut OperatorTx, row: &TenantRow) -> AppResult<()> {
    diesel::insert_into(tenants::table)
        .values(row)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// One tenant by id.
pub async fn get(tx: &mut OperatorTx, id: TenantId) -> AppResult<Option<TenantRow>> {
    by_id(tx.conn(), id).await
}

/// The row of `id` on either kind of transaction's connection.
async fn by_id(conn: &mut AsyncPgConnection, id: TenantId) -> AppResult<Option<TenantRow>> {
    Ok(tenants::table
        .find(id)
        .select(TenantRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The tenant with this slug.
pub async fn find_by_slug(tx: &mut OperatorTx, slug: &str) -> AppResult<Option<TenantRow>> {
    Ok(tenants::table
        .filter(tenants::slug.eq(slug))
        .select(TenantRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Tenants after `after` (creation time, id), oldest first.
pub async fn list(
    tx: &mut OperatorTx,
    after: Option<(DateTime<Utc>, TenantId)>,
    limit: i64,
) -> AppResult<Vec<TenantRow>> {
    let mut q = tenants::table
        .select(TenantRow::as_select())
        .order((tenants::created_at, tenants::tenant_id))
        .limit(limit)
        .into_boxed();
    if let Some((t, id)) = after {
        q = q.filter(
            tenants::created_at
                .gt(t)
                .or(tenants::created_at.eq(t).and(tenants::tenant_id.gt(id))),
        );
    }
    Ok(q.load(tx.conn()).await?)
}

/// Changes name, widget settings and/or time zone; None when the tenant does not exist.
pub async fn update(
    tx: &mut OperatorTx,
    id: TenantId,
    name: Option<&str>,
    widget: Option<&serde_json::Value>,
    time_zone: Option<&str>,
    now: DateTime<Utc>,
) -> AppResult<Option<TenantRow>> {
    let current = match get(tx, id).await? {
        Some(t) => t,
        None => return Ok(None),
    };
    let row = diesel::update(tenants::table.find(id))
        .set((
            tenants::name.eq(name.unwrap_or(&current.name)),
            tenants::widget.eq(widget.unwrap_or(&current.widget)),
            tenants::time_zone.eq(time_zone.unwrap_or(&current.time_zone)),
            tenants::updated_at.eq(now),
        ))
        .returning(TenantRow::as_returning())
        .get_result(tx.conn())
        .await?;
    Ok(Some(row))
}

/// The scope's own tenant row.
pub async fn own(tx: &mut TenantTx) -> AppResult<Option<TenantRow>> {
    let id = tx.tenant_id();
    by_id(tx.conn(), id).await
}

/// The scope's own tenant's time zone (UTC when the tenant does not exist).
pub async fn time_zone(tx: &mut TenantTx) -> AppResult<String> {
    let id = tx.tenant_id();
    Ok(tenants::table
        .find(id)
        .select(tenants::time_zone)
        .first(tx.conn())
        .await
        .optional()?
        .unwrap_or_else(|| "UTC".to_owned()))
}

/// Deletes a tenant and, by cascade, everything it owns.
pub async fn delete(tx: &mut OperatorTx, id: TenantId) -> AppResult<()> {
    diesel::delete(tenants::table.find(id))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The scope's own tenant's rate-limit overrides; None when the tenant does not exist.
pub async fn rate_limits(tx: &mut TenantTx) -> AppResult<Option<serde_json::Value>> {
    let id = tx.tenant_id();
    Ok(tenants::table
        .find(id)
        .select(tenants::rate_limits)
        .first(tx.conn())
        .await
        .optional()?)
}

/// Sets (or with None removes) one rate-limit override of a tenant; false when the tenant
/// does not exist.
pub async fn set_rate_limit(
    tx: &mut OperatorTx,
    id: TenantId,
    name: &str,
    value: Option<serde_json::Value>,
    now: DateTime<Utc>,
) -> AppResult<bool> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Jsonb, Text};
    let path = vec![name.to_owned()];
    let target = tenants::table.find(id);
    let changed = match value {
        // jsonb_set with the one-element path {name}.
        Some(v) => {
            diesel::update(target)
                .set((
                    tenants::rate_limits.eq(sql::<Jsonb>("jsonb_set(rate_limits, ")
                        .bind::<diesel::sql_types::Array<Text>, _>(path)
                        .sql(", ")
                        .bind::<Jsonb, _>(v)
                        .sql(")")),
                    tenants::updated_at.eq(now),
                ))
                .execute(tx.conn())
                .await?
        }
        None => {
            diesel::update(target)
                .set((
                    tenants::rate_limits
                        .eq(sql::<Jsonb>("rate_limits - ").bind::<Text, _>(name.to_owned())),
                    tenants::updated_at.eq(now),
                ))
                .execute(tx.conn())
                .await?
        }
    };
    Ok(changed == 1)
}
