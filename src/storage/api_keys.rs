//! Widget API keys, stored as SHA-256 hashes of their secrets. Every transaction that revokes
//! a key or changes its allowed domains also sends a `NOTIFY` on [`KEYS_CHANNEL`], which
//! PostgreSQL delivers to every node when, and only if, it commits: the nodes' key caches
//! (`auth::key_cache`) drop the key then.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use diesel::sql_types::Text;

use super::schema::api_keys;
use super::{TenantTx, sql};
use crate::error::AppResult;
use crate::ids::{ApiKeyId, TenantId};

/// The channel that carries `<tenant>:<key>` whenever a key was revoked or its domains
/// changed.
pub const KEYS_CHANNEL: &str = "chatengine_api_keys";

/// Tells every node, once this transaction commits, that the key changed.
async fn notify(tx: &mut TenantTx, id: ApiKeyId) -> AppResult<()> {
    let payload = format!("{}:{id}", tx.tenant_id());
    sql::prepared("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(KEYS_CHANNEL)
        .bind::<Text, _>(payload)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// A stored API key.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Key id (embedded in the key).
    pub key_id: ApiKeyId,
    /// Label.
    pub name: String,
    /// First characters of the key, for recognition.
    pub prefix: String,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
    /// Allowed website origins.
    pub allowed_domains: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a key.
pub async fn insert(tx: &mut TenantTx, row: &ApiKeyRow) -> AppResult<()> {
    diesel::insert_into(api_keys::table)
        .values(row)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// One key by id.
pub async fn get(tx: &mut TenantTx, id: ApiKeyId) -> AppResult<Option<ApiKeyRow>> {
    let t = tx.tenant_id();
    Ok(api_keys::table
        .find((t, id))
        .select(ApiKeyRow::as_select())
        .first(tx.conn())
        .await
        .optional()?)
}

/// Keys newest first, before `before` (creation time, id).
pub async fn list(
    tx: &mut TenantTx,
    before: Option<(DateTime<Utc>, ApiKeyId)>,
    limit: i64,
) -> AppResult<Vec<ApiKeyRow>> {
    let t = tx.tenant_id();
    let mut q = api_keys::table
        .filter(api_keys::tenant_id.eq(t))
        .select(ApiKeyRow::as_select())
        .order((api_keys::created_at.desc(), api_keys::key_id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some((c, id)) = before {
        q = q.filter(
            api_keys::created_at
                .lt(c)
                .or(api_keys::created_at.eq(c).and(api_keys::key_id.lt(id))),
        );
    }
    Ok(q.load(tx.conn()).await?)
}

/// Revokes a key (keeps the first revocation time); None when it does not exist. Announced on
/// [`KEYS_CHANNEL`] with the commit.
pub async fn revoke(
    tx: &mut TenantTx,
    id: ApiKeyId,
    now: DateTime<Utc>,
) -> AppResult<Option<ApiKeyRow>> {
    let t = tx.tenant_id();
    let Some(row) = get(tx, id).await? else {
        return Ok(None);
    };
    let row = diesel::update(api_keys::table.find((t, id)))
        .set(api_keys::revoked_at.eq(row.revoked_at.unwrap_or(now)))
        .returning(ApiKeyRow::as_returning())
        .get_result(tx.conn())
        .await?;
    notify(tx, id).await?;
    Ok(Some(row))
}

/// Replaces a key's allowed domains; None when it does not exist. Announced on
/// [`KEYS_CHANNEL`] with the commit.
pub async fn set_domains(
    tx: &mut TenantTx,
    id: ApiKeyId,
    domains: &[String],
) -> AppResult<Option<ApiKeyRow>> {
    let t = tx.tenant_id();
    let row = diesel::update(api_keys::table.find((t, id)))
        .set(api_keys::allowed_domains.eq(domains))
        .returning(ApiKeyRow::as_returning())
        .get_result(tx.conn())
        .await
        .optional()?;
    if row.is_some() {
        notify(tx, id).await?;
    }
    Ok(row)
}
