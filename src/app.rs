//! Wiring: from a [`Config`] to a database (given, or a private cluster), migrations, the
//! [`Engine`] and a running server, with the watcher that tells health whether the database
//! answers. The composition root: used by the CLI and by the integration tests, imported by
//! nothing below it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::auth::directory::{Directory, Ended};
use crate::auth::jwt::JwtKeys;
use crate::auth::key_cache::KeyCache;
use crate::config::{Config, Secret};
use crate::domain::analytics::Analytics;
use crate::domain::arrivals::Arrivals;
use crate::domain::closer::Closer;
use crate::domain::dispatcher::{Dispatcher, MaxWait, Relax, TakeBackTimer};
use crate::domain::events::Publisher;
use crate::domain::limits::Limiter;
use crate::domain::openings::Openings;
use crate::domain::paging::PageTokens;
use crate::domain::participants::Participant;
use crate::domain::reactors::{self, Reactor};
use crate::domain::starter::Starter;
use crate::domain::timers::{self, TimerHandler};
use crate::domain::writer::Writer;
use crate::domain::{Engine, SystemClock, TokenPolicy};
use crate::domain::{follower, spine};
use crate::grpc::{self, Dependencies, TransportSettings};
use crate::pgcluster::PrivateCluster;
use crate::realtime::bus::{LocalBus, NatsBus};
use crate::realtime::hints;
use crate::realtime::hub::{DEACTIVATED, Hub};
use crate::realtime::presence::{HEARTBEAT, PresenceLapse, PresenceTracker};
use crate::realtime::queue::QueueWatch;
use crate::realtime::{BusHealth, StreamContext};
use crate::storage::listen::Listener;
use crate::storage::{self, Db, api_keys, users};
use tokio_util::sync::CancellationToken;

/// Name of the database inside a private cluster.
pub const PRIVATE_DB_NAME: &str = "chat_engine";
/// How often the database is asked whether it answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe slower than this counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The database the engine uses, and the private cluster behind it if there is one.
pub struct Database {
    /// URL for the application role.
    pub app_url: Secret,
    /// URL for migrations (schema owner).
    pub migration_url: Secret,
    /// The private cluster, stopped when this is dropped; it is restarted whenever its
    /// postmaster dies, and its postmaster dies with this process.
    pub cluster: Option<PrivateCluster>,
}

/// Uses the configured database, or starts a private cluster under `data_dir/pg` (stopping
/// one that an earlier, killed run left behind).
pub async fn open_database(cfg: &Config) -> anyhow::Result<Database> {
    if let Some(url) = &cfg.database_url {
        return Ok(Database {
            app_url: url.clone(),
            migration_url: cfg
                .migration_database_url
                .clone()
                .unwrap_or_else(|| url.clone()),
            cluster: None,
        });
    }
    // A server killed with SIGKILL runs no shutdown code: the parent-death signal is what
    // stops its postmaster then.
    let mut cluster =
        PrivateCluster::start_with_parent_death_signal(&cfg.data_dir.join("pg")).await?;
    cluster.ensure_app_role().await?;
    cluster.create_database(PRIVATE_DB_NAME).await?;
    cluster.restart_when_it_exits()?;
    tracing::info!(port = cluster.port(), "private PostgreSQL cluster running");
    Ok(Database {
        app_url: Secret::new(cluster.app_url(PRIVATE_DB_NAME)),
        migration_url: Secret::new(cluster.admin_url(PRIVATE_DB_NAME)),
        cluster: Some(cluster),
    })
}

/// The JWT secret: configured, or kept in `data_dir/jwt-secret` so sessions survive restarts
/// of a single node, or (without a writable data dir) random for this process.
fn jwt_secret(cfg: &Config) -> Vec<u8> {
    if let Some(s) = &cfg.jwt_secret {
        return s.expose().as_bytes().to_vec();
    }
    let path = cfg.data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read(&path)
        && existing.len() >= 32
    {
        return existing;
    }
    let mut fresh = vec![0u8; 32];
    rand::rng().fill(&mut fresh[..]);
    if write_private(&path, &fresh).is_err() {
        tracing::warn!(
            "no jwt_secret configured and none could be stored; tokens end with this process"
        );
    }
    fresh
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// The engine's authority to act for a tenant, or across tenants, without a caller's
/// principal. Its field is private to this module, so only the composition root can make one:
/// [`build_with`] mints it and hands it to the background workers and the pre-authentication
/// flows it builds, and [`Node`] carries it to the CLI. `tenancy`'s module doc explains why.
#[derive(Clone, Copy, Debug)]
pub struct SystemCap(());

impl SystemCap {
    /// For unit tests of the workers that hold one.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        SystemCap(())
    }
}

/// Everything one node runs.
pub struct Node {
    /// Domain access.
    pub engine: Arc<Engine>,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Open streams' shared parts.
    pub streams: Arc<StreamContext>,
    /// Whether events from other nodes arrive.
    pub bus: BusHealth,
    /// The engine's own authority, for the flows and CLI commands that act without a caller.
    pub(crate) system: SystemCap,
    /// Rate limits of the calls made without an account.
    pub limits: Arc<Limiter>,
    /// What the browser pages it serves need (the demo sets its widget key here).
    pub web: grpc::web_assets::WebPages,
}

/// The in-process consumers of committed events and timers a node runs besides the API.
#[derive(Clone, Default)]
pub struct Consumers {
    /// Reactors fed by the event spine.
    pub reactors: Vec<Arc<dyn Reactor>>,
    /// Handlers of durable timers, by kind.
    pub timers: Vec<Arc<dyn TimerHandler>>,
    /// The clock the node runs on; the wall clock when None (tests set their own to script
    /// time).
    pub clock: Option<Arc<dyn crate::domain::Clock>>,
}

/// Runs migrations and builds a node over `db`.
pub async fn build(cfg: &Config, db: &Database) -> anyhow::Result<Node> {
    build_with(cfg, db, Consumers::default()).await
}

/// [`build`], with the given reactors and timer handlers running on this node.
pub async fn build_with(cfg: &Config, db: &Database, consumers: Consumers) -> anyhow::Result<Node> {
    storage::migrate(db.migration_url.expose())
        .await
        .context("running migrations")?;
    let pool = Db::connect(db.app_url.expose(), cfg.db_pool_size)?;
    // One LISTEN connection per node; each consumer takes its channel before it starts.
    let mut listener = Listener::new(db.app_url.expose());
    let directory_notices = listener.channel(users::DIRECTORY_CHANNEL);
    let key_notices = listener.channel(api_keys::KEYS_CHANNEL);
    let secret = jwt_secret(cfg);
    let jwt = Arc::new(JwtKeys::hmac(&cfg.jwt_key_id, &secret, &cfg.jwt_issuer)?);
    let mut page_key = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key size");
    page_key.update(b"chat-engine page tokens");
    let hub = Hub::new(cfg.subscriber_buffer);
    let (publisher, bus): (Arc<dyn Publisher>, BusHealth) = match &cfg.nats_url {
        Some(url) => {
            let nats = NatsBus::connect(url, hub.clone())
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
            let flag = nats.health_flag();
            (nats, BusHealth::nats(flag))
        }
        None => (LocalBus::new(hub.clone()), BusHealth::local()),
    };
    let system = SystemCap(());
    let clock: Arc<dyn crate::domain::Clock> = consumers
        .clock
        .clone()
        .unwrap_or_else(|| Arc::new(SystemClock));
    let writer = Writer::start(pool.clone(), publisher.clone(), clock.clone());
    let closer = Closer::start(pool.clone(), publisher.clone(), clock.clone());
    let starter = Starter::start(pool.clone(), publisher.clone(), clock.clone());
    let arrivals = Arrivals::start(pool.clone(), publisher.clone(), clock.clone());
    let openings = Openings::start(pool.clone(), publisher.clone());
    let engine = Arc::new(Engine {
        db: pool.clone(),
        jwt: jwt.clone(),
        pages: PageTokens::new(&page_key.finalize().into_bytes()),
        clock,
        tokens: TokenPolicy {
            access_ttl: chrono::Duration::seconds(cfg.access_token_ttl_secs as i64),
            refresh_ttl: chrono::Duration::seconds(cfg.refresh_token_ttl_secs as i64),
        },
        publisher,
        writer,
        closer,
        starter,
        arrivals,
        openings,
    });
    let directory = Directory::new(pool.clone(), engine.tokens.access_ttl, system);
    let keys = KeyCache::new(pool.clone(), system);
    let auth = Arc::new(Authenticator::new(
        jwt,
        cfg.operator_token.as_ref().map(Secret::expose),
        keys.clone(),
        directory.clone(),
    ));
    let limits = Arc::new(Limiter::new(cfg.rate_limits.clone(), pool.clone(), system));
    let presence = PresenceTracker::new(system);
    let shutdown = CancellationToken::new();
    let queue = QueueWatch::start(engine.clone(), system, shutdown.clone());
    hub.observe_queue(queue.clone());
    let streams = Arc::new(StreamContext {
        engine: engine.clone(),
        hub,
        presence: presence.clone(),
        queue,
        shutdown,
    });
    // Every commit's spine notice reaches this node's streams, its reactors and its timers
    // from PostgreSQL itself, whichever node committed; the follower adds the entries of a
    // node that died before announcing them.
    let spine_notices = listener.channel(spine::CHANNEL);
    let timer_notices = listener.channel(timers::CHANNEL);
    let stop = streams.shutdown.clone();
    let (spine_for_streams, spine_for_reactors) =
        follower::start(pool.clone(), system, spine_notices, stop.clone());
    hints::start(streams.hub.clone(), spine_for_streams, stop.clone());
    // The engine's own consumers run on every node, beside any given.
    let mut reactors = consumers.reactors;
    reactors.push(Dispatcher::new(engine.clone(), system));
    reactors.push(Analytics::new(engine.clone(), system));
    let mut timer_handlers = consumers.timers;
    timer_handlers.push(MaxWait::new(engine.clone(), system));
    timer_handlers.push(Arc::new(Relax));
    timer_handlers.extend(TakeBackTimer::all(engine.clone()));
    timer_handlers.push(PresenceLapse::new(engine.clock.clone()));
    reactors::start(
        pool.clone(),
        engine.clock.clone(),
        reactors,
        spine_for_reactors,
        system,
        stop.clone(),
    );
    timers::start(
        pool.clone(),
        engine.clock.clone(),
        timer_handlers,
        timer_notices,
        system,
        stop.clone(),
    );
    let (e, stop) = (engine.clone(), streams.shutdown.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => presence.heartbeat(&e).await,
                _ = stop.cancelled() => break,
            }
        }
    });
    tokio::spawn(crate::memory::trim_periodically(streams.shutdown.clone()));
    tokio::spawn(keys.follow(key_notices));
    let hub = streams.hub.clone();
    tokio::spawn(directory.follow(
        directory_notices,
        Arc::new(move |tenant, user, ended| {
            let (streams, what) = match ended {
                Ended::Agent => (
                    hub.end_participant(tenant, Participant::Agent(user), DEACTIVATED),
                    "agent deactivated: streams ended",
                ),
                Ended::Sessions(sessions) => (
                    hub.end_sessions(tenant, user, sessions),
                    "session ended: streams ended",
                ),
            };
            if streams > 0 {
                tracing::info!(tenant.id = %tenant, user.id = %user, streams, "{what}");
            }
        }),
    ));
    listener
        .start(streams.shutdown.clone())
        .await
        .context("listening for PostgreSQL notices")?;
    Ok(Node {
        engine,
        auth,
        streams,
        bus,
        system,
        limits,
        web: Default::default(),
    })
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: &Config,
    node: Node,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if cfg.operator_token.is_none() {
        tracing::info!("no operator_token configured: TenantService refuses every call");
    }
    let watcher = CancellationToken::new();
    // Ends the watcher however serving ends, including by this future being dropped.
    let _watcher_guard = watcher.clone().drop_guard();
    let deps = Dependencies {
        database_up: watch_database(node.engine.db.clone(), watcher),
        engine: node.engine,
        auth: node.auth,
        streams: node.streams,
        bus: node.bus,
        system: node.system,
        limits: node.limits,
        web: node.web,
    };
    grpc::serve(deps, TransportSettings::from(cfg), listener, shutdown).await
}

/// Asks the database every [`PROBE_EVERY`] whether it answers, until `stop`; the receiver
/// holds the last answer and changes only when the answer does.
fn watch_database(db: Db, stop: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A pooled connection can be dead after a database restart while the database
            // answers again; the second try then gets a fresh one.
            let answer = match probe(&db).await {
                Ok(()) => Ok(()),
                Err(_) => probe(&db).await,
            };
            let up = answer.is_ok();
            if *tx.borrow() == up {
                continue;
            }
            match answer {
                Ok(()) => tracing::info!("the database answers again; health reports SERVING"),
                Err(error) => tracing::error!(
                    %error,
                    "the database does not answer; health reports NOT_SERVING until it does"
                ),
            }
            tx.send_replace(up);
        }
    });
    rx
}

async fn probe(db: &Db) -> anyhow::Result<()> {
    tokio::time::timeout(PROBE_TIMEOUT, db.ping())
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"))?
        .map_err(Into::into)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
