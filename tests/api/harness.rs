//! Test harness: one private PostgreSQL cluster per test run (started from the server binaries
//! on the machine, killed when the test process dies), a migrated template database, and per
//! test a fresh database cloned from it with a server on port 0 in front.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use chat_engine::app::{self, Database};
use chat_engine::config::{Config, Secret};
use chat_engine::pb;
use chat_engine::pgcluster::PrivateCluster;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

const TEMPLATE: &str = "chat_template";

struct Cluster {
    admin_url_base: String,
    app_url_base: String,
}

impl Cluster {
    fn admin_url(&self, db: &str) -> String {
        format!("{}{db}", self.admin_url_base)
    }
    fn app_url(&self, db: &str) -> String {
        format!("{}{db}", self.app_url_base)
    }
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The cluster lives on its own thread and runtime for the whole test process, so it
        // outlives every per-test runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let dir = test_dir();
                let c = PrivateCluster::start_with_parent_death_signal(&dir)
                    .await
                    .expect("starting the test PostgreSQL cluster");
                c.ensure_app_role().await.expect("app role");
                c.create_database(TEMPLATE).await.expect("template db");
                chat_engine::storage::migrate(&c.admin_url(TEMPLATE))
                    .await
                    .expect("migrating the template");
                let admin = c.admin_url(TEMPLATE);
                let app = c.app_url(TEMPLATE);
                tx.send(Cluster {
                    admin_url_base: admin.trim_end_matches(TEMPLATE).to_owned(),
                    app_url_base: app.trim_end_matches(TEMPLATE).to_owned(),
                })
                .expect("harness waiting");
                std::future::pending::<()>().await;
                drop(c);
            });
        });
        rx.recv().expect("cluster thread died")
    })
}

fn test_dir() -> PathBuf {
    let base = std::env::temp_dir();
    // Sweep clusters of earlier runs whose process is gone.
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("chat-engine-test-")
                && !PathBuf::from(format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    base.join(format!("chat-engine-test-{}", std::process::id()))
}

/// A fresh database cloned from the migrated template.
pub async fn fresh_database() -> (String, String) {
    let c = cluster();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&c.admin_url("postgres"))
        .await
        .expect("admin connection");
    // Concurrent clones of one template can collide; retry briefly.
    for attempt in 0.. {
        match conn
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
        {
            Ok(()) => break,
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cloning the template: {e}"),
        }
    }
    (c.admin_url(&name), c.app_url(&name))
}

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
}

impl TestApp {
    /// A server with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// A server with `opts`.
    pub async fn spawn_with(opts: Options) -> Self {
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
            app_url: Secret::new(app_url.clone()),
            migration_url: Secret::new(admin_url.clone()),
            cluster: None,
        };
        let node = app::build(&cfg, &db).await.expect("building the node");
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
    pub fn tenants(&self) -> pb::tenant_service_client::TenantServiceClient<Channel> {
        pb::tenant_service_client::TenantServiceClient::new(self.channel.clone())
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
                pb::CreateTenantRequest {
                    name: format!("Tenant {slug}"),
                    slug: slug.to_owned(),
                    widget: None,
                    initial_admin: Some(pb::InitialAdmin {
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

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"),
    );
    r
}

/// A request carrying a widget key and an optional Origin.
pub fn with_key<T>(msg: T, key: &str, origin: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(key).expect("ascii key"),
    );
    if let Some(o) = origin {
        r.metadata_mut()
            .insert("origin", MetadataValue::try_from(o).expect("ascii origin"));
    }
    r
}

/// The field names of a status's BadRequest details.
pub fn violated_fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// An open Subscribe stream with helpers to wait for items.
pub struct Events {
    inner: tonic::Streaming<pb::SubscribeResponse>,
}

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

impl Events {
    /// Subscribes with `cursors` (conversation id, last seq) over the app's shared connection.
    pub async fn open(
        app: &TestApp,
        token: &str,
        cursors: &[(&str, u64)],
    ) -> Result<Self, tonic::Status> {
        Self::open_on(app.channel.clone(), token, cursors).await
    }

    /// Subscribes over `channel`.
    pub async fn open_on(
        channel: Channel,
        token: &str,
        cursors: &[(&str, u64)],
    ) -> Result<Self, tonic::Status> {
        let req = pb::SubscribeRequest {
            cursors: cursors
                .iter()
                .map(|(c, s)| pb::ConversationCursor {
                    conversation_id: (*c).to_owned(),
                    last_seq: *s,
                })
                .collect(),
        };
        let inner = pb::conversation_service_client::ConversationServiceClient::new(channel)
            .subscribe(bearer(req, token))
            .await?
            .into_inner();
        Ok(Self { inner })
    }

    /// The next item; Err with the status when the stream ends with one.
    pub async fn next(&mut self) -> Result<Option<pb::subscribe_response::Item>, tonic::Status> {
        match tokio::time::timeout(WAIT, self.inner.message()).await {
            Ok(Ok(Some(r))) => Ok(r.item),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no stream item within {WAIT:?}"),
        }
    }

    /// Skips to the end of the replay (CaughtUp), returning the durable events before it.
    pub async fn caught_up(&mut self) -> Vec<pb::ConversationEvent> {
        let mut out = Vec::new();
        loop {
            match self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended")
            {
                pb::subscribe_response::Item::CaughtUp(_) => return out,
                pb::subscribe_response::Item::Event(e) => out.push(e),
                _ => {}
            }
        }
    }

    /// The next durable event, skipping ephemeral items.
    pub async fn event(&mut self) -> pb::ConversationEvent {
        loop {
            match self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended")
            {
                pb::subscribe_response::Item::Event(e) => return e,
                _ => continue,
            }
        }
    }

    /// The next item matching `f`.
    pub async fn until<T>(
        &mut self,
        mut f: impl FnMut(&pb::subscribe_response::Item) -> Option<T>,
    ) -> T {
        loop {
            let item = self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended");
            if let Some(v) = f(&item) {
                return v;
            }
        }
    }
}

/// The text of a posted-message event, or None.
pub fn posted_text(e: &pb::ConversationEvent) -> Option<&str> {
    match &e.kind {
        Some(pb::conversation_event::Kind::MessagePosted(m)) => Some(&m.text),
        _ => None,
    }
}

/// Sends a text message and returns (message id, seq).
pub async fn send(
    app: &TestApp,
    token: &str,
    conv: &str,
    text: &str,
) -> Result<(String, u64), tonic::Status> {
    let r = app
        .conversations()
        .send_message(bearer(
            pb::SendMessageRequest {
                conversation_id: conv.to_owned(),
                text: text.to_owned(),
                request_id: String::new(),
            },
            token,
        ))
        .await?
        .into_inner();
    Ok((r.message_id, r.seq))
}

/// Creates a group of the caller and `others`; returns its id.
pub async fn group(app: &TestApp, token: &str, others: &[&str]) -> String {
    app.conversations()
        .create_conversation(bearer(
            pb::CreateConversationRequest {
                kind: pb::ConversationKind::Group as i32,
                member_agent_ids: others.iter().map(|s| (*s).to_owned()).collect(),
                title: "team".into(),
            },
            token,
        ))
        .await
        .expect("create group")
        .into_inner()
        .conversation
        .expect("conversation")
        .id
}

/// A `nats-server` of the test's own, from the binary on the machine, on a free port.
pub struct Nats {
    port: u16,
    child: Option<std::process::Child>,
}

impl Nats {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut n = Self { port, child: None };
        n.launch().await;
        n
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server not found: install it (Debian package nats-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start");
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster of one test's own (for tests that restart the database), with a
/// migrated database; returns the cluster and (admin URL, app URL).
pub async fn own_cluster() -> (PrivateCluster, tempdir::Dir, (String, String)) {
    let dir = tempdir::Dir::new();
    let c = PrivateCluster::start_with_parent_death_signal(&dir.path().join("pg"))
        .await
        .expect("own cluster");
    c.ensure_app_role().await.expect("app role");
    c.create_database("chat").await.expect("db");
    chat_engine::storage::migrate(&c.admin_url("chat"))
        .await
        .expect("migrate");
    let urls = (c.admin_url("chat"), c.app_url("chat"));
    (c, dir, urls)
}

/// A temporary directory removed on drop.
pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// The directory.
    pub struct Dir(PathBuf);

    impl Dir {
        /// A fresh directory under the system temp dir.
        pub fn new() -> Self {
            let p = std::env::temp_dir()
                .join(format!("chat-engine-t-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
