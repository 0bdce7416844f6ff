//! AuthService: login, refresh, logout. Needs no prior credentials.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::ts;
use super::ratelimit::Gate;
use crate::domain::sessions::{self, Caller, TokenPair};
use crate::domain::{Engine, validate};
use crate::error::{AppError, Violations};
use crate::pb;
use crate::pb::auth_service_server::AuthService;
use crate::tenancy::SystemCap;

/// Handler of AuthService.
pub struct AuthApi {
    engine: Arc<Engine>,
    /// Reads tenants, agents and tokens before the credentials are verified.
    system: SystemCap,
    /// Limits logins and refreshes per client address, tenant and account.
    gate: Gate,
}

impl AuthApi {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>, system: SystemCap, gate: Gate) -> Self {
        Self {
            engine,
            system,
            gate,
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Caller<'_> {
        Caller {
            limits: self.gate.limiter(),
            ip: self.gate.client_ip(req),
        }
    }
}

fn pair(p: TokenPair) -> pb::TokenPair {
    pb::TokenPair {
        access_token: p.access_token,
        access_token_expire_time: Some(ts(p.access_expires_at)),
        refresh_token: p.refresh_token,
        refresh_token_expire_time: Some(ts(p.refresh_expires_at)),
        agent_id: p.user_id.to_string(),
        tenant_id: p.tenant_id.to_string(),
    }
}

fn required(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let from = self.caller(&req);
        let r = req.into_inner();
        let mut v = Violations::new();
        required(&mut v, "tenant_slug", &r.tenant_slug, 63);
        let email = v.check(validate::email("email", &r.email));
        required(&mut v, "password", &r.password, 1024);
        v.finish()?;
        let email = email.ok_or_else(|| AppError::Internal("validated email missing".into()))?;
        let p = sessions::login(
            &self.engine,
            &self.system,
            from,
            &r.tenant_slug,
            &email,
            r.password,
        )
        .await?;
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(pair(p)),
        }))
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let from = self.caller(&req);
        let r = req.into_inner();
        let mut v = Violations::new();
        required(&mut v, "refresh_token", &r.refresh_token, 200);
        v.finish()?;
        let p = sessions::refresh(&self.engine, &self.system, from, &r.refresh_token).await?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(pair(p)),
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        required(&mut v, "refresh_token", &r.refresh_token, 200);
        v.finish()?;
        sessions::logout(&self.engine, &self.system, &r.refresh_token).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }
}
