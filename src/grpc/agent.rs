//! AgentService: agent administration and self-set status.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, scope};
use crate::domain::agents::{self, AgentUpdate, NewAgent};
use crate::domain::{Engine, validate};
use crate::error::{AppError, Violations};
use crate::ids::UserId;
use crate::pb;
use crate::pb::agent_service_server::AgentService;
use crate::tenancy::Role;

/// Handler of AgentService.
pub struct AgentApi {
    engine: Arc<Engine>,
}

impl AgentApi {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn agent_id(v: &mut Violations, raw: &str) -> UserId {
    v.check(validate::id("agent_id", raw, UserId::parse))
        .unwrap_or_else(UserId::new)
}

fn capacity(v: &mut Violations, raw: u32) -> u32 {
    if raw > 100 {
        v.add("max_concurrent_chats", "must be 0-100");
    }
    raw.min(100)
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn create_agent(
        &self,
        req: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let email = v.check(validate::email("email", &r.email));
        let display_name = v.check(validate::text("display_name", &r.display_name, 200));
        let role = v.check(convert::role_in("role", r.role, Some(Role::Agent)));
        let password = v.check(validate::password("password", &r.password));
        let max_concurrent_chats = capacity(&mut v, r.max_concurrent_chats);
        let skills = convert::skills(&mut v, "skills", &r.skills);
        v.finish()?;
        let (Some(email), Some(display_name), Some(role), Some(password)) =
            (email, display_name, role, password)
        else {
            return Err(AppError::Internal("validated fields missing".into()).into());
        };
        let a = agents::create(
            &self.engine,
            &s,
            NewAgent {
                email,
                display_name,
                role,
                password,
                max_concurrent_chats,
                skills,
            },
        )
        .await?;
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(convert::agent(a)),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = agent_id(&mut v, &req.get_ref().agent_id);
        v.finish()?;
        let a = agents::get(&self.engine, &s, id).await?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(convert::agent(a)),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let page = agents::list(&self.engine, &s, r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.into_iter().map(convert::agent).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_agent(
        &self,
        req: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = agent_id(&mut v, &r.agent_id);
        let display_name = r
            .display_name
            .as_deref()
            .and_then(|n| v.check(validate::text("display_name", n, 200)));
        let role = r
            .role
            .and_then(|raw| v.check(convert::role_in("role", raw, None)));
        let max = r.max_concurrent_chats.map(|c| capacity(&mut v, c));
        let skills = r
            .skills
            .map(|l| convert::skills(&mut v, "skills.skills", &l.skills));
        v.finish()?;
        let a = agents::update(
            &self.engine,
            &s,
            id,
            AgentUpdate {
                display_name,
                role,
                max_concurrent_chats: max,
                skills,
            },
        )
        .await?;
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(convert::agent(a)),
        }))
    }

    async fn deactivate_agent(
        &self,
        req: Request<pb::DeactivateAgentRequest>,
    ) -> Result<Response<pb::DeactivateAgentResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = agent_id(&mut v, &req.get_ref().agent_id);
        v.finish()?;
        let a = agents::deactivate(&self.engine, &s, id).await?;
        Ok(Response::new(pb::DeactivateAgentResponse {
            agent: Some(convert::agent(a)),
        }))
    }

    async fn set_my_status(
        &self,
        req: Request<pb::SetMyStatusRequest>,
    ) -> Result<Response<pb::SetMyStatusResponse>, Status> {
        let s = scope::agent(&req)?;
        let status = convert::status_in("status", req.get_ref().status).map_err(AppError::from)?;
        let a = agents::set_my_status(&self.engine, &s, status).await?;
        Ok(Response::new(pb::SetMyStatusResponse {
            agent: Some(convert::agent(a)),
        }))
    }
}
