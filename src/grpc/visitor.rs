//! VisitorService: the widget-facing API. Every call comes with a widget key (checked with
//! its origin by the auth layer); every call after InitVisitor with a visitor token too.
//! Messages, paging, typing and the stream go through the same domain code as agents'.

use std::sync::Arc;

use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use super::conversation::{PageRequest, conv_id, cursors, message_text, request_id};
use super::pace::Paced;
use super::ratelimit::Gate;
use super::{Streaming, convert, scope};
use crate::domain::conversations::{self, MAX_TEXT_CHARS};
use crate::domain::limits::{Key, Kind};
use crate::domain::visitors::{self, Identity, VisitorInput};
use crate::domain::{Engine, tenants, validate};
use crate::error::{AppError, Violations};
use crate::pb;
use crate::pb::visitor_service_server::VisitorService;
use crate::realtime::{BusHealth, StreamContext, stream};

/// Handler of VisitorService.
pub struct VisitorApi {
    streams: Arc<StreamContext>,
    bus: BusHealth,
    gate: Gate,
}

impl VisitorApi {
    /// A handler over the node's stream context; every call passes `gate` first.
    pub fn new(streams: Arc<StreamContext>, bus: BusHealth, gate: Gate) -> Self {
        Self { streams, bus, gate }
    }

    /// Counts the call against its widget key's, client address's and visitor's buckets.
    async fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let (tenant, key, visitor) = scope::widget_caller(req)?;
        let ip = Key::Ip(self.gate.client_ip(req));
        let keys = match visitor {
            Some(v) => vec![Key::WidgetKey(key), ip, Key::Visitor(v)],
            None => vec![Key::WidgetKey(key), ip],
        };
        Ok(self.gate.check(tenant, Kind::Visitor, &keys).await?)
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.streams.engine
    }
}

fn queue_status_out(s: visitors::QueueStatus) -> pb::QueueStatus {
    pb::QueueStatus {
        conversation_id: s.conversation_id.to_string(),
        status: convert::conversation_status(s.status) as i32,
        position: s.position.unwrap_or(0),
        queue_length: s.queue_length,
        estimated_wait_seconds: s.estimated_wait_seconds,
        enqueue_time: s.enqueued_at.map(convert::ts),
        assigned_agent_id: s.assigned.map(|a| a.to_string()).unwrap_or_default(),
        assigned_agent_name: s.assigned_name.unwrap_or_default(),
    }
}

fn visitor_input(v: &mut Violations, r: pb::InitVisitorRequest) -> Option<VisitorInput> {
    let session_id = v.check(visitors::session_id("session_id", &r.session_id));
    let name = v.check(validate::optional_text("name", &r.name, 200));
    let email = if r.email.trim().is_empty() {
        Some(String::new())
    } else {
        v.check(validate::email("email", &r.email))
    };
    let page_url = v.check(visitors::page_url("page_url", &r.page_url));
    let referrer = v.check(visitors::page_url("referrer", &r.referrer));
    let language = v.check(visitors::language("language", &r.language));
    let country = v.check(visitors::country("country", &r.country));
    let attributes = match visitors::attributes("attributes", &r.attributes) {
        Ok(a) => Some(a),
        Err(errs) => {
            for e in errs {
                v.add(&e.field, e.description);
            }
            None
        }
    };
    let identity: Option<Identity> = match &r.identity {
        Some(i) => v.check(visitors::identity(
            "identity",
            &i.external_user_id,
            &i.proof,
        )),
        None => None,
    };
    let returning = match pb::VisitorType::try_from(r.visitor_type) {
        Ok(pb::VisitorType::Unspecified | pb::VisitorType::New) => false,
        Ok(pb::VisitorType::Returning) => true,
        // Only a verified identity makes a visitor IDENTIFIED; the server decides.
        Ok(pb::VisitorType::Identified) if r.identity.is_some() => false,
        Ok(pb::VisitorType::Identified) => {
            v.add("visitor_type", "IDENTIFIED needs an identity");
            false
        }
        Err(_) => {
            v.add("visitor_type", "unknown visitor type");
            false
        }
    };
    Some(VisitorInput {
        session_id: session_id?,
        name: name?,
        email: email?,
        page_url: page_url?,
        referrer: referrer?,
        language: language?,
        country: country?,
        returning,
        attributes: attributes?,
        identity,
    })
}

#[tonic::async_trait]
impl VisitorService for VisitorApi {
    async fn get_widget_config(
        &self,
        req: Request<pb::GetWidgetConfigRequest>,
    ) -> Result<Response<pb::GetWidgetConfigResponse>, Status> {
        self.admit(&req).await?;
        let (s, _) = scope::widget(&req, "")?;
        let (t, agents_online) = tenants::widget_config(self.engine(), &s).await?;
        Ok(Response::new(pb::GetWidgetConfigResponse {
            tenant_name: t.name,
            widget: Some(convert::widget_out(t.widget)),
            agents_online,
        }))
    }

    async fn init_visitor(
        &self,
        req: Request<pb::InitVisitorRequest>,
    ) -> Result<Response<pb::InitVisitorResponse>, Status> {
        self.admit(&req).await?;
        let (s, key) = scope::widget(&req, &req.get_ref().tenant_id)?;
        let mut v = Violations::new();
        let input = visitor_input(&mut v, req.into_inner());
        v.finish()?;
        let input = input.ok_or_else(|| AppError::Internal("validated input missing".into()))?;
        let done = visitors::init(self.engine(), &s, key, input).await?;
        Ok(Response::new(pb::InitVisitorResponse {
            visitor: Some(convert::visitor(done.visitor)),
            visitor_token: done.token,
            visitor_token_expire_time: Some(convert::ts(done.token_expires_at)),
            conversations: done.chats.into_iter().map(convert::conversation).collect(),
        }))
    }

    async fn start_chat(
        &self,
        req: Request<pb::StartChatRequest>,
    ) -> Result<Response<pb::StartChatResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let text = if r.initial_message.trim().is_empty() {
            None
        } else {
            v.check(message_text("initial_message", &r.initial_message))
        };
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let started = visitors::start_chat(self.engine(), &s, text.map(|t| (t, rid))).await?;
        Ok(Response::new(pb::StartChatResponse {
            conversation: Some(convert::conversation(started.chat)),
            resumed: started.resumed,
            initial_message: started.initial.map(convert::message),
            queue_status: Some(queue_status_out(started.status)),
        }))
    }

    async fn send_visitor_message(
        &self,
        req: Request<pb::SendVisitorMessageRequest>,
    ) -> Result<Response<pb::SendVisitorMessageResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
        match pb::MessageType::try_from(r.r#type) {
            Ok(pb::MessageType::Unspecified | pb::MessageType::Text) => {}
            Err(_) => v.add(
                "type",
                "unknown message type; only MESSAGE_TYPE_TEXT is accepted",
            ),
        }
        let text = v.check(validate::text("text", &r.text, MAX_TEXT_CHARS));
        let rid = request_id(&mut v, &r.request_id);
        v.finish()?;
        let text = text.ok_or_else(|| AppError::Internal("validated text missing".into()))?;
        let sent = conversations::submit(self.engine(), &s, conv, text, rid)
            .await?
            .await?;
        Ok(Response::new(pb::SendVisitorMessageResponse {
            message_id: sent.id.to_string(),
            seq: convert::seq_out(sent.seq),
            create_time: Some(convert::ts(sent.created_at)),
        }))
    }

    async fn list_visitor_messages(
        &self,
        req: Request<pb::ListVisitorMessagesRequest>,
    ) -> Result<Response<pb::ListVisitorMessagesResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let r = req.into_inner();
        let page = PageRequest {
            conversation_id: &r.conversation_id,
            direction: r.direction,
            anchor_seq: u64::from(r.anchor_seq),
            page_size: r.page_size,
            page_token: &r.page_token,
        };
        let (messages, next_page_token) = page.list(self.engine(), &s, Violations::new()).await?;
        Ok(Response::new(pb::ListVisitorMessagesResponse {
            messages,
            next_page_token,
        }))
    }

    async fn get_queue_status(
        &self,
        req: Request<pb::GetQueueStatusRequest>,
    ) -> Result<Response<pb::GetQueueStatusResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let mut v = Violations::new();
        let conv = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let status = visitors::queue_status(self.engine(), &s, conv).await?;
        Ok(Response::new(pb::GetQueueStatusResponse {
            queue_status: Some(queue_status_out(status)),
        }))
    }

    type SubscribeVisitorStream = Streaming<pb::SubscribeVisitorResponse>;

    async fn subscribe_visitor(
        &self,
        req: Request<pb::SubscribeVisitorRequest>,
    ) -> Result<Response<Self::SubscribeVisitorStream>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        // Only a visitor token follows chats; a bare widget key has none to follow.
        crate::domain::participants::Participant::of(&s)?;
        let mut v = Violations::new();
        let cursors = cursors(&mut v, &req.get_ref().cursors);
        v.finish()?;
        if !self.bus.healthy() {
            return Err(AppError::Unavailable("event bus unavailable".into()).into());
        }
        let items = stream::subscribe(self.streams.clone(), s, cursors).map(|r| {
            r.map(|item| pb::SubscribeVisitorResponse {
                item: Some(convert::stream_item(item)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(Paced::new(items))))
    }

    async fn set_visitor_typing(
        &self,
        req: Request<pb::SetVisitorTypingRequest>,
    ) -> Result<Response<pb::SetVisitorTypingResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
        v.finish()?;
        conversations::set_typing(self.engine(), &s, conv, r.typing).await?;
        Ok(Response::new(pb::SetVisitorTypingResponse {}))
    }

    async fn end_chat(
        &self,
        req: Request<pb::EndChatRequest>,
    ) -> Result<Response<pb::EndChatResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let mut v = Violations::new();
        let conv = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let c = visitors::end_chat(self.engine(), &s, conv).await?;
        Ok(Response::new(pb::EndChatResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn submit_rating(
        &self,
        req: Request<pb::SubmitRatingRequest>,
    ) -> Result<Response<pb::SubmitRatingResponse>, Status> {
        self.admit(&req).await?;
        let s = scope::visitor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let conv = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let score = v.check(visitors::score("score", r.score));
        let comment = v.check(validate::optional_text(
            "comment",
            &r.comment,
            visitors::MAX_COMMENT,
        ));
        v.finish()?;
        let (Some(score), Some(comment)) = (score, comment) else {
            return Err(AppError::Internal("validated rating missing".into()).into());
        };
        let rating = visitors::submit_rating(self.engine(), &s, conv, score, comment).await?;
        Ok(Response::new(pb::SubmitRatingResponse {
            conversation_id: rating.conversation_id.to_string(),
            score: u32::from(rating.score),
            comment: rating.comment,
            agent_id: rating.agent.map(|a| a.to_string()).unwrap_or_default(),
            create_time: Some(convert::ts(rating.created_at)),
        }))
    }
}
