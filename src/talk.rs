//! `chat-engine talk visitor|agent`: a terminal chat over the public API, so that a newcomer
//! who ran `chat-engine demo` can be a website visitor in one terminal and an agent in another
//! and watch the workflow, the queue and the dispatcher work, before any widget or console.
//!
//! Both sides print what their stream carries (messages, queue places, joins, status
//! changes) and send each line typed on stdin. The agent side makes itself available, so the
//! dispatcher gives it the waiting chats; `/close` ends the agent's current chat.

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use chat_engine_client::pb;
use chat_engine_client::pb::stream_item::Kind as Item;

/// Who to be.
#[derive(clap::Subcommand, Debug)]
pub enum Talk {
    /// A visitor of the tenant's website: starts a chat with the widget key.
    Visitor {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// The widget API key (`chat-engine demo` prints one).
        #[arg(long)]
        key: String,
        /// The page's origin, as a browser would send it.
        #[arg(long, default_value = "http://localhost")]
        origin: String,
        /// The page the visitor is on (workflows match on it; the demo's routes `/billing`).
        #[arg(long, default_value = "http://localhost/billing")]
        page: String,
        /// The visitor's name.
        #[arg(long, default_value = "Terminal Visitor")]
        name: String,
    },
    /// An agent: logs in, becomes available and serves the chats the dispatcher gives them.
    Agent {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Tenant slug.
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// Email.
        #[arg(long)]
        email: String,
        /// Password (`chat-engine demo` prints them).
        #[arg(long, env = "CHAT_ENGINE_PASSWORD")]
        password: String,
    },
}

async fn connect(target: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(target.to_owned())
        .context("the target is not a URL")?
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))
}

type Ascii = MetadataValue<tonic::metadata::Ascii>;

/// The headers a widget sends.
struct WidgetCaller {
    key: Ascii,
    origin: Ascii,
    token: Option<Ascii>,
}

impl WidgetCaller {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("x-api-key", self.key.clone());
        r.metadata_mut().insert("origin", self.origin.clone());
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }
}

fn bearer<T>(auth: &Ascii, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

fn header(v: &str) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    MetadataValue::try_from(v).map_err(|_| anyhow!("{v:?} is not a valid header value"))
}

/// Runs one side until stdin closes or the stream ends.
pub async fn run(t: Talk) -> anyhow::Result<()> {
    match t {
        Talk::Visitor {
            target,
            key,
            origin,
            page,
            name,
        } => visitor(&target, &key, &origin, &page, &name).await,
        Talk::Agent {
            target,
            tenant,
            email,
            password,
        } => agent(&target, &tenant, &email, &password).await,
    }
}

fn speaker(m: &pb::Message) -> &'static str {
    match pb::SenderType::try_from(m.sender_type) {
        Ok(pb::SenderType::Visitor) => "visitor",
        Ok(pb::SenderType::Agent) => "agent",
        Ok(pb::SenderType::System) => "system",
        _ => "?",
    }
}

/// A line describing a stream item; None for items not worth a line.
fn describe(item: &Item) -> Option<String> {
    use pb::conversation_event::Kind as Ev;
    match item {
        Item::Event(e) => match &e.kind {
            Some(Ev::MessagePosted(m)) => Some(format!("[{}] {}", speaker(m), m.text)),
            Some(Ev::StatusChanged(s)) => {
                let status = match pb::ConversationStatus::try_from(s.status) {
                    Ok(pb::ConversationStatus::Queued) => "waiting for an agent",
                    Ok(pb::ConversationStatus::Open) => "with an agent",
                    Ok(pb::ConversationStatus::Closed) => "ended",
                    _ => "changed",
                };
                Some(format!("-- chat {status}"))
            }
            _ => None,
        },
        Item::QueuePosition(p) => Some(format!(
            "-- you are number {} in the queue (about {} s)",
            p.position, p.estimated_wait_seconds
        )),
        Item::Joined(j) => {
            let who = j.visitor.as_ref().map_or("someone", |v| v.name.as_str());
            Some(format!("-- new chat with {who}"))
        }
        Item::Typing(t) if t.typing => Some("-- typing...".into()),
        Item::Resync(_) => Some("-- the server asks to reconnect".into()),
        _ => None,
    }
}

/// Whether an item says the chat ended.
fn closes(item: &Item) -> bool {
    matches!(item, Item::Event(pb::ConversationEvent {
        kind: Some(pb::conversation_event::Kind::StatusChanged(s)),
        ..
    }) if s.status == pb::ConversationStatus::Closed as i32)
}

async fn visitor(
    target: &str,
    key: &str,
    origin: &str,
    page: &str,
    name: &str,
) -> anyhow::Result<()> {
    let channel = connect(target).await?;
    let mut client = pb::visitor_service_client::VisitorServiceClient::new(channel);
    let mut w = WidgetCaller {
        key: header(key)?,
        origin: header(origin)?,
        token: None,
    };
    let session = format!("talk-{}", uuid::Uuid::new_v4().simple());
    let init = client
        .init_visitor(w.req(pb::InitVisitorRequest {
            session_id: session,
            name: name.into(),
            page_url: page.into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    w.token = Some(header(&format!("Bearer {}", init.visitor_token))?);
    let started = client
        .start_chat(w.req(pb::StartChatRequest::default()))
        .await?
        .into_inner();
    let conv = started.conversation.context("no conversation")?.id;
    println!("-- chat {conv} started; type a line and press enter to send it");
    let mut stream = client
        .subscribe_visitor(w.req(pb::SubscribeVisitorRequest {
            cursors: vec![pb::ConversationCursor {
                conversation_id: conv.clone(),
                last_seq: 0,
            }],
        }))
        .await?
        .into_inner();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ended = false;
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(r)) => {
                    let item = r.item.and_then(|i| i.kind);
                    if let Some(line) = item.as_ref().and_then(describe) {
                        println!("{line}");
                    }
                    if item.as_ref().is_some_and(closes) {
                        ended = true;
                        println!("-- how was it? type 1 to 5");
                    }
                }
                Some(Err(s)) => bail!("the stream ended: {}", s.message()),
                None => return Ok(()),
            },
            line = lines.next_line() => match line? {
                Some(text) if ended => {
                    let score = text.trim().parse().unwrap_or(0);
                    match client
                        .submit_rating(w.req(pb::SubmitRatingRequest {
                            conversation_id: conv.clone(),
                            score,
                            comment: String::new(),
                        }))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(s) => println!("-- {}", s.message()),
                    }
                }
                Some(text) if !text.trim().is_empty() => {
                    client
                        .send_visitor_message(w.req(pb::SendVisitorMessageRequest {
                            conversation_id: conv.clone(),
                            r#type: pb::MessageType::Text as i32,
                            text,
                            request_id: uuid::Uuid::new_v4().to_string(),
                        }))
                        .await?;
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}

async fn agent(target: &str, tenant: &str, email: &str, password: &str) -> anyhow::Result<()> {
    let channel = connect(target).await?;
    let tokens = pb::auth_service_client::AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            tenant_slug: tenant.into(),
            email: email.into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .tokens
        .context("no tokens")?;
    let auth = header(&format!("Bearer {}", tokens.access_token))?;
    let mut conversations =
        pb::conversation_service_client::ConversationServiceClient::new(channel.clone());
    let mut stream = conversations
        .subscribe(bearer(&auth, pb::SubscribeRequest::default()))
        .await?
        .into_inner();
    pb::agent_service_client::AgentServiceClient::new(channel.clone())
        .set_my_status(bearer(
            &auth,
            pb::SetMyStatusRequest {
                status: pb::AgentStatus::Available as i32,
            },
        ))
        .await?;
    let mut queue = pb::queue_service_client::QueueServiceClient::new(channel);
    println!(
        "-- available; chats the dispatcher gives you appear here. /close ends the current one"
    );
    let mut current: Option<String> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(r)) => {
                    let Some(item) = r.item.and_then(|i| i.kind) else { continue };
                    if let Item::Joined(j) = &item {
                        current = j.conversation.as_ref().map(|c| c.id.clone());
                    }
                    if let Some(line) = describe(&item) {
                        println!("{line}");
                    }
                }
                Some(Err(s)) => bail!("the stream ended: {}", s.message()),
                None => return Ok(()),
            },
            line = lines.next_line() => match (line?, &current) {
                (None, _) => return Ok(()),
                (Some(text), _) if text.trim().is_empty() => {}
                (Some(_), None) => println!("-- no chat yet"),
                (Some(text), Some(conv)) if text.trim() == "/close" => {
                    queue
                        .close_chat(bearer(&auth, pb::CloseChatRequest { conversation_id: conv.clone() }))
                        .await?;
                    current = None;
                }
                (Some(text), Some(conv)) => {
                    conversations
                        .send_message(bearer(&auth, pb::SendMessageRequest {
                            conversation_id: conv.clone(),
                            text,
                            request_id: uuid::Uuid::new_v4().to_string(),
                        }))
                        .await?;
                }
            },
        }
    }
}
