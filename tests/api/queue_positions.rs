//! Live queue positions on visitor streams: every waiting visitor sees their place (and an
//! estimated wait) after CaughtUp and again whenever it changes, as chats join and leave the
//! queue, also when the change happens on another node (with NATS and without); and an agent
//! coming online turns "unknown" into an estimate.
//!
//! The helpers ([`Widget`], [`VisitorStream::position`]) serve the dispatcher's tests too.

use std::time::Duration;

use chat_engine_client::pb;
use pb::stream_item::Kind as Item;

use crate::harness::{Events, Nats, Options, TenantFixture, TestApp, bearer};
use crate::visitors::ORIGIN;

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

/// Creates a widget key of `t` allowed on [`ORIGIN`]; returns its secret.
pub(crate) async fn widget_key(app: &TestApp, t: &TenantFixture) -> String {
    crate::visitors::widget_key(app, t, &[ORIGIN]).await.1
}

/// One visitor's widget, after InitVisitor.
pub(crate) struct Widget {
    inner: crate::visitors::Widget,
}

impl Widget {
    /// InitVisitor for a new visitor named `name`, through `app`.
    pub(crate) async fn visitor(app: &TestApp, key: &str, name: &str) -> Self {
        let mut inner = crate::visitors::Widget::new(key);
        inner
            .init(
                app,
                pb::InitVisitorRequest {
                    session_id: format!("session-{name}-0123456789abcdef"),
                    name: name.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("InitVisitor");
        Self { inner }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.inner.req(msg)
    }

    /// Starts a chat (it queues); returns its conversation id.
    pub(crate) async fn start(&self, app: &TestApp) -> String {
        app.visitors()
            .start_chat(self.req(pb::StartChatRequest::default()))
            .await
            .expect("StartChat")
            .into_inner()
            .conversation
            .expect("a conversation")
            .id
    }

    /// Ends a chat.
    pub(crate) async fn end(&self, app: &TestApp, conv: &str) {
        app.visitors()
            .end_chat(self.req(pb::EndChatRequest {
                conversation_id: conv.into(),
            }))
            .await
            .expect("EndChat");
    }

    /// Opens the visitor's stream on `app` and reads it up to CaughtUp.
    pub(crate) async fn subscribe(&self, app: &TestApp) -> VisitorStream {
        let inner = app
            .visitors()
            .subscribe_visitor(self.req(pb::SubscribeVisitorRequest::default()))
            .await
            .expect("SubscribeVisitor")
            .into_inner();
        let mut s = VisitorStream { inner };
        s.until(|i| matches!(i, Item::CaughtUp(_)).then_some(()))
            .await;
        s
    }
}

/// An open visitor stream.
pub(crate) struct VisitorStream {
    inner: tonic::Streaming<pb::SubscribeVisitorResponse>,
}

impl VisitorStream {
    /// The next item.
    pub(crate) async fn next(&mut self) -> Item {
        match tokio::time::timeout(WAIT, self.inner.message()).await {
            Ok(Ok(Some(r))) => r.item.and_then(|i| i.kind).expect("an item"),
            Ok(Ok(None)) => panic!("the visitor stream ended"),
            Ok(Err(s)) => panic!("the visitor stream failed: {s:?}"),
            Err(_) => panic!("no visitor stream item within {WAIT:?}"),
        }
    }

    /// The next item `f` picks.
    pub(crate) async fn until<T>(&mut self, mut f: impl FnMut(&Item) -> Option<T>) -> T {
        loop {
            let item = self.next().await;
            if let Some(v) = f(&item) {
                return v;
            }
        }
    }

    /// The next queue position, skipping events and other items.
    pub(crate) async fn position(&mut self) -> pb::QueuePosition {
        self.until(|i| match i {
            Item::QueuePosition(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }
}

/// The agent of `token` takes `conv` from the queue.
pub(crate) async fn accept(app: &TestApp, token: &str, conv: &str) {
    pb::queue_service_client::QueueServiceClient::new(app.channel.clone())
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.into(),
            },
            token,
        ))
        .await
        .expect("AcceptChat");
}

/// Makes `t`'s chats wait for an agent to pick them (no dispatcher assignment), so that a
/// test can watch places while agents are available.
pub(crate) async fn picked_by_hand(app: &TestApp, t: &TenantFixture) {
    pb::workflow_service_client::WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(
            pb::CreateWorkflowRequest {
                name: "pick by hand".into(),
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
        .expect("CreateWorkflow");
}

/// Makes `token`'s agent available and opens their stream (online); keep the stream.
pub(crate) async fn online(app: &TestApp, token: &str) -> Events {
    app.agents()
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: pb::AgentStatus::Available as i32,
            },
            token,
        ))
        .await
        .expect("SetMyStatus");
    let mut stream = Events::open(app, token, &[]).await.expect("Subscribe");
    stream.caught_up().await;
    stream
}

/// The next position of `conv` on `s`: its place and estimated wait.
async fn place_of(s: &mut VisitorStream, conv: &str) -> (u32, u32) {
    let p = s.position().await;
    assert_eq!(p.conversation_id, conv, "a position of another chat");
    (p.position, p.estimated_wait_seconds)
}

/// Three visitors queue, the first leaves, a fourth arrives: each waiting visitor's stream
/// tells them where they stand now. `api` serves the streams, `changes` takes the calls
/// that change the queue (the same node, or another one).
async fn positions_follow_arrivals_and_departures(api: &TestApp, changes: &TestApp, key: &str) {
    let mut visitors = Vec::new();
    for (i, name) in ["ada", "ben", "cleo"].into_iter().enumerate() {
        let w = Widget::visitor(changes, key, name).await;
        let mut s = w.subscribe(api).await;
        let conv = w.start(changes).await;
        // Nobody can take a chat: the wait is unknown (0).
        assert_eq!(place_of(&mut s, &conv).await, (i as u32 + 1, 0), "{name}");
        visitors.push((w, s, conv));
    }

    let (ada, mut ada_stream, ada_chat) = visitors.remove(0);
    ada.end(changes, &ada_chat).await;
    // Ada's stream shows her chat ending.
    ada_stream
        .until(|i| match i {
            Item::Event(pb::ConversationEvent {
                kind: Some(pb::conversation_event::Kind::StatusChanged(s)),
                ..
            }) => (s.status == pb::ConversationStatus::Closed as i32).then_some(()),
            _ => None,
        })
        .await;
    // Everyone behind her moves up by one (and sees no repeat of their old place first).
    for (expected, (_, s, conv)) in (1..).zip(visitors.iter_mut()) {
        assert_eq!(place_of(s, conv).await, (expected, 0));
    }

    let dan = Widget::visitor(changes, key, "dan").await;
    let mut dan_stream = dan.subscribe(api).await;
    let dan_chat = dan.start(changes).await;
    assert_eq!(place_of(&mut dan_stream, &dan_chat).await, (3, 0));

    // A stream opened while waiting gets its place right after CaughtUp.
    let (ben, _, ben_chat) = &visitors[0];
    let mut again = ben.subscribe(api).await;
    assert_eq!(place_of(&mut again, ben_chat).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_visitors_see_their_place_change_as_others_arrive_and_leave() {
    let app = TestApp::spawn().await;
    let t = app.tenant("queue").await;
    let key = widget_key(&app, &t).await;
    positions_follow_arrivals_and_departures(&app, &app, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_moves_the_places_seen_on_another() {
    // No NATS: node 2 learns of node 1's commits from PostgreSQL's spine notices alone.
    let node1 = TestApp::spawn().await;
    let node2 = TestApp::spawn_with(node1.same_db()).await;
    let t = node1.tenant("queue2").await;
    let key = widget_key(&node1, &t).await;
    positions_follow_arrivals_and_departures(&node2, &node1, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_too_a_change_on_one_node_moves_the_places_seen_on_another() {
    // The fast path and the spine notice both bring each change; places still change once.
    let nats = Nats::start().await;
    let node1 = TestApp::spawn_with(Options {
        nats_url: Some(nats.url()),
        ..Options::default()
    })
    .await;
    let node2 = TestApp::spawn_with(Options {
        nats_url: Some(nats.url()),
        ..node1.same_db()
    })
    .await;
    let t = node1.tenant("queue3").await;
    let key = widget_key(&node1, &t).await;
    positions_follow_arrivals_and_departures(&node2, &node1, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_coming_online_turns_an_unknown_wait_into_an_estimate() {
    let app = TestApp::spawn().await;
    let t = app.tenant("estimates").await;
    let key = widget_key(&app, &t).await;
    picked_by_hand(&app, &t).await;
    let mut waiting = Vec::new();
    for name in ["eve", "finn", "gus"] {
        let w = Widget::visitor(&app, &key, name).await;
        let mut s = w.subscribe(&app).await;
        let conv = w.start(&app).await;
        assert_eq!(place_of(&mut s, &conv).await.1, 0, "nobody online yet");
        waiting.push((s, conv));
    }

    // An agent with two seats becomes available and opens their stream (goes online).
    let (_, zoe) = app.agent(&t, "zoe").await;
    let _zoe_online = online(&app, &zoe).await;

    // The two first fit her free seats now; the third waits for one of them to be handled:
    // no chat closed yet, so the default handling time of 300 s over her 2 seats.
    let expected = [(1, 1), (2, 1), (3, 150)];
    for ((s, conv), want) in waiting.iter_mut().zip(expected) {
        assert_eq!(place_of(s, conv).await, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_busy_agent_the_wait_follows_how_long_recent_chats_took() {
    let app = TestApp::spawn().await;
    let t = app.tenant("handling").await;
    let key = widget_key(&app, &t).await;
    picked_by_hand(&app, &t).await;
    let (_, zoe) = app.agent(&t, "zoe").await;
    let _zoe_online = online(&app, &zoe).await;
    // She served a chat and closed it at once: recent chats are quick.
    let xena = Widget::visitor(&app, &key, "xena").await;
    let quick = xena.start(&app).await;
    accept(&app, &zoe, &quick).await;
    xena.end(&app, &quick).await;
    // Both her seats are taken now.
    for name in ["pia", "quinn"] {
        let w = Widget::visitor(&app, &key, name).await;
        let chat = w.start(&app).await;
        accept(&app, &zoe, &chat).await;
    }

    let rosa = Widget::visitor(&app, &key, "rosa").await;
    let mut s = rosa.subscribe(&app).await;
    let chat = rosa.start(&app).await;
    let (place, wait) = place_of(&mut s, &chat).await;
    assert_eq!(place, 1);
    // Without a measured handling time, 300 s over her 2 seats would say 150.
    assert!(
        (1..150).contains(&wait),
        "{wait} s: one seat of two should free up about as fast as the last chat was handled"
    );
}

/// Waits on `s` for `conv`'s place to become `want` (estimates may change on the way).
async fn until_place(s: &mut VisitorStream, conv: &str, want: u32) {
    loop {
        let p = s.position().await;
        assert_eq!(p.conversation_id, conv, "a position of another chat");
        assert!(
            p.position >= want,
            "{conv}: place {} before {want}",
            p.position
        );
        if p.position == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_move_when_a_higher_priority_chat_arrives_and_after_each_assignment() {
    let app = TestApp::spawn().await;
    let t = app.tenant("moves").await;
    let key = widget_key(&app, &t).await;
    crate::dispatch::vip_workflow(&app, &t).await;
    let mut waiting = Vec::new();
    for (i, name) in ["ada", "ben", "cleo"].into_iter().enumerate() {
        let w = Widget::visitor(&app, &key, name).await;
        let mut s = w.subscribe(&app).await;
        let conv = w.start(&app).await;
        until_place(&mut s, &conv, i as u32 + 1).await;
        waiting.push((w, s, conv));
    }

    // A VIP goes first; everyone else moves back one.
    let mut vip = crate::visitors::Widget::new(&key);
    let mut req = crate::visitors::init_req(&crate::visitors::session("vip"), "Vic");
    req.attributes.insert("tier".into(), "vip".into());
    vip.init(&app, req).await.unwrap();
    let vip_chat = vip.start(&app, "").await.unwrap().conversation.unwrap().id;
    for (place, (_, s, conv)) in (2..).zip(waiting.iter_mut()) {
        until_place(s, conv, place).await;
    }

    // An agent with one seat comes: the VIP is served, the others move up.
    let (zoe_id, zoe) = crate::dispatch::agent(&app, &t, "zoe", 1, &[]).await;
    let _zoe = online(&app, &zoe).await;
    for (place, (_, s, conv)) in (1..).zip(waiting.iter_mut()) {
        until_place(s, conv, place).await;
    }
    let q = vip.status(&app, &vip_chat).await.unwrap();
    assert_eq!(q.assigned_agent_id, zoe_id);

    // Her chat ends: Ada is served next, Ben and Cleo move up again.
    pb::queue_service_client::QueueServiceClient::new(app.channel.clone())
        .close_chat(bearer(
            pb::CloseChatRequest {
                conversation_id: vip_chat,
            },
            &zoe,
        ))
        .await
        .unwrap();
    let (_, ada_stream, ada_chat) = waiting.remove(0);
    drop(ada_stream);
    for (place, (_, s, conv)) in (1..).zip(waiting.iter_mut()) {
        until_place(s, conv, place).await;
    }
    // Ada left the queue for Zoe's seat.
    let states = pb::queue_service_client::QueueServiceClient::new(app.channel.clone())
        .list_waiting_chats(bearer(
            pb::ListWaitingChatsRequest::default(),
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(states.total, 2);
    assert!(
        states
            .chats
            .iter()
            .all(|c| c.conversation.as_ref().unwrap().id != ada_chat)
    );
}
