//! The per-node directory cache: for each agent seen on this node, their role, active flag and
//! the sessions (refresh-token families) revoked recently enough that access tokens issued in
//! them may still be unexpired. Every agent call is authorized against it, so a demotion, a
//! deactivation or a sign-out takes effect on the next call instead of at token expiry, and a
//! call costs no database read once the agent's entry is loaded (one read on a miss).
//!
//! Entries are dropped through PostgreSQL `NOTIFY` ([`super::cache`] has the rules): the
//! transaction that changes an agent's role or active flag or revokes their sessions announces
//! `<tenant>:<user>` on [`crate::storage::users::DIRECTORY_CHANNEL`], delivered to every node
//! on commit. Each node then reads the agent again and tells the composition root what ended
//! ([`Ended`]: the agent, or some of their sessions), so streams opened before the change end
//! too instead of running on with the rights they started with.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::cache::{Dropped, NotifiedCache, tenant_key};
use super::jwt::LEEWAY_SECS;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, TokenFamilyId, UserId};
use crate::storage::listen::Notice;
use crate::storage::{Db, users};
use crate::tenancy::{Role, SystemCap, TenantScope};

type Key = (TenantId, UserId);

/// What of an agent ended, as a change to the directory shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended<'a> {
    /// The agent is no longer active (or no longer exists).
    Agent,
    /// These sessions were revoked (signed out) within an access token's lifetime; the
    /// agent is still active.
    Sessions(&'a [TokenFamilyId]),
}

/// Called with an agent whose directory entry changed and what of them ended, so their open
/// streams on this node that may no longer run can be ended.
pub type OnEnded = Arc<dyn Fn(TenantId, UserId, Ended<'_>) + Send + Sync>;

/// What the directory knows about one agent.
#[derive(Clone, Debug)]
struct Entry {
    role: Role,
    active: bool,
    /// Sessions revoked within an access token's lifetime; a handful at most.
    revoked: Vec<TokenFamilyId>,
}

impl Entry {
    fn verdict(&self, session: TokenFamilyId) -> AppResult<Role> {
        if !self.active {
            return Err(AppError::Unauthenticated("this agent is deactivated"));
        }
        if self.revoked.contains(&session) {
            return Err(AppError::Unauthenticated("this session has ended"));
        }
        Ok(self.role)
    }
}

/// The directory cache of one node.
pub struct Directory {
    db: Db,
    /// Re-reads agents outside any request.
    system: SystemCap,
    /// How long after its revocation a session can still hold an unexpired access token.
    revoked_window: chrono::Duration,
    /// Agents that do not exist are not kept: their ids come from verified tokens.
    entries: NotifiedCache<Key, Entry>,
}

impl Directory {
    /// A directory over `db` for access tokens that live `access_ttl`.
    pub fn new(db: Db, access_ttl: chrono::Duration, system: SystemCap) -> Arc<Self> {
        // The leeway twice: once for the verifier, once for clocks of the revoking and the
        // issuing node that disagree.
        let slack = chrono::Duration::seconds(2 * LEEWAY_SECS as i64);
        Arc::new(Self {
            db,
            system,
            revoked_window: access_ttl + slack,
            entries: NotifiedCache::new("directory", |p| tenant_key(p, UserId::parse)),
        })
    }

    /// The role an access token of `session` acts with now; UNAUTHENTICATED when the agent
    /// is deactivated or unknown or the session was revoked.
    pub async fn authorize(
        &self,
        tenant: TenantId,
        user: UserId,
        session: TokenFamilyId,
    ) -> AppResult<Role> {
        if let Ok(e) = self.entries.get(&(tenant, user)) {
            return e.verdict(session);
        }
        match self.load((tenant, user)).await? {
            Some(e) => e.verdict(session),
            None => Err(AppError::Unauthenticated("invalid or expired token")),
        }
    }

    /// Reads an agent's entry (one statement) and keeps it unless it was invalidated
    /// meanwhile; None when the agent does not exist.
    async fn load(&self, key: Key) -> AppResult<Option<Entry>> {
        let (tenant, user) = key;
        let ticket = self.entries.ticket();
        let since = chrono::Utc::now() - self.revoked_window;
        let mut tx = self
            .db
            .tenant_tx(&TenantScope::system(&self.system, tenant))
            .await?;
        let row = users::directory(&mut tx, user, since).await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let role = Role::parse(&row.role)
            .ok_or_else(|| AppError::Internal(format!("stored role {:?}", row.role)))?;
        let entry = Entry {
            role,
            active: row.active,
            revoked: row.revoked_families,
        };
        self.entries.keep(ticket, key, entry.clone());
        Ok(Some(entry))
    }

    /// Applies the directory channel's notices until it closes. Each notice drops its
    /// agent's entry at once; the agents of a batch of notices are then read again, and
    /// `on_ended` is told of those no longer active and of those with revoked sessions.
    /// After a reconnect every entry is dropped, and the agents that had one are checked the
    /// same way in the background.
    pub async fn follow(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>, on_ended: OnEnded) {
        while let Some(Dropped { named, cleared }) = self.entries.apply_next(&mut notices).await {
            if !cleared.is_empty() {
                let (dir, cb) = (self.clone(), on_ended.clone());
                tokio::spawn(async move {
                    for key in cleared {
                        dir.recheck(key, &cb).await;
                    }
                });
            }
            for key in named {
                self.recheck(key, &on_ended).await;
            }
        }
    }

    async fn recheck(&self, key: Key, on_ended: &OnEnded) {
        match self.load(key).await {
            Ok(Some(e)) if e.active => {
                // A sign-out is one notice among others (a role change, another sign-out):
                // every recently revoked session is named, and ending its streams again
                // finds none.
                if !e.revoked.is_empty() {
                    on_ended(key.0, key.1, Ended::Sessions(&e.revoked));
                }
            }
            Ok(_) => on_ended(key.0, key.1, Ended::Agent),
            Err(e) => tracing::warn!(
                tenant.id = %key.0,
                user.id = %key.1,
                error = %e,
                "reading a changed directory entry failed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(active: bool, revoked: Vec<TokenFamilyId>) -> Entry {
        Entry {
            role: Role::Admin,
            active,
            revoked,
        }
    }

    #[test]
    fn a_revoked_session_or_an_inactive_agent_is_refused() {
        let (live, ended) = (TokenFamilyId::new(), TokenFamilyId::new());
        let e = entry(true, vec![ended]);
        assert_eq!(e.verdict(live).unwrap(), Role::Admin);
        assert!(matches!(
            e.verdict(ended),
            Err(AppError::Unauthenticated(_))
        ));
        assert!(matches!(
            entry(false, vec![]).verdict(live),
            Err(AppError::Unauthenticated(_))
        ));
    }

    /// Runs `follow` over `notices` until they are all applied.
    async fn apply(dir: &Arc<Directory>, notices: Vec<Notice>) {
        let (tx, rx) = mpsc::channel(notices.len());
        for n in notices {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        dir.clone().follow(rx, Arc::new(|_, _, _| {})).await;
    }

    #[tokio::test]
    async fn a_notice_drops_its_agent_and_a_reconnect_drops_everyone() {
        // Nothing listens there: re-reading a changed entry fails, and the test shows what
        // the notices themselves did.
        let db = Db::connect("postgres://nobody@127.0.0.1:1/none", 1).unwrap();
        let dir = Directory::new(
            db,
            chrono::Duration::minutes(15),
            crate::app::SystemCap::for_tests(),
        );
        let t = TenantId::new();
        let (a, b) = (UserId::new(), UserId::new());
        for u in [a, b] {
            dir.entries
                .keep(dir.entries.ticket(), (t, u), entry(true, vec![]));
        }
        apply(&dir, vec![Notice::Payload(format!("{t}:{a}"))]).await;
        assert_eq!(dir.entries.keys(), [(t, b)]);
        apply(&dir, vec![Notice::Reconnected]).await;
        assert!(dir.entries.keys().is_empty());
    }
}
