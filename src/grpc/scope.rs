//! The one way handlers learn who calls: read the principal the auth layer verified and turn
//! it into the scope the domain needs.

use tonic::Request;

use crate::auth::principal;
use crate::error::{AppError, AppResult};
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
