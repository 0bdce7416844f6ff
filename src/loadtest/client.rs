//! The client side shared by every mode: connections, authorized calls, short status texts,
//! and the setup of a run's tenant, agents and group conversations.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::target::Target;
use super::{Args, Mode};
use chat_engine_client::pb;
use chat_engine_client::pb::admin::tenant_service_client::TenantServiceClient;
use chat_engine_client::pb::agent_service_client::AgentServiceClient;
use chat_engine_client::pb::auth_service_client::AuthServiceClient;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;

/// Bound on every unary call, including argon2-heavy ones on a busy machine.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a stream reaching `CaughtUp`, and on all streams of a phase together.
pub(super) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// An 8-character random tag.
pub(super) fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `authorization: Bearer <token>` as a metadata value.
pub(super) fn bearer_value(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| anyhow!("the token holds characters not allowed in a header"))
}

pub(super) fn authorized<T>(msg: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

/// A status without its details, short enough for a report.
pub(super) fn status_text(s: &tonic::Status) -> String {
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
pub(super) async fn connect(url: &str) -> anyhow::Result<Channel> {
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
pub(super) struct AgentLogin {
    pub(super) id: String,
    pub(super) auth: MetadataValue<Ascii>,
    pub(super) expires: Option<SystemTime>,
}

/// What setup made.
pub(super) struct Fixture {
    pub(super) run: String,
    pub(super) slug: String,
    pub(super) tenant_id: String,
    /// The tenant's administrator's access token.
    pub(super) admin: MetadataValue<Ascii>,
    pub(super) agents: Vec<AgentLogin>,
    /// Conversation ids with their last seq at creation.
    pub(super) conversations: Vec<(String, u32)>,
}

pub(super) fn expiry(t: &pb::TokenPair) -> Option<SystemTime> {
    let ts = t.access_token_expire_time.as_ref()?;
    let secs = u64::try_from(ts.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

pub(super) async fn login(
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

/// Creates a tenant with an admin, the agents (logged in) and the group conversations
/// (none in routing mode, where agents serve visitors and have `--capacity` seats).
pub(super) async fn setup(args: &Args, target: &Target) -> anyhow::Result<Fixture> {
    let started = Instant::now();
    let ctl = connect(&target.url).await?;
    let run = short_id();
    let slug = format!("loadtest-{run}");
    let routing = args.mode == Mode::Routing;
    let groups = if routing { 0 } else { args.conversations };
    // 0 asks for the server's default seats, as the other modes never route chats.
    let seats = if routing { args.capacity } else { 0 };
    eprintln!(
        "loadtest: setting up tenant {slug} with {} agents and {groups} conversations on {}",
        args.agents, target.description
    );
    // One random password per run, never printed.
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let admin_email = format!("admin@{slug}.example");
    let op = bearer_value(&target.operator_token)?;
    let tenant = TenantServiceClient::new(ctl.clone())
        .create_tenant(authorized(
            pb::admin::CreateTenantRequest {
                name: format!("Load test {run}"),
                slug: slug.clone(),
                widget: None,
                initial_admin: Some(pb::admin::InitialAdmin {
                    email: admin_email.clone(),
                    display_name: "Load test admin".into(),
                    password: password.clone(),
                }),
                time_zone: String::new(),
            },
            &op,
        ))
        .await
        .map_err(|s| anyhow!("CreateTenant: {}", status_text(&s)))?
        .into_inner()
        .tenant
        .ok_or_else(|| anyhow!("CreateTenant answered without the tenant"))?;
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
                            max_concurrent_chats: seats,
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
    let mut conversations = Vec::with_capacity(groups);
    for j in 0..groups {
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
        tenant_id: tenant.id,
        admin,
        agents,
        conversations,
    })
}

/// Sleeps unless cancelled first; false when cancelled.
pub(super) async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Paces a run's starts: the `k`-th is due `k / rate` seconds after `start` (with `rate` 0,
/// whenever one of `concurrency` slots is free), and none starts after `duration`.
pub(super) struct Pacer {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    concurrency: usize,
    start: Instant,
    deadline: Instant,
    rate: u32,
}

impl Pacer {
    /// A pacer starting now.
    pub(super) fn new(concurrency: usize, rate: u32, duration: Duration) -> Self {
        let start = Instant::now();
        Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency)),
            concurrency,
            start,
            deadline: start + duration,
            rate,
        }
    }

    /// When the run started.
    pub(super) fn start(&self) -> Instant {
        self.start
    }

    /// Waits for the `k`-th start's turn and a free slot (held until the permit drops);
    /// None once the run's time is up.
    pub(super) async fn next(
        &self,
        k: u64,
    ) -> anyhow::Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        if self.rate > 0 {
            let due = self.start + Duration::from_secs_f64(k as f64 / f64::from(self.rate));
            if due >= self.deadline {
                return Ok(None);
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p?,
            _ = tokio::time::sleep_until(self.deadline.into()) => return Ok(None),
        };
        Ok((Instant::now() < self.deadline).then_some(permit))
    }

    /// Waits for the starts still in flight (each bounded by [`CALL_TIMEOUT`]).
    pub(super) async fn drain(&self) -> anyhow::Result<()> {
        let all = u32::try_from(self.concurrency)?;
        let _ = tokio::time::timeout(
            CALL_TIMEOUT + Duration::from_secs(5),
            self.permits.acquire_many(all),
        )
        .await;
        Ok(())
    }
}
