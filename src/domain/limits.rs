//! Rate limits on the calls anyone can make without an account: login, refresh, and the
//! visitor-facing calls. Owns the limits' settings (global defaults from the configuration,
//! per-tenant overrides stored with the tenant) and the keyed limiter that enforces them.
//!
//! Every limit is a GCRA bucket from `governor`: `per_minute` calls on average, `burst` at
//! once. A bucket is keyed by the tenant, the kind of call and what is limited (a client
//! address, an account, a widget key, a visitor), so one tenant's flood never drains another
//! tenant's buckets. The buckets live in one LRU map of at most `max_keys` entries: a flood of
//! distinct keys evicts the buckets that were quiet longest (which have most likely refilled
//! anyway) instead of growing memory. Over the limit, [`Limiter::check`] answers
//! [`AppError::RateLimited`] with the time until the call would pass.
//!
//! A tenant's overrides are read from the database once per [`SETTINGS_TTL`] per node, so a
//! change takes effect everywhere within that time.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};
use crate::ids::{ApiKeyId, TenantId, VisitorId};
use crate::storage::{Db, tenants as store};
use crate::tenancy::{SystemCap, TenantScope};

/// How long a node keeps a tenant's overrides before reading them again.
pub const SETTINGS_TTL: Duration = Duration::from_secs(10);
/// Tenants whose settings a node keeps at once.
const SETTINGS_CACHED: usize = 10_000;

/// One limit: `per_minute` calls a minute on average, at most `burst` at once (a burst of 0
/// counts as 1); a `per_minute` of 0 turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Sustained calls per minute; 0 for no limit.
    pub per_minute: u32,
    /// Calls allowed at once before the sustained rate applies.
    pub burst: u32,
}

impl Rate {
    const fn new(per_minute: u32, burst: u32) -> Self {
        Self { per_minute, burst }
    }

    fn quota(self) -> Option<Quota> {
        let per_minute = NonZeroU32::new(self.per_minute)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(60) / per_minute.get();
        Quota::with_period(period).map(|q| q.allow_burst(burst))
    }
}

/// Every limit, by name; the names are those of the configuration and of the per-tenant
/// overrides (`chat-engine tenant limit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Logins from one client address to one tenant.
    pub login_per_ip: Rate,
    /// Logins to one account (tenant and email), from anywhere.
    pub login_per_account: Rate,
    /// Refreshes from one client address for one tenant.
    pub refresh_per_ip: Rate,
    /// Visitor calls through one widget key.
    pub visitor_per_key: Rate,
    /// Visitor calls from one client address to one tenant.
    pub visitor_per_ip: Rate,
    /// Calls of one visitor.
    pub visitor_per_visitor: Rate,
    /// Buckets a node keeps at once, across tenants (global only; not overridable).
    pub max_keys: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login_per_ip: Rate::new(300, 300),
            login_per_account: Rate::new(10, 10),
            refresh_per_ip: Rate::new(600, 300),
            visitor_per_key: Rate::new(6000, 1000),
            visitor_per_ip: Rate::new(600, 120),
            visitor_per_visitor: Rate::new(120, 60),
            max_keys: 100_000,
        }
    }
}

/// The names of the limits a tenant may override.
pub const LIMIT_NAMES: [&str; 6] = [
    "login_per_ip",
    "login_per_account",
    "refresh_per_ip",
    "visitor_per_key",
    "visitor_per_ip",
    "visitor_per_visitor",
];

impl RateLimits {
    /// No limit at all (a load test's own server), with the default bucket bound.
    pub fn off() -> Self {
        let none = Rate::new(0, 0);
        Self {
            login_per_ip: none,
            login_per_account: none,
            refresh_per_ip: none,
            visitor_per_key: none,
            visitor_per_ip: none,
            visitor_per_visitor: none,
            ..Self::default()
        }
    }

    /// These limits with a tenant's `overrides` (`{"name": {"per_minute": .., "burst": ..}}`)
    /// laid over them; unknown names and malformed values are ignored.
    pub fn with_overrides(&self, overrides: &serde_json::Value) -> Self {
        let mut out = self.clone();
        let Some(map) = overrides.as_object() else {
            return out;
        };
        for (name, value) in map {
            let Ok(rate) = serde_json::from_value::<Rate>(value.clone()) else {
                continue;
            };
            if let Some(slot) = out.slot(name) {
                *slot = rate;
            }
        }
        out
    }

    fn slot(&mut self, name: &str) -> Option<&mut Rate> {
        Some(match name {
            "login_per_ip" => &mut self.login_per_ip,
            "login_per_account" => &mut self.login_per_account,
            "refresh_per_ip" => &mut self.refresh_per_ip,
            "visitor_per_key" => &mut self.visitor_per_key,
            "visitor_per_ip" => &mut self.visitor_per_ip,
            "visitor_per_visitor" => &mut self.visitor_per_visitor,
            _ => return None,
        })
    }

    fn rate(&self, kind: Kind, key: &Key) -> Rate {
        match (kind, key) {
            (Kind::Login, Key::Account(_)) => self.login_per_account,
            (Kind::Login, _) => self.login_per_ip,
            (Kind::Refresh, _) => self.refresh_per_ip,
            (Kind::Visitor, Key::WidgetKey(_)) => self.visitor_per_key,
            (Kind::Visitor, Key::Visitor(_)) => self.visitor_per_visitor,
            (Kind::Visitor, _) => self.visitor_per_ip,
        }
    }
}

/// The kind of call being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// AuthService.Login.
    Login,
    /// AuthService.Refresh.
    Refresh,
    /// Any VisitorService call.
    Visitor,
}

/// What a bucket counts the calls of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A client address (the connection's, or the trusted proxy's header).
    Ip(IpAddr),
    /// An agent account at login: the lower-cased email.
    Account(String),
    /// A widget key.
    WidgetKey(ApiKeyId),
    /// A visitor.
    Visitor(VisitorId),
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Entry<C: Clock> {
    /// The rate the bucket was made with; a changed setting starts a new bucket.
    rate: Rate,
    bucket: Bucket<C>,
}

/// The node's rate limiter.
pub struct Limiter<C: Clock = DefaultClock> {
    defaults: RateLimits,
    clock: C,
    buckets: Mutex<LruCache<(TenantId, Kind, Key), Entry<C>>>,
    settings: Mutex<LruCache<TenantId, (Arc<RateLimits>, Instant)>>,
    /// Reads tenants' overrides; None in unit tests that use the defaults only.
    source: Option<(Db, SystemCap)>,
}

impl Limiter {
    /// A limiter with `defaults`, reading each tenant's overrides from `db`.
    pub fn new(defaults: RateLimits, db: Db, sys: SystemCap) -> Self {
        Self::with_clock(defaults, DefaultClock::default(), Some((db, sys)))
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock` (tests use a fake one); without `source`, only the defaults apply.
    pub fn with_clock(defaults: RateLimits, clock: C, source: Option<(Db, SystemCap)>) -> Self {
        let cap = NonZeroUsize::new(defaults.max_keys).unwrap_or(NonZeroUsize::MIN);
        let tenants = NonZeroUsize::new(SETTINGS_CACHED).unwrap_or(NonZeroUsize::MIN);
        Self {
            defaults,
            clock,
            buckets: Mutex::new(LruCache::new(cap)),
            settings: Mutex::new(LruCache::new(tenants)),
            source,
        }
    }

    /// Counts one `kind` call of `tenant` against the bucket of every key; RATE_LIMITED with
    /// the longest wait when any of them is empty.
    pub async fn check(&self, tenant: TenantId, kind: Kind, keys: &[Key]) -> AppResult<()> {
        let limits = self.limits(tenant).await?;
        self.check_with(&limits, tenant, kind, keys)
    }

    fn check_with(
        &self,
        limits: &RateLimits,
        tenant: TenantId,
        kind: Kind,
        keys: &[Key],
    ) -> AppResult<()> {
        let mut wait = Duration::ZERO;
        let mut buckets = lock(&self.buckets);
        for key in keys {
            let rate = limits.rate(kind, key);
            let Some(quota) = rate.quota() else {
                continue;
            };
            let id = (tenant, kind, key.clone());
            let fresh = || Entry {
                rate,
                bucket: RateLimiter::direct_with_clock(quota, self.clock.clone()),
            };
            let entry = buckets.get_or_insert_mut(id, fresh);
            if entry.rate != rate {
                *entry = fresh();
            }
            if let Err(not_until) = entry.bucket.check() {
                wait = wait.max(not_until.wait_time_from(self.clock.now()));
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(AppError::RateLimited { retry_after: wait })
        }
    }

    /// The buckets held now.
    pub fn buckets_held(&self) -> usize {
        lock(&self.buckets).len()
    }

    async fn limits(&self, tenant: TenantId) -> AppResult<Arc<RateLimits>> {
        if let Some((limits, at)) = lock(&self.settings).get(&tenant)
            && at.elapsed() < SETTINGS_TTL
        {
            return Ok(limits.clone());
        }
        let Some((db, sys)) = &self.source else {
            return Ok(Arc::new(self.defaults.clone()));
        };
        let mut tx = db.tenant_tx(&TenantScope::system(sys, tenant)).await?;
        let overrides = store::rate_limits(&mut tx).await?;
        tx.commit().await?;
        let limits = Arc::new(match overrides {
            Some(o) => self.defaults.with_overrides(&o),
            None => self.defaults.clone(),
        });
        lock(&self.settings).put(tenant, (limits.clone(), Instant::now()));
        Ok(limits)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each statement leaves the maps consistent; a panic elsewhere must not stop the calls.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv4Addr;

    fn limiter(defaults: RateLimits) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limiter::with_clock(defaults, clock.clone(), None), clock)
    }

    fn account(email: &str) -> Key {
        Key::Account(email.to_owned())
    }

    #[test]
    fn a_burst_passes_then_the_next_call_waits_for_the_refill() {
        let limits = RateLimits {
            login_per_account: Rate::new(6, 3),
            ..RateLimits::default()
        };
        let (l, clock) = limiter(limits.clone());
        let t = TenantId::new();
        let keys = [account("a@x.example")];
        for _ in 0..3 {
            l.check_with(&limits, t, Kind::Login, &keys).unwrap();
        }
        let Err(AppError::RateLimited { retry_after }) =
            l.check_with(&limits, t, Kind::Login, &keys)
        else {
            panic!("the fourth call passed");
        };
        // 6 a minute: one call every 10 s.
        assert_eq!(retry_after, Duration::from_secs(10));
        clock.advance(retry_after);
        l.check_with(&limits, t, Kind::Login, &keys).unwrap();
    }

    #[test]
    fn tenants_accounts_and_kinds_have_their_own_buckets() {
        let limits = RateLimits {
            login_per_account: Rate::new(1, 1),
            login_per_ip: Rate::new(1, 1),
            refresh_per_ip: Rate::new(1, 1),
            ..RateLimits::default()
        };
        let (l, _) = limiter(limits.clone());
        let (a, b) = (TenantId::new(), TenantId::new());
        let ip = Key::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let login = [ip.clone(), account("x@a.example")];
        l.check_with(&limits, a, Kind::Login, &login).unwrap();
        assert!(l.check_with(&limits, a, Kind::Login, &login).is_err());
        // The same address and email at another tenant, and a refresh at the first one.
        l.check_with(&limits, b, Kind::Login, &login).unwrap();
        l.check_with(&limits, a, Kind::Refresh, &[ip]).unwrap();
    }

    #[test]
    fn a_limit_of_zero_is_off_and_overrides_replace_single_limits() {
        let base = RateLimits {
            login_per_account: Rate::new(0, 0),
            ..RateLimits::default()
        };
        let (l, _) = limiter(base.clone());
        let t = TenantId::new();
        for _ in 0..100 {
            l.check_with(&base, t, Kind::Login, &[account("a@x.example")])
                .unwrap();
        }
        let o = serde_json::json!({
            "login_per_account": {"per_minute": 2, "burst": 1},
            "nonsense": {"per_minute": 1, "burst": 1},
            "visitor_per_ip": "junk"
        });
        let merged = base.with_overrides(&o);
        assert_eq!(merged.login_per_account, Rate::new(2, 1));
        assert_eq!(merged.visitor_per_ip, base.visitor_per_ip);
        // A changed rate starts a new bucket under the same key.
        l.check_with(&merged, t, Kind::Login, &[account("a@x.example")])
            .unwrap();
        assert!(
            l.check_with(&merged, t, Kind::Login, &[account("a@x.example")])
                .is_err()
        );
    }

    #[test]
    fn a_million_distinct_keys_keep_at_most_max_keys_buckets() {
        let limits = RateLimits {
            max_keys: 50_000,
            ..RateLimits::default()
        };
        let (l, _) = limiter(limits.clone());
        let t = TenantId::new();
        for i in 0..1_000_000u32 {
            let ip = Key::Ip(IpAddr::V4(Ipv4Addr::from(i)));
            l.check_with(&limits, t, Kind::Visitor, &[ip]).unwrap();
        }
        assert_eq!(l.buckets_held(), 50_000);
        // What one bucket costs, map overhead aside: the stated bound is max_keys of these.
        let per_entry = std::mem::size_of::<((TenantId, Kind, Key), Entry<FakeRelativeClock>)>();
        assert!(per_entry <= 160, "{per_entry} bytes per bucket");
        // The most recent key is still limited: eviction took the quietest buckets.
        let last = [Key::Ip(IpAddr::V4(Ipv4Addr::from(999_999u32)))];
        for _ in 0..limits.visitor_per_ip.burst {
            let _ = l.check_with(&limits, t, Kind::Visitor, &last);
        }
        assert!(l.check_with(&limits, t, Kind::Visitor, &last).is_err());
    }
}
