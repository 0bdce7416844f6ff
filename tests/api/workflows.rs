//! WorkflowService: admins manage ordered workflows with field-level validation, tenants
//! never see each other's, ExplainRouting tells any agent which workflow and agent a visitor
//! would get and why, and `chat-engine workflow import` reads the brief's JSON shape.

use std::time::Duration;

use chat_engine_client::pb;
use pb::workflow_service_client::WorkflowServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::harness::{Events, TestApp, bearer, violated_fields};

/// WorkflowService as one caller uses it: each call answers what their client gets, the
/// answer or the status.
#[derive(Clone, Copy)]
struct Flows<'a> {
    app: &'a TestApp,
    token: &'a str,
}

fn flows<'a>(app: &'a TestApp, token: &'a str) -> Flows<'a> {
    Flows { app, token }
}

impl Flows<'_> {
    fn client(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::new(self.app.channel.clone())
    }

    async fn create(&self, req: pb::CreateWorkflowRequest) -> Result<pb::Workflow, Status> {
        let w = self
            .client()
            .create_workflow(bearer(req, self.token))
            .await?;
        Ok(w.into_inner().workflow.expect("workflow"))
    }

    async fn get(&self, id: &str) -> Result<pb::Workflow, Status> {
        let req = pb::GetWorkflowRequest {
            workflow_id: id.into(),
        };
        let w = self.client().get_workflow(bearer(req, self.token)).await?;
        Ok(w.into_inner().workflow.expect("workflow"))
    }

    /// Updates workflow `id` with what `change` names.
    async fn update(
        &self,
        id: &str,
        change: pb::UpdateWorkflowRequest,
    ) -> Result<pb::Workflow, Status> {
        let req = pb::UpdateWorkflowRequest {
            workflow_id: id.into(),
            ..change
        };
        let w = self
            .client()
            .update_workflow(bearer(req, self.token))
            .await?;
        Ok(w.into_inner().workflow.expect("workflow"))
    }

    async fn delete(&self, id: &str) -> Result<(), Status> {
        let req = pb::DeleteWorkflowRequest {
            workflow_id: id.into(),
        };
        self.client()
            .delete_workflow(bearer(req, self.token))
            .await?;
        Ok(())
    }

    async fn reorder(&self, ids: &[&str]) -> Result<Vec<pb::Workflow>, Status> {
        let req = pb::ReorderWorkflowsRequest {
            workflow_ids: ids.iter().map(|&id| id.to_owned()).collect(),
        };
        let r = self
            .client()
            .reorder_workflows(bearer(req, self.token))
            .await?;
        Ok(r.into_inner().workflows)
    }

    async fn list(&self) -> Result<Vec<pb::Workflow>, Status> {
        let req = pb::ListWorkflowsRequest {};
        let r = self
            .client()
            .list_workflows(bearer(req, self.token))
            .await?;
        Ok(r.into_inner().workflows)
    }

    async fn explain(
        &self,
        req: pb::ExplainRoutingRequest,
    ) -> Result<pb::ExplainRoutingResponse, Status> {
        let r = self
            .client()
            .explain_routing(bearer(req, self.token))
            .await?;
        Ok(r.into_inner())
    }
}

fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn berlin_office() -> pb::BusinessHoursCondition {
    pb::BusinessHoursCondition {
        hours: Some(pb::BusinessHours {
            time_zone: "Europe/Berlin".into(),
            intervals: (1..=5)
                .map(|d| pb::OpeningInterval {
                    weekday: d,
                    start: "09:00".into(),
                    end: "17:00".into(),
                })
                .collect(),
            holidays: vec!["2026-12-25".into()],
            closures: vec![],
        }),
        outside: false,
    }
}

fn create(
    name: &str,
    trigger: pb::WorkflowTrigger,
    actions: pb::WorkflowActions,
) -> pb::CreateWorkflowRequest {
    pb::CreateWorkflowRequest {
        name: name.into(),
        enabled: true,
        trigger: Some(trigger),
        actions: Some(actions),
        is_default: false,
    }
}

async fn add(app: &TestApp, token: &str, req: pb::CreateWorkflowRequest) -> pb::Workflow {
    flows(app, token)
        .create(req)
        .await
        .expect("create workflow")
}

async fn names(app: &TestApp, token: &str) -> Vec<String> {
    let list = flows(app, token).list().await.unwrap();
    list.into_iter().map(|w| w.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_read_update_reorder_and_delete_workflows() {
    let app = TestApp::spawn().await;
    let t = app.tenant("flows").await;
    let tok = &t.admin_token;
    let german = add(
        &app,
        tok,
        create(
            "German",
            pb::WorkflowTrigger {
                business_hours: Some(berlin_office()),
                countries: vec!["de".into(), "AT".into()],
                ..Default::default()
            },
            pb::WorkflowActions {
                auto_assign: true,
                strategy: pb::RoutingStrategy::SkillBased as i32,
                required_skills: vec![pb::RequiredSkill {
                    skill: "German".into(),
                    min_level: 5,
                    relax_after_seconds: 90,
                }],
                max_wait_seconds: 300,
                max_wait_action: pb::MaxWaitAction::Overflow as i32,
                overflow_skills: vec!["english".into()],
                priority: 5,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(german.position, 0);
    let trigger = german.trigger.clone().unwrap();
    assert_eq!(trigger.countries, ["DE", "AT"]);
    assert_eq!(
        trigger
            .business_hours
            .unwrap()
            .hours
            .unwrap()
            .intervals
            .len(),
        5
    );
    let actions = german.actions.clone().unwrap();
    assert_eq!(actions.required_skills[0].skill, "german");
    assert_eq!(actions.overflow_skills, ["english"]);
    let pricing = add(
        &app,
        tok,
        create(
            "Pricing",
            pb::WorkflowTrigger {
                page_url_patterns: vec!["/pricing".into()],
                ..Default::default()
            },
            pb::WorkflowActions::default(),
        ),
    )
    .await;
    let vip = add(
        &app,
        tok,
        create(
            "VIP",
            pb::WorkflowTrigger {
                attributes: vec![pb::AttributeCondition {
                    key: "plan".into(),
                    test: Some(pb::attribute_condition::Test::Equals("vip".into())),
                }],
                ..Default::default()
            },
            pb::WorkflowActions::default(),
        ),
    )
    .await;
    assert_eq!(vip.position, 2);
    assert_eq!(names(&app, tok).await, ["German", "Pricing", "VIP"]);

    let admin = flows(&app, tok);
    assert_eq!(admin.get(&german.id).await.unwrap(), german);

    // A partial update changes only what it names.
    let renamed = admin
        .update(
            &german.id,
            pb::UpdateWorkflowRequest {
                name: Some("German speakers".into()),
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "German speakers");
    assert!(!renamed.enabled);
    assert_eq!(renamed.trigger, german.trigger);
    assert_eq!(renamed.actions, german.actions);
    let retriggered = admin
        .update(
            &german.id,
            pb::UpdateWorkflowRequest {
                trigger: Some(pb::WorkflowTrigger::default()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(retriggered.trigger, Some(pb::WorkflowTrigger::default()));
    assert_eq!(retriggered.name, "German speakers");
    assert_eq!(retriggered.actions, german.actions);

    let reordered = admin
        .reorder(&[&vip.id, &german.id, &pricing.id])
        .await
        .unwrap();
    let order: Vec<(&str, u32)> = reordered
        .iter()
        .map(|w| (w.name.as_str(), w.position))
        .collect();
    assert_eq!(order, [("VIP", 0), ("German speakers", 1), ("Pricing", 2)]);
    assert_eq!(
        names(&app, tok).await,
        ["VIP", "German speakers", "Pricing"]
    );

    // A reorder must name every workflow once.
    let missing = admin.reorder(&[&vip.id, &german.id]).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&missing), ["workflow_ids"]);
    let twice = admin
        .reorder(&[&vip.id, &vip.id, &pricing.id])
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&twice), ["workflow_ids[1]"]);

    admin.delete(&pricing.id).await.unwrap();
    assert_eq!(names(&app, tok).await, ["VIP", "German speakers"]);
    let gone = admin.get(&pricing.id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // One default at most: making another the default moves the flag.
    let d1 = add(
        &app,
        tok,
        pb::CreateWorkflowRequest {
            is_default: true,
            ..create("Default 1", Default::default(), Default::default())
        },
    )
    .await;
    let d2 = add(
        &app,
        tok,
        pb::CreateWorkflowRequest {
            is_default: true,
            ..create("Default 2", Default::default(), Default::default())
        },
    )
    .await;
    let list = admin.list().await.unwrap();
    let defaults: Vec<&str> = list
        .iter()
        .filter(|w| w.is_default)
        .map(|w| w.id.as_str())
        .collect();
    assert_eq!(defaults, [d2.id.as_str()]);
    assert!(list.iter().any(|w| w.id == d1.id && !w.is_default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_workflows_are_refused_naming_each_bad_field() {
    let app = TestApp::spawn().await;
    let t = app.tenant("strict").await;
    let bad = pb::CreateWorkflowRequest {
        name: "  ".into(),
        enabled: true,
        trigger: Some(pb::WorkflowTrigger {
            business_hours: Some(pb::BusinessHoursCondition {
                hours: Some(pb::BusinessHours {
                    time_zone: "Europe/Atlantis".into(),
                    intervals: vec![
                        pb::OpeningInterval {
                            weekday: 1,
                            start: "9am".into(),
                            end: "17:00".into(),
                        },
                        pb::OpeningInterval {
                            weekday: 2,
                            start: "17:00".into(),
                            end: "09:00".into(),
                        },
                        pb::OpeningInterval {
                            weekday: 8,
                            start: "09:00".into(),
                            end: "10:00".into(),
                        },
                    ],
                    holidays: vec!["25.12.2026".into()],
                    closures: vec![pb::Closure {
                        start_time: Some(ts("2026-12-24T12:00:00Z")),
                        end_time: Some(ts("2026-12-24T11:00:00Z")),
                    }],
                }),
                outside: false,
            }),
            countries: vec!["Germany".into()],
            page_url_patterns: vec!["*".into()],
            visitor_types: vec![0],
            attributes: vec![pb::AttributeCondition {
                key: "plan".into(),
                test: None,
            }],
        }),
        actions: Some(pb::WorkflowActions {
            required_skills: vec![pb::RequiredSkill {
                skill: "bill ing".into(),
                min_level: 11,
                relax_after_seconds: 0,
            }],
            priority: 1000,
            max_wait_seconds: 1_000_000,
            ..Default::default()
        }),
        is_default: false,
    };
    let admin = flows(&app, &t.admin_token);
    let e = admin.create(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&e);
    fields.sort();
    assert_eq!(
        fields,
        [
            "actions.max_wait_seconds",
            "actions.priority",
            "actions.required_skills[0].min_level",
            "actions.required_skills[0].skill",
            "name",
            "trigger.attributes[0].test",
            "trigger.business_hours.hours.closures[0].end_time",
            "trigger.business_hours.hours.holidays[0]",
            "trigger.business_hours.hours.intervals[0].start",
            "trigger.business_hours.hours.intervals[1].end",
            "trigger.business_hours.hours.intervals[2].weekday",
            "trigger.business_hours.hours.time_zone",
            "trigger.countries[0]",
            "trigger.page_url_patterns[0]",
            "trigger.visitor_types[0]",
        ]
    );
    assert!(names(&app, &t.admin_token).await.is_empty());

    // The default workflow applies when nothing else does, so it takes no trigger.
    let e = admin
        .create(pb::CreateWorkflowRequest {
            is_default: true,
            ..create(
                "Default",
                pb::WorkflowTrigger {
                    countries: vec!["DE".into()],
                    ..Default::default()
                },
                Default::default(),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), ["trigger"]);
    let e = admin.get("nope").await.unwrap_err();
    assert_eq!(violated_fields(&e), ["workflow_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_manage_workflows_and_tenants_never_see_each_others() {
    let app = TestApp::spawn().await;
    let a = app.tenant("alpha").await;
    let b = app.tenant("bravo").await;
    let (_, agent) = app.agent(&a, "ann").await;
    let w = add(
        &app,
        &a.admin_token,
        create("Alpha flow", Default::default(), Default::default()),
    )
    .await;

    let ann = flows(&app, &agent);
    let mine = create("Mine", Default::default(), Default::default());
    let denied = [
        ann.create(mine).await.map(|_| ()),
        ann.list().await.map(|_| ()),
        ann.delete(&w.id).await,
    ];
    for d in denied {
        assert_eq!(d.unwrap_err().code(), Code::PermissionDenied);
    }
    // Any agent may ask for the dry run.
    let x = ann.explain(Default::default()).await.unwrap();
    assert_eq!(x.workflow_id, w.id);

    // Bravo's admin cannot see, change, delete or reorder Alpha's workflow.
    let other = flows(&app, &b.admin_token);
    assert!(other.list().await.unwrap().is_empty());
    let rename = pb::UpdateWorkflowRequest {
        name: Some("taken".into()),
        ..Default::default()
    };
    let refused = [
        other.get(&w.id).await.map(|_| ()),
        other.update(&w.id, rename).await.map(|_| ()),
        other.delete(&w.id).await,
        other.reorder(&[&w.id]).await.map(|_| ()),
    ];
    for e in refused {
        assert_eq!(e.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(names(&app, &a.admin_token).await, ["Alpha flow"]);
}

async fn set_status(app: &TestApp, token: &str, status: pb::AgentStatus) {
    app.agents()
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: status as i32,
            },
            token,
        ))
        .await
        .unwrap();
}

async fn add_skills(app: &TestApp, admin: &str, agent: &str, skills: &[(&str, u32)]) {
    app.agents()
        .update_agent(bearer(
            pb::UpdateAgentRequest {
                agent_id: agent.into(),
                skills: Some(pb::SkillList {
                    skills: skills
                        .iter()
                        .map(|(n, l)| pb::Skill {
                            name: (*n).into(),
                            level: *l,
                        })
                        .collect(),
                }),
                ..Default::default()
            },
            admin,
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_routing_names_the_workflow_the_misses_and_every_agents_verdict() {
    let app = TestApp::spawn().await;
    let t = app.tenant("explain").await;
    let admin = &t.admin_token;
    let german = add(
        &app,
        admin,
        create(
            "German office hours",
            pb::WorkflowTrigger {
                business_hours: Some(berlin_office()),
                countries: vec!["DE".into()],
                ..Default::default()
            },
            pb::WorkflowActions {
                auto_assign: true,
                strategy: pb::RoutingStrategy::SkillBased as i32,
                required_skills: vec![pb::RequiredSkill {
                    skill: "german".into(),
                    min_level: 5,
                    relax_after_seconds: 120,
                }],
                ..Default::default()
            },
        ),
    )
    .await;
    let fallback = add(
        &app,
        admin,
        pb::CreateWorkflowRequest {
            is_default: true,
            ..create(
                "Everyone else",
                Default::default(),
                pb::WorkflowActions {
                    auto_assign: true,
                    strategy: pb::RoutingStrategy::LeastActive as i32,
                    ..Default::default()
                },
            )
        },
    )
    .await;
    let (gerd_id, gerd) = app.agent(&t, "gerd").await;
    let (nina_id, nina) = app.agent(&t, "nina").await;
    let (olga_id, olga) = app.agent(&t, "olga").await;
    add_skills(&app, admin, &gerd_id, &[("german", 8)]).await;
    add_skills(&app, admin, &nina_id, &[("german", 3)]).await;
    for tok in [&gerd, &nina, &olga] {
        set_status(&app, tok, pb::AgentStatus::Available).await;
    }
    // Gerd and Nina hold open streams; Olga is available but has none.
    let mut streams = Vec::new();
    for tok in [&gerd, &nina] {
        let mut s = Events::open(&app, tok, &[]).await.unwrap();
        s.caught_up().await;
        streams.push(s);
    }

    let visitor = pb::RoutingVisitor {
        country: "DE".into(),
        page_url: "https://example.com/help".into(),
        visitor_type: pb::VisitorType::New as i32,
        attributes: Default::default(),
    };
    let explain = |at: &str, waited: u32| {
        let req = pb::ExplainRoutingRequest {
            visitor: Some(visitor.clone()),
            at_time: Some(ts(at)),
            waited_seconds: waited,
        };
        let gerd = flows(&app, &gerd);
        async move { gerd.explain(req).await.unwrap() }
    };
    // Presence is recorded as the streams open; wait (bounded) until both count as online.
    let mut x = explain("2026-12-01T10:00:00Z", 0).await;
    for _ in 0..100 {
        let offline = x
            .candidates
            .iter()
            .filter(|c| c.verdict == pb::CandidateVerdict::Offline as i32)
            .count();
        if offline == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        x = explain("2026-12-01T10:00:00Z", 0).await;
    }

    // Tuesday 11:00 in Berlin: the German workflow applies; only Gerd has german >= 5.
    assert_eq!(x.source, pb::SelectionSource::Workflow as i32);
    assert_eq!(x.workflow_id, german.id);
    assert_eq!(x.misses.len(), 1);
    assert_eq!(x.misses[0].workflow_id, fallback.id);
    assert_eq!(x.misses[0].condition, pb::FailedCondition::Shadowed as i32);
    assert_eq!(x.chosen_agent_id, gerd_id);
    let verdict = |x: &pb::ExplainRoutingResponse, id: &str| {
        let c = x.candidates.iter().find(|c| c.agent_id == id).unwrap();
        (
            pb::CandidateVerdict::try_from(c.verdict).unwrap(),
            c.message.clone(),
        )
    };
    assert_eq!(verdict(&x, &gerd_id).0, pb::CandidateVerdict::Chosen);
    assert_eq!(
        verdict(&x, &nina_id),
        (
            pb::CandidateVerdict::SkillTooLow,
            "agent nina: skill german level 3 < 5".to_owned()
        )
    );
    assert_eq!(
        verdict(&x, &olga_id),
        (
            pb::CandidateVerdict::Offline,
            "agent olga: offline (no open stream)".to_owned()
        )
    );
    assert_eq!(
        verdict(&x, &t.admin_id).0,
        pb::CandidateVerdict::NotAvailable
    );

    // After two minutes of waiting the skill is relaxed; Nina and Gerd are both eligible.
    let x = explain("2026-12-01T10:00:00Z", 120).await;
    assert_eq!(x.relaxed_skills, ["german"]);
    let mut both = [verdict(&x, &nina_id).0, verdict(&x, &gerd_id).0];
    both.sort();
    assert_eq!(
        both,
        [
            pb::CandidateVerdict::Chosen,
            pb::CandidateVerdict::Outranked
        ]
    );

    // Christmas Day is a holiday: the German workflow misses on business hours and the tenant
    // default applies, least-active over everyone online and available.
    let x = explain("2026-12-25T10:00:00Z", 0).await;
    assert_eq!(x.source, pb::SelectionSource::TenantDefault as i32);
    assert_eq!(x.workflow_id, fallback.id);
    assert_eq!(
        x.misses[0].condition,
        pb::FailedCondition::BusinessHours as i32
    );
    assert!(
        x.misses[0].message.contains("holiday 2026-12-25"),
        "{}",
        x.misses[0].message
    );
    assert!(!x.chosen_agent_id.is_empty());
    assert_eq!(verdict(&x, &olga_id).0, pb::CandidateVerdict::Offline);

    // A visitor from France: country miss.
    let mut req = pb::ExplainRoutingRequest {
        visitor: Some(pb::RoutingVisitor {
            country: "FR".into(),
            ..visitor.clone()
        }),
        at_time: Some(ts("2026-12-01T10:00:00Z")),
        waited_seconds: 0,
    };
    let x = flows(&app, &gerd).explain(req.clone()).await.unwrap();
    assert_eq!(x.misses[0].message, "country FR not in [DE]");
    req.visitor.as_mut().unwrap().country = "France".into();
    let e = flows(&app, &gerd).explain(req).await.unwrap_err();
    assert_eq!(violated_fields(&e), ["visitor.country"]);
    drop(streams);
}

fn import(app: &TestApp, file: &std::path::Path, slug: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chat-engine"))
        .args(["workflow", "import"])
        .arg(file)
        .args(["--tenant", slug])
        .env_remove("CHAT_ENGINE_CONFIG")
        .env("CHAT_ENGINE_DATABASE_URL", &app.app_url)
        .env("CHAT_ENGINE_MIGRATION_DATABASE_URL", &app.admin_url)
        .env("CHAT_ENGINE_OPERATOR_TOKEN", &app.operator_token)
        .env("CHAT_ENGINE_JWT_SECRET", &app.jwt_secret)
        .env(
            "CHAT_ENGINE_DATA_DIR",
            std::env::temp_dir().join("chat-engine-unused"),
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("running chat-engine workflow import")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_import_reads_the_briefs_json_shape() {
    let app = TestApp::spawn().await;
    let t = app.tenant("importer").await;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workflows.json");
    let out = import(&app, &fixture, "importer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = flows(&app, &t.admin_token);
    let list = admin.list().await.unwrap();
    let names: Vec<&str> = list.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "German business hours go to German speakers",
            "Pricing pages",
            "After hours"
        ]
    );
    let first = &list[0];
    let hours = first
        .trigger
        .as_ref()
        .unwrap()
        .business_hours
        .as_ref()
        .unwrap()
        .hours
        .as_ref()
        .unwrap();
    assert_eq!(hours.time_zone, "Europe/Berlin");
    assert_eq!(hours.intervals.len(), 6);
    assert_eq!(hours.holidays.len(), 3);
    let a = first.actions.as_ref().unwrap();
    assert_eq!(a.strategy, pb::RoutingStrategy::SkillBased as i32);
    assert_eq!(a.priority, 10);
    assert_eq!(a.required_skills[1].min_level, 5);
    assert_eq!(a.required_skills[1].relax_after_seconds, 120);
    assert_eq!(a.max_wait_action, pb::MaxWaitAction::Overflow as i32);
    assert_eq!(
        list[1].trigger.as_ref().unwrap().page_url_patterns,
        ["/pricing", "*/plans/*"]
    );
    assert_eq!(
        list[2].actions.as_ref().unwrap().max_wait_action,
        pb::MaxWaitAction::Close as i32
    );
    assert!(
        list[2]
            .trigger
            .as_ref()
            .unwrap()
            .business_hours
            .as_ref()
            .unwrap()
            .outside
    );

    // A bad file changes nothing and says which field is wrong.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"name": "ok"}, {"name": "x", "triggers": {"business_hours": {"timezone": "Europe/Berlin", "hours": {"mon": [["18:00", "09:00"]]}}}}]"#,
    )
    .unwrap();
    let out = import(&app, &bad, "importer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[1].triggers.business_hours.hours.mon[0][1]"),
        "{err}"
    );
    let out = import(&app, &fixture, "no-such-tenant");
    assert!(!out.status.success());
    assert_eq!(admin.list().await.unwrap().len(), 3);
}

/// Runs `sql` as the superuser (routing's inputs that no RPC can set yet: external chats).
async fn sql(app: &TestApp, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let mut db = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    db.batch_execute(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_snapshots_count_open_external_chats_and_follow_the_rotation() {
    let app = TestApp::spawn().await;
    let t = app.tenant("snap").await;
    // Built-in defaults apply: round-robin over everyone.
    let (busy_id, busy) = app.agent(&t, "busy").await; // capacity 2
    let (seen_id, seen) = app.agent(&t, "seen").await;
    let (fresh_id, fresh) = app.agent(&t, "fresh").await;
    let mut streams = Vec::new();
    for tok in [&busy, &seen, &fresh] {
        set_status(&app, tok, pb::AgentStatus::Available).await;
        let mut s = Events::open(&app, tok, &[]).await.unwrap();
        s.caught_up().await;
        streams.push(s);
    }
    let tenant = &t.tenant_id;
    sql(
        &app,
        &format!(
            "INSERT INTO visitors (tenant_id, visitor_id) VALUES ('{tenant}', gen_random_uuid());
             INSERT INTO conversations (tenant_id, conversation_id, kind, status, visitor_id, assigned_agent_id, closed_at)
             SELECT '{tenant}', gen_random_uuid(), 'external', s, v.visitor_id, '{busy_id}',
                    CASE WHEN s = 'closed' THEN now() END
             FROM visitors v, unnest(ARRAY['open', 'queued', 'closed']) s WHERE v.tenant_id = '{tenant}';
             UPDATE users SET last_assigned_at = now() - interval '1 hour' WHERE user_id = '{seen_id}';"
        ),
    )
    .await;
    let admin = flows(&app, &t.admin_token);
    let explain = || async { admin.explain(Default::default()).await.unwrap() };
    let mut x = explain().await;
    for _ in 0..100 {
        if !x
            .candidates
            .iter()
            .any(|c| c.verdict == pb::CandidateVerdict::Offline as i32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        x = explain().await;
    }
    assert_eq!(x.source, pb::SelectionSource::BuiltIn as i32);
    let message = |x: &pb::ExplainRoutingResponse, id: &str| {
        x.candidates
            .iter()
            .find(|c| c.agent_id == id)
            .unwrap()
            .message
            .clone()
    };
    // The closed chat does not count; the open and the queued one do.
    assert_eq!(message(&x, &busy_id), "agent busy: 2/2 chats");
    // Never assigned goes before assigned an hour ago.
    assert_eq!(x.chosen_agent_id, fresh_id);
    assert!(message(&x, &seen_id).starts_with("agent seen: eligible, ranked 2 by round_robin"));
    sql(
        &app,
        &format!("UPDATE users SET last_assigned_at = now() WHERE user_id = '{fresh_id}'"),
    )
    .await;
    assert_eq!(explain().await.chosen_agent_id, seen_id);
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_has_at_most_100_workflows_even_under_concurrent_creates() {
    let app = TestApp::spawn().await;
    let t = app.tenant("limit").await;
    for i in 0..98 {
        add(
            &app,
            &t.admin_token,
            create(&format!("w{i}"), Default::default(), Default::default()),
        )
        .await;
    }
    let admin = flows(&app, &t.admin_token);
    let attempts = (0..4).map(|i| {
        admin.create(create(
            &format!("late{i}"),
            Default::default(),
            Default::default(),
        ))
    });
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 2, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::FailedPrecondition);
    }
    let list = admin.list().await.unwrap();
    assert_eq!(list.len(), 100);
    // Positions stay distinct: concurrent creates queue behind each other.
    let mut positions: Vec<u32> = list.iter().map(|w| w.position).collect();
    positions.dedup();
    assert_eq!(positions.len(), 100);
}
