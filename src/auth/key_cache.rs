//! The per-node widget key cache: for each widget key seen on this node, what checking a call
//! needs (the secret's hash, the allowed origins, whether it is revoked), or that no such key
//! exists. A widget call costs no database read once its key's entry is loaded (one read on
//! a miss).
//!
//! Entries are dropped through PostgreSQL `NOTIFY`: the transaction that revokes a key or
//! changes its domains announces `<tenant>:<key>` on [`api_keys::KEYS_CHANNEL`], delivered to
//! every node on commit. A node that lost its listening connection may have missed notices,
//! so it drops everything when it is back. New keys need no notice: their ids are fresh, so no
//! node can have cached them as missing.
//!
//! Size: entries expire [`ENTRY_TTL`] after they were read (a safety net; notices are the
//! mechanism) and at most [`MAX_ENTRIES`] are kept; when full, expired entries are swept and,
//! if that is not enough, an arbitrary tenth is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::AppResult;
use crate::ids::{ApiKeyId, TenantId};
use crate::storage::listen::Notice;
use crate::storage::{Db, api_keys};
use crate::tenancy::{SystemCap, TenantScope};

/// How long an entry is trusted without a notice.
pub const ENTRY_TTL: Duration = Duration::from_secs(300);
/// Most entries kept per node.
pub const MAX_ENTRIES: usize = 100_000;

type Key = (TenantId, ApiKeyId);

/// What a widget call is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    /// SHA-256 of the key's secret.
    pub secret_hash: Vec<u8>,
    /// Origins the key may be used from.
    pub allowed_domains: Vec<String>,
    /// Whether the key was revoked.
    pub revoked: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    /// None: there is no such key.
    facts: Option<KeyFacts>,
    loaded: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Bumped by every invalidation; a read that started under another value is not kept.
    epoch: u64,
}

impl State {
    fn insert(&mut self, key: Key, entry: Entry) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries
                .retain(|_, e| now.duration_since(e.loaded) < ENTRY_TTL);
            if self.entries.len() >= MAX_ENTRIES {
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

/// The widget key cache of one node.
pub struct KeyCache {
    db: Db,
    system: SystemCap,
    state: Mutex<State>,
}

impl KeyCache {
    /// An empty cache over `db`; it reads keys with the system's rights.
    pub fn new(db: Db, system: SystemCap) -> Arc<Self> {
        Arc::new(Self {
            db,
            system,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map is consistent after every statement; a panic elsewhere must not stop
        // authentication.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known about a key; None when it does not exist.
    pub async fn get(&self, tenant: TenantId, id: ApiKeyId) -> AppResult<Option<KeyFacts>> {
        let key = (tenant, id);
        let epoch = {
            let s = self.lock();
            if let Some(e) = s.entries.get(&key)
                && e.loaded.elapsed() < ENTRY_TTL
            {
                return Ok(e.facts.clone());
            }
            s.epoch
        };
        let mut tx = self
            .db
            .tenant_tx(&TenantScope::system(&self.system, tenant))
            .await?;
        let row = api_keys::get(&mut tx, id).await?;
        tx.commit().await?;
        let facts = row.map(|r| KeyFacts {
            secret_hash: r.secret_hash,
            allowed_domains: r.allowed_domains,
            revoked: r.revoked_at.is_some(),
        });
        let mut s = self.lock();
        if s.epoch == epoch {
            s.insert(
                key,
                Entry {
                    facts: facts.clone(),
                    loaded: Instant::now(),
                },
            );
        }
        Ok(facts)
    }

    /// Drops a key's entry at once: this node changed the key and must not wait for the
    /// notice that tells the other nodes.
    pub fn forget(&self, tenant: TenantId, id: ApiKeyId) {
        self.invalidate((tenant, id));
    }

    fn invalidate(&self, key: Key) {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.remove(&key);
    }

    fn clear(&self) {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.clear();
    }

    /// Applies the key channel's notices until it closes.
    pub async fn follow(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>) {
        while let Some(n) = notices.recv().await {
            match n {
                Notice::Payload(p) => match parse_payload(&p) {
                    Some(key) => self.invalidate(key),
                    None => tracing::warn!(payload = %p, "malformed api key notice"),
                },
                Notice::Reconnected => {
                    self.clear();
                    tracing::info!("api key notices may have been missed; cache dropped");
                }
            }
        }
    }
}

/// `<tenant>:<key>`, as `api_keys::notify` writes it.
fn parse_payload(p: &str) -> Option<Key> {
    let (t, k) = p.split_once(':')?;
    Some((TenantId::parse(t)?, ApiKeyId::parse(k)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            facts: None,
            loaded: Instant::now(),
        }
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut s = State::default();
        let t = TenantId::new();
        for _ in 0..MAX_ENTRIES + 5 {
            s.insert((t, ApiKeyId::new()), entry());
        }
        assert!(s.entries.len() <= MAX_ENTRIES);
        assert!(s.entries.len() > MAX_ENTRIES / 2);
    }

    #[tokio::test]
    async fn a_notice_drops_its_key_and_a_reconnect_drops_everything() {
        let db = Db::connect("postgres://nobody@127.0.0.1:1/none", 1).unwrap();
        let cache = KeyCache::new(db, crate::app::SystemCap::for_tests());
        let t = TenantId::new();
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        for k in [a, b] {
            cache.lock().insert((t, k), entry());
        }
        let (tx, rx) = mpsc::channel(4);
        tx.send(Notice::Payload(format!("{t}:{a}"))).await.unwrap();
        tx.send(Notice::Payload("junk".into())).await.unwrap();
        drop(tx);
        cache.clone().follow(rx).await;
        let cached: Vec<Key> = cache.lock().entries.keys().copied().collect();
        assert_eq!(cached, [(t, b)]);

        let (tx, rx) = mpsc::channel(1);
        tx.send(Notice::Reconnected).await.unwrap();
        drop(tx);
        cache.clone().follow(rx).await;
        assert!(cache.lock().entries.is_empty());
    }

    #[test]
    fn payloads_name_a_tenant_and_a_key() {
        let (t, k) = (TenantId::new(), ApiKeyId::new());
        assert_eq!(parse_payload(&format!("{t}:{k}")), Some((t, k)));
        for bad in ["", ":", "x:y", &t.to_string(), &format!("{t}:{k}:x")] {
            assert_eq!(parse_payload(bad), None, "{bad}");
        }
    }
}
