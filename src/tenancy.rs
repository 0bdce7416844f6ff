//! Who a request acts for: the [`Principal`] the auth layer verified, and the [`TenantScope`]
//! every tenant-owned query needs.
//!
//! A scope comes from a verified principal ([`TenantScope::of`], [`OperatorScope::of`]), and
//! from nowhere else unless its maker holds a [`SystemCap`]. Some work has no caller to verify:
//! reactors, timers, presence heartbeats, the directory that re-reads an agent, the rate
//! limiter reading a tenant's limits, the key and token lookups that come *before* a
//! credential is verified (login, refresh, logout, widget keys), and the CLI (`tenant`,
//! `demo`). Those are the only places that hold a `SystemCap`,
//! and [`TenantScope::system`] / [`OperatorScope::system`] ask for one, so this rule is enforced
//! by visibility rather than by review:
//!
//! - `SystemCap`'s field is private to the composition root (`crate::app`): only `app` can
//!   construct one. The type is defined there, and re-exported here, for that reason alone;
//!   it is the one name below `app` that comes from `app`.
//! - `app::build_with` mints one and hands copies to what it builds: the reactor and timer
//!   loops, the presence tracker, the directory, the rate limiter, the authenticator (widget
//!   keys), the transport (for AuthService's login, refresh and logout) and the
//!   [`crate::app::Node`] the CLI gets.
//! - Anything else that wants a system scope has no way to get a cap, so a scope minted outside
//!   those places does not compile. Holders are visible in signatures: `grep SystemCap`.
//!   (Unit tests get one from a `#[cfg(test)]` constructor.)

use crate::ids::{ApiKeyId, TenantId, TokenFamilyId, UserId, VisitorId};

pub use crate::app::SystemCap;

/// Role of an agent in their tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Regular agent.
    Agent,
    /// Tenant administrator.
    Admin,
}

impl Role {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Proof that a credential was checked; only the auth module and login flows mint it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified(());

impl Verified {
    pub(crate) fn mint() -> Self {
        Verified(())
    }
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The platform operator (TenantService).
    Operator(Verified),
    /// A logged-in agent.
    Agent {
        /// Their tenant.
        tenant_id: TenantId,
        /// Their id.
        user_id: UserId,
        /// Their role.
        role: Role,
        /// The session (refresh-token family) their access token was issued in.
        session: TokenFamilyId,
        /// Proof of verification.
        verified: Verified,
    },
    /// A website visitor, through a tenant's widget key.
    Visitor {
        /// The key's tenant.
        tenant_id: TenantId,
        /// The widget key used.
        api_key_id: ApiKeyId,
        /// The visitor, once they hold a visitor token.
        visitor_id: Option<VisitorId>,
        /// Proof of verification.
        verified: Verified,
    },
}

/// What a scope acts as, for authorization checks in the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An agent of the tenant.
    Agent {
        /// Agent id.
        user_id: UserId,
        /// Agent role.
        role: Role,
    },
    /// A visitor through a widget key.
    Visitor {
        /// Visitor id, once known.
        visitor_id: Option<VisitorId>,
    },
    /// The platform operator acting on one tenant.
    Operator,
    /// The engine itself (login, key checks, seeding).
    System,
}

/// The tenant a piece of work is for. Storage accepts nothing else as a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantScope {
    tenant_id: TenantId,
    actor: Actor,
    /// The agent's session, so what lives as long as it (a stream) can end with it.
    session: Option<TokenFamilyId>,
}

impl TenantScope {
    /// The scope of an agent or visitor principal; None for the operator, who has no tenant.
    pub fn of(principal: &Principal) -> Option<Self> {
        match *principal {
            Principal::Operator(_) => None,
            Principal::Agent {
                tenant_id,
                user_id,
                role,
                session,
                ..
            } => Some(Self {
                tenant_id,
                actor: Actor::Agent { user_id, role },
                session: Some(session),
            }),
            Principal::Visitor {
                tenant_id,
                visitor_id,
                ..
            } => Some(Self {
                tenant_id,
                actor: Actor::Visitor { visitor_id },
                session: None,
            }),
        }
    }

    /// The operator acting on one tenant.
    pub fn operator(_: &OperatorScope, tenant_id: TenantId) -> Self {
        Self {
            tenant_id,
            actor: Actor::Operator,
            session: None,
        }
    }

    /// The engine acting for a tenant: background work, pre-authentication lookups and the
    /// CLI, which alone hold a [`SystemCap`].
    pub(crate) fn system(_: &SystemCap, tenant_id: TenantId) -> Self {
        Self {
            tenant_id,
            actor: Actor::System,
            session: None,
        }
    }

    /// The tenant.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// Who acts.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The session of an agent's access token; None for every other actor.
    pub fn session(&self) -> Option<TokenFamilyId> {
        self.session
    }
}

/// Cross-tenant rights of the platform operator (the tenants table only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatorScope(());

impl OperatorScope {
    /// The operator scope of an operator principal.
    pub fn of(principal: &Principal) -> Option<Self> {
        matches!(principal, Principal::Operator(_)).then_some(OperatorScope(()))
    }

    /// For engine-internal lookups across tenants (resolving a login slug, listing tenants
    /// for background work, the CLI); needs a [`SystemCap`].
    pub(crate) fn system(_: &SystemCap) -> Self {
        OperatorScope(())
    }
}
