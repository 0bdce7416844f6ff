//! The dispatcher and the queue, from outside: visitors start chats through the widget API,
//! agents open streams and change status through theirs, and what a user would notice is
//! checked: which chats are assigned to whom, in which order, nobody over capacity (also
//! with two nodes dispatching at once), capacity changes, a max wait that fires across a
//! restart, and the agent side of a chat (accept, transfer, close, ExplainAssignment).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use chat_engine::realtime::stream;
use chat_engine::tenancy::TenantScope;
use chat_engine_client::pb;
use futures_util::StreamExt;
use futures_util::future::join_all;
use pb::queue_service_client::QueueServiceClient;
use pb::workflow_service_client::WorkflowServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Events, KillableNode, TenantFixture, TestApp, bearer};
use crate::visitors::{ORIGIN, Widget, init_req, posted, session, status_changed, widget_key};

/// A guard against a dispatcher that never acts hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

fn queue(channel: &Channel) -> QueueServiceClient<Channel> {
    QueueServiceClient::new(channel.clone())
}

/// Polls `f` until it answers Some, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates an agent of `t` with `capacity` seats and `skills`, logged in on `app`.
pub(crate) async fn agent(
    app: &TestApp,
    t: &TenantFixture,
    name: &str,
    capacity: u32,
    skills: &[&str],
) -> (String, String) {
    let email = format!("{name}@{}.example", t.slug);
    let a = app
        .agents()
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: email.clone(),
                display_name: name.into(),
                role: pb::AgentRole::Agent as i32,
                password: "agent-password-123".into(),
                max_concurrent_chats: capacity,
                skills: skills
                    .iter()
                    .map(|s| pb::Skill {
                        name: (*s).into(),
                        level: 5,
                    })
                    .collect(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let tokens = app
        .login(&t.slug, &email, "agent-password-123")
        .await
        .unwrap();
    (a.id, tokens.access_token)
}

async fn set_status(channel: &Channel, token: &str, status: pb::AgentStatus) {
    pb::agent_service_client::AgentServiceClient::new(channel.clone())
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: status as i32,
            },
            token,
        ))
        .await
        .unwrap();
}

pub(crate) async fn set_capacity(app: &TestApp, t: &TenantFixture, agent: &str, capacity: u32) {
    app.agents()
        .update_agent(bearer(
            pb::UpdateAgentRequest {
                agent_id: agent.into(),
                max_concurrent_chats: Some(capacity),
                ..Default::default()
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
}

/// The whole queue in serving order.
async fn waiting(app: &TestApp, token: &str) -> Vec<pb::WaitingChat> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = queue(&app.channel)
            .list_waiting_chats(bearer(
                pb::ListWaitingChatsRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(r.chats);
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

async fn agent_states(app: &TestApp, token: &str) -> HashMap<String, pb::AgentState> {
    queue(&app.channel)
        .list_agent_states(bearer(pb::ListAgentStatesRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|a| (a.agent_id.clone(), a))
        .collect()
}

/// A workflow of `t` that gives visitors with `tier=vip` priority 10.
pub(crate) async fn vip_workflow(app: &TestApp, t: &TenantFixture) {
    WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(
            pb::CreateWorkflowRequest {
                name: "vip first".into(),
                enabled: true,
                trigger: Some(pb::WorkflowTrigger {
                    attributes: vec![pb::AttributeCondition {
                        key: "tier".into(),
                        test: Some(pb::attribute_condition::Test::Equals("vip".into())),
                    }],
                    ..Default::default()
                }),
                actions: Some(pb::WorkflowActions {
                    auto_assign: true,
                    priority: 10,
                    ..Default::default()
                }),
                is_default: false,
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
}

/// Starts `n` chats of `t`'s visitors through `key`; every fifth visitor is a VIP.
async fn start_chats(app: &TestApp, key: &str, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut w = Widget::new(key);
        let mut req = init_req(&session(&format!("{tag}{i}")), &format!("Visitor {i}"));
        if i % 5 == 0 {
            req.attributes.insert("tier".into(), "vip".into());
        }
        w.init(app, req).await.unwrap();
        let s = w.start(app, "hello").await.unwrap();
        ids.push(s.conversation.unwrap().id);
    }
    ids
}

/// The next conversation an agent's stream joins, with its visitor.
async fn joined(ev: &mut Events) -> (pb::Conversation, pb::Visitor) {
    ev.until(|item| match item {
        pb::stream_item::Kind::Joined(j) => Some((
            j.conversation.clone().unwrap(),
            j.visitor.clone().expect("an external chat's visitor"),
        )),
        _ => None,
    })
    .await
}

/// Opens a stream for each token (so the agent is online) and returns them, kept open.
async fn online(channel: &Channel, tokens: &[String]) -> Vec<Events> {
    let mut out = Vec::new();
    for tok in tokens {
        let mut ev = Events::open_on(channel.clone(), tok, &[]).await.unwrap();
        ev.caught_up().await;
        out.push(ev);
    }
    out
}

/// Runs the "all agents become available at once" scenario: `agents` agents of three seats,
/// half of them on `second` when given, and `chats` chats waiting; returns the queue before,
/// the queue after, and the agents' states after.
async fn rush(
    app: &TestApp,
    second: Option<&TestApp>,
    agents: usize,
    chats: usize,
) -> (
    TenantFixture,
    Vec<pb::WaitingChat>,
    Vec<pb::WaitingChat>,
    HashMap<String, pb::AgentState>,
) {
    let t = app.tenant("rush").await;
    let (_, key) = widget_key(app, &t, &[ORIGIN]).await;
    vip_workflow(app, &t).await;
    let mut crew = Vec::new();
    for i in 0..agents {
        crew.push(agent(app, &t, &format!("agent{i}"), 3, &[]).await);
    }
    let node_of = |i: usize| match second {
        Some(s) if i % 2 == 1 => s.channel.clone(),
        _ => app.channel.clone(),
    };
    // Online, but not available yet: nobody is given a chat.
    let mut streams = Vec::new();
    for (i, (_, tok)) in crew.iter().enumerate() {
        streams.extend(online(&node_of(i), std::slice::from_ref(tok)).await);
    }
    start_chats(app, &key, "rush", chats).await;
    let before = waiting(app, &t.admin_token).await;
    assert_eq!(before.len(), chats, "nobody available: every chat waits");

    join_all(crew.iter().enumerate().map(|(i, (_, tok))| async move {
        set_status(&node_of(i), tok, pb::AgentStatus::Available).await;
    }))
    .await;
    let seats = agents * 3;
    let after = eventually("the dispatcher fills every seat", || async {
        let q = waiting(app, &t.admin_token).await;
        (q.len() == chats.saturating_sub(seats)).then_some(q)
    })
    .await;
    let states = agent_states(app, &t.admin_token).await;
    drop(streams);
    (t, before, after, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_waiting_chats_and_ten_agents_of_three_seats_make_thirty_assignments_in_queue_order()
{
    let app = TestApp::spawn().await;
    let (t, before, after, states) = rush(&app, None, 10, 50).await;

    // The queue order: the ten VIPs first (priority 10), then by arrival.
    let vips: Vec<usize> = (0..50).filter(|i| i % 5 == 0).collect();
    for (pos, chat) in before.iter().enumerate() {
        assert_eq!(chat.position as usize, pos + 1);
        assert_eq!(chat.priority, if pos < vips.len() { 10 } else { 0 });
    }
    // The 30 served are the first 30 in that order; the other 20 keep theirs.
    let order: Vec<&str> = before
        .iter()
        .map(|c| c.conversation.as_ref().unwrap().id.as_str())
        .collect();
    let left: Vec<&str> = after
        .iter()
        .map(|c| c.conversation.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(left, order[30..]);
    assert_eq!(
        after.iter().map(|c| c.position).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<u32>>()
    );
    // Every agent has exactly their three seats filled.
    let crew: Vec<&pb::AgentState> = states
        .values()
        .filter(|a| a.agent_id != t.admin_id)
        .collect();
    assert_eq!(crew.len(), 10);
    for a in crew {
        assert_eq!((a.open_chats, a.capacity), (3, 3), "{}", a.display_name);
    }

    // Why the first chat went where it went.
    let why = queue(&app.channel)
        .explain_assignment(bearer(
            pb::ExplainAssignmentRequest {
                conversation_id: order[0].into(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    assert_eq!(why.len(), 1);
    let a = &why[0];
    assert_eq!(a.via, pb::AssignmentVia::Dispatcher as i32);
    assert_eq!(a.strategy, "round_robin");
    // Every active agent was considered (the admin too: offline), the chosen one first.
    assert_eq!(a.candidates.len(), 11);
    assert_eq!(a.candidates[0].agent_id, a.agent_id);
    assert_eq!(a.candidates[0].verdict, pb::CandidateVerdict::Chosen as i32);
    let admin = a
        .candidates
        .iter()
        .find(|c| c.agent_id == t.admin_id)
        .unwrap();
    assert_eq!(admin.verdict, pb::CandidateVerdict::NotAvailable as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_dispatching_at_once_never_fill_a_seat_twice() {
    let app = TestApp::spawn().await;
    let other = TestApp::spawn_with(app.same_db()).await;
    let (t, before, after, states) = rush(&app, Some(&other), 6, 30).await;
    let order: Vec<&str> = before
        .iter()
        .map(|c| c.conversation.as_ref().unwrap().id.as_str())
        .collect();
    let left: Vec<&str> = after
        .iter()
        .map(|c| c.conversation.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(left, order[18..]);
    for a in states.values().filter(|a| a.agent_id != t.admin_id) {
        assert_eq!((a.open_chats, a.capacity), (3, 3), "{}", a.display_name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_capacity_is_lowered_below_their_chats_gets_none_until_it_rises() {
    let app = TestApp::spawn().await;
    let t = app.tenant("seats").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let (ann, ann_tok) = agent(&app, &t, "ann", 2, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 1, &[]).await;
    let _streams = online(&app.channel, &[ann_tok.clone(), bob_tok.clone()]).await;
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    start_chats(&app, &key, "a", 2).await;
    eventually("ann gets two chats", || async {
        let s = agent_states(&app, &t.admin_token).await;
        (s[&ann].open_chats == 2).then_some(())
    })
    .await;

    // Ann's capacity drops to 1 while she holds 2: a new chat waits...
    set_capacity(&app, &t, &ann, 1).await;
    let third = start_chats(&app, &key, "b", 1).await.remove(0);
    // ...and goes to Bob once he is available, which shows the dispatcher looked at it.
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    eventually("bob gets the third chat", || async {
        let s = agent_states(&app, &t.admin_token).await;
        (s[&bob].open_chats == 1).then_some(())
    })
    .await;
    let s = agent_states(&app, &t.admin_token).await;
    assert_eq!((s[&ann].open_chats, s[&ann].capacity), (2, 1));
    let why = queue(&app.channel)
        .explain_assignment(bearer(
            pb::ExplainAssignmentRequest {
                conversation_id: third,
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    let ann_verdict = why[0]
        .candidates
        .iter()
        .find(|c| c.agent_id == ann)
        .unwrap();
    assert_eq!(ann_verdict.verdict, pb::CandidateVerdict::AtCapacity as i32);
    assert!(
        ann_verdict.message.contains("2/1"),
        "{}",
        ann_verdict.message
    );

    // A fourth waits for everyone is full; Ann's capacity rising serves it.
    start_chats(&app, &key, "c", 1).await;
    assert_eq!(waiting(&app, &t.admin_token).await.len(), 1);
    set_capacity(&app, &t, &ann, 3).await;
    eventually("ann gets the fourth chat", || async {
        let s = agent_states(&app, &t.admin_token).await;
        (s[&ann].open_chats == 3).then_some(())
    })
    .await;
    assert!(waiting(&app, &t.admin_token).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_wait_due_while_the_server_is_down_closes_the_chat_when_it_is_back() {
    let app = TestApp::spawn().await;
    let opts = app.same_db();
    let t = app.tenant("patience").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(
            pb::CreateWorkflowRequest {
                name: "short wait".into(),
                enabled: true,
                trigger: None,
                actions: Some(pb::WorkflowActions {
                    auto_assign: true,
                    welcome_message: "Welcome to the shop!".into(),
                    queue_message: "An agent will be with you shortly.".into(),
                    max_wait_seconds: 2,
                    max_wait_action: pb::MaxWaitAction::Close as i32,
                    max_wait_message: "Sorry, we are all busy. Please come back later.".into(),
                    ..Default::default()
                }),
                is_default: false,
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
    let mut w = Widget::new(&key);
    w.init(&app, init_req(&session("wait"), "Wanda"))
        .await
        .unwrap();
    let chat = w.start(&app, "is anyone there?").await.unwrap();
    let conv = chat.conversation.unwrap().id;
    app.shutdown().await.unwrap();
    // Past the max wait while no node runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let back = TestApp::spawn_with(opts).await;
    let mut ev = w.subscribe(&back, &[(&conv, 0)]).await.unwrap();
    let mut texts = Vec::new();
    let closed = ev
        .until(|item| {
            if let Some(m) = posted(item) {
                texts.push((m.sender_type, m.text));
            }
            status_changed(item).filter(|s| s.status == pb::ConversationStatus::Closed as i32)
        })
        .await;
    assert!(closed.assigned_agent_id.is_empty());
    let system = pb::SenderType::System as i32;
    assert_eq!(
        texts,
        [
            (system, "Welcome to the shop!".to_owned()),
            (
                pb::SenderType::Visitor as i32,
                "is anyone there?".to_owned()
            ),
            (system, "An agent will be with you shortly.".to_owned()),
            (
                system,
                "Sorry, we are all busy. Please come back later.".to_owned()
            ),
        ]
    );
    let q = w.status(&back, &conv).await.unwrap();
    assert_eq!(q.status, pb::ConversationStatus::Closed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_accept_transfer_and_close_a_chat_and_the_visitor_rates_it() {
    let app = TestApp::spawn().await;
    let t = app.tenant("desk").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    // Chats wait for an agent to pick them.
    WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(
            pb::CreateWorkflowRequest {
                name: "pick".into(),
                enabled: true,
                trigger: None,
                actions: Some(pb::WorkflowActions {
                    auto_assign: false,
                    ..Default::default()
                }),
                is_default: false,
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
    let (ann, ann_tok) = agent(&app, &t, "ann", 1, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 2, &["billing"]).await;
    let mut ann_ev = online(&app.channel, std::slice::from_ref(&ann_tok))
        .await
        .remove(0);
    let mut bob_ev = online(&app.channel, std::slice::from_ref(&bob_tok))
        .await
        .remove(0);
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;

    let mut w = Widget::new(&key);
    w.init(&app, init_req(&session("desk"), "Dora"))
        .await
        .unwrap();
    let conv = w
        .start(&app, "my invoice is wrong")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    let mut mine = w.subscribe(&app, &[(&conv, 0)]).await.unwrap();
    mine.caught_up().await;
    let listed = waiting(&app, &ann_tok).await;
    assert_eq!(listed.len(), 1, "auto-assign is off: it waits for a pick");
    assert!(!listed[0].auto_assign);
    assert_eq!(listed[0].visitor_name, "Dora");

    // Ann accepts; a second accept (hers or Bob's) finds it taken.
    let accepted = queue(&app.channel)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.clone(),
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(accepted.assigned_agent_id, ann);
    assert_eq!(accepted.status, pb::ConversationStatus::Open as i32);
    let again = queue(&app.channel)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let opened = mine.until(status_changed).await;
    assert_eq!(
        (
            opened.assigned_agent_id.as_str(),
            opened.assigned_agent_name.as_str()
        ),
        (ann.as_str(), "ann"),
        "the visitor learns who serves them"
    );
    // The chat appears on Ann's stream with the visitor's details.
    let (c, v) = joined(&mut ann_ev).await;
    assert_eq!((c.id.as_str(), v.name.as_str()), (conv.as_str(), "Dora"));
    assert_eq!(v.email, "dora@customer.example");

    // Ann has no seat left for a second chat.
    let mut w2 = Widget::new(&key);
    w2.init(&app, init_req(&session("desk2"), "Dan"))
        .await
        .unwrap();
    let conv2 = w2.start(&app, "hi").await.unwrap().conversation.unwrap().id;
    let full = queue(&app.channel)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv2,
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);

    // Bob cannot hand over Ann's chat; Ann can, to Bob.
    let not_his = queue(&app.channel)
        .transfer_chat(bearer(
            pb::TransferChatRequest {
                conversation_id: conv.clone(),
                target: Some(pb::transfer_chat_request::Target::AgentId(ann.clone())),
            },
            &bob_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_his.code(), Code::NotFound);
    let bad = queue(&app.channel)
        .transfer_chat(bearer(
            pb::TransferChatRequest {
                conversation_id: conv.clone(),
                target: None,
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let moved = queue(&app.channel)
        .transfer_chat(bearer(
            pb::TransferChatRequest {
                conversation_id: conv.clone(),
                target: Some(pb::transfer_chat_request::Target::AgentId(bob.clone())),
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(moved.assigned_agent_id, bob);
    assert_eq!(moved.member_agent_ids, std::slice::from_ref(&bob));
    let moved = mine.until(status_changed).await;
    assert_eq!(
        (
            moved.assigned_agent_id.as_str(),
            moved.assigned_agent_name.as_str()
        ),
        (bob.as_str(), "bob")
    );
    let (c, v) = joined(&mut bob_ev).await;
    assert_eq!((c.id.as_str(), v.name.as_str()), (conv.as_str(), "Dora"));
    // Bob reads the chat's story; Ann, no longer in it, cannot.
    let story = app
        .conversations()
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv.clone(),
                direction: pb::ListDirection::Forward as i32,
                ..Default::default()
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(story[0].text, "my invoice is wrong");
    let gone = app
        .conversations()
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv.clone(),
                direction: pb::ListDirection::Forward as i32,
                ..Default::default()
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Bob replies and closes; the visitor sees both and rates the chat once, for Bob.
    crate::harness::send(&app, &bob_tok, &conv, "fixed it, sorry!")
        .await
        .unwrap();
    assert_eq!(mine.until(posted).await.text, "fixed it, sorry!");
    let closed = queue(&app.channel)
        .close_chat(bearer(
            pb::CloseChatRequest {
                conversation_id: conv.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(closed.status, pb::ConversationStatus::Closed as i32);
    let ended = mine
        .until(|i| status_changed(i).filter(|s| s.status == pb::ConversationStatus::Closed as i32))
        .await;
    assert_eq!(ended.assigned_agent_id, bob);
    let rating = w.rate(&app, &conv, 5, "quick").await.unwrap();
    assert_eq!(rating.agent_id, bob);
    assert_eq!(
        w.rate(&app, &conv, 4, "").await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // The story of who served it, newest first.
    let why = queue(&app.channel)
        .explain_assignment(bearer(
            pb::ExplainAssignmentRequest {
                conversation_id: conv.clone(),
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    let story: Vec<(String, i32, bool)> = why
        .iter()
        .map(|a| (a.agent_id.clone(), a.via, a.end_time.is_some()))
        .collect();
    assert_eq!(
        story,
        [
            (bob, pb::AssignmentVia::Transfer as i32, true),
            (ann, pb::AssignmentVia::Accepted as i32, true),
        ]
    );
}

/// A default workflow of `t` with these actions.
async fn workflow_with(app: &TestApp, t: &TenantFixture, actions: pb::WorkflowActions) {
    WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(
            pb::CreateWorkflowRequest {
                name: "rules".into(),
                enabled: true,
                trigger: None,
                actions: Some(actions),
                is_default: false,
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
}

/// The chat's assignments, newest first, as (agent, still running).
async fn history(app: &TestApp, t: &TenantFixture, conv: &str) -> Vec<(String, bool)> {
    queue(&app.channel)
        .explain_assignment(bearer(
            pb::ExplainAssignmentRequest {
                conversation_id: conv.into(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments
        .into_iter()
        .map(|a| (a.agent_id, a.end_time.is_none()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_its_agent_does_not_answer_in_time_goes_to_the_next_agent() {
    let app = TestApp::spawn().await;
    let t = app.tenant("reroute").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    workflow_with(
        &app,
        &t,
        pb::WorkflowActions {
            auto_assign: true,
            reroute_after_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    let (ann, ann_tok) = agent(&app, &t, "ann", 1, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 1, &[]).await;
    let _streams = online(&app.channel, &[ann_tok.clone(), bob_tok.clone()]).await;
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    let conv = start_chats(&app, &key, "r", 1).await.remove(0);
    eventually("ann is given the chat", || async {
        (history(&app, &t, &conv).await == [(ann.clone(), true)]).then_some(())
    })
    .await;
    // Ann says nothing; Bob is free.
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    eventually("the chat moves on to bob", || async {
        let h = history(&app, &t, &conv).await;
        (h == [(bob.clone(), true), (ann.clone(), false)]).then_some(())
    })
    .await;
    // Bob answers: the chat stays his past his own re-route time.
    crate::harness::send(&app, &bob_tok, &conv, "hello, Bob here")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        history(&app, &t, &conv).await,
        [(bob.clone(), true), (ann.clone(), false)]
    );
    let s = agent_states(&app, &t.admin_token).await;
    assert_eq!((s[&ann].open_chats, s[&bob].open_chats), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gone_offline_past_the_grace_period_loses_the_chats_that_wait_for_them() {
    let app = TestApp::spawn().await;
    let t = app.tenant("grace").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    workflow_with(
        &app,
        &t,
        pb::WorkflowActions {
            auto_assign: true,
            offline_grace_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    let (ann, ann_tok) = agent(&app, &t, "ann", 2, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 2, &[]).await;
    let ann_stream = online(&app.channel, std::slice::from_ref(&ann_tok)).await;
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    let chats = start_chats(&app, &key, "g", 2).await;
    eventually("ann is given both chats", || async {
        let s = agent_states(&app, &t.admin_token).await;
        (s[&ann].open_chats == 2).then_some(())
    })
    .await;
    // Ann answered the second chat; the first still waits for her.
    crate::harness::send(&app, &ann_tok, &chats[1], "on it")
        .await
        .unwrap();
    let _bob_stream = online(&app.channel, std::slice::from_ref(&bob_tok)).await;
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    // Ann's app goes away.
    drop(ann_stream);
    eventually("the unanswered chat goes to bob", || async {
        let h = history(&app, &t, &chats[0]).await;
        (h == [(bob.clone(), true), (ann.clone(), false)]).then_some(())
    })
    .await;
    assert_eq!(history(&app, &t, &chats[1]).await, [(ann.clone(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chats_of_an_agent_whose_node_dies_go_back_to_the_queue_after_the_grace_period() {
    let app = TestApp::spawn().await;
    let t = app.tenant("crash").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    workflow_with(
        &app,
        &t,
        pb::WorkflowActions {
            auto_assign: true,
            offline_grace_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    let (ann, ann_tok) = agent(&app, &t, "ann", 1, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 1, &[]).await;
    // Ann's app is connected to a second node, which dies without a word.
    let node = KillableNode::start(app.same_db()).await;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {ann_tok}").parse().unwrap(),
    );
    let principal = node.auth.authenticate(&headers).await.unwrap().unwrap();
    let scope = TenantScope::of(&principal).unwrap();
    let mut ann_stream = Box::pin(stream::subscribe(node.streams.clone(), scope, vec![]));
    tokio::time::timeout(WAIT, ann_stream.next())
        .await
        .expect("ann's stream answers")
        .expect("ann's stream is open")
        .expect("ann's stream works");
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    let chats = start_chats(&app, &key, "k", 1).await;
    eventually("ann is given the chat", || async {
        let h = history(&app, &t, &chats[0]).await;
        (h == [(ann.clone(), true)]).then_some(())
    })
    .await;
    let _bob_stream = online(&app.channel, std::slice::from_ref(&bob_tok)).await;
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    node.kill();

    // Her presence goes stale a minute after the node's last heartbeat; then the grace period.
    let limit = Duration::from_secs(150);
    let start = Instant::now();
    loop {
        if history(&app, &t, &chats[0]).await == [(bob.clone(), true), (ann.clone(), false)] {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "the chat goes to bob within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let states = agent_states(&app, &t.admin_token).await;
    assert_eq!(states[&ann].open_chats, 0, "ann holds no chat any more");
    drop(ann_stream);
}

/// A tenant whose chats are offered (lapsing after a given time) to Ann or Bob, one seat each,
/// both on their streams, Ann alone available, and a visitor's chat that was just started.
struct Offered {
    t: TenantFixture,
    key: String,
    ann: String,
    ann_tok: String,
    bob: String,
    bob_tok: String,
    ann_ev: Events,
    bob_ev: Events,
    w: Widget,
    conv: String,
}

async fn offered_to_ann(app: &TestApp, tenant: &str, lapse_seconds: u32, visitor: &str) -> Offered {
    let t = app.tenant(tenant).await;
    let (_, key) = widget_key(app, &t, &[ORIGIN]).await;
    workflow_with(
        app,
        &t,
        pb::WorkflowActions {
            auto_assign: true,
            offer_timeout_seconds: lapse_seconds,
            ..Default::default()
        },
    )
    .await;
    let (ann, ann_tok) = agent(app, &t, "ann", 1, &[]).await;
    let (bob, bob_tok) = agent(app, &t, "bob", 1, &[]).await;
    let ann_ev = online(&app.channel, std::slice::from_ref(&ann_tok))
        .await
        .remove(0);
    let bob_ev = online(&app.channel, std::slice::from_ref(&bob_tok))
        .await
        .remove(0);
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    let mut w = Widget::new(&key);
    w.init(app, init_req(&session(tenant), visitor))
        .await
        .unwrap();
    let conv = w.start(app, "hi").await.unwrap().conversation.unwrap().id;
    Offered {
        t,
        key,
        ann,
        ann_tok,
        bob,
        bob_tok,
        ann_ev,
        bob_ev,
        w,
        conv,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_not_accepted_in_time_goes_to_the_next_agent_who_accepts_it() {
    let app = TestApp::spawn().await;
    let Offered {
        t,
        ann,
        bob,
        bob_tok,
        mut ann_ev,
        mut bob_ev,
        w,
        conv,
        ..
    } = offered_to_ann(&app, "offers", 1, "Olga").await;
    // Offered to Ann (the only one available): it shows on her stream, holds her seat, and
    // is no longer in the queue; the visitor still waits.
    let (c, v) = joined(&mut ann_ev).await;
    assert_eq!((c.id.as_str(), v.name.as_str()), (conv.as_str(), "Olga"));
    assert_eq!(c.status, pb::ConversationStatus::Queued as i32);
    assert_eq!(c.assigned_agent_id, ann);
    assert!(waiting(&app, &t.admin_token).await.is_empty());
    let q = w.status(&app, &conv).await.unwrap();
    assert_eq!(q.status, pb::ConversationStatus::Queued as i32);
    // Bob cannot take an offer made to Ann.
    let not_his = queue(&app.channel)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_his.code(), Code::FailedPrecondition);

    // Ann lets it lapse; Bob becomes available and is offered it, and accepts.
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    let (c, _) = joined(&mut bob_ev).await;
    assert_eq!(c.id, conv);
    let taken = queue(&app.channel)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(taken.status, pb::ConversationStatus::Open as i32);
    assert_eq!(taken.member_agent_ids, std::slice::from_ref(&bob));
    let why = queue(&app.channel)
        .explain_assignment(bearer(
            pb::ExplainAssignmentRequest {
                conversation_id: conv.clone(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    let story: Vec<(String, i32, bool)> = why
        .iter()
        .map(|a| (a.agent_id.clone(), a.via, a.end_time.is_none()))
        .collect();
    let (offered, accepted) = (
        pb::AssignmentVia::Offered as i32,
        pb::AssignmentVia::Accepted as i32,
    );
    assert_eq!(
        story,
        [
            (bob.clone(), accepted, true),
            (bob.clone(), offered, false),
            (ann.clone(), offered, false),
        ]
    );
    // The lapsed offer left Ann's seat free again.
    let s = agent_states(&app, &t.admin_token).await;
    assert_eq!((s[&ann].open_chats, s[&bob].open_chats), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_offer_goes_to_the_next_agent_at_once_and_never_back() {
    let app = TestApp::spawn().await;
    // Offers that would lapse only after the test has ended: what moves the chat is the decline.
    let Offered {
        t,
        key,
        ann,
        ann_tok,
        bob,
        bob_tok,
        mut ann_ev,
        mut bob_ev,
        w,
        conv,
    } = offered_to_ann(&app, "declines", 600, "Dora").await;
    let (c, _) = joined(&mut ann_ev).await;
    assert_eq!(
        (c.id.as_str(), c.assigned_agent_id.as_str()),
        (conv.as_str(), ann.as_str())
    );
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    let decline = |tok: &str| {
        let mut q = queue(&app.channel);
        let r = bearer(
            pb::DeclineChatRequest {
                conversation_id: conv.clone(),
            },
            tok,
        );
        async move { q.decline_chat(r).await.map(|r| r.into_inner()) }
    };
    // Bob cannot decline what was offered to Ann.
    assert_eq!(
        decline(&bob_tok).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Ann declines: the chat is back in the queue, without her, and Bob is offered it at once.
    let back = decline(&ann_tok).await.unwrap().conversation.unwrap();
    assert_eq!(back.status, pb::ConversationStatus::Queued as i32);
    assert!(back.member_agent_ids.is_empty(), "{back:?}");
    let (c, v) = joined(&mut bob_ev).await;
    assert_eq!((c.id.as_str(), v.name.as_str()), (conv.as_str(), "Dora"));
    assert_eq!(c.assigned_agent_id, bob);
    let q = w.status(&app, &conv).await.unwrap();
    assert_eq!(q.status, pb::ConversationStatus::Queued as i32);
    // Her decline is spent, and her seat is free.
    assert_eq!(
        decline(&ann_tok).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let s = agent_states(&app, &t.admin_token).await;
    assert_eq!((s[&ann].open_chats, s[&bob].open_chats), (0, 1));

    // Bob declines too: nobody else may have it, so it waits. Ann, free and available, is
    // not offered it again: the next chat, though younger, is the one offered to her.
    decline(&bob_tok).await.unwrap();
    let mut w2 = Widget::new(&key);
    w2.init(&app, init_req(&session("decline-2"), "Emil"))
        .await
        .unwrap();
    let second = w2
        .start(&app, "hello")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    let (c, _) = joined(&mut ann_ev).await;
    assert_eq!(c.id, second);
    let queued = waiting(&app, &t.admin_token).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].conversation.as_ref().unwrap().id, conv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_a_visitor_waits_an_agent_comes_and_is_assigned_they_talk_hand_over_and_close() {
    let app = TestApp::spawn().await;
    let t = app.tenant("e2e").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let (ann, ann_tok) = agent(&app, &t, "ann", 2, &[]).await;
    let (bob, bob_tok) = agent(&app, &t, "bob", 2, &["billing"]).await;

    // The visitor starts a chat; nobody is there, so it waits first in line.
    let mut w = Widget::new(&key);
    w.init(&app, init_req(&session("e2e"), "Eva"))
        .await
        .unwrap();
    let started = w.start(&app, "my card was charged twice").await.unwrap();
    let conv = started.conversation.unwrap().id;
    assert_eq!(started.queue_status.unwrap().position, 1);
    let mut mine = w.subscribe(&app, &[(&conv, 0)]).await.unwrap();
    mine.caught_up().await;

    // Ann comes online and available: the dispatcher gives her the chat.
    let mut ann_ev = online(&app.channel, std::slice::from_ref(&ann_tok))
        .await
        .remove(0);
    set_status(&app.channel, &ann_tok, pb::AgentStatus::Available).await;
    let (c, v) = joined(&mut ann_ev).await;
    assert_eq!((c.id.as_str(), v.name.as_str()), (conv.as_str(), "Eva"));
    let opened = mine
        .until(|i| status_changed(i).filter(|s| s.status == pb::ConversationStatus::Open as i32))
        .await;
    assert_eq!(
        (
            opened.assigned_agent_id.as_str(),
            opened.assigned_agent_name.as_str()
        ),
        (ann.as_str(), "ann"),
        "the dispatcher names the agent to the visitor"
    );

    // Typing both ways, a reply, and Ann's read receipt reach the visitor.
    w.typing(&app, &conv, true).await.unwrap();
    let typist = ann_ev
        .until(|i| match i {
            pb::stream_item::Kind::Typing(ty) if ty.typing => Some(ty.sender_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(typist, w.visitor_id());
    app.conversations()
        .set_typing(bearer(
            pb::SetTypingRequest {
                conversation_id: conv.clone(),
                typing: true,
            },
            &ann_tok,
        ))
        .await
        .unwrap();
    let agent_typing = mine
        .until(|i| match i {
            pb::stream_item::Kind::Typing(ty) if ty.typing => Some(ty.sender_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(agent_typing, ann);
    let (_, sent) = crate::harness::send(&app, &ann_tok, &conv, "let me check that for you")
        .await
        .unwrap();
    assert_eq!(mine.until(posted).await.text, "let me check that for you");
    app.conversations()
        .mark_read(bearer(
            pb::MarkReadRequest {
                conversation_id: conv.clone(),
                seq: sent,
            },
            &ann_tok,
        ))
        .await
        .unwrap();
    let receipt = mine
        .until(|i| match i {
            pb::stream_item::Kind::ReadReceipt(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (receipt.reader_id.as_str(), receipt.read_seq),
        (ann.as_str(), sent)
    );

    // Ann hands the chat to billing: it goes back to the queue for the skill, and Bob, who
    // has it, is given it as soon as he is there.
    queue(&app.channel)
        .transfer_chat(bearer(
            pb::TransferChatRequest {
                conversation_id: conv.clone(),
                target: Some(pb::transfer_chat_request::Target::Skill("billing".into())),
            },
            &ann_tok,
        ))
        .await
        .unwrap();
    let requeued = mine
        .until(|i| status_changed(i).filter(|s| s.status == pb::ConversationStatus::Queued as i32))
        .await;
    assert!(requeued.assigned_agent_id.is_empty());
    let _bob_ev = online(&app.channel, std::slice::from_ref(&bob_tok)).await;
    set_status(&app.channel, &bob_tok, pb::AgentStatus::Available).await;
    let to_bob = mine
        .until(|i| status_changed(i).filter(|s| s.status == pb::ConversationStatus::Open as i32))
        .await;
    assert_eq!(to_bob.assigned_agent_id, bob);

    // Bob answers and closes; the visitor sees it end and rates Bob.
    crate::harness::send(&app, &bob_tok, &conv, "refunded, sorry about that")
        .await
        .unwrap();
    assert_eq!(mine.until(posted).await.text, "refunded, sorry about that");
    queue(&app.channel)
        .close_chat(bearer(
            pb::CloseChatRequest {
                conversation_id: conv.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap();
    mine.until(|i| status_changed(i).filter(|s| s.status == pb::ConversationStatus::Closed as i32))
        .await;
    let rating = w.rate(&app, &conv, 4, "quick refund").await.unwrap();
    assert_eq!((rating.agent_id.as_str(), rating.score), (bob.as_str(), 4));
}

/// Every connection plans generically (`Db::connect`). The dispatcher counts each agent's
/// open chats on every pass: with `status` bound rather than written into the statement, the
/// plan could not use the partial index on open chats and read every conversation the tenant
/// ever had. Here the sequential scan is ruled out, so the plan shows which index it can use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_chat_count_can_use_its_partial_index_when_planned_generically() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let app = TestApp::spawn().await;
    let mut conn = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    conn.batch_execute(&format!(
        "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off;
         PREPARE open_chats(uuid) AS {}",
        chat_engine::storage::routing::OPEN_CHATS_BY_AGENT
    ))
    .await
    .unwrap();
    let plan: Vec<Line> = diesel::sql_query(format!(
        "EXPLAIN EXECUTE open_chats('{}')",
        uuid::Uuid::now_v7()
    ))
    .load(&mut conn)
    .await
    .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
    assert!(
        plan.iter().any(|l| l.contains("conversations_by_assignee")),
        "{plan:#?}"
    );
}
