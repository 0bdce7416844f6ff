//! Agent sessions: login, refresh-token rotation with reuse detection, logout.
//!
//! A refresh token is single-use. Exchanging it marks it rotated and issues a successor in
//! the same family; presenting a rotated token again means it leaked, so the whole family is
//! revoked. The token row is locked during the exchange, so of two concurrent refreshes only
//! the first rotates; the second sees a rotated token and revokes the family.
//!
//! A family is a session: every access token issued in it carries its id (`sid`), and a
//! revoked family's access tokens are refused on every node (`auth::directory`), not only
//! once they expire.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::Engine;
use super::limits::{Key, Kind as Limited, Limiter};
use crate::auth::jwt::{AGENT_AUDIENCE, Claims};
use crate::auth::keys::{Credential, Kind};
use crate::auth::password;
use crate::error::{AppError, AppResult};
use crate::ids::{RefreshTokenId, TenantId, TokenFamilyId, UserId};
use crate::storage::tokens::{self, RefreshTokenRow};
use crate::storage::{TenantTx, tenants, users};
use crate::tenancy::{OperatorScope, SystemCap, TenantScope};

/// Credentials handed to a logged-in agent.
#[derive(Clone, Debug)]
pub struct TokenPair {
    /// JWT access token.
    pub access_token: String,
    /// Its expiry.
    pub access_expires_at: DateTime<Utc>,
    /// Opaque refresh token.
    pub refresh_token: String,
    /// Its expiry.
    pub refresh_expires_at: DateTime<Utc>,
    /// The agent.
    pub user_id: UserId,
    /// Their tenant.
    pub tenant_id: TenantId,
}

/// Who is calling, for the rate limits of calls made without an account.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    /// The node's limiter.
    pub limits: &'a Limiter,
    /// The client's address.
    pub ip: IpAddr,
}

const BAD_LOGIN: AppError = AppError::Unauthenticated("invalid tenant, email or password");
const BAD_REFRESH: AppError = AppError::Unauthenticated("invalid or expired refresh token");

/// Checks slug, email and password and opens a session. `sys` reads the tenant and the
/// agent before anything is verified. Logins are limited per client address and tenant and
/// per account before the password is looked at; a slug that names no tenant counts against
/// the client address under the nil tenant.
pub async fn login(
    e: &Engine,
    sys: &SystemCap,
    from: Caller<'_>,
    slug: &str,
    email: &str,
    pass: String,
) -> AppResult<TokenPair> {
    let mut tx = e.db.operator_tx(&OperatorScope::system(sys)).await?;
    let tenant = tenants::find_by_slug(&mut tx, slug).await?;
    tx.commit().await?;
    let keys = match &tenant {
        Some(_) => vec![Key::Ip(from.ip), Key::Account(email.to_owned())],
        None => vec![Key::Ip(from.ip)],
    };
    let limited = tenant
        .as_ref()
        .map_or_else(|| TenantId::from_uuid(uuid::Uuid::nil()), |t| t.tenant_id);
    from.limits.check(limited, Limited::Login, &keys).await?;

    let found = match tenant {
        Some(t) => {
            let scope = TenantScope::system(sys, t.tenant_id);
            let mut tx = e.db.tenant_tx(&scope).await?;
            let u = users::find_by_email(&mut tx, email).await?;
            tx.commit().await?;
            u.map(|u| (t.tenant_id, u))
        }
        None => None,
    };
    // Verify even when nobody matched, so timing does not reveal which accounts exist.
    let hash = found.as_ref().map(|(_, u)| u.password_hash.clone());
    let ok = password::verify(pass, hash).await;
    let (tenant, user) = found.filter(|(_, u)| ok && u.active).ok_or(BAD_LOGIN)?;

    let scope = TenantScope::system(sys, tenant);
    let mut tx = e.db.tenant_tx(&scope).await?;
    let pair = issue(e, &mut tx, user.user_id, &user.role, TokenFamilyId::new()).await?;
    tx.commit().await?;
    Ok(pair)
}

/// Exchanges a refresh token for a new pair; `sys` reads the token before it is verified.
/// Refreshes are limited per client address and the tenant the token names.
pub async fn refresh(
    e: &Engine,
    sys: &SystemCap,
    from: Caller<'_>,
    token: &str,
) -> AppResult<TokenPair> {
    let cred = Credential::parse(token, Kind::Refresh).map_err(|_| BAD_REFRESH)?;
    let scope = TenantScope::system(sys, TenantId::from_uuid(cred.tenant));
    let keys = [Key::Ip(from.ip)];
    from.limits
        .check(scope.tenant_id(), Limited::Refresh, &keys)
        .await?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(&scope).await?;
    let row = tokens::lock(&mut tx, RefreshTokenId::from_uuid(cred.id))
        .await?
        .filter(|r| cred.matches(&r.secret_hash))
        .ok_or(BAD_REFRESH)?;
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Err(BAD_REFRESH);
    }
    if row.rotated_at.is_some() {
        tokens::revoke_family(&mut tx, row.family_id, now).await?;
        tx.commit().await?;
        tracing::warn!(tenant.id = %scope.tenant_id(), user.id = %row.user_id, "refresh token reuse: family revoked");
        return Err(AppError::Unauthenticated(
            "refresh token was already used; the session is revoked",
        ));
    }
    let user = users::get(&mut tx, row.user_id).await?.filter(|u| u.active);
    let Some(user) = user else {
        tokens::revoke_family(&mut tx, row.family_id, now).await?;
        tx.commit().await?;
        return Err(BAD_REFRESH);
    };
    tokens::mark_rotated(&mut tx, row.token_id, now).await?;
    let pair = issue(e, &mut tx, user.user_id, &user.role, row.family_id).await?;
    tx.commit().await?;
    Ok(pair)
}

/// Ends the session the refresh token belongs to; `sys` reads the token before it is
/// verified.
pub async fn logout(e: &Engine, sys: &SystemCap, token: &str) -> AppResult<()> {
    let cred = Credential::parse(token, Kind::Refresh).map_err(|_| BAD_REFRESH)?;
    let scope = TenantScope::system(sys, TenantId::from_uuid(cred.tenant));
    let mut tx = e.db.tenant_tx(&scope).await?;
    let row = tokens::lock(&mut tx, RefreshTokenId::from_uuid(cred.id))
        .await?
        .filter(|r| cred.matches(&r.secret_hash))
        .ok_or(BAD_REFRESH)?;
    tokens::revoke_family(&mut tx, row.family_id, e.now()).await?;
    tx.commit().await?;
    Ok(())
}

async fn issue(
    e: &Engine,
    tx: &mut TenantTx,
    user: UserId,
    role: &str,
    family: TokenFamilyId,
) -> AppResult<TokenPair> {
    let now = e.now();
    let tenant = tx.tenant_id();
    let access_expires_at = now + e.tokens.access_ttl;
    let access_token = e.jwt.sign(&Claims {
        iss: e.jwt.issuer().to_owned(),
        aud: AGENT_AUDIENCE.to_owned(),
        sub: user.to_string(),
        tid: tenant.to_string(),
        ctx: role.to_owned(),
        sid: Some(family.to_string()),
        iat: now.timestamp(),
        exp: access_expires_at.timestamp(),
    })?;
    let id = RefreshTokenId::new();
    let cred = Credential::generate(tenant.as_uuid(), id.as_uuid());
    let refresh_expires_at = now + e.tokens.refresh_ttl;
    tokens::insert(
        tx,
        &RefreshTokenRow {
            token_id: id,
            family_id: family,
            user_id: user,
            secret_hash: cred.secret_hash(),
            expires_at: refresh_expires_at,
            created_at: now,
            rotated_at: None,
            revoked_at: None,
        },
    )
    .await?;
    Ok(TokenPair {
        access_token,
        access_expires_at,
        refresh_token: cred.encode(Kind::Refresh),
        refresh_expires_at,
        user_id: user,
        tenant_id: tenant,
    })
}
