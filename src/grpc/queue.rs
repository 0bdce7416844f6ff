//! QueueService: the queue and agents' routing states as agents and supervisors see them (as
//! lists, and as WatchQueue's stream of snapshots), and the agent side of who serves a chat
//! (accept, transfer, close, ExplainAssignment). The rules live in `domain::assignment` and
//! `domain::visitors`; when a snapshot is read and sent, in `realtime::queue`.

use std::sync::Arc;

use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use super::conversation::conv_id;
use super::pace::Paced;
use super::workflow::candidates_out;
use super::{Streaming, convert, scope};
use crate::domain::assignment::{self, AssignmentRecord, QueuedChat, TransferTarget, Via};
use crate::domain::paging::page_size;
use crate::domain::queue_view::Board;
use crate::domain::routing::AgentSnapshot;
use crate::domain::workflows::model as m;
use crate::domain::{Engine, validate, visitors};
use crate::error::Violations;
use crate::ids::UserId;
use crate::pb;
use crate::pb::queue_service_server::QueueService;
use crate::realtime::{StreamContext, queue};

/// Handler of QueueService.
pub struct QueueApi {
    engine: Arc<Engine>,
    streams: Arc<StreamContext>,
}

impl QueueApi {
    /// A handler over the streams' engine, watching the queue through their queue watch.
    pub fn new(streams: Arc<StreamContext>) -> Self {
        Self {
            engine: streams.engine.clone(),
            streams,
        }
    }
}

fn board_out(b: &Board) -> pb::WatchQueueResponse {
    pb::WatchQueueResponse {
        chats: b.chats.iter().cloned().map(waiting_out).collect(),
        total: b.total,
        agents: b.agents.iter().cloned().map(agent_state_out).collect(),
    }
}

fn waiting_out(q: QueuedChat) -> pb::WaitingChat {
    pb::WaitingChat {
        conversation: Some(convert::conversation(q.chat)),
        position: q.position,
        priority: q.priority,
        enqueue_time: Some(convert::ts(q.enqueued_at)),
        workflow_id: q.workflow_id.map(|w| w.to_string()).unwrap_or_default(),
        required_skills: q.required_skills,
        auto_assign: q.auto_assign,
        visitor_name: q.visitor_name,
    }
}

fn agent_state_out(a: AgentSnapshot) -> pb::AgentState {
    pb::AgentState {
        agent_id: a.id.to_string(),
        display_name: a.name,
        status: convert::status_out(a.status) as i32,
        online: a.online,
        open_chats: a.open_chats,
        capacity: a.capacity,
        last_assign_time: a.last_assigned_at.map(convert::ts),
    }
}

fn via_out(v: Via) -> pb::AssignmentVia {
    match v {
        Via::Dispatcher => pb::AssignmentVia::Dispatcher,
        Via::Accepted => pb::AssignmentVia::Accepted,
        Via::Transfer => pb::AssignmentVia::Transfer,
        Via::Admin => pb::AssignmentVia::Admin,
        Via::Offered => pb::AssignmentVia::Offered,
    }
}

fn assignment_out(a: AssignmentRecord) -> pb::Assignment {
    let (strategy, candidates, relaxed_skills) = match a.decision {
        Some(d) => (
            d.strategy.as_str().to_owned(),
            candidates_out(d.strategy, d.candidates),
            d.relaxed_skills,
        ),
        None => ("manual".to_owned(), Vec::new(), Vec::new()),
    };
    pb::Assignment {
        agent_id: a.agent.map(|u| u.to_string()).unwrap_or_default(),
        workflow_id: a.workflow_id.map(|w| w.to_string()).unwrap_or_default(),
        via: via_out(a.via) as i32,
        strategy,
        candidates,
        relaxed_skills,
        assign_time: Some(convert::ts(a.assigned_at)),
        end_time: a.ended_at.map(convert::ts),
    }
}

fn target_in(v: &mut Violations, t: Option<pb::transfer_chat_request::Target>) -> TransferTarget {
    use pb::transfer_chat_request::Target;
    match t {
        Some(Target::AgentId(raw)) => TransferTarget::Agent(
            v.check(validate::id("agent_id", &raw, UserId::parse))
                .unwrap_or_else(UserId::new),
        ),
        Some(Target::Skill(raw)) => {
            TransferTarget::Skill(v.check(m::skill_name("skill", &raw)).unwrap_or_default())
        }
        None => {
            v.add("target", "name an agent_id or a skill");
            TransferTarget::Skill(String::new())
        }
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn list_waiting_chats(
        &self,
        req: Request<pb::ListWaitingChatsRequest>,
    ) -> Result<Response<pb::ListWaitingChatsResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let size = page_size(r.page_size)?;
        let (page, total) = assignment::waiting_list(&self.engine, &s, size, &r.page_token).await?;
        Ok(Response::new(pb::ListWaitingChatsResponse {
            chats: page.items.into_iter().map(waiting_out).collect(),
            next_page_token: page.next_page_token,
            total,
        }))
    }

    async fn list_agent_states(
        &self,
        req: Request<pb::ListAgentStatesRequest>,
    ) -> Result<Response<pb::ListAgentStatesResponse>, Status> {
        let s = scope::agent(&req)?;
        let agents = assignment::agent_states(&self.engine, &s).await?;
        Ok(Response::new(pb::ListAgentStatesResponse {
            agents: agents.into_iter().map(agent_state_out).collect(),
        }))
    }

    type WatchQueueStream = Streaming<pb::WatchQueueResponse>;

    async fn watch_queue(
        &self,
        req: Request<pb::WatchQueueRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        let s = scope::agent(&req)?;
        let boards = queue::board_stream(&self.streams, s)?
            .map(|r| r.map(|b| board_out(&b)).map_err(Status::from));
        Ok(Response::new(Box::pin(Paced::new(boards))))
    }

    async fn accept_chat(
        &self,
        req: Request<pb::AcceptChatRequest>,
    ) -> Result<Response<pb::AcceptChatResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let c = assignment::accept(&self.engine, &s, id).await?;
        Ok(Response::new(pb::AcceptChatResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn decline_chat(
        &self,
        req: Request<pb::DeclineChatRequest>,
    ) -> Result<Response<pb::DeclineChatResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let c = assignment::decline(&self.engine, &s, id).await?;
        Ok(Response::new(pb::DeclineChatResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn transfer_chat(
        &self,
        req: Request<pb::TransferChatRequest>,
    ) -> Result<Response<pb::TransferChatResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &r.conversation_id);
        let target = target_in(&mut v, r.target);
        v.finish()?;
        let c = assignment::transfer(&self.engine, &s, id, target).await?;
        Ok(Response::new(pb::TransferChatResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn close_chat(
        &self,
        req: Request<pb::CloseChatRequest>,
    ) -> Result<Response<pb::CloseChatResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let c = visitors::end_chat(&self.engine, &s, id).await?;
        Ok(Response::new(pb::CloseChatResponse {
            conversation: Some(convert::conversation(c)),
        }))
    }

    async fn explain_assignment(
        &self,
        req: Request<pb::ExplainAssignmentRequest>,
    ) -> Result<Response<pb::ExplainAssignmentResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = conv_id(&mut v, "conversation_id", &req.get_ref().conversation_id);
        v.finish()?;
        let list = assignment::explain(&self.engine, &s, id).await?;
        Ok(Response::new(pb::ExplainAssignmentResponse {
            assignments: list.into_iter().map(assignment_out).collect(),
        }))
    }
}
