//! WorkflowService: CRUD and reorder of a tenant's routing workflows (admins), and the
//! ExplainRouting dry run (any agent). The conversions between the wire messages and the
//! typed form live here; every field check comes from `domain::workflows::model`, so a bad
//! value is named by its wire path (`trigger.business_hours.hours.intervals[0].end`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, scope};
use crate::domain::routing::{Candidate, Decision, Skip, Verdict};
use crate::domain::workflows::model::{self as m, Actions, Strategy, Trigger};
use crate::domain::workflows::select::{Applied, Failed, Selection, VisitorContext};
use crate::domain::workflows::{self, NewWorkflow, Workflow, WorkflowUpdate};
use crate::domain::{Engine, validate};
use crate::error::{AppError, Violations};
use crate::ids::WorkflowId;
use crate::pb;
use crate::pb::workflow_service_server::WorkflowService;

/// Handler of WorkflowService.
pub struct WorkflowApi {
    engine: Arc<Engine>,
}

impl WorkflowApi {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn workflow_id(v: &mut Violations, field: &str, raw: &str) -> WorkflowId {
    v.check(validate::id(field, raw, WorkflowId::parse))
        .unwrap_or_else(WorkflowId::new)
}

fn list_ok(v: &mut Violations, field: &str, n: usize) -> bool {
    v.check(m::list_len(field, n)).is_some()
}

fn calendar_in(v: &mut Violations, f: &str, h: pb::BusinessHours) -> Option<m::Calendar> {
    let tz = v.check(m::time_zone(&format!("{f}.time_zone"), &h.time_zone));
    let mut intervals = Vec::new();
    if h.intervals.is_empty() {
        v.add(
            &format!("{f}.intervals"),
            "must have at least one opening interval",
        );
    }
    if list_ok(v, &format!("{f}.intervals"), h.intervals.len()) {
        for (i, iv) in h.intervals.iter().enumerate() {
            let p = format!("{f}.intervals[{i}]");
            let day = v.check(m::weekday(&format!("{p}.weekday"), iv.weekday));
            let start = v.check(m::wall_time(&format!("{p}.start"), &iv.start));
            let end = v.check(m::wall_time(&format!("{p}.end"), &iv.end));
            if let (Some(d), Some(s), Some(e)) = (day, start, end)
                && let Some(iv) = v.check(m::interval(d, s, e, &format!("{p}.end")))
            {
                intervals.push(iv);
            }
        }
    }
    let mut holidays = Vec::new();
    if list_ok(v, &format!("{f}.holidays"), h.holidays.len()) {
        for (i, d) in h.holidays.iter().enumerate() {
            if let Some(d) = v.check(m::date(&format!("{f}.holidays[{i}]"), d)) {
                holidays.push(d);
            }
        }
    }
    let mut closures = Vec::new();
    if list_ok(v, &format!("{f}.closures"), h.closures.len()) {
        for (i, c) in h.closures.into_iter().enumerate() {
            let p = format!("{f}.closures[{i}]");
            let s = convert::instant(v, &format!("{p}.start_time"), c.start_time, true);
            let e = convert::instant(v, &format!("{p}.end_time"), c.end_time, true);
            if let (Some(s), Some(e)) = (s, e)
                && let Some(c) = v.check(m::closure(s, e, &format!("{p}.end_time")))
            {
                closures.push(c);
            }
        }
    }
    Some(m::Calendar {
        time_zone: tz?,
        intervals,
        holidays,
        closures,
    })
}

fn visitor_type_in(raw: i32) -> Option<m::VisitorType> {
    match pb::VisitorType::try_from(raw).ok()? {
        pb::VisitorType::Unspecified | pb::VisitorType::New => Some(m::VisitorType::New),
        pb::VisitorType::Returning => Some(m::VisitorType::Returning),
        pb::VisitorType::Identified => Some(m::VisitorType::Identified),
    }
}

fn visitor_type_out(t: m::VisitorType) -> pb::VisitorType {
    match t {
        m::VisitorType::New => pb::VisitorType::New,
        m::VisitorType::Returning => pb::VisitorType::Returning,
        m::VisitorType::Identified => pb::VisitorType::Identified,
    }
}

fn trigger_in(v: &mut Violations, f: &str, t: pb::WorkflowTrigger) -> Trigger {
    let mut out = Trigger::default();
    if let Some(b) = t.business_hours {
        let p = format!("{f}.business_hours.hours");
        match b.hours {
            Some(h) => {
                out.business_hours = calendar_in(v, &p, h).map(|calendar| m::HoursCondition {
                    calendar,
                    outside: b.outside,
                });
            }
            None => v.add(&p, "is required"),
        }
    }
    if list_ok(v, &format!("{f}.countries"), t.countries.len()) {
        for (i, c) in t.countries.iter().enumerate() {
            if let Some(c) = v.check(m::country(&format!("{f}.countries[{i}]"), c)) {
                out.countries.push(c);
            }
        }
    }
    if list_ok(
        v,
        &format!("{f}.page_url_patterns"),
        t.page_url_patterns.len(),
    ) {
        for (i, p) in t.page_url_patterns.iter().enumerate() {
            if let Some(p) = v.check(m::url_pattern(&format!("{f}.page_url_patterns[{i}]"), p)) {
                out.page_urls.push(p);
            }
        }
    }
    for (i, raw) in t.visitor_types.iter().enumerate() {
        match pb::VisitorType::try_from(*raw) {
            Ok(pb::VisitorType::Unspecified) | Err(_) => v.add(
                &format!("{f}.visitor_types[{i}]"),
                "must be NEW, RETURNING or IDENTIFIED",
            ),
            Ok(_) => {
                if let Some(t) = visitor_type_in(*raw).filter(|t| !out.visitor_types.contains(t)) {
                    out.visitor_types.push(t);
                }
            }
        }
    }
    if list_ok(v, &format!("{f}.attributes"), t.attributes.len()) {
        for (i, a) in t.attributes.into_iter().enumerate() {
            let p = format!("{f}.attributes[{i}]");
            let key = v.check(m::attribute_key(&format!("{p}.key"), &a.key));
            use pb::attribute_condition::Test;
            let test = match a.test {
                Some(Test::Equals(s)) => v
                    .check(m::attribute_value(&format!("{p}.equals"), &s))
                    .map(m::AttributeTest::Equals),
                Some(Test::OneOf(vals)) if vals.values.is_empty() => {
                    v.add(&format!("{p}.one_of.values"), "must not be empty");
                    None
                }
                Some(Test::OneOf(vals)) => {
                    let vs: Vec<String> = vals
                        .values
                        .iter()
                        .enumerate()
                        .filter_map(|(j, s)| {
                            v.check(m::attribute_value(&format!("{p}.one_of.values[{j}]"), s))
                        })
                        .collect();
                    Some(m::AttributeTest::OneOf(vs))
                }
                Some(Test::Present(true)) => Some(m::AttributeTest::Present),
                Some(Test::Present(false)) => {
                    v.add(&format!("{p}.present"), "must be true when set");
                    None
                }
                None => {
                    v.add(
                        &format!("{p}.test"),
                        "one of equals, one_of, present is required",
                    );
                    None
                }
            };
            if let (Some(key), Some(test)) = (key, test) {
                out.attributes.push(m::AttributeCondition { key, test });
            }
        }
    }
    out
}

fn actions_in(v: &mut Violations, f: &str, a: pb::WorkflowActions) -> Actions {
    let strategy = match pb::RoutingStrategy::try_from(a.strategy) {
        Ok(pb::RoutingStrategy::Unspecified | pb::RoutingStrategy::RoundRobin) => {
            m::Strategy::RoundRobin
        }
        Ok(pb::RoutingStrategy::LeastActive) => m::Strategy::LeastActive,
        Ok(pb::RoutingStrategy::SkillBased) => m::Strategy::SkillBased,
        Err(_) => {
            v.add(&format!("{f}.strategy"), "unknown strategy");
            m::Strategy::RoundRobin
        }
    };
    let mut required_skills: Vec<m::SkillNeed> = Vec::new();
    if list_ok(v, &format!("{f}.required_skills"), a.required_skills.len()) {
        for (i, s) in a.required_skills.iter().enumerate() {
            let p = format!("{f}.required_skills[{i}]");
            let skill = v.check(m::skill_name(&format!("{p}.skill"), &s.skill));
            let min_level = v.check(m::min_level(&format!("{p}.min_level"), s.min_level));
            let relax = v.check(m::max_wait(
                &format!("{p}.relax_after_seconds"),
                u64::from(s.relax_after_seconds),
            ));
            if let (Some(skill), Some(min_level), Some(relax_after_seconds)) =
                (skill, min_level, relax)
            {
                if required_skills.iter().any(|n| n.skill == skill) {
                    v.add(&format!("{p}.skill"), "is listed twice");
                }
                required_skills.push(m::SkillNeed {
                    skill,
                    min_level,
                    relax_after_seconds,
                });
            }
        }
    }
    let msg = |v: &mut Violations, name: &str, s: &str| {
        v.check(m::message(&format!("{f}.{name}"), s))
            .unwrap_or_default()
    };
    let welcome_message = msg(v, "welcome_message", &a.welcome_message);
    let queue_message = msg(v, "queue_message", &a.queue_message);
    let max_wait_message = msg(v, "max_wait_message", &a.max_wait_message);
    let max_wait_seconds = v
        .check(m::max_wait(
            &format!("{f}.max_wait_seconds"),
            u64::from(a.max_wait_seconds),
        ))
        .flatten();
    let mut overflow = Vec::new();
    for (i, s) in a.overflow_skills.iter().enumerate() {
        if let Some(n) = v.check(m::skill_name(&format!("{f}.overflow_skills[{i}]"), s)) {
            overflow.push(n);
        }
    }
    let on_max_wait = match pb::MaxWaitAction::try_from(a.max_wait_action) {
        Ok(pb::MaxWaitAction::Unspecified | pb::MaxWaitAction::KeepWaiting) => {
            m::OnMaxWait::KeepWaiting
        }
        Ok(pb::MaxWaitAction::Overflow) if overflow.is_empty() => {
            m::OnMaxWait::Overflow(m::OverflowTarget::AllAgents)
        }
        Ok(pb::MaxWaitAction::Overflow) => {
            m::OnMaxWait::Overflow(m::OverflowTarget::Skills(std::mem::take(&mut overflow)))
        }
        Ok(pb::MaxWaitAction::OfflineMessage) => m::OnMaxWait::OfflineMessage,
        Ok(pb::MaxWaitAction::Close) => m::OnMaxWait::Close,
        Err(_) => {
            v.add(&format!("{f}.max_wait_action"), "unknown action");
            m::OnMaxWait::KeepWaiting
        }
    };
    if !overflow.is_empty() {
        v.add(
            &format!("{f}.overflow_skills"),
            "needs max_wait_action OVERFLOW",
        );
    }
    let priority = v
        .check(m::priority(&format!("{f}.priority"), i64::from(a.priority)))
        .unwrap_or(0);
    let reroute_after_seconds = v
        .check(m::max_wait(
            &format!("{f}.reroute_after_seconds"),
            u64::from(a.reroute_after_seconds),
        ))
        .flatten();
    let offline_grace_seconds = v
        .check(m::max_wait(
            &format!("{f}.offline_grace_seconds"),
            u64::from(a.offline_grace_seconds),
        ))
        .flatten()
        .unwrap_or(m::DEFAULT_OFFLINE_GRACE_SECONDS);
    let offer_timeout_seconds = v
        .check(m::max_wait(
            &format!("{f}.offer_timeout_seconds"),
            u64::from(a.offer_timeout_seconds),
        ))
        .flatten();
    Actions {
        auto_assign: a.auto_assign,
        strategy,
        required_skills,
        welcome_message,
        queue_message,
        max_wait_seconds,
        on_max_wait,
        max_wait_message,
        priority,
        reroute_after_seconds,
        offline_grace_seconds,
        offer_timeout_seconds,
    }
}

fn calendar_out(c: m::Calendar) -> pb::BusinessHours {
    pb::BusinessHours {
        time_zone: c.time_zone,
        intervals: c
            .intervals
            .into_iter()
            .map(|i| pb::OpeningInterval {
                weekday: u32::from(i.weekday),
                start: i.start.to_string(),
                end: i.end.to_string(),
            })
            .collect(),
        holidays: c
            .holidays
            .iter()
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect(),
        closures: c
            .closures
            .into_iter()
            .map(|c| pb::Closure {
                start_time: Some(convert::ts(c.start)),
                end_time: Some(convert::ts(c.end)),
            })
            .collect(),
    }
}

fn trigger_out(t: Trigger) -> pb::WorkflowTrigger {
    use pb::attribute_condition::Test;
    pb::WorkflowTrigger {
        business_hours: t.business_hours.map(|h| pb::BusinessHoursCondition {
            hours: Some(calendar_out(h.calendar)),
            outside: h.outside,
        }),
        countries: t.countries,
        page_url_patterns: t.page_urls,
        visitor_types: t
            .visitor_types
            .into_iter()
            .map(|v| visitor_type_out(v) as i32)
            .collect(),
        attributes: t
            .attributes
            .into_iter()
            .map(|a| pb::AttributeCondition {
                key: a.key,
                test: Some(match a.test {
                    m::AttributeTest::Equals(s) => Test::Equals(s),
                    m::AttributeTest::OneOf(values) => Test::OneOf(pb::AttributeValues { values }),
                    m::AttributeTest::Present => Test::Present(true),
                }),
            })
            .collect(),
    }
}

fn strategy_out(s: m::Strategy) -> pb::RoutingStrategy {
    match s {
        m::Strategy::RoundRobin => pb::RoutingStrategy::RoundRobin,
        m::Strategy::LeastActive => pb::RoutingStrategy::LeastActive,
        m::Strategy::SkillBased => pb::RoutingStrategy::SkillBased,
    }
}

fn actions_out(a: Actions) -> pb::WorkflowActions {
    let (action, overflow_skills) = match a.on_max_wait {
        m::OnMaxWait::KeepWaiting => (pb::MaxWaitAction::KeepWaiting, vec![]),
        m::OnMaxWait::Overflow(m::OverflowTarget::AllAgents) => {
            (pb::MaxWaitAction::Overflow, vec![])
        }
        m::OnMaxWait::Overflow(m::OverflowTarget::Skills(s)) => (pb::MaxWaitAction::Overflow, s),
        m::OnMaxWait::OfflineMessage => (pb::MaxWaitAction::OfflineMessage, vec![]),
        m::OnMaxWait::Close => (pb::MaxWaitAction::Close, vec![]),
    };
    pb::WorkflowActions {
        auto_assign: a.auto_assign,
        strategy: strategy_out(a.strategy) as i32,
        required_skills: a
            .required_skills
            .into_iter()
            .map(|n| pb::RequiredSkill {
                skill: n.skill,
                min_level: n.min_level.map_or(0, |l| u32::try_from(l).unwrap_or(0)),
                relax_after_seconds: n.relax_after_seconds.unwrap_or(0),
            })
            .collect(),
        welcome_message: a.welcome_message,
        queue_message: a.queue_message,
        max_wait_seconds: a.max_wait_seconds.unwrap_or(0),
        max_wait_action: action as i32,
        max_wait_message: a.max_wait_message,
        priority: a.priority,
        overflow_skills,
        reroute_after_seconds: a.reroute_after_seconds.unwrap_or(0),
        offline_grace_seconds: a.offline_grace_seconds,
        offer_timeout_seconds: a.offer_timeout_seconds.unwrap_or(0),
    }
}

fn workflow_out(w: Workflow) -> pb::Workflow {
    pb::Workflow {
        id: w.id.to_string(),
        name: w.name,
        enabled: w.enabled,
        position: u32::try_from(w.position).unwrap_or(0),
        trigger: Some(trigger_out(w.definition.trigger)),
        actions: Some(actions_out(w.definition.actions)),
        is_default: w.is_default,
        create_time: Some(convert::ts(w.created_at)),
        update_time: Some(convert::ts(w.updated_at)),
    }
}

fn failed_kind(f: &Failed) -> pb::FailedCondition {
    match f {
        Failed::Disabled => pb::FailedCondition::Disabled,
        Failed::BusinessHours { .. } => pb::FailedCondition::BusinessHours,
        Failed::Country { .. } => pb::FailedCondition::Country,
        Failed::PageUrl { .. } => pb::FailedCondition::PageUrl,
        Failed::VisitorType { .. } => pb::FailedCondition::VisitorType,
        Failed::Attribute { .. } => pb::FailedCondition::Attribute,
        Failed::Shadowed { .. } => pb::FailedCondition::Shadowed,
    }
}

fn verdict_out(v: &Verdict) -> pb::CandidateVerdict {
    match v {
        Verdict::Chosen { .. } => pb::CandidateVerdict::Chosen,
        Verdict::Outranked { .. } => pb::CandidateVerdict::Outranked,
        Verdict::Skipped(Skip::NotAvailable { .. }) => pb::CandidateVerdict::NotAvailable,
        Verdict::Skipped(Skip::Offline) => pb::CandidateVerdict::Offline,
        Verdict::Skipped(Skip::AtCapacity { .. }) => pb::CandidateVerdict::AtCapacity,
        Verdict::Skipped(Skip::MissingSkill { .. }) => pb::CandidateVerdict::MissingSkill,
        Verdict::Skipped(Skip::SkillTooLow { .. }) => pb::CandidateVerdict::SkillTooLow,
    }
}

fn explanation_out(s: Selection, d: Decision) -> pb::ExplainRoutingResponse {
    let (source, workflow_id, workflow_name) = match s.applied {
        Applied::Workflow { id, name } => (pb::SelectionSource::Workflow, id.to_string(), name),
        Applied::TenantDefault { id, name } => {
            (pb::SelectionSource::TenantDefault, id.to_string(), name)
        }
        Applied::BuiltIn => (pb::SelectionSource::BuiltIn, String::new(), String::new()),
    };
    pb::ExplainRoutingResponse {
        source: source as i32,
        workflow_id,
        workflow_name,
        actions: Some(actions_out(s.actions)),
        misses: s
            .misses
            .into_iter()
            .map(|m| pb::WorkflowMiss {
                workflow_id: m.workflow_id.to_string(),
                workflow_name: m.name,
                condition: failed_kind(&m.failed) as i32,
                message: m.message,
            })
            .collect(),
        relaxed_skills: d.relaxed_skills,
        chosen_agent_id: d.chosen.map(|a| a.to_string()).unwrap_or_default(),
        candidates: candidates_out(d.strategy, d.candidates),
    }
}

/// Routing candidates on the wire (ExplainRouting, ExplainAssignment).
pub(super) fn candidates_out(strategy: Strategy, list: Vec<Candidate>) -> Vec<pb::AgentCandidate> {
    list.into_iter()
        .map(|c| pb::AgentCandidate {
            agent_id: c.agent.to_string(),
            message: c.message(strategy),
            verdict: verdict_out(&c.verdict) as i32,
            display_name: c.name,
        })
        .collect()
}

fn visitor_in(v: &mut Violations, r: Option<pb::RoutingVisitor>) -> VisitorContext {
    let r = r.unwrap_or_default();
    let country = if r.country.trim().is_empty() {
        None
    } else {
        v.check(m::country("visitor.country", &r.country))
    };
    if r.page_url.len() > 8192 {
        v.add("visitor.page_url", "must be at most 8192 bytes");
    }
    let visitor_type = match pb::VisitorType::try_from(r.visitor_type) {
        Ok(_) => visitor_type_in(r.visitor_type).unwrap_or(m::VisitorType::New),
        Err(_) => {
            v.add("visitor.visitor_type", "unknown visitor type");
            m::VisitorType::New
        }
    };
    if r.attributes.len() > m::MAX_LIST {
        v.add("visitor.attributes", "must have at most 200 entries");
    }
    VisitorContext {
        country,
        page_url: r.page_url,
        visitor_type,
        attributes: r.attributes.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    async fn create_workflow(
        &self,
        req: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::CreateWorkflowResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let name = v.check(validate::text("name", &r.name, 200));
        let trigger = r
            .trigger
            .map(|t| trigger_in(&mut v, "trigger", t))
            .unwrap_or_default();
        let actions = r
            .actions
            .map(|a| actions_in(&mut v, "actions", a))
            .unwrap_or_default();
        v.finish()?;
        let name = name.ok_or_else(|| AppError::Internal("validated name missing".into()))?;
        let w = workflows::create(
            &self.engine,
            &s,
            NewWorkflow {
                name,
                enabled: r.enabled,
                is_default: r.is_default,
                definition: m::Definition {
                    trigger,
                    actions,
                    ..Default::default()
                },
            },
        )
        .await?;
        Ok(Response::new(pb::CreateWorkflowResponse {
            workflow: Some(workflow_out(w)),
        }))
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = workflow_id(&mut v, "workflow_id", &req.get_ref().workflow_id);
        v.finish()?;
        let w = workflows::get(&self.engine, &s, id).await?;
        Ok(Response::new(pb::GetWorkflowResponse {
            workflow: Some(workflow_out(w)),
        }))
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let s = scope::agent(&req)?;
        let list = workflows::list(&self.engine, &s).await?;
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: list.into_iter().map(workflow_out).collect(),
        }))
    }

    async fn update_workflow(
        &self,
        req: Request<pb::UpdateWorkflowRequest>,
    ) -> Result<Response<pb::UpdateWorkflowResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = workflow_id(&mut v, "workflow_id", &r.workflow_id);
        let name = r
            .name
            .as_deref()
            .and_then(|n| v.check(validate::text("name", n, 200)));
        let trigger = r.trigger.map(|t| trigger_in(&mut v, "trigger", t));
        let actions = r.actions.map(|a| actions_in(&mut v, "actions", a));
        v.finish()?;
        let w = workflows::update(
            &self.engine,
            &s,
            id,
            WorkflowUpdate {
                name,
                enabled: r.enabled,
                is_default: r.is_default,
                trigger,
                actions,
            },
        )
        .await?;
        Ok(Response::new(pb::UpdateWorkflowResponse {
            workflow: Some(workflow_out(w)),
        }))
    }

    async fn delete_workflow(
        &self,
        req: Request<pb::DeleteWorkflowRequest>,
    ) -> Result<Response<pb::DeleteWorkflowResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let id = workflow_id(&mut v, "workflow_id", &req.get_ref().workflow_id);
        v.finish()?;
        workflows::delete(&self.engine, &s, id).await?;
        Ok(Response::new(pb::DeleteWorkflowResponse {}))
    }

    async fn reorder_workflows(
        &self,
        req: Request<pb::ReorderWorkflowsRequest>,
    ) -> Result<Response<pb::ReorderWorkflowsResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let mut ids: Vec<WorkflowId> = Vec::new();
        if r.workflow_ids.len() > workflows::MAX_WORKFLOWS as usize {
            v.add("workflow_ids", "must have at most 100 entries");
        }
        for (i, raw) in r.workflow_ids.iter().enumerate() {
            let field = format!("workflow_ids[{i}]");
            let id = workflow_id(&mut v, &field, raw);
            if ids.contains(&id) {
                v.add(&field, "is listed twice");
            }
            ids.push(id);
        }
        v.finish()?;
        let list = workflows::reorder(&self.engine, &s, &ids).await?;
        Ok(Response::new(pb::ReorderWorkflowsResponse {
            workflows: list.into_iter().map(workflow_out).collect(),
        }))
    }

    async fn explain_routing(
        &self,
        req: Request<pb::ExplainRoutingRequest>,
    ) -> Result<Response<pb::ExplainRoutingResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let visitor = visitor_in(&mut v, r.visitor);
        let at = match r.at_time {
            Some(t) => convert::instant(&mut v, "at_time", Some(t), true),
            None => None,
        };
        v.finish()?;
        let x =
            workflows::explain(&self.engine, &s, &visitor, at, u64::from(r.waited_seconds)).await?;
        Ok(Response::new(explanation_out(x.selection, x.decision)))
    }
}
