//! The per-node directory cache: for each agent seen on this node, their role, active flag and
//! the sessions (refresh-token families) revoked recently enough that access tokens issued in
//! them may still be unexpired. Every agent call is authorized against it, so a demotion, a
//! deactivation or a sign-out takes effect on the next call instead of at token expiry, and a
//! call costs no database read once the agent's entry is loaded (one read on a miss).
//!
//! Entries are dropped through PostgreSQL `NOTIFY`: the transaction that changes an agent's
//! role or active flag or revokes their sessions announces `<tenant>:<user>` on
//! [`crate::storage::users::DIRECTORY_CHANNEL`], delivered to every node on commit. A node
//! that lost its listening connection may have missed notices, so it drops everything when it
//! is back.
//!
//! Size: entries expire [`ENTRY_TTL`] after they were read (a safety net; notices are the
//! mechanism), and at most [`MAX_ENTRIES`] are kept. When full, expired entries are swept and,
//! if that is not enough, an arbitrary tenth is dropped (hash order, so effectively random
//! eviction); a dropped entry only costs one read when its agent calls again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::jwt::LEEWAY_SECS;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, TokenFamilyId, UserId};
use crate::storage::listen::Notice;
use crate::storage::{Db, users};
use crate::tenancy::{Role, SystemCap, TenantScope};

/// How long an entry is trusted without a notice.
pub const ENTRY_TTL: Duration = Duration::from_secs(300);
/// Most entries kept per node.
pub const MAX_ENTRIES: usize = 100_000;
/// Most notices applied before the affected agents are read again.
const NOTICE_BATCH: usize = 1024;

type Key = (TenantId, UserId);

/// Called with an agent who is no longer active (or no longer exists), so their open streams
/// on this node can be ended.
pub type OnInactive = Arc<dyn Fn(TenantId, UserId) + Send + Sync>;

/// What the directory knows about one agent.
#[derive(Clone, Debug)]
struct Entry {
    role: Role,
    active: bool,
    /// Sessions revoked within an access token's lifetime; a handful at most.
    revoked: Vec<TokenFamilyId>,
    loaded: Instant,
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

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Bumped by every invalidation. A read that started under another value may have seen
    /// the directory before the change that was just announced, so its result is not kept.
    epoch: u64,
}

impl State {
    fn insert(&mut self, key: Key, entry: Entry) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries
                .retain(|_, e| now.duration_since(e.loaded) < ENTRY_TTL);
            if self.entries.len() >= MAX_ENTRIES {
                // Room for a tenth more, so the next inserts do not sweep again.
                let evict: Vec<Key> = self
                    .entries
                    .keys()
                    .take(MAX_ENTRIES / 10)
                    .copied()
                    .collect();
                for k in evict {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, entry);
    }
}

/// The directory cache of one node.
pub struct Directory {
    db: Db,
    /// Re-reads agents outside any request.
    system: SystemCap,
    /// How long after its revocation a session can still hold an unexpired access token.
    revoked_window: chrono::Duration,
    state: Mutex<State>,
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
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The maps are consistent after every statement; a panic elsewhere must not stop
        // authentication.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The role an access token of `session` acts with now; UNAUTHENTICATED when the agent
    /// is deactivated or unknown or the session was revoked.
    pub async fn authorize(
        &self,
        tenant: TenantId,
        user: UserId,
        session: TokenFamilyId,
    ) -> AppResult<Role> {
        {
            let s = self.lock();
            if let Some(e) = s.entries.get(&(tenant, user))
                && e.loaded.elapsed() < ENTRY_TTL
            {
                return e.verdict(session);
            }
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
        let epoch = self.lock().epoch;
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
            loaded: Instant::now(),
        };
        let mut s = self.lock();
        if s.epoch == epoch {
            s.insert(key, entry.clone());
        }
        Ok(Some(entry))
    }

    fn invalidate(&self, key: Key) {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.remove(&key);
    }

    /// Drops every entry; returns whose they were.
    fn clear(&self) -> Vec<Key> {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.drain().map(|(k, _)| k).collect()
    }

    /// Applies the directory channel's notices until it closes. Each notice drops its
    /// agent's entry at once; the agents of a batch of notices are then read again, and
    /// `on_inactive` is told of those no longer active. After a reconnect every entry is
    /// dropped, and the agents that had one are checked the same way in the background.
    pub async fn follow(
        self: Arc<Self>,
        mut notices: mpsc::Receiver<Notice>,
        on_inactive: OnInactive,
    ) {
        while let Some(first) = notices.recv().await {
            let mut changed = Vec::new();
            let mut next = Some(first);
            // Every waiting notice is applied before any read, so one slow read does not
            // hold back the next invalidation.
            while let Some(n) = next.take() {
                match n {
                    Notice::Payload(p) => match parse_payload(&p) {
                        Some(key) => {
                            self.invalidate(key);
                            changed.push(key);
                        }
                        None => tracing::warn!(payload = %p, "malformed directory notice"),
                    },
                    Notice::Reconnected => {
                        let keys = self.clear();
                        tracing::info!(
                            entries = keys.len(),
                            "directory notices may have been missed; cache dropped"
                        );
                        let (dir, cb) = (self.clone(), on_inactive.clone());
                        tokio::spawn(async move {
                            for key in keys {
                                dir.recheck(key, &cb).await;
                            }
                        });
                    }
                }
                if changed.len() < NOTICE_BATCH {
                    next = notices.try_recv().ok();
                }
            }
            changed.sort_unstable();
            changed.dedup();
            for key in changed {
                self.recheck(key, &on_inactive).await;
            }
        }
    }

    async fn recheck(&self, key: Key, on_inactive: &OnInactive) {
        match self.load(key).await {
            Ok(Some(e)) if e.active => {}
            Ok(_) => on_inactive(key.0, key.1),
            Err(e) => tracing::warn!(
                tenant.id = %key.0,
                user.id = %key.1,
                error = %e,
                "reading a changed directory entry failed"
            ),
        }
    }
}

/// `<tenant>:<user>`, as [`users::notify_directory`] writes it.
fn parse_payload(p: &str) -> Option<Key> {
    let (t, u) = p.split_once(':')?;
    Some((TenantId::parse(t)?, UserId::parse(u)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(active: bool, revoked: Vec<TokenFamilyId>) -> Entry {
        Entry {
            role: Role::Admin,
            active,
            revoked,
            loaded: Instant::now(),
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

    #[test]
    fn the_cache_stays_bounded() {
        let mut s = State::default();
        let t = TenantId::new();
        for _ in 0..MAX_ENTRIES + 5 {
            s.insert((t, UserId::new()), entry(true, vec![]));
        }
        assert!(s.entries.len() <= MAX_ENTRIES);
        assert!(s.entries.len() > MAX_ENTRIES / 2);
    }

    /// Runs `follow` over `notices` until they are all applied.
    async fn apply(dir: &Arc<Directory>, notices: Vec<Notice>) {
        let (tx, rx) = mpsc::channel(notices.len());
        for n in notices {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        dir.clone().follow(rx, Arc::new(|_, _| {})).await;
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
            dir.lock().insert((t, u), entry(true, vec![]));
        }
        apply(&dir, vec![Notice::Payload(format!("{t}:{a}"))]).await;
        let cached: Vec<Key> = dir.lock().entries.keys().copied().collect();
        assert_eq!(cached, [(t, b)]);
        apply(&dir, vec![Notice::Reconnected]).await;
        assert!(dir.lock().entries.is_empty());
    }

    #[test]
    fn payloads_name_a_tenant_and_a_user() {
        let (t, u) = (TenantId::new(), UserId::new());
        assert_eq!(parse_payload(&format!("{t}:{u}")), Some((t, u)));
        for bad in ["", ":", "x:y", &t.to_string(), &format!("{t}:{u}:x")] {
            assert_eq!(parse_payload(bad), None, "{bad}");
        }
    }
}
