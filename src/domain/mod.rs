//! Business rules. Every operation on tenant data takes a [`TenantScope`] (or the operator's
//! scope), validates its input, and talks to storage only through scoped transactions.
//! Time comes from an injected [`Clock`], so rules are testable without sleeping.

pub mod agents;
pub mod analytics;
pub mod arrivals;
pub mod assignment;
pub mod batch;
pub mod closer;
pub mod conversations;
pub mod dispatch;
pub mod dispatcher;
pub mod events;
pub mod follower;
pub mod limits;
pub mod openings;
pub mod paging;
pub mod participants;
pub mod queue_view;
pub mod reactors;
pub mod routing;
pub mod sessions;
pub mod spine;
pub mod starter;
pub mod tenants;
pub mod timers;
pub mod validate;
pub mod visitors;
pub mod workflows;
pub mod writer;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::jwt::JwtKeys;
use crate::error::{AppError, AppResult};
use crate::storage::Db;
use crate::tenancy::{Actor, Role, TenantScope};
use paging::PageTokens;

/// Source of the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        // PostgreSQL keeps microseconds; a value echoed before and after storage must agree.
        chrono::SubsecRound::trunc_subsecs(Utc::now(), 6)
    }
}

/// Token lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy {
    /// Access token lifetime.
    pub access_ttl: chrono::Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: chrono::Duration,
}

/// Everything the domain needs, shared by all handlers.
pub struct Engine {
    /// Database pool.
    pub db: Db,
    /// Token signing keys.
    pub jwt: Arc<JwtKeys>,
    /// Page token sealing.
    pub pages: PageTokens,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Token lifetimes.
    pub tokens: TokenPolicy,
    /// Announces events to open streams.
    pub publisher: Arc<dyn events::Publisher>,
    /// Batches concurrent sends into shared commits.
    pub writer: writer::Writer,
    /// Batches concurrent chat ends into shared commits.
    pub closer: closer::Closer,
    /// Batches concurrent chat starts into shared commits.
    pub starter: starter::Starter,
    /// Batches concurrent InitVisitor calls into shared commits.
    pub arrivals: arrivals::Arrivals,
    /// Batches the reads of streams joining conversations at the same moment.
    pub openings: openings::Openings,
}

impl Engine {
    /// Now, from the injected clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// The calling agent, or PERMISSION_DENIED for visitors and others.
pub fn require_agent(scope: &TenantScope) -> AppResult<(crate::ids::UserId, Role)> {
    match scope.actor() {
        Actor::Agent { user_id, role } => Ok((user_id, role)),
        _ => Err(AppError::PermissionDenied("only agents may do this")),
    }
}

/// The calling admin, or PERMISSION_DENIED.
pub fn require_admin(scope: &TenantScope) -> AppResult<crate::ids::UserId> {
    match require_agent(scope)? {
        (id, Role::Admin) => Ok(id),
        _ => Err(AppError::PermissionDenied("only tenant admins may do this")),
    }
}

/// Admins, the operator (a tenant's first admin) or the engine itself (seeding);
/// PERMISSION_DENIED for everyone else.
pub fn require_admin_or_system(scope: &TenantScope) -> AppResult<()> {
    match scope.actor() {
        Actor::System | Actor::Operator => Ok(()),
        _ => require_admin(scope).map(|_| ()),
    }
}
