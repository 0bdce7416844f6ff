//! Tenants and their widget API keys, managed by the platform operator.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::paging::{Page, page_size, split_page};
use super::{Engine, limits};
use crate::auth::keys::{Credential, Kind, display_prefix};
use crate::domain::agents::NewAgent;
use crate::error::{AppError, AppResult};
use crate::ids::{ApiKeyId, TenantId};
use crate::storage::Db;
use crate::storage::api_keys::{self, ApiKeyRow};
use crate::storage::tenants::{self as store, TenantRow};
use crate::tenancy::{OperatorScope, SystemCap, TenantScope};

/// Look and behaviour of a tenant's widget (validated; stored as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WidgetSettings {
    /// `#rrggbb` or empty.
    pub primary_color: String,
    /// `#rrggbb` or empty.
    pub secondary_color: String,
    /// CSS font family.
    pub font_family: String,
    /// https URL or empty.
    pub logo_url: String,
    /// `bottom_right` or `bottom_left`.
    pub position: String,
    /// `light`, `dark` or `auto`.
    pub theme: String,
    /// https URL or empty.
    pub avatar_url: String,
    /// Whether visitors may upload files.
    pub file_upload_enabled: bool,
    /// BCP 47 tags, the first is the default.
    pub languages: Vec<String>,
    /// Header title.
    pub title: String,
    /// Greeting.
    pub greeting: String,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Login handle.
    pub slug: String,
    /// Widget settings.
    pub widget: WidgetSettings,
    /// The zone of the tenant's "today" and of its daily figures.
    pub time_zone: Tz,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A stored zone name as a zone (names are validated on the way in).
pub fn zone_of(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Self {
            id: r.tenant_id,
            name: r.name,
            slug: r.slug,
            // Stored settings were validated on the way in; unknown shapes fall back to defaults.
            widget: serde_json::from_value(r.widget).unwrap_or_default(),
            time_zone: zone_of(&r.time_zone),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A widget API key without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Id.
    pub id: ApiKeyId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Label.
    pub name: String,
    /// Recognisable start of the key.
    pub prefix: String,
    /// Allowed origins.
    pub allowed_domains: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        Self {
            id: r.key_id,
            tenant_id: r.tenant_id,
            name: r.name,
            prefix: r.prefix,
            allowed_domains: r.allowed_domains,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// Creates a tenant and, when given, its first administrator (in one transaction each;
/// a failed admin insert leaves no tenant behind).
pub async fn create_with_admin(
    e: &Engine,
    op: &OperatorScope,
    name: String,
    slug: String,
    widget: WidgetSettings,
    time_zone: Tz,
    admin: NewAgent,
) -> AppResult<(Tenant, crate::domain::agents::Agent)> {
    let tenant = create(e, op, name, slug, widget, time_zone).await?;
    let scope = TenantScope::operator(op, tenant.id);
    match crate::domain::agents::create(e, &scope, admin).await {
        Ok(a) => Ok((tenant, a)),
        Err(err) => {
            let mut tx = e.db.operator_tx(op).await?;
            store::delete(&mut tx, tenant.id).await?;
            tx.commit().await?;
            Err(err)
        }
    }
}

/// Creates a tenant without agents.
pub async fn create(
    e: &Engine,
    op: &OperatorScope,
    name: String,
    slug: String,
    widget: WidgetSettings,
    time_zone: Tz,
) -> AppResult<Tenant> {
    let now = e.now();
    let row = TenantRow {
        tenant_id: TenantId::new(),
        name,
        slug,
        widget: serde_json::to_value(&widget).map_err(|err| AppError::Internal(err.to_string()))?,
        created_at: now,
        updated_at: now,
        time_zone: time_zone.name().to_owned(),
    };
    let mut tx = e.db.operator_tx(op).await?;
    match store::insert(&mut tx, &row).await {
        Err(AppError::AlreadyExists(_)) => return Err(AppError::AlreadyExists("slug is taken")),
        other => other?,
    }
    tx.commit().await?;
    Ok(row.into())
}

/// One tenant.
pub async fn get(e: &Engine, op: &OperatorScope, id: TenantId) -> AppResult<Tenant> {
    let mut tx = e.db.operator_tx(op).await?;
    let t = store::get(&mut tx, id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    tx.commit().await?;
    Ok(t.into())
}

/// A page of tenants, oldest first.
pub async fn list(
    e: &Engine,
    op: &OperatorScope,
    requested_size: i32,
    token: &str,
) -> AppResult<Page<Tenant>> {
    let size = page_size(requested_size)?;
    let binding = "operator|ListTenants";
    let after = e.pages.open::<(DateTime<Utc>, TenantId)>(binding, token)?;
    let mut tx = e.db.operator_tx(op).await?;
    let rows = store::list(&mut tx, after, size + 1).await?;
    tx.commit().await?;
    let (rows, more) = split_page(rows, size);
    let next_page_token = match rows.last() {
        Some(last) if more => e.pages.seal(binding, &(last.created_at, last.tenant_id)),
        _ => String::new(),
    };
    Ok(Page {
        items: rows.into_iter().map(Tenant::from).collect(),
        next_page_token,
    })
}

/// Changes name, widget settings and/or time zone. A new zone re-sums the tenant's daily
/// analytics aggregates in it before this returns.
pub async fn update(
    e: &Engine,
    op: &OperatorScope,
    id: TenantId,
    name: Option<String>,
    widget: Option<WidgetSettings>,
    time_zone: Option<Tz>,
) -> AppResult<Tenant> {
    let widget = widget
        .map(|w| serde_json::to_value(&w))
        .transpose()
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let mut tx = e.db.operator_tx(op).await?;
    let before = store::get(&mut tx, id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    let zone = time_zone.map(|z| z.name());
    let t = store::update(&mut tx, id, name.as_deref(), widget.as_ref(), zone, e.now())
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    tx.commit().await?;
    if t.time_zone != before.time_zone {
        // After the commit: writers from here on sum into the new zone's days, and the
        // exclusive aggregates lock waits for those that read the old one.
        let mut tx = e.db.tenant_tx(&TenantScope::operator(op, id)).await?;
        crate::storage::analytics::recompute_days(&mut tx).await?;
        tx.commit().await?;
    }
    Ok(t.into())
}

/// Sets one of the tenant's rate limits (a name of [`limits::LIMIT_NAMES`]), or with None
/// lets it follow the global default again (operator only). Every node applies it within
/// [`limits::SETTINGS_TTL`].
pub async fn set_rate_limit(
    e: &Engine,
    op: &OperatorScope,
    id: TenantId,
    name: &str,
    rate: Option<limits::Rate>,
) -> AppResult<()> {
    if !limits::LIMIT_NAMES.contains(&name) {
        return Err(AppError::field(
            "name",
            format!("must be one of {}", limits::LIMIT_NAMES.join(", ")),
        ));
    }
    let value = rate
        .map(serde_json::to_value)
        .transpose()
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let mut tx = e.db.operator_tx(op).await?;
    if !store::set_rate_limit(&mut tx, id, name, value, e.now()).await? {
        return Err(AppError::NotFound("tenant"));
    }
    tx.commit().await
}

/// Opens a transaction for `tenant` on the operator's behalf, failing NOT_FOUND when the
/// tenant does not exist (its own row is visible inside its scope).
async fn operator_on_tenant(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
) -> AppResult<crate::storage::TenantTx> {
    let mut tx = e.db.tenant_tx(&TenantScope::operator(op, tenant)).await?;
    if store::own(&mut tx).await?.is_none() {
        return Err(AppError::NotFound("tenant"));
    }
    Ok(tx)
}

/// Creates an API key; returns it with the secret, shown this once.
pub async fn create_api_key(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
    name: String,
    allowed_domains: Vec<String>,
) -> AppResult<(ApiKey, String)> {
    let id = ApiKeyId::new();
    let credential = Credential::generate(tenant.as_uuid(), id.as_uuid());
    let secret = credential.encode(Kind::ApiKey);
    let row = ApiKeyRow {
        tenant_id: tenant,
        key_id: id,
        name,
        prefix: display_prefix(&secret),
        secret_hash: credential.secret_hash(),
        allowed_domains,
        created_at: e.now(),
        revoked_at: None,
    };
    let mut tx = operator_on_tenant(e, op, tenant).await?;
    api_keys::insert(&mut tx, &row).await?;
    tx.commit().await?;
    Ok((row.into(), secret))
}

/// A page of a tenant's keys, newest first.
pub async fn list_api_keys(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
    requested_size: i32,
    token: &str,
) -> AppResult<Page<ApiKey>> {
    let size = page_size(requested_size)?;
    let binding = format!("operator|ListApiKeys|{tenant}");
    let before = e.pages.open::<(DateTime<Utc>, ApiKeyId)>(&binding, token)?;
    let mut tx = operator_on_tenant(e, op, tenant).await?;
    let rows = api_keys::list(&mut tx, before, size + 1).await?;
    tx.commit().await?;
    let (rows, more) = split_page(rows, size);
    let next_page_token = match rows.last() {
        Some(last) if more => e.pages.seal(&binding, &(last.created_at, last.key_id)),
        _ => String::new(),
    };
    Ok(Page {
        items: rows.into_iter().map(ApiKey::from).collect(),
        next_page_token,
    })
}

/// Revokes a key.
pub async fn revoke_api_key(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
    id: ApiKeyId,
) -> AppResult<ApiKey> {
    let mut tx = operator_on_tenant(e, op, tenant).await?;
    let row = api_keys::revoke(&mut tx, id, e.now())
        .await?
        .ok_or(AppError::NotFound("api key"))?;
    tx.commit().await?;
    Ok(row.into())
}

/// Replaces a key's allowed domains.
pub async fn set_allowed_domains(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
    id: ApiKeyId,
    domains: Vec<String>,
) -> AppResult<ApiKey> {
    let mut tx = operator_on_tenant(e, op, tenant).await?;
    let row = api_keys::set_domains(&mut tx, id, &domains)
        .await?
        .ok_or(AppError::NotFound("api key"))?;
    tx.commit().await?;
    Ok(row.into())
}

/// What the widget needs before a chat: the tenant's look and whether anyone can answer.
pub async fn widget_config(e: &Engine, scope: &TenantScope) -> AppResult<(Tenant, bool)> {
    let mut tx = e.db.tenant_tx(scope).await?;
    let t = store::own(&mut tx)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    let available = crate::storage::users::count_available(&mut tx).await?;
    tx.commit().await?;
    Ok((t.into(), available > 0))
}

/// The id of the tenant with `slug`, if there is one (operator only).
pub async fn find_by_slug(
    e: &Engine,
    op: &OperatorScope,
    slug: &str,
) -> AppResult<Option<TenantId>> {
    let mut tx = e.db.operator_tx(op).await?;
    let found = store::find_by_slug(&mut tx, slug).await?;
    tx.commit().await?;
    Ok(found.map(|t| t.tenant_id))
}

/// Every tenant's id, for background work that looks at each tenant in turn (reactors and
/// timers catching up after a start).
pub(crate) async fn all_ids(db: &Db, sys: &SystemCap) -> AppResult<Vec<TenantId>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let mut tx = db.operator_tx(&OperatorScope::system(sys)).await?;
        let page = store::list(&mut tx, after, 500).await?;
        tx.commit().await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = Some((last.created_at, last.tenant_id));
        out.extend(page.iter().map(|t| t.tenant_id));
    }
}
