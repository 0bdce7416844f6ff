//! The one way handlers learn who calls: read the principal the auth layer verified and turn
//! it into the scope the domain needs.

use tonic::Request;

use crate::auth::principal;
use crate::error::{AppError, AppResult};
use crate::ids::{ApiKeyId, TenantId, VisitorId};
use crate::tenancy::{OperatorScope, Principal, TenantScope};

/// The operator's scope; PERMISSION_DENIED for anyone else.
pub fn operator<T>(req: &Request<T>) -> AppResult<OperatorScope> {
    OperatorScope::of(principal(req)?).ok_or(AppError::PermissionDenied(
        "only the platform operator may do this",
    ))
}

/// The tenant scope of an agent; PERMISSION_DENIED for visitors and the operator.
pub fn agent<T>(req: &Request<T>) -> AppResult<TenantScope> {
    match principal(req)? {
        p @ Principal::Agent { .. } => Ok(TenantScope::of(p).expect("agents have a tenant")),
        _ => Err(AppError::PermissionDenied(
            "an agent access token is required",
        )),
    }
}

/// The tenant scope of a widget caller (API key, maybe a visitor token).
pub fn visitor<T>(req: &Request<T>) -> AppResult<TenantScope> {
    match principal(req)? {
        p @ Principal::Visitor { .. } => Ok(TenantScope::of(p).expect("visitors have a tenant")),
        _ => Err(AppError::PermissionDenied("a widget api key is required")),
    }
}

/// Whose rate-limit buckets a widget call counts against: the tenant, the widget key, and
/// the visitor once they hold a token.
pub fn widget_caller<T>(req: &Request<T>) -> AppResult<(TenantId, ApiKeyId, Option<VisitorId>)> {
    match principal(req)? {
        Principal::Visitor {
            tenant_id,
            api_key_id,
            visitor_id,
            ..
        } => Ok((*tenant_id, *api_key_id, *visitor_id)),
        _ => Err(AppError::PermissionDenied("a widget api key is required")),
    }
}

/// The tenant scope of a widget caller and the widget key they called with. A request naming
/// a tenant (`named_tenant`, empty when it names none) other than the key's is
/// PERMISSION_DENIED; a malformed one is INVALID_ARGUMENT.
pub fn widget<T>(req: &Request<T>, named_tenant: &str) -> AppResult<(TenantScope, ApiKeyId)> {
    let (p, key) = match principal(req)? {
        p @ Principal::Visitor { api_key_id, .. } => (p, *api_key_id),
        _ => return Err(AppError::PermissionDenied("a widget api key is required")),
    };
    let s = TenantScope::of(p).expect("visitors have a tenant");
    if !named_tenant.is_empty() {
        let t = TenantId::parse(named_tenant)
            .ok_or_else(|| AppError::field("tenant_id", "must be a UUID"))?;
        if t != s.tenant_id() {
            return Err(AppError::PermissionDenied(
                "the widget key belongs to another tenant",
            ));
        }
    }
    Ok((s, key))
}
