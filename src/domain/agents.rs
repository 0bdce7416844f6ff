//! Agents of a tenant: created and changed by admins; each agent sets their own status.

use chrono::{DateTime, Utc};

use super::events::{Event, FRESH_FOR, PresenceState, presence_of};
use super::paging::{Page, page_size, split_page};
use super::spine::{self, SpineEvent};
use super::{Engine, require_admin, require_admin_or_system, require_agent};
use crate::auth::password;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::storage::users::{self, UserChanges, UserRow};
use crate::storage::{TenantTx, presence, tokens};
use crate::tenancy::{Role, TenantScope};

/// Availability an agent sets for themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStatus {
    /// Accepting chats.
    Available,
    /// Online, not accepting chats.
    Busy,
    /// Away.
    Away,
    /// Not working.
    Offline,
}

impl AgentStatus {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::Away => "away",
            Self::Offline => "offline",
        }
    }
    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Self::Available,
            "busy" => Self::Busy,
            "away" => Self::Away,
            "offline" => Self::Offline,
            _ => return None,
        })
    }
}

/// An agent with their skills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Id.
    pub id: UserId,
    /// Email.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Status.
    pub status: AgentStatus,
    /// Capacity for external chats.
    pub max_concurrent_chats: u32,
    /// (skill, level) pairs.
    pub skills: Vec<(String, i16)>,
    /// False once deactivated.
    pub active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A validated new agent.
pub struct NewAgent {
    /// Lower-cased email.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Initial password.
    pub password: String,
    /// Capacity.
    pub max_concurrent_chats: u32,
    /// Skills.
    pub skills: Vec<(String, i16)>,
}

/// Validated changes to an agent.
#[derive(Default)]
pub struct AgentUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New capacity.
    pub max_concurrent_chats: Option<u32>,
    /// New skills.
    pub skills: Option<Vec<(String, i16)>>,
}

/// Default capacity when a request says 0.
pub const DEFAULT_CAPACITY: u32 = 3;

fn to_agent(row: UserRow, skills: Vec<(String, i16)>) -> Agent {
    Agent {
        id: row.user_id,
        email: row.email,
        display_name: row.display_name,
        // The CHECK constraints guarantee the spellings.
        role: Role::parse(&row.role).unwrap_or(Role::Agent),
        status: AgentStatus::parse(&row.status).unwrap_or(AgentStatus::Offline),
        max_concurrent_chats: u32::try_from(row.max_concurrent_chats).unwrap_or(0),
        skills,
        active: row.active,
        created_at: row.created_at,
    }
}

async fn load(tx: &mut TenantTx, rows: Vec<UserRow>) -> AppResult<Vec<Agent>> {
    let ids: Vec<UserId> = rows.iter().map(|r| r.user_id).collect();
    let mut skills = users::skills_of(tx, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mine = skills
                .extract_if(.., |s| s.user_id == r.user_id)
                .map(|s| (s.skill, s.level))
                .collect();
            to_agent(r, mine)
        })
        .collect())
}

async fn load_one(tx: &mut TenantTx, id: UserId) -> AppResult<Agent> {
    let row = users::get(tx, id)
        .await?
        .ok_or(AppError::NotFound("agent"))?;
    Ok(load(tx, vec![row]).await?.remove(0))
}

/// Records in the event spine that the agent's routing state (status, capacity, role, active
/// flag) changed, and commits: reactors such as the dispatcher learn of it from there.
async fn commit_changed(mut tx: TenantTx, agent: UserId, at: DateTime<Utc>) -> AppResult<()> {
    // The state history that online time and utilisation are computed from.
    super::analytics::record_agent_state(&mut tx, agent, at).await?;
    spine::record(&tx, &[SpineEvent::AgentChanged { agent }], at).await?;
    tx.commit().await
}

/// Sets a new password for the agent with `email` (admins and the engine only); false when
/// there is no such agent.
pub async fn reset_password(
    e: &Engine,
    scope: &TenantScope,
    email: &str,
    new_password: String,
) -> AppResult<bool> {
    require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let found = users::find_by_email(&mut tx, email).await?;
    tx.commit().await?;
    let Some(user) = found else {
        return Ok(false);
    };
    let hash = password::hash(new_password).await?;
    let mut tx = e.db.tenant_tx(scope).await?;
    users::set_password_hash(&mut tx, user.user_id, &hash).await?;
    tx.commit().await?;
    Ok(true)
}

/// Creates an agent (admins only).
pub async fn create(e: &Engine, scope: &TenantScope, new: NewAgent) -> AppResult<Agent> {
    require_admin_or_system(scope)?;
    let hash = password::hash(new.password).await?;
    let now = e.now();
    let row = UserRow {
        user_id: UserId::new(),
        email: new.email,
        display_name: new.display_name,
        role: new.role.as_str().into(),
        status: AgentStatus::Offline.as_str().into(),
        max_concurrent_chats: capacity(new.max_concurrent_chats),
        password_hash: hash,
        active: true,
        created_at: now,
        updated_at: now,
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    match users::insert(&mut tx, &row).await {
        Err(AppError::AlreadyExists(_)) => {
            return Err(AppError::AlreadyExists("an agent with this email exists"));
        }
        other => other?,
    }
    users::replace_skills(&mut tx, row.user_id, &new.skills).await?;
    let agent = load_one(&mut tx, row.user_id).await?;
    commit_changed(tx, row.user_id, now).await?;
    Ok(agent)
}

fn capacity(requested: u32) -> i32 {
    let c = if requested == 0 {
        DEFAULT_CAPACITY
    } else {
        requested
    };
    i32::try_from(c.min(100)).unwrap_or(100)
}

/// One agent of the caller's tenant.
pub async fn get(e: &Engine, scope: &TenantScope, id: UserId) -> AppResult<Agent> {
    require_agent(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let a = load_one(&mut tx, id).await?;
    tx.commit().await?;
    Ok(a)
}

/// A page of agents ordered by email.
pub async fn list(
    e: &Engine,
    scope: &TenantScope,
    requested_size: i32,
    token: &str,
) -> AppResult<Page<Agent>> {
    require_agent(scope)?;
    let size = page_size(requested_size)?;
    let binding = format!("tenant:{}|ListAgents", scope.tenant_id());
    let after = e.pages.open::<String>(&binding, token)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let rows = users::list(&mut tx, after.as_deref(), size + 1).await?;
    let (rows, more) = split_page(rows, size);
    let next_page_token = match rows.last() {
        Some(last) if more => e.pages.seal(&binding, &last.email),
        _ => String::new(),
    };
    let items = load(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(Page {
        items,
        next_page_token,
    })
}

/// Changes an agent (admins only).
pub async fn update(
    e: &Engine,
    scope: &TenantScope,
    id: UserId,
    upd: AgentUpdate,
) -> AppResult<Agent> {
    let me = require_admin(scope)?;
    if me == id && upd.role == Some(Role::Agent) {
        return Err(AppError::FailedPrecondition(
            "admins cannot remove their own admin role",
        ));
    }
    let changes = UserChanges {
        display_name: upd.display_name,
        role: upd.role.map(|r| r.as_str().to_owned()),
        max_concurrent_chats: upd.max_concurrent_chats.map(capacity),
        updated_at: Some(e.now()),
        ..Default::default()
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    users::update(&mut tx, id, &changes)
        .await?
        .ok_or(AppError::NotFound("agent"))?;
    if let Some(skills) = upd.skills {
        users::replace_skills(&mut tx, id, &skills).await?;
    }
    let a = load_one(&mut tx, id).await?;
    commit_changed(tx, id, e.now()).await?;
    Ok(a)
}

/// Deactivates an agent and ends their sessions (admins only, not themselves).
pub async fn deactivate(e: &Engine, scope: &TenantScope, id: UserId) -> AppResult<Agent> {
    let me = require_admin(scope)?;
    if me == id {
        return Err(AppError::FailedPrecondition(
            "admins cannot deactivate themselves",
        ));
    }
    let now = e.now();
    let changes = UserChanges {
        active: Some(false),
        status: Some(AgentStatus::Offline.as_str().into()),
        updated_at: Some(now),
        ..Default::default()
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    users::update(&mut tx, id, &changes)
        .await?
        .ok_or(AppError::NotFound("agent"))?;
    tokens::revoke_user(&mut tx, id, now).await?;
    let a = load_one(&mut tx, id).await?;
    commit_changed(tx, id, now).await?;
    Ok(a)
}

/// Sets the caller's own status.
pub async fn set_my_status(
    e: &Engine,
    scope: &TenantScope,
    status: AgentStatus,
) -> AppResult<Agent> {
    let (me, _) = require_agent(scope)?;
    let changes = UserChanges {
        status: Some(status.as_str().into()),
        updated_at: Some(e.now()),
        ..Default::default()
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    users::update(&mut tx, me, &changes)
        .await?
        .ok_or(AppError::NotFound("agent"))?;
    let a = load_one(&mut tx, me).await?;
    let snapshot = presence::snapshot(&mut tx, e.now() - FRESH_FOR).await?;
    commit_changed(tx, me, e.now()).await?;
    if let Some((_, status, connected, last_seen)) = snapshot.into_iter().find(|r| r.0 == me) {
        e.publisher.publish(Event::Presence {
            tenant: scope.tenant_id(),
            state: PresenceState {
                agent: me,
                presence: presence_of(connected, &status),
                status,
                last_seen,
            },
        });
    }
    Ok(a)
}
