//! Credentials: passwords, JWT access tokens, opaque API keys and refresh tokens, and the
//! tower layer that turns request headers into a verified [`Principal`] exactly once, and the
//! per-node [`directory::Directory`] that gives an agent token its current role and refuses it
//! once its agent is deactivated or its session revoked, and the per-node
//! [`key_cache::KeyCache`] that checks widget keys without a database read per call, both
//! built on [`cache::NotifiedCache`].

pub mod cache;
pub mod directory;
pub mod jwt;
pub mod key_cache;
pub mod keys;
pub mod layer;
pub mod password;

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::validate::origin_allowed;
use crate::error::{AppError, AppResult};
use crate::ids::{ApiKeyId, TenantId, TokenFamilyId, UserId, VisitorId};
use crate::tenancy::{Principal, Verified};
use directory::Directory;
use jwt::{AGENT_AUDIENCE, JwtKeys, VISITOR_AUDIENCE};
use key_cache::KeyCache;
use keys::{Credential, Kind};

/// Header carrying a widget API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Verifies credentials.
pub struct Authenticator {
    jwt: Arc<JwtKeys>,
    operator_token_hash: Option<[u8; 32]>,
    keys: Arc<KeyCache>,
    directory: Arc<Directory>,
}

impl Authenticator {
    /// An authenticator; with no operator token, operator calls are impossible.
    pub fn new(
        jwt: Arc<JwtKeys>,
        operator_token: Option<&str>,
        keys: Arc<KeyCache>,
        directory: Arc<Directory>,
    ) -> Self {
        Self {
            jwt,
            operator_token_hash: operator_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            keys,
            directory,
        }
    }

    /// The principal the headers prove, None when they carry no credentials, or an error
    /// for credentials that are present but wrong.
    pub async fn authenticate(&self, headers: &HeaderMap) -> AppResult<Option<Principal>> {
        let bearer = bearer(headers)?;
        if let Some(key) = headers.get(API_KEY_HEADER) {
            let key = key
                .to_str()
                .map_err(|_| AppError::Unauthenticated("malformed api key"))?;
            let origin = headers
                .get(http::header::ORIGIN)
                .and_then(|o| o.to_str().ok());
            return self.visitor(key, origin, bearer).await.map(Some);
        }
        let Some(token) = bearer else {
            return Ok(None);
        };
        if let Some(expected) = &self.operator_token_hash {
            let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if bool::from(presented.ct_eq(expected)) {
                return Ok(Some(Principal::Operator(Verified::mint())));
            }
        }
        let claims = self.jwt.verify(token, AGENT_AUDIENCE)?;
        let bad = || AppError::Unauthenticated("invalid or expired token");
        let tenant_id = TenantId::parse(&claims.tid).ok_or_else(bad)?;
        let user_id = UserId::parse(&claims.sub).ok_or_else(bad)?;
        let session = claims
            .sid
            .as_deref()
            .and_then(TokenFamilyId::parse)
            .ok_or_else(bad)?;
        // The role the token was issued with may be stale; the directory's is current.
        let role = self
            .directory
            .authorize(tenant_id, user_id, session)
            .await?;
        Ok(Some(Principal::Agent {
            tenant_id,
            user_id,
            role,
            session,
            verified: Verified::mint(),
        }))
    }

    /// Forgets what this node cached about a widget key it just revoked or changed; other
    /// nodes hear of it through PostgreSQL.
    pub fn forget_api_key(&self, tenant: TenantId, key: ApiKeyId) {
        self.keys.forget(tenant, key);
    }

    async fn visitor(
        &self,
        key: &str,
        origin: Option<&str>,
        bearer: Option<&str>,
    ) -> AppResult<Principal> {
        // Checked before any database read: junk and typos never reach Postgres.
        let cred = Credential::parse(key, Kind::ApiKey)
            .map_err(|_| AppError::Unauthenticated("malformed api key"))?;
        let tenant_id = TenantId::from_uuid(cred.tenant);
        let api_key_id = ApiKeyId::from_uuid(cred.id);
        // The cache answers without a database read once the key was seen on this node.
        let facts = self
            .keys
            .get(tenant_id, api_key_id)
            .await?
            .filter(|f| cred.matches(&f.secret_hash) && !f.revoked)
            .ok_or(AppError::Unauthenticated("unknown or revoked api key"))?;
        // Origin is a browser control; server-side callers send none and are let through.
        if let Some(o) = origin
            && !origin_allowed(&facts.allowed_domains, o)
        {
            return Err(AppError::PermissionDenied(
                "origin not allowed for this api key",
            ));
        }
        let visitor_id = match bearer {
            Some(t) => {
                let claims = self.jwt.verify(t, VISITOR_AUDIENCE)?;
                // A genuine token of another tenant's visitor, with this tenant's key.
                if claims.tid != tenant_id.to_string() {
                    return Err(AppError::PermissionDenied(
                        "the visitor token belongs to another tenant",
                    ));
                }
                Some(
                    VisitorId::parse(&claims.sub)
                        .ok_or(AppError::Unauthenticated("invalid or expired token"))?,
                )
            }
            None => None,
        };
        Ok(Principal::Visitor {
            tenant_id,
            api_key_id,
            visitor_id,
            verified: Verified::mint(),
        })
    }
}

fn bearer(headers: &HeaderMap) -> AppResult<Option<&str>> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| AppError::Unauthenticated("malformed authorization header"))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or(AppError::Unauthenticated(
            "authorization must be 'Bearer <token>'",
        ))?;
    Ok(Some(token.trim()))
}

/// The verified principal of a request, put there by the auth layer; UNAUTHENTICATED when
/// the request carried no credentials.
pub fn principal<T>(req: &tonic::Request<T>) -> AppResult<&Principal> {
    req.extensions()
        .get::<Principal>()
        .ok_or(AppError::Unauthenticated("credentials required"))
}
