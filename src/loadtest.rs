//! `chat-engine loadtest`: a load generator that drives the gRPC API through the generated
//! Rust clients and reports throughput, delivery latency and memory.
//!
//! Two modes:
//!
//! - `messages` (default): every agent holds one `Subscribe` stream on its own HTTP/2
//!   connection. Senders post messages into group conversations that hold every agent, at a
//!   fixed total rate or as fast as a bounded number of in-flight calls allows. Each stream
//!   measures, for every message, the time from the start of its `SendMessage` call to its
//!   arrival on the stream (the send instant travels inside the message text), and checks that
//!   every acknowledged message reached every stream exactly once.
//! - `idle`: opens many idle `Subscribe` streams and reports resident memory per stream.
//!
//! By default it starts its own server in this process, over a private PostgreSQL cluster in a
//! fresh temporary directory (or over `DATABASE_URL` when set), so memory figures are those
//! of the whole process: server and load generator together. To measure a server alone, run
//! `chat-engine serve` separately and pass `--target`, `--operator-token` and `--server-pid`.
//!
//! Every phase is bounded: sending stops at its deadline, every wait has a timeout, streams
//! reconnect a limited number of times, and only loopback targets are accepted. Message texts,
//! passwords and tokens are never printed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::app;
use crate::config::{Config, Secret};
use crate::domain::conversations::MAX_MEMBERS;
use crate::pb;
use crate::pb::agent_service_client::AgentServiceClient;
use crate::pb::auth_service_client::AuthServiceClient;
use crate::pb::conversation_service_client::ConversationServiceClient;
use crate::pb::subscribe_response::Item;
use crate::pb::tenant_service_client::TenantServiceClient;

/// Bound on every unary call, including argon2-heavy ones on a busy machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a stream reaching `CaughtUp`, and on all streams of a phase together.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Reconnections per stream after a resync or an error, before it gives up.
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Error messages kept for the report.
const ERRORS_SHOWN: usize = 5;
/// Idle streams being opened at once.
const OPEN_CONCURRENCY: usize = 64;
/// Pause after the idle streams are open, so presence broadcasts and buffers settle.
const SETTLE: Duration = Duration::from_millis(500);

/// What the load generator measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Message throughput and send-to-delivery latency.
    Messages,
    /// Resident memory per idle Subscribe stream.
    Idle,
    /// Baseline without network or database: the same messages through this process's
    /// event hub to two subscribers, as fast as it goes.
    Broadcast,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Messages => "messages",
            Mode::Idle => "idle",
            Mode::Broadcast => "broadcast",
        }
    }
}

/// Which RPCs messages mode drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `SendMessage` calls, events on `Subscribe` streams.
    Unary,
    /// Sends and events on one `Connect` stream per agent.
    Connect,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Unary => "unary",
            Api::Connect => "connect",
        }
    }
}

/// Options of `chat-engine loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// What to measure: `messages` (throughput and delivery latency) or `idle` (memory per
    /// open stream).
    #[arg(long, value_enum, default_value_t = Mode::Messages)]
    pub mode: Mode,
    /// Agents to create, 2-500; in messages mode each holds one Subscribe stream on its own
    /// HTTP/2 connection and sends.
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Group conversations, each holding every agent; messages are spread over them.
    #[arg(long, default_value_t = 2)]
    pub conversations: usize,
    /// Seconds to send for (messages mode).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Total messages per second over all senders; 0 sends as fast as --concurrency allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Most sends in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How messages mode sends and receives: a unary `SendMessage` call per message with a
    /// `Subscribe` stream per agent, or one bidirectional `Connect` stream per agent that
    /// carries that agent's sends (pipelined) and its events.
    #[arg(long, value_enum, default_value_t = Api::Unary)]
    pub api: Api,
    /// Seconds to wait, once sending stops, for every acknowledged message to reach every
    /// stream; what has not arrived by then is reported as undelivered.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Idle Subscribe streams to open (idle mode), spread over the agents.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Idle streams per HTTP/2 connection (idle mode); at most the server's
    /// max_concurrent_streams.
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Seconds to keep the idle streams open after measuring (idle mode).
    #[arg(long, default_value_t = 0)]
    pub hold: u64,
    /// Messages to post into the first conversation before the idle streams open; every
    /// stream then resumes from before them, so it starts by replaying them (idle mode).
    #[arg(long, default_value_t = 0)]
    pub replay: u64,
    /// CreateAgent and Login calls at once during setup (each runs argon2 on the server);
    /// defaults to the number of CPUs.
    #[arg(long)]
    pub setup_concurrency: Option<usize>,
    /// Drive an already running server at this loopback URL (e.g. http://127.0.0.1:50051)
    /// instead of starting one in this process.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Operator token of the --target server; defaults to the configured operator_token
    /// (CHAT_ENGINE_OPERATOR_TOKEN), which keeps it out of the process list.
    #[arg(long, value_name = "TOKEN")]
    pub operator_token: Option<String>,
    /// Process id of the --target server, whose resident memory (VmRSS) is reported.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Data directory of the in-process server (private cluster, JWT secret); by default a
    /// fresh temporary directory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also print the results as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn setup_concurrency(&self) -> usize {
        self.setup_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(64)))
    }

    fn validate(&self) -> anyhow::Result<()> {
        fn within<T: PartialOrd + std::fmt::Display>(
            flag: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> anyhow::Result<()> {
            if v < lo || v > hi {
                bail!("--{flag} must be {lo}-{hi}, not {v}");
            }
            Ok(())
        }
        within("agents", self.agents, 2, MAX_MEMBERS)?;
        within("conversations", self.conversations, 1, 1000)?;
        within("duration", self.duration, 1, 3600)?;
        within("rate", self.rate, 0, 1_000_000)?;
        within("concurrency", self.concurrency, 1, 10_000)?;
        within("drain-timeout", self.drain_timeout, 0, 600)?;
        within("streams", self.streams, 1, 100_000)?;
        within(
            "streams-per-connection",
            self.streams_per_connection,
            1,
            10_000,
        )?;
        within("hold", self.hold, 0, 3600)?;
        within("replay", self.replay, 0, 100_000)?;
        within("setup-concurrency", self.setup_concurrency(), 1, 256)?;
        if self.target.is_none() && (self.operator_token.is_some() || self.server_pid.is_some()) {
            bail!("--operator-token and --server-pid go with --target");
        }
        if self.target.is_some() && self.data_dir.is_some() {
            bail!("--data-dir is for the in-process server; it cannot go with --target");
        }
        if self.target.is_some() && self.mode == Mode::Idle && self.server_pid.is_none() {
            bail!("idle mode measures the server's memory: with --target, pass --server-pid");
        }
        Ok(())
    }
}

/// Runs the load generator: starts or targets a server, sets up a tenant, agents and
/// conversations, drives the chosen mode and prints the report.
pub async fn run(args: Args, cfg: Config) -> anyhow::Result<()> {
    args.validate()?;
    if args.mode == Mode::Broadcast {
        return broadcast(&args).await;
    }
    match args.target.clone() {
        Some(raw) => {
            let url = loopback_url(&raw)?;
            let operator_token = match (&args.operator_token, &cfg.operator_token) {
                (Some(t), _) => t.clone(),
                (None, Some(t)) => t.expose().to_owned(),
                (None, None) => bail!(
                    "--target needs the server's operator token: --operator-token or \
                     CHAT_ENGINE_OPERATOR_TOKEN"
                ),
            };
            let rss = match args.server_pid {
                Some(pid) => {
                    let src = RssSource::Pid(pid);
                    src.read()
                        .with_context(|| format!("reading the memory of process {pid}"))?;
                    src
                }
                None => RssSource::Unknown,
            };
            let target = Target {
                description: format!("external server at {url}"),
                url,
                operator_token,
                rss,
            };
            with_interrupt(drive(&args, &target)).await
        }
        None => in_process(&args, cfg).await,
    }
}

/// Where the load goes and how to measure its memory.
struct Target {
    url: String,
    operator_token: String,
    rss: RssSource,
    description: String,
}

/// Whose resident memory is reported.
#[derive(Clone, Copy, Debug)]
enum RssSource {
    /// This process: the in-process server and the load generator together.
    Process,
    /// An external server.
    Pid(u32),
    /// Not measured.
    Unknown,
}

impl RssSource {
    fn read(self) -> anyhow::Result<Option<u64>> {
        let path = match self {
            RssSource::Process => "/proc/self/status".to_owned(),
            RssSource::Pid(pid) => format!("/proc/{pid}/status"),
            RssSource::Unknown => return Ok(None),
        };
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        vm_rss_kib(&status)
            .map(Some)
            .ok_or_else(|| anyhow!("{path} has no VmRSS line"))
    }

    /// Reads, reporting a failure as unknown (a process may exit while we measure).
    fn sample(self) -> Option<u64> {
        self.read().unwrap_or_else(|e| {
            eprintln!("loadtest: {e:#}");
            None
        })
    }

    fn name(self) -> Option<&'static str> {
        match self {
            RssSource::Process => Some("process"),
            RssSource::Pid(_) => Some("server_pid"),
            RssSource::Unknown => None,
        }
    }

    fn describe(self) -> String {
        match self {
            RssSource::Process => "of this process, which holds both the server and the load \
                                   generator (use --target/--server-pid to measure a server \
                                   alone)"
                .to_owned(),
            RssSource::Pid(pid) => format!("of server process {pid}"),
            RssSource::Unknown => "not measured (pass --server-pid)".to_owned(),
        }
    }
}

/// The `VmRSS` figure of a `/proc/<pid>/status` text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Accepts `http://` URLs whose host is a loopback address; returns `http://host:port`.
fn loopback_url(raw: &str) -> anyhow::Result<String> {
    let uri: http::Uri = raw
        .parse()
        .with_context(|| format!("--target {raw:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--target must be an http:// URL (the load generator speaks plaintext gRPC)");
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        bail!("--target {raw:?} names no host");
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--target must be on this machine (127.0.0.1, ::1 or localhost), not {host}");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--target takes no path: http://HOST:PORT");
    }
    Ok(format!("http://{authority}"))
}

/// Ends `fut` early on Ctrl-C, so the caller can still clean up.
async fn with_interrupt(fut: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    }
}

/// Starts a server in this process (over a private cluster in a temporary directory unless a
/// database is configured), drives it, and tears everything down again.
async fn in_process(args: &Args, mut cfg: Config) -> anyhow::Result<()> {
    let max = cfg.max_concurrent_streams;
    if args.mode == Mode::Idle && args.streams_per_connection > max as usize {
        bail!(
            "--streams-per-connection must not exceed the server's max_concurrent_streams ({max})"
        );
    }
    let temp = match &args.data_dir {
        Some(dir) => {
            cfg.data_dir = dir.clone();
            None
        }
        None => {
            let dir = std::env::temp_dir().join(format!("chat-engine-loadtest-{}", short_id()));
            cfg.data_dir = dir.clone();
            Some(dir)
        }
    };
    let token = format!("op-{}{}", short_id(), uuid::Uuid::new_v4().simple());
    cfg.operator_token = Some(Secret::new(token.clone()));
    cfg.shutdown_grace_secs = cfg.shutdown_grace_secs.min(5);
    let outcome = with_database(args, &cfg, token).await;
    if let Some(dir) = temp
        && let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("loadtest: could not remove {}: {e}", dir.display());
    }
    outcome
}

async fn with_database(args: &Args, cfg: &Config, token: String) -> anyhow::Result<()> {
    let mut db = app::open_database(cfg).await?;
    let where_ = match &db.cluster {
        Some(c) => format!("private PostgreSQL under {}", c.data_dir().display()),
        None => {
            eprintln!("loadtest: using the configured database; the load test tenant stays in it");
            "the configured database".to_owned()
        }
    };
    let outcome = serve_and_drive(args, cfg, &db, token, where_).await;
    if let Some(cluster) = db.cluster.take() {
        let dir = cluster.data_dir().to_path_buf();
        if let Err(e) = cluster.stop().await {
            eprintln!("loadtest: stopping PostgreSQL: {e:#}");
        }
        // Running as root may have moved the cluster out of a fresh temporary data dir.
        if args.data_dir.is_none()
            && !dir.starts_with(&cfg.data_dir)
            && dir.starts_with("/tmp")
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("chat-engine-pg-"))
        {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    outcome
}

async fn serve_and_drive(
    args: &Args,
    cfg: &Config,
    db: &app::Database,
    operator_token: String,
    where_: String,
) -> anyhow::Result<()> {
    let node = app::build(cfg, db).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_cfg = cfg.clone();
    let server = tokio::spawn(async move {
        app::serve(&server_cfg, node, listener, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let target = Target {
        url: format!("http://{addr}"),
        operator_token,
        rss: RssSource::Process,
        description: format!(
            "in-process server on {addr} over {where_} (db_pool_size {})",
            cfg.db_pool_size
        ),
    };
    let outcome = with_interrupt(drive(args, &target)).await;
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(cfg.shutdown_grace_secs) + Duration::from_secs(5);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("loadtest: server ended with an error: {e:#}"),
        Ok(Err(e)) => eprintln!("loadtest: server task failed: {e}"),
        Err(_) => eprintln!("loadtest: server did not stop within {grace:?}"),
    }
    outcome
}

/// Sets up, runs the mode and prints the report.
async fn drive(args: &Args, target: &Target) -> anyhow::Result<()> {
    // Stops every task this run spawned, however it ends.
    let cancel = CancellationToken::new();
    let _stop_tasks = cancel.clone().drop_guard();
    let fx = setup(args, target).await?;
    let report = match args.mode {
        Mode::Messages => messages(args, target, &fx, &cancel).await?,
        Mode::Idle => idle(args, target, &fx, &cancel).await?,
        Mode::Broadcast => bail!("broadcast mode needs no server"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// An 8-character random tag.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `authorization: Bearer <token>` as a metadata value.
fn bearer_value(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| anyhow!("the token holds characters not allowed in a header"))
}

fn authorized<T>(msg: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

/// A status without its details, short enough for a report.
fn status_text(s: &tonic::Status) -> String {
    let mut m = format!("{:?}: {}", s.code(), s.message());
    if m.len() > 200 {
        let mut cut = 200;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// A new HTTP/2 connection to the target.
async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad target URL {url}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Bounds unary calls and the opening of streams, not a stream's life.
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A logged-in agent.
struct AgentLogin {
    id: String,
    auth: MetadataValue<Ascii>,
    expires: Option<SystemTime>,
}

/// What setup made.
struct Fixture {
    run: String,
    slug: String,
    agents: Vec<AgentLogin>,
    /// Conversation ids with their last seq at creation.
    conversations: Vec<(String, u64)>,
}

fn expiry(t: &pb::TokenPair) -> Option<SystemTime> {
    let ts = t.access_token_expire_time.as_ref()?;
    let secs = u64::try_from(ts.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

async fn login(
    ctl: &Channel,
    slug: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<pb::TokenPair> {
    AuthServiceClient::new(ctl.clone())
        .login(pb::LoginRequest {
            tenant_slug: slug.to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map_err(|s| anyhow!("Login: {}", status_text(&s)))?
        .into_inner()
        .tokens
        .ok_or_else(|| anyhow!("Login answered without tokens"))
}

/// Creates a tenant with an admin, the agents (logged in) and the group conversations.
async fn setup(args: &Args, target: &Target) -> anyhow::Result<Fixture> {
    let started = Instant::now();
    let ctl = connect(&target.url).await?;
    let run = short_id();
    let slug = format!("loadtest-{run}");
    eprintln!(
        "loadtest: setting up tenant {slug} with {} agents and {} conversations on {}",
        args.agents, args.conversations, target.description
    );
    // One random password per run, never printed.
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let admin_email = format!("admin@{slug}.example");
    let op = bearer_value(&target.operator_token)?;
    TenantServiceClient::new(ctl.clone())
        .create_tenant(authorized(
            pb::CreateTenantRequest {
                name: format!("Load test {run}"),
                slug: slug.clone(),
                widget: None,
                initial_admin: Some(pb::InitialAdmin {
                    email: admin_email.clone(),
                    display_name: "Load test admin".into(),
                    password: password.clone(),
                }),
            },
            &op,
        ))
        .await
        .map_err(|s| anyhow!("CreateTenant: {}", status_text(&s)))?;
    let admin = bearer_value(
        &login(&ctl, &slug, &admin_email, &password)
            .await?
            .access_token,
    )?;

    let made: Vec<anyhow::Result<(usize, AgentLogin)>> = futures_util::stream::iter(0..args.agents)
        .map(|i| {
            let (ctl, admin, slug, password) = (&ctl, &admin, &slug, &password);
            async move {
                let email = format!("agent-{i}@{slug}.example");
                let agent = AgentServiceClient::new(ctl.clone())
                    .create_agent(authorized(
                        pb::CreateAgentRequest {
                            email: email.clone(),
                            display_name: format!("Agent {i}"),
                            role: pb::AgentRole::Agent as i32,
                            password: password.clone(),
                            max_concurrent_chats: 0,
                            skills: vec![],
                        },
                        admin,
                    ))
                    .await
                    .map_err(|s| anyhow!("CreateAgent: {}", status_text(&s)))?
                    .into_inner()
                    .agent
                    .ok_or_else(|| anyhow!("CreateAgent answered without the agent"))?;
                let tokens = login(ctl, slug, &email, password).await?;
                Ok((
                    i,
                    AgentLogin {
                        id: agent.id,
                        auth: bearer_value(&tokens.access_token)?,
                        expires: expiry(&tokens),
                    },
                ))
            }
        })
        .buffer_unordered(args.setup_concurrency())
        .collect()
        .await;
    let mut agents = Vec::with_capacity(made.len());
    for r in made {
        agents.push(r?);
    }
    agents.sort_by_key(|(i, _)| *i);
    let agents: Vec<AgentLogin> = agents.into_iter().map(|(_, a)| a).collect();

    // The first agent creates every group with all the others.
    let others: Vec<String> = agents[1..].iter().map(|a| a.id.clone()).collect();
    let mut conversations = Vec::with_capacity(args.conversations);
    for j in 0..args.conversations {
        let c = ConversationServiceClient::new(ctl.clone())
            .create_conversation(authorized(
                pb::CreateConversationRequest {
                    kind: pb::ConversationKind::Group as i32,
                    member_agent_ids: others.clone(),
                    title: format!("Load test {j}"),
                },
                &agents[0].auth,
            ))
            .await
            .map_err(|s| anyhow!("CreateConversation: {}", status_text(&s)))?
            .into_inner()
            .conversation
            .ok_or_else(|| anyhow!("CreateConversation answered without the conversation"))?;
        conversations.push((c.id, c.last_seq));
    }
    eprintln!(
        "loadtest: setup done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Fixture {
        run,
        slug,
        agents,
        conversations,
    })
}

/// Errors of one kind: how many, and the first few messages.
#[derive(Default, Debug)]
struct ErrorLog {
    count: u64,
    first: Vec<String>,
}

impl ErrorLog {
    fn push(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < ERRORS_SHOWN {
            self.first.push(what);
        }
    }

    fn merge(&mut self, other: ErrorLog) {
        self.count += other.count;
        for m in other.first {
            if self.first.len() < ERRORS_SHOWN {
                self.first.push(m);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// p50, p99 and max of microsecond samples, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

fn percentiles(samples: &mut [u32]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |q: f64| {
        let r = (q * samples.len() as f64).ceil() as usize;
        f64::from(samples[r.clamp(1, samples.len()) - 1]) / 1000.0
    };
    Some(Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
        max: f64::from(samples[samples.len() - 1]) / 1000.0,
    })
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn percentiles_json(p: Option<Percentiles>) -> Value {
    match p {
        Some(p) => json!({"p50": round(p.p50, 3), "p99": round(p.p99, 3), "max": round(p.max, 3)}),
        None => json!({"p50": null, "p99": null, "max": null}),
    }
}

fn percentiles_text(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("p50 {:.2}  p99 {:.2}  max {:.2}", p.p50, p.p99, p.max),
        None => "no samples".to_owned(),
    }
}

fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn kib_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |k| format!("{k} KiB"))
}

/// What every receiver and sender of a messages run shares.
struct Shared {
    /// Starts the texts of this run's messages: `loadtest <run> `.
    prefix: String,
    /// Send instants travel as nanoseconds since this instant.
    t0: Instant,
    /// Distinct deliveries of this run's messages over all streams.
    delivered: AtomicU64,
}

/// Message numbers seen by one stream: a bitset, since numbers are dense from 0.
#[derive(Default)]
struct Seen {
    words: Vec<u64>,
    count: u64,
}

impl Seen {
    /// Numbers beyond this are not ours (a run sends far fewer) and are ignored.
    const LIMIT: u64 = 1 << 32;

    /// Adds `id`; false if it was already there or is out of range.
    fn insert(&mut self, id: u64) -> bool {
        if id >= Self::LIMIT {
            return false;
        }
        let (w, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        self.count += 1;
        true
    }

    fn contains(&self, id: u64) -> bool {
        self.words
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }
}

/// What one receiving stream saw.
#[derive(Default)]
struct RecvStats {
    ids: Seen,
    latencies_us: Vec<u32>,
    duplicates: u64,
    resyncs: u64,
    errors: ErrorLog,
    last_delivery: Option<Instant>,
}

impl RecvStats {
    fn record(&mut self, shared: &Shared, text: &str) {
        let now = Instant::now();
        let Some(rest) = text.strip_prefix(&shared.prefix) else {
            return;
        };
        let mut parts = rest.split(' ');
        let (Some(id), Some(nanos)) = (
            parts.next().and_then(|s| s.parse::<u64>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            return;
        };
        if id >= Seen::LIMIT {
            return;
        }
        if !self.ids.insert(id) {
            self.duplicates += 1;
            return;
        }
        let sent = shared.t0 + Duration::from_nanos(nanos);
        let us = now.saturating_duration_since(sent).as_micros();
        self.latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
        self.last_delivery = Some(now);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sleeps unless cancelled first; false when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// One agent's Subscribe stream: reports `CaughtUp` through `ready`, records this run's
/// messages, and resumes from its cursors after a resync or an error, a bounded number of
/// times, until cancelled.
async fn receive(
    shared: Arc<Shared>,
    channel: Channel,
    auth: MetadataValue<Ascii>,
    mut cursors: HashMap<String, u64>,
    ready: oneshot::Sender<Result<(), String>>,
    cancel: CancellationToken,
) -> RecvStats {
    let mut st = RecvStats::default();
    let mut ready = Some(ready);
    let mut client = ConversationServiceClient::new(channel);
    let mut reconnects = 0u32;
    'connection: loop {
        let req = pb::SubscribeRequest {
            cursors: cursors
                .iter()
                .map(|(c, s)| pb::ConversationCursor {
                    conversation_id: c.clone(),
                    last_seq: *s,
                })
                .collect(),
        };
        let opened = tokio::select! {
            _ = cancel.cancelled() => break,
            r = client.subscribe(authorized(req, &auth)) => r,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => break 'connection,
                        m = stream.message() => m,
                    };
                    match next {
                        Ok(Some(pb::SubscribeResponse { item: Some(item) })) => match item {
                            Item::Event(ev) => {
                                if let Some(pb::conversation_event::Kind::MessagePosted(m)) =
                                    &ev.kind
                                {
                                    st.record(&shared, &m.text);
                                }
                                cursors.insert(ev.conversation_id, ev.seq);
                            }
                            Item::CaughtUp(_) => {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(Ok(()));
                                }
                            }
                            Item::Resync(r) => {
                                st.resyncs += 1;
                                for c in r.cursors {
                                    cursors.insert(c.conversation_id, c.last_seq);
                                }
                                break;
                            }
                            _ => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            st.errors
                                .push("Subscribe: the stream ended without a resync".into());
                            break;
                        }
                        Err(s) => {
                            st.errors.push(format!("Subscribe: {}", status_text(&s)));
                            break;
                        }
                    }
                }
            }
            Err(s) => {
                let msg = format!("Subscribe: {}", status_text(&s));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(msg.clone()));
                    st.errors.push(msg);
                    return st;
                }
                st.errors.push(msg);
            }
        }
        reconnects += 1;
        if reconnects > MAX_RECONNECTS {
            st.errors.push(format!(
                "Subscribe: gave up after {MAX_RECONNECTS} reconnections"
            ));
            break;
        }
        if !pause(&cancel, RECONNECT_PAUSE).await {
            break;
        }
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("the stream ended before it caught up".into()));
    }
    st
}

/// A send on a Connect stream waiting for its ack: when it started, and the slot it holds.
type InFlight = (Instant, tokio::sync::OwnedSemaphorePermit);

/// What the senders of a messages run share.
struct Senders {
    shared: Arc<Shared>,
    /// Each agent's connection and credentials.
    agents: Vec<(Channel, MetadataValue<Ascii>)>,
    /// With `--api connect`: each agent's command queue into its Connect stream.
    commands: Vec<tokio::sync::mpsc::Sender<pb::ConnectRequest>>,
    /// With `--api connect`: sends waiting for their ack, by message number.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    conversations: Vec<String>,
    acked: Mutex<Vec<u64>>,
    latencies_us: Mutex<Vec<u32>>,
    errors: Mutex<ErrorLog>,
}

/// Sends message number `k`: conversation `k mod M`, sender rotating so every agent posts
/// into every conversation.
async fn send_one(s: Arc<Senders>, k: u64) {
    let m = s.conversations.len() as u64;
    let n = s.agents.len() as u64;
    let conversation_id = s.conversations[(k % m) as usize].clone();
    let (channel, auth) = &s.agents[((k / m) % n) as usize];
    let started = Instant::now();
    let nanos = started.duration_since(s.shared.t0).as_nanos();
    let req = pb::SendMessageRequest {
        conversation_id,
        text: format!("{}{k} {nanos}", s.shared.prefix),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let r = ConversationServiceClient::new(channel.clone())
        .send_message(authorized(req, auth))
        .await;
    match r {
        Ok(_) => {
            let us = started.elapsed().as_micros();
            lock(&s.latencies_us).push(u32::try_from(us).unwrap_or(u32::MAX));
            lock(&s.acked).push(k);
        }
        Err(st) => lock(&s.errors).push(format!("SendMessage: {}", status_text(&st))),
    }
}

/// Sends message number `k` up its sender's Connect stream; the stream's reader records the
/// ack and frees `permit`.
async fn command_one(s: &Senders, k: u64, permit: tokio::sync::OwnedSemaphorePermit) {
    let m = s.conversations.len() as u64;
    let n = s.commands.len() as u64;
    let started = Instant::now();
    let nanos = started.duration_since(s.shared.t0).as_nanos();
    let req = pb::ConnectRequest {
        client_id: k.to_string(),
        command: Some(pb::connect_request::Command::SendMessage(
            pb::SendMessageRequest {
                conversation_id: s.conversations[(k % m) as usize].clone(),
                text: format!("{}{k} {nanos}", s.shared.prefix),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
        )),
    };
    lock(&s.in_flight).insert(k, (started, permit));
    if s.commands[((k / m) % n) as usize].send(req).await.is_err() {
        lock(&s.in_flight).remove(&k);
        lock(&s.errors).push("Connect: the stream is closed".into());
    }
}

/// One agent's Connect stream: subscribes, reports `CaughtUp` through `ready`, then records
/// this run's messages and the acks of the sends `commands` carries up, until cancelled or
/// the stream ends (it does not reconnect).
async fn connect_stream(
    senders: Arc<Senders>,
    channel: Channel,
    auth: MetadataValue<Ascii>,
    commands: tokio::sync::mpsc::Receiver<pb::ConnectRequest>,
    ready: oneshot::Sender<Result<(), String>>,
    cancel: CancellationToken,
) -> RecvStats {
    use pb::connect_response::Item as Up;
    let mut st = RecvStats::default();
    let mut ready = Some(ready);
    let shared = senders.shared.clone();
    let opened = ConversationServiceClient::new(channel)
        .connect(authorized(
            tokio_stream::wrappers::ReceiverStream::new(commands),
            &auth,
        ))
        .await;
    let mut stream = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let msg = format!("Connect: {}", status_text(&s));
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(msg.clone()));
            }
            st.errors.push(msg);
            return st;
        }
    };
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            m = stream.message() => m,
        };
        match next {
            Ok(Some(pb::ConnectResponse {
                item: Some(Up::Ack(a)),
            })) => {
                let Ok(k) = a.client_id.parse::<u64>() else {
                    continue;
                };
                let Some((started, permit)) = lock(&senders.in_flight).remove(&k) else {
                    continue;
                };
                if a.code == 0 {
                    let us = started.elapsed().as_micros();
                    lock(&senders.latencies_us).push(u32::try_from(us).unwrap_or(u32::MAX));
                    lock(&senders.acked).push(k);
                } else {
                    lock(&senders.errors).push(format!("SendMessage: code {}", a.code));
                }
                // Only once the answer is recorded: the last free slot ends the run.
                drop(permit);
            }
            Ok(Some(pb::ConnectResponse {
                item: Some(Up::Event(e)),
            })) => match e.item {
                Some(Item::Event(ev)) => {
                    if let Some(pb::conversation_event::Kind::MessagePosted(m)) = &ev.kind {
                        st.record(&shared, &m.text);
                    }
                }
                Some(Item::CaughtUp(_)) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Some(Item::Resync(_)) => {
                    st.resyncs += 1;
                    st.errors
                        .push("Connect: resync (this mode does not reconnect)".into());
                    break;
                }
                _ => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => {
                st.errors.push("Connect: the stream ended".into());
                break;
            }
            Err(s) => {
                st.errors.push(format!("Connect: {}", status_text(&s)));
                break;
            }
        }
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("the stream ended before it caught up".into()));
    }
    st
}

/// Waits until every stream reported `CaughtUp`.
async fn all_caught_up(readies: Vec<oneshot::Receiver<Result<(), String>>>) -> anyhow::Result<()> {
    let all_ready = async {
        for rx in readies {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("a stream failed to open: {e}"),
                Err(_) => bail!("a stream's task ended before it caught up"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, all_ready)
        .await
        .map_err(|_| anyhow!("the streams did not catch up within {CATCH_UP_TIMEOUT:?}"))?
}

/// Starts one receiving stream per agent over `channels` and waits until all caught up.
async fn open_receivers(
    fx: &Fixture,
    shared: &Arc<Shared>,
    channels: &[Channel],
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<RecvStats>>> {
    let cursors: HashMap<String, u64> = fx.conversations.iter().cloned().collect();
    let mut receivers = Vec::with_capacity(channels.len());
    let mut readies = Vec::with_capacity(channels.len());
    for (a, ch) in fx.agents.iter().zip(channels) {
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        receivers.push(tokio::spawn(receive(
            shared.clone(),
            ch.clone(),
            a.auth.clone(),
            cursors.clone(),
            tx,
            cancel.clone(),
        )));
    }
    all_caught_up(readies).await?;
    Ok(receivers)
}

/// Sends for `--duration` seconds, at `--rate` or as fast as `--concurrency` calls in flight
/// allow, starting at `send_start`, then waits for the calls still in flight. Returns how
/// many were started and how long it all took.
async fn send_for(
    args: &Args,
    senders: Arc<Senders>,
    send_start: Instant,
) -> anyhow::Result<(u64, Duration)> {
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let deadline = send_start + Duration::from_secs(args.duration);
    let mut k = 0u64;
    loop {
        if args.rate > 0 {
            let due = send_start + Duration::from_secs_f64(k as f64 / f64::from(args.rate));
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        if Instant::now() >= deadline {
            break;
        }
        if senders.commands.is_empty() {
            let s = senders.clone();
            tokio::spawn(async move {
                send_one(s, k).await;
                drop(permit);
            });
        } else {
            command_one(&senders, k, permit).await;
        }
        k += 1;
    }
    // Every call is bounded by CALL_TIMEOUT; wait for those still in flight.
    let all_permits = u32::try_from(args.concurrency)?;
    let _ = tokio::time::timeout(
        CALL_TIMEOUT + Duration::from_secs(5),
        permits.acquire_many(all_permits),
    )
    .await;
    Ok((k, send_start.elapsed()))
}

/// Messages mode; prints the human report and returns the JSON one.
async fn messages(
    args: &Args,
    target: &Target,
    fx: &Fixture,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let needed = Duration::from_secs(args.duration + args.drain_timeout + 30);
    if let Some(first) = fx.agents.iter().filter_map(|a| a.expires).min()
        && first < SystemTime::now() + needed
    {
        bail!(
            "the agents' access tokens expire before the run would end; lower --duration or \
             raise the server's access_token_ttl_secs"
        );
    }
    let shared = Arc::new(Shared {
        prefix: format!("loadtest {} ", fx.run),
        t0: Instant::now(),
        delivered: AtomicU64::new(0),
    });
    let n = fx.agents.len();

    // One connection and one stream per agent.
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(connect(&target.url).await?);
    }
    let mut command_rx = Vec::new();
    let mut commands = Vec::new();
    if args.api == Api::Connect {
        for _ in 0..n {
            let (tx, rx) = tokio::sync::mpsc::channel(args.concurrency + 1);
            tx.send(pb::ConnectRequest {
                client_id: "subscribe".into(),
                command: Some(pb::connect_request::Command::Subscribe(
                    pb::SubscribeRequest { cursors: vec![] },
                )),
            })
            .await?;
            commands.push(tx);
            command_rx.push(rx);
        }
    }
    let senders = Arc::new(Senders {
        shared: shared.clone(),
        agents: fx
            .agents
            .iter()
            .zip(&channels)
            .map(|(a, ch)| (ch.clone(), a.auth.clone()))
            .collect(),
        commands,
        in_flight: Mutex::new(HashMap::new()),
        conversations: fx.conversations.iter().map(|(c, _)| c.clone()).collect(),
        acked: Mutex::new(Vec::new()),
        latencies_us: Mutex::new(Vec::new()),
        errors: Mutex::new(ErrorLog::default()),
    });
    let receivers = if args.api == Api::Connect {
        let mut tasks = Vec::with_capacity(n);
        let mut readies = Vec::with_capacity(n);
        for ((a, ch), rx) in fx.agents.iter().zip(&channels).zip(command_rx) {
            let (tx, ready) = oneshot::channel();
            readies.push(ready);
            tasks.push(tokio::spawn(connect_stream(
                senders.clone(),
                ch.clone(),
                a.auth.clone(),
                rx,
                tx,
                cancel.clone(),
            )));
        }
        all_caught_up(readies).await?;
        tasks
    } else {
        open_receivers(fx, &shared, &channels, cancel).await?
    };
    if matches!(target.rss, RssSource::Process) {
        crate::memory::release_free_heap();
    }
    let rss_before = target.rss.sample();

    eprintln!(
        "loadtest: {n} streams caught up; sending for {} s {}",
        args.duration,
        if args.rate > 0 {
            format!("at {} msgs/s", args.rate)
        } else {
            format!("as fast as {} calls in flight allow", args.concurrency)
        }
    );
    let send_start = Instant::now();
    let (attempted, send_window) = send_for(args, senders.clone(), send_start).await?;

    let acked: HashSet<u64> = lock(&senders.acked).iter().copied().collect();
    let sent_ok = acked.len() as u64;
    let expected = sent_ok * n as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_after = target.rss.sample();
    cancel.cancel();

    let mut deliveries = 0u64;
    let mut undelivered = 0u64;
    let mut duplicates = 0u64;
    let mut resyncs = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    let mut stream_errors = ErrorLog::default();
    let mut last_delivery: Option<Instant> = None;
    for r in receivers {
        let st = match tokio::time::timeout(Duration::from_secs(10), r).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => bail!("a receiving task failed: {e}"),
            Err(_) => bail!("a receiving task did not stop"),
        };
        deliveries += st.ids.count;
        undelivered += acked.iter().filter(|id| !st.ids.contains(**id)).count() as u64;
        duplicates += st.duplicates;
        resyncs += st.resyncs;
        latencies.extend(st.latencies_us);
        stream_errors.merge(st.errors);
        last_delivery = last_delivery.max(st.last_delivery);
    }
    let delivery_window = last_delivery.map_or(send_window, |t| t.duration_since(send_start));
    let latency = percentiles(&mut latencies);
    let send_latency = percentiles(&mut lock(&senders.latencies_us));
    let send_errors = std::mem::take(&mut *lock(&senders.errors));
    let persisted_per_s = per_second(sent_ok, send_window);
    let deliveries_per_s = per_second(deliveries, delivery_window);

    println!("chat-engine loadtest: messages");
    println!("  target             {}", target.description);
    println!("  tenant             {}", fx.slug);
    println!(
        "  agents             {n}, each with one {} stream on its own HTTP/2 connection",
        match args.api {
            Api::Unary => "Subscribe",
            Api::Connect => "Connect (sends and events)",
        }
    );
    println!(
        "  conversations      {}, each holding every agent ({n} receivers per message)",
        fx.conversations.len()
    );
    println!(
        "  load               {} s, {}, at most {} calls in flight",
        args.duration,
        if args.rate > 0 {
            format!("target {} msgs/s", args.rate)
        } else {
            "unthrottled".to_owned()
        },
        args.concurrency
    );
    println!("results");
    println!(
        "  acknowledged       {sent_ok} of {attempted} sent in {:.2} s: {persisted_per_s:.1} msgs/s persisted",
        send_window.as_secs_f64()
    );
    println!("  send errors        {}", send_errors.count);
    println!(
        "  deliveries         {deliveries} in {:.2} s: {deliveries_per_s:.1} /s",
        delivery_window.as_secs_f64()
    );
    println!(
        "  undelivered        {undelivered} (acknowledged messages missing from a stream after {} s of draining)",
        args.drain_timeout
    );
    println!("  duplicates         {duplicates}");
    println!("  resyncs            {resyncs}");
    println!("  stream errors      {}", stream_errors.count);
    println!(
        "  delivery ms        {}  (send start to event on a stream)",
        percentiles_text(latency)
    );
    println!(
        "  send ms            {}  (send to its answer)",
        percentiles_text(send_latency)
    );
    println!(
        "  RSS                {} before sending, {} after, {}",
        kib_text(rss_before),
        kib_text(rss_after),
        target.rss.describe()
    );
    let shown: Vec<String> = send_errors
        .first
        .iter()
        .chain(&stream_errors.first)
        .cloned()
        .collect();
    for e in &shown {
        println!("  error: {e}");
    }

    Ok(json!({
        "mode": Mode::Messages.name(),
        "tenant": fx.slug,
        "agents": n,
        "conversations": fx.conversations.len(),
        "duration_s": args.duration,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "api": args.api.name(),
        "attempted": attempted,
        "sent_ok": sent_ok,
        "send_errors": send_errors.count,
        "persisted_per_s": round(persisted_per_s, 1),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries_per_s, 1),
        "undelivered": undelivered,
        "duplicates": duplicates,
        "resyncs": resyncs,
        "stream_errors": stream_errors.count,
        "latency_ms": percentiles_json(latency),
        "send_latency_ms": percentiles_json(send_latency),
        "rss_kib": rss_after,
        "rss_kib_before": rss_before,
        "rss_source": target.rss.name(),
        "errors": shown,
    }))
}

/// One idle stream: what it saw once open.
#[derive(Default)]
struct IdleStats {
    ended: bool,
    errors: ErrorLog,
}

/// Opens a Subscribe stream and waits for `CaughtUp`; then reads (and drops) whatever comes
/// until cancelled, so the server never waits on this client.
async fn open_idle(
    channel: Channel,
    auth: MetadataValue<Ascii>,
    replay: Option<&Replay>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<IdleStats>> {
    let cursors = replay
        .map(|r| pb::ConversationCursor {
            conversation_id: r.conversation_id.clone(),
            last_seq: r.after_seq,
        })
        .into_iter()
        .collect();
    let mut stream = ConversationServiceClient::new(channel)
        .subscribe(authorized(pb::SubscribeRequest { cursors }, &auth))
        .await
        .map_err(|s| anyhow!("Subscribe: {}", status_text(&s)))?
        .into_inner();
    let expected = replay.map_or(0, |r| r.messages);
    let caught_up = async {
        let mut replayed = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(pb::SubscribeResponse {
                    item: Some(Item::CaughtUp(_)),
                })) => {
                    if replayed < expected {
                        bail!(
                            "Subscribe: caught up after replaying {replayed} of {expected} events"
                        );
                    }
                    return Ok(());
                }
                Ok(Some(pb::SubscribeResponse {
                    item: Some(Item::Event(_)),
                })) => replayed += 1,
                Ok(Some(_)) => {}
                Ok(None) => bail!("Subscribe: the stream ended before it caught up"),
                Err(s) => bail!("Subscribe: {}", status_text(&s)),
            }
        }
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
        .await
        .map_err(|_| anyhow!("Subscribe: no CaughtUp within {CATCH_UP_TIMEOUT:?}"))??;
    Ok(tokio::spawn(async move {
        let mut st = IdleStats::default();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                m = stream.message() => m,
            };
            match next {
                Ok(Some(pb::SubscribeResponse {
                    item: Some(Item::Resync(_)),
                })) => {
                    st.errors.push("Subscribe: resync while idle".into());
                    st.ended = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    st.errors.push("Subscribe: the stream ended".into());
                    st.ended = true;
                    break;
                }
                Err(s) => {
                    st.errors.push(format!("Subscribe: {}", status_text(&s)));
                    st.ended = true;
                    break;
                }
            }
        }
        st
    }))
}

/// Resident memory once freed heap has gone back to the kernel, so memory freed earlier
/// (argon2 uses 19 MiB per hash during setup) is neither counted as in use nor silently
/// reused by what is measured and hidden from the difference. A server process trims on its
/// own every [`crate::memory::TRIM_EVERY`]; this one trims now.
async fn settled_rss(rss: RssSource) -> Option<u64> {
    match rss {
        RssSource::Process => crate::memory::release_free_heap(),
        RssSource::Pid(_) => {
            tokio::time::sleep(crate::memory::TRIM_EVERY + Duration::from_secs(1)).await;
        }
        RssSource::Unknown => {}
    }
    rss.sample()
}

/// Messages every idle stream replays as it opens.
struct Replay {
    conversation_id: String,
    /// The conversation's last seq before the messages were posted.
    after_seq: u64,
    messages: u64,
}

/// Posts `n` messages into the first conversation for the idle streams to replay.
async fn post_for_replay(target: &Target, fx: &Fixture, n: u64) -> anyhow::Result<Replay> {
    let (conversation_id, after_seq) = fx.conversations[0].clone();
    let channel = connect(&target.url).await?;
    let auth = &fx.agents[0].auth;
    eprintln!("loadtest: posting {n} messages for the idle streams to replay");
    let posted: Vec<Result<(), tonic::Status>> = futures_util::stream::iter(0..n)
        .map(|k| {
            let req = pb::SendMessageRequest {
                conversation_id: conversation_id.clone(),
                text: format!("loadtest {} replay {k}", fx.run),
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            let mut client = ConversationServiceClient::new(channel.clone());
            async move { client.send_message(authorized(req, auth)).await.map(drop) }
        })
        .buffer_unordered(REPLAY_POST_CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(st)) = posted.into_iter().find(Result::is_err) {
        bail!("SendMessage: {}", status_text(&st));
    }
    Ok(Replay {
        conversation_id,
        after_seq,
        messages: n,
    })
}

/// Sends in flight while posting the messages to replay.
const REPLAY_POST_CONCURRENCY: usize = 32;

/// Idle mode; prints the human report and returns the JSON one.
async fn idle(
    args: &Args,
    target: &Target,
    fx: &Fixture,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let replay = match args.replay {
        0 => None,
        n => Some(post_for_replay(target, fx, n).await?),
    };
    let rss_before = settled_rss(target.rss).await;
    let connections = args.streams.div_ceil(args.streams_per_connection);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&target.url).await?);
    }
    eprintln!(
        "loadtest: opening {} idle streams over {connections} connections",
        args.streams
    );
    let started = Instant::now();
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<IdleStats>>> =
        futures_util::stream::iter(0..args.streams)
            .map(|i| {
                open_idle(
                    channels[i / args.streams_per_connection].clone(),
                    fx.agents[i % fx.agents.len()].auth.clone(),
                    replay.as_ref(),
                    cancel.clone(),
                )
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect()
            .await;
    let open_time = started.elapsed();
    let mut tasks = Vec::with_capacity(opened.len());
    let mut open_errors = ErrorLog::default();
    for r in opened {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    let open = tasks.len();
    tokio::time::sleep(SETTLE).await;
    let rss_after = settled_rss(target.rss).await;
    let per_stream = match (rss_before, rss_after) {
        (Some(b), Some(a)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
        _ => None,
    };
    let rss_after_hold = if args.hold > 0 {
        eprintln!("loadtest: holding the streams open for {} s", args.hold);
        pause(cancel, Duration::from_secs(args.hold)).await;
        target.rss.sample()
    } else {
        rss_after
    };
    cancel.cancel();
    let mut ended = 0u64;
    let mut stream_errors = open_errors;
    for t in tasks {
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            ended += u64::from(st.ended);
            stream_errors.merge(st.errors);
        }
    }

    println!("chat-engine loadtest: idle");
    println!("  target             {}", target.description);
    println!("  tenant             {}", fx.slug);
    println!(
        "  streams            {open} of {} open (caught up) in {:.2} s, over {connections} HTTP/2 connections, {} agents",
        args.streams,
        open_time.as_secs_f64(),
        fx.agents.len()
    );
    println!(
        "  replayed           {} events per stream as it opened",
        args.replay
    );
    println!("  ended early        {ended}");
    println!("  stream errors      {}", stream_errors.count);
    println!(
        "  RSS                {} before opening, {} with the streams open{}",
        kib_text(rss_before),
        kib_text(rss_after),
        if args.hold > 0 {
            format!(
                ", {} after holding {} s",
                kib_text(rss_after_hold),
                args.hold
            )
        } else {
            String::new()
        }
    );
    println!(
        "  RSS per stream     {}  ({}; connections included)",
        per_stream.map_or_else(|| "unknown".to_owned(), |v| format!("{v:.2} KiB")),
        target.rss.describe()
    );
    for e in &stream_errors.first {
        println!("  error: {e}");
    }
    Ok(json!({
        "mode": Mode::Idle.name(),
        "tenant": fx.slug,
        "agents": fx.agents.len(),
        "conversations": fx.conversations.len(),
        "streams": args.streams,
        "streams_open": open,
        "connections": connections,
        "open_s": round(open_time.as_secs_f64(), 3),
        "replayed_per_stream": args.replay,
        "ended_early": ended,
        "stream_errors": stream_errors.count,
        "rss_kib_before": rss_before,
        "rss_kib": rss_after,
        "rss_kib_after_hold": rss_after_hold,
        "rss_per_stream_kib": per_stream.map(|v| round(v, 2)),
        "rss_source": target.rss.name(),
        "errors": stream_errors.first,
    }))
}

/// Messages pushed through the hub in broadcast mode.
const BROADCAST_MESSAGES: u64 = 1_000_000;

/// The in-process ceiling: one million message events through the hub to two subscribers
/// that read concurrently, with no network and no database.
async fn broadcast(args: &Args) -> anyhow::Result<()> {
    use crate::domain::events::{ConversationEvent, Event, EventKind, Message};
    use crate::domain::participants::Participant;
    use crate::ids::{ConversationId, MessageId, TenantId, UserId};
    use crate::realtime::hub::Hub;

    let hub = Hub::new(65_536);
    let (tenant, conv) = (TenantId::new(), ConversationId::new());
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut sub = hub.subscribe(tenant, Participant::Agent(UserId::new()));
        hub.follow(&sub, conv);
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < BROADCAST_MESSAGES {
                if sub.recv().await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    let text = "a typical short chat message of about fifty bytes!".to_owned();
    let sender = UserId::new();
    for seq in 1..=BROADCAST_MESSAGES {
        let at = chrono::Utc::now();
        hub.dispatch(Event::Durable {
            tenant,
            event: ConversationEvent {
                conversation_id: conv,
                seq: seq as i64,
                at,
                kind: EventKind::MessagePosted(Message {
                    id: MessageId::new(),
                    conversation_id: conv,
                    seq: seq as i64,
                    sender: Participant::Agent(sender),
                    text: text.clone(),
                    created_at: at,
                    edited_at: None,
                    deleted: false,
                }),
            },
        });
        if seq % 4096 == 0 {
            // Let the readers drain so the bounded queues never cut them off.
            tokio::task::yield_now().await;
        }
    }
    let mut delivered = 0;
    for r in readers {
        delivered += r.await?;
    }
    let elapsed = started.elapsed();
    let per_s = per_second(BROADCAST_MESSAGES, elapsed);
    println!("chat-engine loadtest: broadcast (in-process hub, no network, no database)");
    println!(
        "  {BROADCAST_MESSAGES} messages to 2 subscribers in {:.2} s: {per_s:.0} msgs/s, {} deliveries",
        elapsed.as_secs_f64(),
        delivered
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "broadcast",
                "messages": BROADCAST_MESSAGES,
                "subscribers": 2,
                "deliveries": delivered,
                "duration_s": round(elapsed.as_secs_f64(), 3),
                "messages_per_s": round(per_s, 1),
            })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let s = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t   1234 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(s), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn accepts_only_loopback_targets() {
        assert_eq!(
            loopback_url("http://127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert!(loopback_url("http://localhost:1/").is_ok());
        assert!(loopback_url("http://[::1]:1").is_ok());
        assert!(loopback_url("http://10.0.0.1:50051").is_err());
        assert!(loopback_url("https://127.0.0.1:50051").is_err());
        assert!(loopback_url("http://example.com:50051").is_err());
        assert!(loopback_url("http://127.0.0.1:1/x").is_err());
        assert!(loopback_url("not a url").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().map(|i| i * 1000).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        let mut one = vec![1500];
        let p = percentiles(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (1.5, 1.5, 1.5));
        assert_eq!(percentiles(&mut []), None);
    }

    #[test]
    fn records_each_message_once_and_ignores_foreign_texts() {
        let shared = Shared {
            prefix: "loadtest abc ".into(),
            t0: Instant::now(),
            delivered: AtomicU64::new(0),
        };
        let mut st = RecvStats::default();
        st.record(&shared, "loadtest abc 7 0");
        st.record(&shared, "loadtest abc 7 0");
        st.record(&shared, "loadtest xyz 8 0");
        st.record(&shared, "hello");
        st.record(&shared, "loadtest abc nope 0");
        assert_eq!(st.ids.count, 1);
        assert!(st.ids.contains(7) && !st.ids.contains(8) && !st.ids.contains(1 << 40));
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.latencies_us.len(), 1);
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rejects_out_of_range_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let parse = |xs: &[&str]| T::try_parse_from([&["t"], xs].concat()).map(|t| t.a);
        assert!(parse(&[]).unwrap().validate().is_ok());
        assert!(parse(&["--agents", "1"]).unwrap().validate().is_err());
        assert!(parse(&["--duration", "0"]).unwrap().validate().is_err());
        assert!(parse(&["--server-pid", "1"]).unwrap().validate().is_err());
        assert!(
            parse(&["--mode", "idle", "--target", "http://127.0.0.1:1"])
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(parse(&["--mode", "bogus"]).is_err());
    }
}
