//! Refresh tokens, stored as SHA-256 hashes of their secrets, grouped into families. A
//! family is one session: its access tokens name it, so revoking it (logout, reuse detection,
//! deactivation) is announced to every node's directory with the commit.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::refresh_tokens;
use super::{TenantTx, users};
use crate::error::AppResult;
use crate::ids::{RefreshTokenId, TokenFamilyId, UserId};

/// A stored refresh token; its tenant is the transaction's.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshTokenRow {
    /// Token id (embedded in the token).
    pub token_id: RefreshTokenId,
    /// Family of rotations since one login.
    pub family_id: TokenFamilyId,
    /// Owner.
    pub user_id: UserId,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Issue time.
    pub created_at: DateTime<Utc>,
    /// When it was exchanged for a successor.
    pub rotated_at: Option<DateTime<Utc>>,
    /// When its family was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new token.
pub async fn insert(tx: &mut TenantTx, row: &RefreshTokenRow) -> AppResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((refresh_tokens::tenant_id.eq(tx.tenant_id()), row))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Reads a token and locks it until the transaction ends, so two concurrent refreshes of
/// one token are serialised and only the first can rotate it.
pub async fn lock(tx: &mut TenantTx, id: RefreshTokenId) -> AppResult<Option<RefreshTokenRow>> {
    let t = tx.tenant_id();
    Ok(refresh_tokens::table
        .find((t, id))
        .select(RefreshTokenRow::as_select())
        .for_update()
        .first(tx.conn())
        .await
        .optional()?)
}

/// Marks a token as exchanged.
pub async fn mark_rotated(
    tx: &mut TenantTx,
    id: RefreshTokenId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    diesel::update(refresh_tokens::table.find((t, id)))
        .set(refresh_tokens::rotated_at.eq(now))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Revokes every token of a family, and announces it for the family's owner.
pub async fn revoke_family(
    tx: &mut TenantTx,
    family: TokenFamilyId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let t = tx.tenant_id();
    let mut owners: Vec<UserId> = diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::tenant_id
                .eq(t)
                .and(refresh_tokens::family_id.eq(family))
                .and(refresh_tokens::revoked_at.is_null()),
        ),
    )
    .set(refresh_tokens::revoked_at.eq(now))
    .returning(refresh_tokens::user_id)
    .get_results(tx.conn())
    .await?;
    owners.sort_unstable();
    owners.dedup();
    for user in owners {
        users::notify_directory(tx, user).await?;
    }
    Ok(())
}

/// Revokes every token of a user (deactivation), and announces it.
pub async fn revoke_user(tx: &mut TenantTx, user: UserId, now: DateTime<Utc>) -> AppResult<()> {
    let t = tx.tenant_id();
    let revoked = diesel::update(
        refresh_tokens::table.filter(
            refresh_tokens::tenant_id
                .eq(t)
                .and(refresh_tokens::user_id.eq(user))
                .and(refresh_tokens::revoked_at.is_null()),
        ),
    )
    .set(refresh_tokens::revoked_at.eq(now))
    .execute(tx.conn())
    .await?;
    if revoked > 0 {
        users::notify_directory(tx, user).await?;
    }
    Ok(())
}
