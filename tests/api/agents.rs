//! AgentService: admins manage agents; every agent sets their own status.

use chat_engine_client::pb;
use tonic::Code;

use crate::harness::{TestApp, bearer, violated_fields};

fn skill(name: &str, level: u32) -> pb::Skill {
    pb::Skill {
        name: name.into(),
        level,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_agents_and_agents_set_their_status() {
    let app = TestApp::spawn().await;
    let t = app.tenant("team").await;
    let mut c = app.agents();
    let created = c
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "Zoe@Team.example".into(),
                display_name: "Zoe".into(),
                role: pb::AgentRole::Unspecified as i32,
                password: "zoe-password-123".into(),
                max_concurrent_chats: 0,
                skills: vec![skill("Billing", 7), skill("german", 3)],
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(created.email, "zoe@team.example");
    assert_eq!(created.role, pb::AgentRole::Agent as i32);
    assert_eq!(created.status, pb::AgentStatus::Offline as i32);
    assert_eq!(created.max_concurrent_chats, 3);
    assert_eq!(
        created.skills,
        vec![skill("billing", 7), skill("german", 3)]
    );

    let dup = c
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "zoe@team.example".into(),
                display_name: "Zoe 2".into(),
                role: pb::AgentRole::Agent as i32,
                password: "zoe-password-123".into(),
                ..Default::default()
            },
            &t.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let updated = c
        .update_agent(bearer(
            pb::UpdateAgentRequest {
                agent_id: created.id.clone(),
                display_name: None,
                role: None,
                max_concurrent_chats: Some(5),
                skills: Some(pb::SkillList {
                    skills: vec![skill("technical", 9)],
                }),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(updated.display_name, "Zoe");
    assert_eq!(updated.max_concurrent_chats, 5);
    assert_eq!(updated.skills, vec![skill("technical", 9)]);

    // Zoe logs in, sets herself available, and cannot administer.
    let zoe = app
        .login("team", "zoe@team.example", "zoe-password-123")
        .await
        .unwrap()
        .access_token;
    let me = c
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: pb::AgentStatus::Available as i32,
            },
            &zoe,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(me.id, created.id);
    assert_eq!(me.status, pb::AgentStatus::Available as i32);
    let got = c
        .get_agent(bearer(
            pb::GetAgentRequest {
                agent_id: created.id.clone(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(got.status, pb::AgentStatus::Available as i32);
    let denied = c
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "eve@team.example".into(),
                display_name: "Eve".into(),
                password: "eve-password-1234".into(),
                ..Default::default()
            },
            &zoe,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad_status = c
        .set_my_status(bearer(pb::SetMyStatusRequest { status: 0 }, &zoe))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_status), ["status"]);

    // Admins cannot lock themselves out.
    let self_deactivate = c
        .deactivate_agent(bearer(
            pb::DeactivateAgentRequest {
                agent_id: t.admin_id.clone(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(self_deactivate.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_in_pages_by_email() {
    let app = TestApp::spawn().await;
    let t = app.tenant("pages").await;
    for name in ["carl", "bob", "dora", "anna"] {
        app.agent(&t, name).await;
    }
    let mut c = app.agents();
    let mut token = String::new();
    let mut emails = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_agents(bearer(
                pb::ListAgentsRequest {
                    page_size: 2,
                    page_token: token,
                },
                &t.admin_token,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        emails.extend(page.agents.into_iter().map(|a| a.email));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        emails,
        ["admin", "anna", "bob", "carl", "dora"].map(|n| format!("{n}@pages.example"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_names_each_field() {
    let app = TestApp::spawn().await;
    let t = app.tenant("input").await;
    let mut c = app.agents();
    let err = c
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "".into(),
                display_name: "\u{0007}bell".into(),
                role: 9,
                password: "x".repeat(300),
                max_concurrent_chats: 101,
                skills: vec![skill("ok", 11), skill("", 1)],
            },
            &t.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "display_name",
            "email",
            "max_concurrent_chats",
            "password",
            "role",
            "skills[0]",
            "skills[1]"
        ]
    );
    for bad_id in ["", "not-a-uuid", "123"] {
        let e = c
            .get_agent(bearer(
                pb::GetAgentRequest {
                    agent_id: bad_id.into(),
                },
                &t.admin_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&e), ["agent_id"]);
    }
    let negative = c
        .list_agents(bearer(
            pb::ListAgentsRequest {
                page_size: -1,
                page_token: String::new(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&negative), ["page_size"]);
}

/// UpdateAgent follows the partial update convention: a field the request does not name is
/// left as it was; a present but empty skill list clears the skills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_agent_changes_only_the_fields_it_names() {
    let app = TestApp::spawn().await;
    let t = app.tenant("partial").await;
    let mut c = app.agents();
    let created = c
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "max@partial.example".into(),
                display_name: "Max".into(),
                role: pb::AgentRole::Agent as i32,
                password: "max-password-1234".into(),
                max_concurrent_chats: 4,
                skills: vec![skill("billing", 7)],
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let update = |req: pb::UpdateAgentRequest| {
        let mut c = c.clone();
        let token = t.admin_token.clone();
        async move {
            c.update_agent(bearer(req, &token))
                .await
                .unwrap()
                .into_inner()
                .agent
                .unwrap()
        }
    };

    let promoted = update(pb::UpdateAgentRequest {
        agent_id: created.id.clone(),
        role: Some(pb::AgentRole::Admin as i32),
        ..Default::default()
    })
    .await;
    assert_eq!(
        promoted,
        pb::Agent {
            role: pb::AgentRole::Admin as i32,
            ..created.clone()
        }
    );

    let renamed = update(pb::UpdateAgentRequest {
        agent_id: created.id.clone(),
        display_name: Some("Maxine".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        renamed,
        pb::Agent {
            display_name: "Maxine".into(),
            ..promoted.clone()
        }
    );

    let more_chats = update(pb::UpdateAgentRequest {
        agent_id: created.id.clone(),
        max_concurrent_chats: Some(6),
        ..Default::default()
    })
    .await;
    assert_eq!(
        more_chats,
        pb::Agent {
            max_concurrent_chats: 6,
            ..renamed.clone()
        }
    );

    let no_skills = update(pb::UpdateAgentRequest {
        agent_id: created.id.clone(),
        skills: Some(pb::SkillList { skills: vec![] }),
        ..Default::default()
    })
    .await;
    assert_eq!(
        no_skills,
        pb::Agent {
            skills: vec![],
            ..more_chats.clone()
        }
    );

    // A request naming nothing changes nothing.
    let untouched = update(pb::UpdateAgentRequest {
        agent_id: created.id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(untouched, no_skills);
}
