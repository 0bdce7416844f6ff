//! Servers of the test's own: a node on port 0 over a fresh (or shared) database, its clients,
//! and the tenant and agent fixtures most tests start from.

use std::net::SocketAddr;
use std::time::Duration;

use chat_engine::app::{self, Database};
use chat_engine::config::{Config, Secret};
use chat_engine_client::pb;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

use super::cluster::fresh_database;
use super::requests::bearer;

/// A running server over its own database.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// The operator token it accepts.
    pub operator_token: String,
    /// Superuser URL of its database.
    pub admin_url: String,
    /// App-role URL of its database.
    pub app_url: String,
    /// The HMAC secret its tokens are signed with.
    pub jwt_secret: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`TestApp::spawn_with`].
#[derive(Default, Clone)]
pub struct Options {
    /// Shutdown grace period.
    pub shutdown_grace_secs: Option<u64>,
    /// NATS server for fan-out between nodes.
    pub nats_url: Option<String>,
    /// Events queued per stream before it must resync.
    pub subscriber_buffer: Option<usize>,
    /// Reuse this database (admin URL, app URL) instead of a fresh one.
    pub database: Option<(String, String)>,
    /// Reuse these secrets (operator token, JWT secret) so tokens stay valid across nodes.
    pub secrets: Option<(String, String)>,
    /// Database pool size.
    pub pool_size: Option<usize>,
    /// Reactors and timer handlers the node runs.
    pub consumers: Option<app::Consumers>,
}

/// The configuration and database of a node started with `opts`, and its secrets (operator
/// token, JWT secret).
async fn node_config(opts: &Options) -> (Config, Database, (String, String)) {
    let (admin_url, app_url) = match opts.database.clone() {
        Some(db) => db,
        None => fresh_database().await,
    };
    let (operator_token, jwt_secret) = opts.secrets.clone().unwrap_or_else(|| {
        (
            format!("op-{}", uuid::Uuid::new_v4()),
            format!("secret-{}", uuid::Uuid::new_v4()),
        )
    });
    let cfg = Config {
        database_url: Some(Secret::new(app_url.clone())),
        migration_database_url: Some(Secret::new(admin_url.clone())),
        operator_token: Some(Secret::new(operator_token.clone())),
        jwt_secret: Some(Secret::new(jwt_secret.clone())),
        db_pool_size: opts.pool_size.unwrap_or(8),
        shutdown_grace_secs: opts.shutdown_grace_secs.unwrap_or(2),
        nats_url: opts.nats_url.clone(),
        subscriber_buffer: opts.subscriber_buffer.unwrap_or(1024),
        data_dir: std::env::temp_dir().join("chat-engine-unused"),
        ..Config::default()
    };
    let db = Database {
        app_url: Secret::new(app_url),
        migration_url: Secret::new(admin_url),
        cluster: None,
    };
    (cfg, db, (operator_token, jwt_secret))
}

/// A node (no API, just its background work: reactors, timers) on a runtime of its own, so
/// the test can kill it: [`KillableNode::kill`] drops every task of the node at once, its
/// connections close and PostgreSQL rolls back whatever it had not committed, as when the
/// process dies.
pub struct KillableNode {
    rt: Option<tokio::runtime::Runtime>,
    /// The node's domain access (for setting things up through it).
    pub engine: std::sync::Arc<chat_engine::domain::Engine>,
    /// The node's credential checks.
    pub auth: std::sync::Arc<chat_engine::auth::Authenticator>,
    /// The node's stream context (its hub, fed by its spine notices).
    pub streams: std::sync::Arc<chat_engine::realtime::StreamContext>,
}

impl KillableNode {
    /// Starts a node with `opts` (give it `same_db()` options to share a database).
    pub async fn start(opts: Options) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the node");
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let (cfg, db, _) = node_config(&opts).await;
            let consumers = opts.consumers.unwrap_or_default();
            let node = app::build_with(&cfg, &db, consumers)
                .await
                .expect("building the node");
            let _ = tx.send((node.engine.clone(), node.auth.clone(), node.streams.clone()));
            // The node lives until its runtime goes.
            let _node = node;
            std::future::pending::<()>().await;
        });
        let (engine, auth, streams) = rx.await.expect("the node started");
        Self {
            rt: Some(rt),
            engine,
            auth,
            streams,
        }
    }

    /// Kills the node: no shutdown code runs.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for KillableNode {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl TestApp {
    /// A server with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// A server with `opts`.
    pub async fn spawn_with(opts: Options) -> Self {
        let (cfg, db, (operator_token, jwt_secret)) = node_config(&opts).await;
        let (admin_url, app_url) = (
            db.migration_url.expose().to_owned(),
            db.app_url.expose().to_owned(),
        );
        let consumers = opts.consumers.unwrap_or_default();
        let node = app::build_with(&cfg, &db, consumers)
            .await
            .expect("building the node");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app::serve(&cfg, node, listener, async {
                let _ = stop_rx.await;
            })
            .await
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connecting to the test server");
        Self {
            addr,
            channel,
            operator_token,
            admin_url,
            app_url,
            jwt_secret,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A new connection of its own (HTTP/2 flow control is per connection), with HTTP/2's
    /// default 64 KiB receive windows, as a plain client that reads slowly would have.
    pub async fn new_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .expect("connecting")
    }

    /// Options that start another node over the same database with the same secrets.
    pub fn same_db(&self) -> Options {
        Options {
            database: Some((self.admin_url.clone(), self.app_url.clone())),
            secrets: Some((self.operator_token.clone(), self.jwt_secret.clone())),
            ..Options::default()
        }
    }

    /// A client of ConversationService.
    pub fn conversations(
        &self,
    ) -> pb::conversation_service_client::ConversationServiceClient<Channel> {
        pb::conversation_service_client::ConversationServiceClient::new(self.channel.clone())
    }

    /// Asks the server to shut down and waits for it; returns how it ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("server task panicked"),
            None => Ok(()),
        }
    }

    /// A client of TenantService authenticated as the operator.
    pub fn tenants(&self) -> pb::admin::tenant_service_client::TenantServiceClient<Channel> {
        pb::admin::tenant_service_client::TenantServiceClient::new(self.channel.clone())
    }

    /// A client of AuthService.
    pub fn auth(&self) -> pb::auth_service_client::AuthServiceClient<Channel> {
        pb::auth_service_client::AuthServiceClient::new(self.channel.clone())
    }

    /// A client of AgentService.
    pub fn agents(&self) -> pb::agent_service_client::AgentServiceClient<Channel> {
        pb::agent_service_client::AgentServiceClient::new(self.channel.clone())
    }

    /// A client of VisitorService.
    pub fn visitors(&self) -> pb::visitor_service_client::VisitorServiceClient<Channel> {
        pb::visitor_service_client::VisitorServiceClient::new(self.channel.clone())
    }

    /// Creates a tenant with an admin and logs the admin in.
    pub async fn tenant(&self, slug: &str) -> TenantFixture {
        let password = "admin-password-123".to_owned();
        let email = format!("admin@{slug}.example");
        let created = self
            .tenants()
            .create_tenant(bearer(
                pb::admin::CreateTenantRequest {
                    time_zone: Default::default(),
                    name: format!("Tenant {slug}"),
                    slug: slug.to_owned(),
                    widget: None,
                    initial_admin: Some(pb::admin::InitialAdmin {
                        email: email.clone(),
                        display_name: "Admin".into(),
                        password: password.clone(),
                    }),
                },
                &self.operator_token,
            ))
            .await
            .expect("create tenant")
            .into_inner();
        let tokens = self
            .login(slug, &email, &password)
            .await
            .expect("admin login");
        TenantFixture {
            tenant_id: created.tenant.expect("tenant").id,
            slug: slug.to_owned(),
            admin_id: created.admin_agent_id,
            admin_token: tokens.access_token,
        }
    }

    /// Logs in and returns the token pair.
    pub async fn login(
        &self,
        slug: &str,
        email: &str,
        password: &str,
    ) -> Result<pb::TokenPair, tonic::Status> {
        Ok(self
            .auth()
            .login(pb::LoginRequest {
                tenant_slug: slug.into(),
                email: email.into(),
                password: password.into(),
            })
            .await?
            .into_inner()
            .tokens
            .expect("tokens"))
    }

    /// Creates an agent in `t` (as its admin) and logs them in; returns (agent id, access token).
    pub async fn agent(&self, t: &TenantFixture, name: &str) -> (String, String) {
        let email = format!("{name}@{}.example", t.slug);
        let a = self
            .agents()
            .create_agent(bearer(
                pb::CreateAgentRequest {
                    email: email.clone(),
                    display_name: name.into(),
                    role: pb::AgentRole::Agent as i32,
                    password: "agent-password-123".into(),
                    max_concurrent_chats: 2,
                    skills: vec![],
                },
                &t.admin_token,
            ))
            .await
            .expect("create agent")
            .into_inner()
            .agent
            .expect("agent");
        let tokens = self
            .login(&t.slug, &email, "agent-password-123")
            .await
            .expect("agent login");
        (a.id, tokens.access_token)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A tenant made by [`TestApp::tenant`].
pub struct TenantFixture {
    /// Tenant id.
    pub tenant_id: String,
    /// Slug.
    pub slug: String,
    /// Admin agent id.
    pub admin_id: String,
    /// Admin access token.
    pub admin_token: String,
}
