//! TenantService: the operator's tenant and API key administration, and the tenant's
//! visitor identity-verification setting.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::scope;
use crate::auth::Authenticator;
use crate::domain::agents::NewAgent;
use crate::domain::analytics::buckets;
use crate::domain::{Engine, tenants, validate, visitors};
use crate::error::{AppError, Violations};
use crate::ids::{ApiKeyId, TenantId};
use crate::pb::admin;
use crate::pb::admin::tenant_service_server::TenantService;
use crate::tenancy::Role;

/// Handler of TenantService.
pub struct TenantApi {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
}

impl TenantApi {
    /// A handler over `engine`; `auth` is told of the widget keys it changes.
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>) -> Self {
        Self { engine, auth }
    }
}

fn tenant_id(v: &mut Violations, raw: &str) -> TenantId {
    v.check(validate::id("tenant_id", raw, TenantId::parse))
        .unwrap_or_else(TenantId::new)
}

fn key_id(v: &mut Violations, raw: &str) -> ApiKeyId {
    v.check(validate::id("api_key_id", raw, ApiKeyId::parse))
        .unwrap_or_else(ApiKeyId::new)
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        req: Request<admin::CreateTenantRequest>,
    ) -> Result<Response<admin::CreateTenantResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let name = v.check(validate::text("name", &r.name, 200));
        let slug = v.check(validate::slug("slug", &r.slug));
        let widget = convert::widget_in(&mut v, "widget", r.widget.unwrap_or_default());
        let zone = v
            .check(buckets::zone("time_zone", &r.time_zone))
            .unwrap_or(chrono_tz::Tz::UTC);
        let admin = r.initial_admin.unwrap_or_default();
        let email = v.check(validate::email("initial_admin.email", &admin.email));
        let display_name = v.check(validate::text(
            "initial_admin.display_name",
            &admin.display_name,
            200,
        ));
        let password = v.check(validate::password(
            "initial_admin.password",
            &admin.password,
        ));
        v.finish()?;
        let (Some(name), Some(slug), Some(email), Some(display_name), Some(password)) =
            (name, slug, email, display_name, password)
        else {
            return Err(AppError::Internal("validated fields missing".into()).into());
        };
        let admin = NewAgent {
            email,
            display_name,
            role: Role::Admin,
            password,
            max_concurrent_chats: 0,
            skills: Vec::new(),
        };
        let (t, a) =
            tenants::create_with_admin(&self.engine, &op, name, slug, widget, zone, admin).await?;
        Ok(Response::new(admin::CreateTenantResponse {
            tenant: Some(convert::tenant(t)),
            admin_agent_id: a.id.to_string(),
        }))
    }

    async fn get_tenant(
        &self,
        req: Request<admin::GetTenantRequest>,
    ) -> Result<Response<admin::GetTenantResponse>, Status> {
        let op = scope::operator(&req)?;
        let mut v = Violations::new();
        let id = tenant_id(&mut v, &req.get_ref().tenant_id);
        v.finish()?;
        let t = tenants::get(&self.engine, &op, id).await?;
        Ok(Response::new(admin::GetTenantResponse {
            tenant: Some(convert::tenant(t)),
        }))
    }

    async fn list_tenants(
        &self,
        req: Request<admin::ListTenantsRequest>,
    ) -> Result<Response<admin::ListTenantsResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let page = tenants::list(&self.engine, &op, r.page_size, &r.page_token).await?;
        Ok(Response::new(admin::ListTenantsResponse {
            tenants: page.items.into_iter().map(convert::tenant).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<admin::UpdateTenantRequest>,
    ) -> Result<Response<admin::UpdateTenantResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = tenant_id(&mut v, &r.tenant_id);
        let name = r
            .name
            .as_deref()
            .and_then(|n| v.check(validate::text("name", n, 200)));
        let widget = r.widget.map(|w| convert::widget_in(&mut v, "widget", w));
        let zone = r
            .time_zone
            .as_deref()
            .and_then(|z| v.check(buckets::zone("time_zone", z)));
        v.finish()?;
        let t = tenants::update(&self.engine, &op, id, name, widget, zone).await?;
        Ok(Response::new(admin::UpdateTenantResponse {
            tenant: Some(convert::tenant(t)),
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<admin::CreateApiKeyRequest>,
    ) -> Result<Response<admin::CreateApiKeyResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = tenant_id(&mut v, &r.tenant_id);
        let name = v
            .check(validate::text("name", &r.name, 100))
            .unwrap_or_default();
        let domains = convert::origins(&mut v, "allowed_domains", &r.allowed_domains);
        v.finish()?;
        let (key, secret) = tenants::create_api_key(&self.engine, &op, id, name, domains).await?;
        Ok(Response::new(admin::CreateApiKeyResponse {
            api_key: Some(convert::api_key(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<admin::ListApiKeysRequest>,
    ) -> Result<Response<admin::ListApiKeysResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = tenant_id(&mut v, &r.tenant_id);
        v.finish()?;
        let page =
            tenants::list_api_keys(&self.engine, &op, id, r.page_size, &r.page_token).await?;
        Ok(Response::new(admin::ListApiKeysResponse {
            api_keys: page.items.into_iter().map(convert::api_key).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<admin::RevokeApiKeyRequest>,
    ) -> Result<Response<admin::RevokeApiKeyResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let tenant = tenant_id(&mut v, &r.tenant_id);
        let key = key_id(&mut v, &r.api_key_id);
        v.finish()?;
        let k = tenants::revoke_api_key(&self.engine, &op, tenant, key).await?;
        self.auth.forget_api_key(tenant, key);
        Ok(Response::new(admin::RevokeApiKeyResponse {
            api_key: Some(convert::api_key(k)),
        }))
    }

    async fn set_allowed_domains(
        &self,
        req: Request<admin::SetAllowedDomainsRequest>,
    ) -> Result<Response<admin::SetAllowedDomainsResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let tenant = tenant_id(&mut v, &r.tenant_id);
        let key = key_id(&mut v, &r.api_key_id);
        let domains = convert::origins(&mut v, "allowed_domains", &r.allowed_domains);
        v.finish()?;
        let k = tenants::set_allowed_domains(&self.engine, &op, tenant, key, domains).await?;
        self.auth.forget_api_key(tenant, key);
        Ok(Response::new(admin::SetAllowedDomainsResponse {
            api_key: Some(convert::api_key(k)),
        }))
    }

    async fn set_identity_verification(
        &self,
        req: Request<admin::SetIdentityVerificationRequest>,
    ) -> Result<Response<admin::SetIdentityVerificationResponse>, Status> {
        let op = scope::operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let tenant = tenant_id(&mut v, &r.tenant_id);
        v.finish()?;
        let s = visitors::set_identity_verification(
            &self.engine,
            &op,
            tenant,
            r.required,
            r.rotate_secret,
        )
        .await?;
        Ok(Response::new(admin::SetIdentityVerificationResponse {
            secret: s.new_secret.unwrap_or_default(),
            required: s.required,
            has_secret: s.has_secret,
            update_time: Some(convert::ts(s.updated_at)),
        }))
    }
}
