//! The per-node widget key cache: for each widget key seen on this node, what checking a call
//! needs (the secret's hash, the allowed origins, whether it is revoked), or that no such key
//! exists. A widget call costs no database read once its key's entry is loaded (one read on
//! a miss).
//!
//! Entries are dropped through PostgreSQL `NOTIFY` ([`super::cache`] has the rules): the
//! transaction that revokes a key or changes its domains announces `<tenant>:<key>` on
//! [`api_keys::KEYS_CHANNEL`], delivered to every node on commit. New keys need no notice:
//! their ids are fresh, so no node can have cached them as missing.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::cache::{NotifiedCache, tenant_key};
use crate::error::AppResult;
use crate::ids::{ApiKeyId, TenantId};
use crate::storage::listen::Notice;
use crate::storage::{Db, api_keys};
use crate::tenancy::{SystemCap, TenantScope};

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

/// The widget key cache of one node.
pub struct KeyCache {
    db: Db,
    system: SystemCap,
    /// None: there is no such key.
    entries: NotifiedCache<Key, Option<KeyFacts>>,
}

impl KeyCache {
    /// An empty cache over `db`; it reads keys with the system's rights.
    pub fn new(db: Db, system: SystemCap) -> Arc<Self> {
        Arc::new(Self {
            db,
            system,
            entries: NotifiedCache::new("api keys", |p| tenant_key(p, ApiKeyId::parse)),
        })
    }

    /// What is known about a key; None when it does not exist.
    pub async fn get(&self, tenant: TenantId, id: ApiKeyId) -> AppResult<Option<KeyFacts>> {
        let key = (tenant, id);
        let ticket = match self.entries.get(&key) {
            Ok(facts) => return Ok(facts),
            Err(ticket) => ticket,
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
        self.entries.keep(ticket, key, facts.clone());
        Ok(facts)
    }

    /// Drops a key's entry at once: this node changed the key and must not wait for the
    /// notice that tells the other nodes.
    pub fn forget(&self, tenant: TenantId, id: ApiKeyId) {
        self.entries.forget(&(tenant, id));
    }

    /// Applies the key channel's notices until it closes.
    pub async fn follow(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>) {
        // Dropping the entries is all a key notice asks for.
        while self.entries.apply_next(&mut notices).await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_notice_drops_that_key_only() {
        let db = Db::connect("postgres://nobody@127.0.0.1:1/none", 1).unwrap();
        let cache = KeyCache::new(db, crate::app::SystemCap::for_tests());
        let t = TenantId::new();
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        for k in [a, b] {
            cache.entries.keep(cache.entries.ticket(), (t, k), None);
        }
        let (tx, rx) = mpsc::channel(1);
        tx.send(Notice::Payload(format!("{t}:{a}"))).await.unwrap();
        drop(tx);
        cache.clone().follow(rx).await;
        assert_eq!(cache.entries.keys(), [(t, b)]);
    }
}
