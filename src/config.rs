//! Configuration: defaults, then an optional TOML file, then `CHAT_ENGINE_*` environment
//! variables (and the conventional `DATABASE_URL`). Every option is documented once, here.
//!
//! | option | env | default |
//! |---|---|---|
//! | `listen` | `CHAT_ENGINE_LISTEN` | `127.0.0.1:50051` (gRPC, gRPC-web on one port) |
//! | `database_url` | `CHAT_ENGINE_DATABASE_URL` or `DATABASE_URL` | none: a private cluster under `data_dir` |
//! | `migration_database_url` | `CHAT_ENGINE_MIGRATION_DATABASE_URL` | `database_url` |
//! | `data_dir` | `CHAT_ENGINE_DATA_DIR` | `./.chat-engine` |
//! | `db_pool_size` | `CHAT_ENGINE_DB_POOL_SIZE` | 16 |
//! | `jwt_secret` | `CHAT_ENGINE_JWT_SECRET` | random per process (set it when running several nodes) |
//! | `jwt_key_id` | `CHAT_ENGINE_JWT_KEY_ID` | `k1` |
//! | `jwt_issuer` | `CHAT_ENGINE_JWT_ISSUER` | `chat-engine` |
//! | `access_token_ttl_secs` | `CHAT_ENGINE_ACCESS_TOKEN_TTL_SECS` | 900 |
//! | `refresh_token_ttl_secs` | `CHAT_ENGINE_REFRESH_TOKEN_TTL_SECS` | 2592000 (30 days) |
//! | `operator_token` | `CHAT_ENGINE_OPERATOR_TOKEN` | none: TenantService refuses every call |
//! | `shutdown_grace_secs` | `CHAT_ENGINE_SHUTDOWN_GRACE_SECS` | 10 |
//! | `max_message_bytes` | `CHAT_ENGINE_MAX_MESSAGE_BYTES` | 65536 (decoding limit per gRPC message) |
//! | `max_concurrent_streams` | `CHAT_ENGINE_MAX_CONCURRENT_STREAMS` | 256 per HTTP/2 connection |
//! | `keepalive_interval_secs` | `CHAT_ENGINE_KEEPALIVE_INTERVAL_SECS` | 30 |
//! | `keepalive_timeout_secs` | `CHAT_ENGINE_KEEPALIVE_TIMEOUT_SECS` | 10 |
//! | `cors_allowed_origins` | `CHAT_ENGINE_CORS_ALLOWED_ORIGINS` | empty: any origin may preflight; each widget call is then checked against its key's allowed domains |
//! | `nats_url` | `CHAT_ENGINE_NATS_URL` | none: events stay in this process (single node) |
//! | `subscriber_buffer` | `CHAT_ENGINE_SUBSCRIBER_BUFFER` | 1024 events queued per stream before it must resync |
//! | `log_format` | `CHAT_ENGINE_LOG_FORMAT` | `json` (`pretty` for humans) |
//! | `rate_limits.<name>.per_minute`, `.burst` | `CHAT_ENGINE_RATE_LIMITS__<NAME>__PER_MINUTE`, `__BURST` | see [`RateLimits`]; 0 per minute turns a limit off |
//! | `rate_limits.max_keys` | `CHAT_ENGINE_RATE_LIMITS__MAX_KEYS` | 100000 buckets per node |
//! | `trusted_proxies` | `CHAT_ENGINE_TRUSTED_PROXIES` | empty: the client address is the connection's |
//! | `client_ip_header` | `CHAT_ENGINE_CLIENT_IP_HEADER` | `x-forwarded-for` (read only from a trusted proxy) |

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::domain::limits::RateLimits;

/// A value that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The engine's configuration; see the module docs for each option.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address for gRPC and gRPC-web.
    pub listen: SocketAddr,
    /// Application database URL.
    pub database_url: Option<Secret>,
    /// URL used to run migrations (schema owner).
    pub migration_database_url: Option<Secret>,
    /// Folder for the private PostgreSQL cluster.
    pub data_dir: PathBuf,
    /// Maximum pooled database connections.
    pub db_pool_size: usize,
    /// HMAC key for access tokens and page tokens.
    pub jwt_secret: Option<Secret>,
    /// Key id (`kid`) stamped on issued tokens.
    pub jwt_key_id: String,
    /// Issuer (`iss`) of issued tokens.
    pub jwt_issuer: String,
    /// Lifetime of access tokens.
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl_secs: u64,
    /// Bearer token of the platform operator.
    pub operator_token: Option<Secret>,
    /// How long shutdown waits for open calls before it cuts them.
    pub shutdown_grace_secs: u64,
    /// Largest accepted gRPC message.
    pub max_message_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval_secs: u64,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout_secs: u64,
    /// Origins allowed to preflight; empty allows any.
    pub cors_allowed_origins: Vec<String>,
    /// NATS server for fan-out between nodes.
    pub nats_url: Option<String>,
    /// Events queued per stream before it is cut off.
    pub subscriber_buffer: usize,
    /// `json` or `pretty`.
    pub log_format: String,
    /// Global rate limits; tenants may override them.
    pub rate_limits: RateLimits,
    /// Peers whose `client_ip_header` names the client (a load balancer in front).
    pub trusted_proxies: Vec<IpAddr>,
    /// Header a trusted proxy puts the client's address in (its last entry counts).
    pub client_ip_header: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: None,
            migration_database_url: None,
            data_dir: PathBuf::from(".chat-engine"),
            db_pool_size: 16,
            jwt_secret: None,
            jwt_key_id: "k1".into(),
            jwt_issuer: "chat-engine".into(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            operator_token: None,
            shutdown_grace_secs: 10,
            max_message_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            cors_allowed_origins: Vec::new(),
            nats_url: None,
            subscriber_buffer: 1024,
            log_format: "json".into(),
            rate_limits: RateLimits::default(),
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Env::prefixed("CHAT_ENGINE_").split("__"));
        fig.extract().map_err(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn environment_overrides_file_and_secrets_stay_hidden() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen = \"127.0.0.1:6000\"\ndb_pool_size = 3")?;
            jail.set_env("CHAT_ENGINE_DB_POOL_SIZE", "7");
            jail.set_env("DATABASE_URL", "postgres://u:pw@h/db");
            let c = Config::load(Some(Path::new("c.toml"))).expect("config");
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.db_pool_size, 7);
            let shown = format!("{c:?}");
            assert!(!shown.contains("pw"), "secret printed: {shown}");
            assert_eq!(c.database_url.unwrap().expose(), "postgres://u:pw@h/db");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn rate_limits_and_proxies_come_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "trusted_proxies = [\"10.0.0.1\"]\n\
                 [rate_limits]\nlogin_per_ip = { per_minute = 5, burst = 2 }",
            )?;
            jail.set_env(
                "CHAT_ENGINE_RATE_LIMITS__LOGIN_PER_ACCOUNT__PER_MINUTE",
                "3",
            );
            let c = Config::load(Some(Path::new("c.toml"))).expect("config");
            let r = &c.rate_limits;
            assert_eq!((r.login_per_ip.per_minute, r.login_per_ip.burst), (5, 2));
            // Only the rate was set; the burst keeps its default.
            let default = RateLimits::default().login_per_account;
            assert_eq!(r.login_per_account.per_minute, 3);
            assert_eq!(r.login_per_account.burst, default.burst);
            assert_eq!(c.trusted_proxies, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
            jail.create_file(
                "bad.toml",
                "[rate_limits]\nlogin_per_ipp = { per_minute = 1, burst = 1 }",
            )?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }
}
