//! ConversationService: internal chat, messages, read marks, typing, and the event streams.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::pace::Paced;
use super::status::{rpc_ok, rpc_status};
use super::{Streaming, convert, scope};
use crate::domain::conversations::{self, Kind, MAX_TEXT_CHARS};
use crate::domain::{Engine, validate};
use crate::error::{AppError, FieldViolation, Violations};
use crate::ids::{ConversationId, MessageId, UserId};
use crate::pb;
use crate::pb::conversation_service_server::ConversationService;
use crate::realtime::{BusHealth, StreamContext, session, stream};
use crate::tenancy::TenantScope;

/// Handler of ConversationService.
pub struct ConversationApi {
    streams: Arc<StreamContext>,
    bus: BusHealth,
}

impl ConversationApi {
    /// A handler over the node's stream context.
    pub fn new(streams: Arc<StreamContext>, bus: BusHealth) -> Self {
        Self { streams, bus }
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.streams.engine
    }

    /// Answers a command that `Connect` carries too, as the calling agent.
    async fn agent_command<Req, Resp>(
        &self,
        req: Request<Req>,
        run: impl AsyncFnOnce(&Arc<Engine>, &TenantScope, Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status> {
        let s = scope::agent(&req)?;
        Ok(Response::new(
            run(self.engine(), &s, req.into_inner()).await?,
        ))
    }

    fn open_stream(
        &self,
        scope: TenantScope,
        cursors: Vec<(ConversationId, i64)>,
    ) -> Result<impl Stream<Item = Result<pb::StreamItem, Status>> + Send + 'static, Status> {
        if !self.bus.healthy() {
            return Err(AppError::Unavailable("event bus unavailable".into()).into());
        }
        Ok(stream::subscribe(self.streams.clone(), scope, cursors)
            .map(|r| r.map(convert::stream_item).map_err(Status::from)))
    }
}

/// What every validating handler starts from: the calling agent's scope, the request, and
/// no violations yet.
fn agent_call<T>(req: Request<T>) -> Result<(TenantScope, T, Violations), Status> {
    let s = scope::agent(&req)?;
    Ok((s, req.into_inner(), Violations::new()))
}

/// The conversation id in `raw`; when it is invalid, the violation is recorded and a fresh
/// id stands in, never used: the caller's `v.finish()` refuses the request first.
pub(super) fn conv_id(v: &mut Violations, field: &str, raw: &str) -> ConversationId {
    v.check(validate::id(field, raw, ConversationId::parse))
        .unwrap_or_else(ConversationId::new)
}

fn agent_ids(v: &mut Violations, field: &str, raw: &[String]) -> Vec<UserId> {
    if raw.len() > conversations::MAX_MEMBERS {
        v.add(field, "too many agents");
        return Vec::new();
    }
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(validate::id(&format!("{field}[{i}]"), s, UserId::parse)))
        .collect()
}

/// A page of a conversation's messages as both the agent and the visitor API ask for it.
pub(super) struct PageRequest<'a> {
    /// Conversation id as sent.
    pub conversation_id: &'a str,
    /// `ListDirection` as sent.
    pub direction: i32,
    /// Seq to page from.
    pub anchor_seq: u64,
    /// Page size as sent.
    pub page_size: i32,
    /// Token of the previous page.
    pub page_token: &'a str,
}

impl PageRequest<'_> {
    /// Validates (adding to `v`) and lists the page: its messages and the next page's token.
    pub(super) async fn list(
        &self,
        e: &Engine,
        s: &TenantScope,
        mut v: Violations,
    ) -> Result<(Vec<pb::Message>, String), Status> {
        let id = conv_id(&mut v, "conversation_id", self.conversation_id);
        let forward = match pb::ListDirection::try_from(self.direction) {
            Ok(pb::ListDirection::Forward) => true,
            Ok(_) => false,
            Err(_) => {
                v.add("direction", "unknown direction");
                false
            }
        };
        v.finish()?;
        let page = conversations::list_messages(
            e,
            s,
            id,
            forward,
            self.anchor_seq,
            self.page_size,
            self.page_token,
        )
        .await?;
        Ok((
            page.items.into_iter().map(convert::message).collect(),
            page.next_page_token,
        ))
    }
}

pub(super) fn message_text(field: &str, raw: &str) -> Result<String, FieldViolation> {
    validate::text(field, raw, MAX_TEXT_CHARS)
}

pub(super) fn request_id(v: &mut Violations, raw: &str) -> Option<uuid::Uuid> {
    if raw.is_empty() {
        return None;
    }
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if !u.is_nil() => Some(u),
        _ => {
            v.add("request_id", "must be a non-nil UUID");
            None
        }
    }
}

pub(super) fn cursors(
    v: &mut Violations,
    raw: &[pb::ConversationCursor],
) -> Vec<(ConversationId, i64)> {
    if raw.len() > 10_000 {
        v.add("cursors", "at most 10000 cursors");
        return Vec::new();
    }
    raw.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let id = v.check(validate::id(
                &format!("cursors[{i}].conversation_id"),
                &c.conversation_id,
                ConversationId::parse,
            ))?;
            Some((id, i64::from(c.last_seq)))
        })
        .collect()
}

async fn send(
    e: &Arc<Engine>,
    s: &TenantScope,
    r: pb::SendMessageRequest,
) -> Result<pb::SendMessageResponse, Status> {
    submit(e, s, r).await?.await
}

/// Checks and queues a send; the returned future answers once it is committed.
async fn submit(
    e: &Arc<Engine>,
    s: &TenantScope,
    r: pb::SendMessageRequest,
) -> Result<impl Future<Output = Result<pb::SendMessageResponse, Status>> + Send + 'static, Status>
{
    let mut v = Violations::new();
    let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
    let text = v.check(message_text("text", &r.text));
    let rid = request_id(&mut v, &r.request_id);
    v.finish()?;
    let text = text.ok_or_else(|| AppError::Internal("validated text missing".into()))?;
    let pending = conversations::submit(e, s, conv, text, rid).await?;
    Ok(async move {
        let sent = pending.await?;
        Ok(pb::SendMessageResponse {
            message_id: sent.id.to_string(),
            seq: convert::seq_out(sent.seq),
            create_time: Some(convert::ts(sent.created_at)),
        })
    })
}

async fn mark_read(
    e: &Arc<Engine>,
    s: &TenantScope,
    r: pb::MarkReadRequest,
) -> Result<pb::MarkReadResponse, Status> {
    let mut v = Violations::new();
    let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
    v.finish()?;
    let (read, unread) = conversations::mark_read(e, s, conv, u64::from(r.seq)).await?;
    Ok(pb::MarkReadResponse {
        read_seq: convert::seq_out(read),
        unread_count: convert::count_out(unread),
    })
}

async fn set_typing(
    e: &Arc<Engine>,
    s: &TenantScope,
    r: pb::SetTypingRequest,
) -> Result<pb::SetTypingResponse, Status> {
    let mut v = Violations::new();
    let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
    v.finish()?;
    conversations::set_typing(e, s, conv, r.typing).await?;
    Ok(pb::SetTypingResponse {})
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn create_conversation(
        &self,
        req: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        let (s, r, mut v) = agent_call(req)?;
        let kind = match pb::ConversationKind::try_from(r.kind) {
            Ok(pb::ConversationKind::Direct) => Some(Kind::Direct),
            Ok(pb::ConversationKind::Group) => Some(Kind::Group),
            _ => {
                v.add(
                    "kind",
                    "must be CONVERSATION_KIND_DIRECT or CONVERSATION_KIND_GROUP",
                );
                None
            }
        };
        let members = agent_ids(&mut v, "member_agent_ids", &r.member_agent_ids);
        let title = match kind {
            Some(Kind::Group) => v.check(validate::text("title", &r.title, 200)),
            _ => v.check(validate::optional_text("title", &r.title, 200)),
        };
        v.finish()?;
        let (Some(kind), Some(title)) = (kind, title) else {
            return Err(AppError::Internal("validated fields missing".into()).into());
        };
        let c = conversations::create(self.engine(), &s, kind, members, title).await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn get_conversation(
        &self,
        req: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let c = conversations::get(self.engine(), &s, id).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(convert::summary(c)),
        }))
    }

    async fn list_conversations(
        &self,
        req: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let page = conversations::list(self.engine(), &s, r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: page.items.into_iter().map(convert::summary).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn add_members(
        &self,
        req: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        let (s, r, mut v) = agent_call(req)?;
        let id = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let agents = agent_ids(&mut v, "agent_ids", &r.agent_ids);
        if r.agent_ids.is_empty() {
            v.add("agent_ids", "name at least one agent");
        }
        v.finish()?;
        let c = conversations::add_members(self.engine(), &s, id, agents).await?;
        Ok(Response::new(pb::AddMembersResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let (s, r, mut v) = agent_call(req)?;
        let id = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let agent = v
            .check(validate::id("agent_id", &r.agent_id, UserId::parse))
            .unwrap_or_else(UserId::new);
        v.finish()?;
        let c = conversations::remove_member(self.engine(), &s, id, agent).await?;
        Ok(Response::new(pb::RemoveMemberResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        self.agent_command(req, send).await
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let (s, r, v) = agent_call(req)?;
        let page = PageRequest {
            conversation_id: &r.conversation_id,
            direction: r.direction,
            anchor_seq: u64::from(r.anchor_seq),
            page_size: r.page_size,
            page_token: &r.page_token,
        };
        let (messages, next_page_token) = page.list(self.engine(), &s, v).await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages,
            next_page_token,
        }))
    }

    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let (s, r, mut v) = agent_call(req)?;
        let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let id = v
            .check(validate::id("message_id", &r.message_id, MessageId::parse))
            .unwrap_or_else(MessageId::new);
        let text = v.check(message_text("text", &r.text));
        v.finish()?;
        let (m, seq) = conversations::change_message(self.engine(), &s, conv, id, text).await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(convert::message(m)),
            event_seq: convert::seq_out(seq),
        }))
    }

    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let (s, r, mut v) = agent_call(req)?;
        let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let id = v
            .check(validate::id("message_id", &r.message_id, MessageId::parse))
            .unwrap_or_else(MessageId::new);
        v.finish()?;
        let (m, seq) = conversations::change_message(self.engine(), &s, conv, id, None).await?;
        Ok(Response::new(pb::DeleteMessageResponse {
            message: Some(convert::message(m)),
            event_seq: convert::seq_out(seq),
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        self.agent_command(req, mark_read).await
    }

    async fn set_typing(
        &self,
        req: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        self.agent_command(req, set_typing).await
    }

    type SubscribeStream = Streaming<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let cursors = cursors(&mut v, &req.get_ref().cursors);
        v.finish()?;
        let stream = self
            .open_stream(s, cursors)?
            .map(|r| r.map(|item| pb::SubscribeResponse { item: Some(item) }));
        Ok(Response::new(Box::pin(Paced::new(stream))))
    }

    type ConnectStream = Streaming<pb::ConnectResponse>;

    async fn connect(
        &self,
        req: Request<tonic::Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let s = scope::agent(&req)?;
        let mut inbound = req.into_inner();
        // The first command must open the subscription.
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream closed before subscribing"))?;
        let Some(pb::connect_request::Command::Subscribe(sub)) = first.command else {
            return Err(AppError::field("command", "the first command must be subscribe").into());
        };
        let mut v = Violations::new();
        let cursors = cursors(&mut v, &sub.cursors);
        v.finish()?;
        // Commands wait until the subscription is live (CaughtUp sent), so whatever they
        // cause, the client's own sends included, reaches this stream.
        let (live_tx, live_rx) = tokio::sync::oneshot::channel::<()>();
        let mut live_tx = Some(live_tx);
        let events = self.open_stream(s, cursors)?.map(move |r| {
            if let Ok(pb::StreamItem {
                kind: Some(pb::stream_item::Kind::CaughtUp(_)),
            }) = &r
                && let Some(tx) = live_tx.take()
            {
                let _ = tx.send(());
            }
            r.map(|item| pb::ConnectResponse {
                kind: Some(pb::connect_response::Kind::Item(item)),
            })
        });
        // A broken inbound stream ends the commands, as a closed one does.
        let commands = tokio_stream::StreamExt::map_while(inbound, Result::ok);
        let engine = self.streams.engine.clone();
        let acks = session::acks(live_rx, commands, move |cmd| {
            command(engine.clone(), s, cmd)
        })
        .map(|ack| {
            Ok(pb::ConnectResponse {
                kind: Some(pb::connect_response::Kind::Ack(ack)),
            })
        });
        let merged: Pin<Box<dyn Stream<Item = Result<pb::ConnectResponse, Status>> + Send>> =
            Box::pin(Paced::new(futures_util::stream::select(events, acks)));
        Ok(Response::new(merged))
    }
}

/// The rest of one started Connect command, answering with its ack.
type PendingAck = session::Pending<pb::CommandAck>;

/// Starts one Connect command: checking it and queueing a send happen before this returns,
/// so commands keep their order; the returned future finishes it and answers with the ack.
async fn command(e: Arc<Engine>, s: TenantScope, cmd: pb::ConnectRequest) -> PendingAck {
    use pb::command_ack::Result as Answer;
    use pb::connect_request::Command;
    let id = cmd.client_id;
    match cmd.command {
        Some(Command::SendMessage(r)) => match submit(&e, &s, r).await {
            Ok(sent) => Box::pin(async move { ack(id, sent.await, Answer::SendMessage) }),
            Err(st) => refused(id, st),
        },
        Some(Command::MarkRead(r)) => {
            Box::pin(async move { ack(id, mark_read(&e, &s, r).await, Answer::MarkRead) })
        }
        Some(Command::SetTyping(r)) => {
            Box::pin(async move { ack(id, set_typing(&e, &s, r).await, Answer::SetTyping) })
        }
        Some(Command::Subscribe(_)) => {
            refused(id, Status::failed_precondition("already subscribed"))
        }
        None => refused(id, Status::invalid_argument("empty command")),
    }
}

/// The ack of a command refused before it started.
fn refused(client_id: String, status: Status) -> PendingAck {
    Box::pin(std::future::ready(ack(
        client_id,
        Err::<pb::SetTypingResponse, _>(status),
        pb::command_ack::Result::SetTyping,
    )))
}

/// The ack of a command with `client_id`: its status as the unary call would have carried
/// it (details included), and on success its answer, wrapped by `answer`.
fn ack<T>(
    client_id: String,
    result: Result<T, Status>,
    answer: impl FnOnce(T) -> pb::command_ack::Result,
) -> pb::CommandAck {
    let (status, result) = match result {
        Ok(v) => (rpc_ok(), Some(answer(v))),
        Err(st) => (rpc_status(&st), None),
    };
    pb::CommandAck {
        client_id,
        status: Some(status),
        result,
    }
}
