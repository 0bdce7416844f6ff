//! The machinery every per-node cache of the auth layer shares: entries that PostgreSQL
//! `NOTIFY` invalidates, so a node can answer from memory and still see a change made through
//! any node within a notice's delay.
//!
//! The rules, the same for every such cache:
//!
//! - A notice names one entry as `<tenant>:<id>` and drops it. After the listening connection
//!   was lost ([`Notice::Reconnected`]) notices may have been missed, so everything is dropped.
//! - Every drop bumps an epoch. A read from the database that started under another epoch may
//!   have seen the data before the change just announced, so its result is not kept: the
//!   caller gets a [`Ticket`] before reading and [`NotifiedCache::keep`] refuses stale ones.
//! - Entries expire [`ENTRY_TTL`] after they were read (a safety net; notices are the
//!   mechanism), and at most [`MAX_ENTRIES`] are kept. When full, expired entries are swept
//!   and, if that is not enough, an arbitrary tenth is dropped (hash order, so effectively
//!   random eviction); a dropped entry only costs one read when it is asked for again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::ids::TenantId;
use crate::storage::listen::Notice;

/// How long an entry is trusted without a notice.
pub const ENTRY_TTL: Duration = Duration::from_secs(300);
/// Most entries kept per node and cache.
pub const MAX_ENTRIES: usize = 100_000;
/// Most notices applied before the caller of [`NotifiedCache::apply_next`] hears of them.
const NOTICE_BATCH: usize = 1024;

/// The epoch a read started under; see [`NotifiedCache::keep`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// What a batch of notices dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped<K> {
    /// Keys the notices named, each once, whether or not they had an entry.
    pub named: Vec<K>,
    /// Keys whose entries a reconnect dropped.
    pub cleared: Vec<K>,
}

struct State<K, V> {
    entries: HashMap<K, (V, Instant)>,
    epoch: u64,
}

/// A bounded map from `K` to `V` whose entries notices drop.
pub struct NotifiedCache<K, V> {
    /// Names the cache in logs.
    name: &'static str,
    /// Reads a notice's payload.
    parse: fn(&str) -> Option<K>,
    ttl: Duration,
    max: usize,
    state: Mutex<State<K, V>>,
}

impl<K, V> NotifiedCache<K, V>
where
    K: Copy + Eq + Hash + Ord,
    V: Clone,
{
    /// An empty cache, named `name` in logs, whose notices `parse` reads.
    pub fn new(name: &'static str, parse: fn(&str) -> Option<K>) -> Self {
        Self::with_limits(name, parse, ENTRY_TTL, MAX_ENTRIES)
    }

    fn with_limits(
        name: &'static str,
        parse: fn(&str) -> Option<K>,
        ttl: Duration,
        max: usize,
    ) -> Self {
        Self {
            name,
            parse,
            ttl,
            max: max.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V>> {
        // The map is consistent after every statement; a panic elsewhere must not stop
        // authentication.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `key` if it is fresh; otherwise the ticket to read it under.
    pub fn get(&self, key: &K) -> Result<V, Ticket> {
        let s = self.lock();
        match s.entries.get(key) {
            Some((v, loaded)) if loaded.elapsed() < self.ttl => Ok(v.clone()),
            _ => Err(Ticket(s.epoch)),
        }
    }

    /// The ticket for a read that does not look at the cache first.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Keeps what a read under `ticket` found, unless something was dropped since the ticket
    /// was taken; returns whether it was kept.
    pub fn keep(&self, ticket: Ticket, key: K, value: V) -> bool {
        let mut s = self.lock();
        if s.epoch != ticket.0 {
            return false;
        }
        if s.entries.len() >= self.max && !s.entries.contains_key(&key) {
            let ttl = self.ttl;
            s.entries.retain(|_, (_, loaded)| loaded.elapsed() < ttl);
            if s.entries.len() >= self.max {
                // Room for a tenth more, so the next inserts do not sweep again.
                let evict: Vec<K> = s
                    .entries
                    .keys()
                    .take(self.max.div_ceil(10))
                    .copied()
                    .collect();
                for k in evict {
                    s.entries.remove(&k);
                }
            }
        }
        s.entries.insert(key, (value, Instant::now()));
        true
    }

    /// Drops the entry of `key`, e.g. on the node that made the change, which must not wait
    /// for its own notice.
    pub fn forget(&self, key: &K) {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.remove(key);
    }

    /// Drops every entry; returns whose they were.
    fn clear(&self) -> Vec<K> {
        let mut s = self.lock();
        s.epoch += 1;
        s.entries.drain().map(|(k, _)| k).collect()
    }

    /// Waits for the next notice and applies it with every other one waiting (up to a
    /// batch), so a caller that is slow with what they dropped does not hold back the next
    /// invalidation for long; None once the channel closed.
    pub async fn apply_next(&self, notices: &mut mpsc::Receiver<Notice>) -> Option<Dropped<K>> {
        let mut dropped = Dropped {
            named: Vec::new(),
            cleared: Vec::new(),
        };
        let mut next = Some(notices.recv().await?);
        while let Some(n) = next.take() {
            match n {
                Notice::Payload(p) => match (self.parse)(&p) {
                    Some(key) => {
                        self.forget(&key);
                        dropped.named.push(key);
                    }
                    None => tracing::warn!(cache = self.name, payload = %p, "malformed notice"),
                },
                Notice::Reconnected => {
                    let keys = self.clear();
                    tracing::info!(
                        cache = self.name,
                        entries = keys.len(),
                        "notices may have been missed; cache dropped"
                    );
                    dropped.cleared.extend(keys);
                }
            }
            if dropped.named.len() + dropped.cleared.len() < NOTICE_BATCH {
                next = notices.try_recv().ok();
            }
        }
        dropped.named.sort_unstable();
        dropped.named.dedup();
        Some(dropped)
    }

    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<K> {
        let mut keys: Vec<K> = self.lock().entries.keys().copied().collect();
        keys.sort_unstable();
        keys
    }
}

/// A notice payload `<tenant>:<id>` with the id read by `id`.
pub fn tenant_key<I>(p: &str, id: fn(&str) -> Option<I>) -> Option<(TenantId, I)> {
    let (t, i) = p.split_once(':')?;
    Some((TenantId::parse(t)?, id(i)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    type Key = (TenantId, UserId);

    fn cache(ttl: Duration, max: usize) -> NotifiedCache<Key, u32> {
        NotifiedCache::with_limits("test", |p| tenant_key(p, UserId::parse), ttl, max)
    }

    fn key() -> Key {
        (TenantId::new(), UserId::new())
    }

    #[test]
    fn a_read_started_before_a_drop_is_not_kept() {
        let c = cache(ENTRY_TTL, 10);
        let (a, b) = (key(), key());
        let Err(before) = c.get(&a) else {
            panic!("an empty cache had an entry");
        };
        // Another entry changes while `a` is read: the read may predate that change too.
        c.forget(&b);
        assert!(!c.keep(before, a, 1));
        assert_eq!(c.get(&a), Err(c.ticket()));
        let t = c.ticket();
        assert!(c.keep(t, a, 2));
        assert_eq!(c.get(&a), Ok(2));
    }

    #[test]
    fn an_entry_expires() {
        let c = cache(Duration::from_millis(30), 10);
        let a = key();
        assert!(c.keep(c.ticket(), a, 1));
        assert_eq!(c.get(&a), Ok(1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(&a).is_err());
    }

    #[test]
    fn the_cache_stays_bounded_and_sweeps_expired_entries_first() {
        let c = cache(ENTRY_TTL, 1000);
        for _ in 0..1005 {
            assert!(c.keep(c.ticket(), key(), 0));
        }
        let n = c.keys().len();
        assert!(n <= 1000 && n > 500, "{n} entries");

        let c = cache(Duration::from_millis(30), 10);
        for _ in 0..9 {
            c.keep(c.ticket(), key(), 0);
        }
        std::thread::sleep(Duration::from_millis(40));
        let fresh = key();
        c.keep(c.ticket(), fresh, 0);
        c.keep(c.ticket(), key(), 0);
        // The nine expired ones made room; the fresh one was not evicted for them.
        assert_eq!(c.keys().len(), 2);
        assert_eq!(c.get(&fresh), Ok(0));
    }

    /// Applies `notices` until they are all applied; returns what each batch dropped.
    async fn apply(c: &NotifiedCache<Key, u32>, notices: Vec<Notice>) -> Vec<Dropped<Key>> {
        let (tx, mut rx) = mpsc::channel(notices.len().max(1));
        for n in notices {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(d) = c.apply_next(&mut rx).await {
            seen.push(d);
        }
        seen
    }

    #[tokio::test]
    async fn a_notice_drops_its_key_and_a_reconnect_drops_everything() {
        let c = cache(ENTRY_TTL, 10);
        let (a, b, gone) = (key(), key(), key());
        for k in [a, b] {
            c.keep(c.ticket(), k, 0);
        }
        let named = |k: Key| Notice::Payload(format!("{}:{}", k.0, k.1));
        let seen = apply(
            &c,
            vec![
                named(a),
                Notice::Payload("junk".into()),
                named(gone),
                named(a),
            ],
        )
        .await;
        let mut expect = vec![a, gone];
        expect.sort_unstable();
        assert_eq!(
            seen,
            [Dropped {
                named: expect,
                cleared: vec![]
            }]
        );
        assert_eq!(c.keys(), [b]);

        let seen = apply(&c, vec![Notice::Reconnected]).await;
        assert_eq!(
            seen,
            [Dropped {
                named: vec![],
                cleared: vec![b]
            }]
        );
        assert!(c.keys().is_empty());
    }

    #[test]
    fn payloads_name_a_tenant_and_an_id() {
        let (t, u) = key();
        assert_eq!(tenant_key(&format!("{t}:{u}"), UserId::parse), Some((t, u)));
        for bad in ["", ":", "x:y", &t.to_string(), &format!("{t}:{u}:x")] {
            assert_eq!(tenant_key(bad, UserId::parse), None, "{bad}");
        }
    }
}
