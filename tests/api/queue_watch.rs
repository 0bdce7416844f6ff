//! QueueService.WatchQueue, as a supervisor's screen uses it: a snapshot of the queue and the
//! agents at once, then a new one whenever either changed (a chat queued, an agent online and
//! given the chat, a capacity changed), never the same snapshot twice in a row, also when the
//! change happens on another node; nothing of another tenant; no widget caller; and the
//! stream's end when the server shuts down or its session is signed out.

use std::time::Duration;

use chat_engine_client::pb;
use pb::queue_service_client::QueueServiceClient;
use tonic::Code;

use crate::dispatch::{agent, set_capacity};
use crate::harness::{TenantFixture, TestApp, bearer};
use crate::queue_positions::online;
use crate::visitors::{ORIGIN, Widget, init_req, session, widget_key};

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

/// An open WatchQueue stream and every snapshot it delivered.
struct Watch {
    inner: tonic::Streaming<pb::WatchQueueResponse>,
    seen: Vec<pb::WatchQueueResponse>,
}

impl Watch {
    /// Opens the stream of `token`'s agent on `app`.
    async fn open(app: &TestApp, token: &str) -> Result<Self, tonic::Status> {
        let inner = QueueServiceClient::new(app.channel.clone())
            .watch_queue(bearer(pb::WatchQueueRequest {}, token))
            .await?
            .into_inner();
        Ok(Self {
            inner,
            seen: Vec::new(),
        })
    }

    /// The next snapshot, which must differ from the one before it.
    async fn next(&mut self) -> pb::WatchQueueResponse {
        let snap = match tokio::time::timeout(WAIT, self.inner.message()).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => panic!("the watch ended"),
            Ok(Err(s)) => panic!("the watch failed: {s:?}"),
            Err(_) => panic!("no snapshot within {WAIT:?}"),
        };
        assert_ne!(
            self.seen.last(),
            Some(&snap),
            "a snapshot equal to the last one was sent again"
        );
        self.seen.push(snap.clone());
        snap
    }

    /// How the stream ended, skipping the snapshots before.
    async fn ended(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.inner.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the watch ended without a status"),
                Ok(Err(s)) => return s,
                Err(_) => panic!("the watch did not end within {WAIT:?}"),
            }
        }
    }

    /// The first snapshot `f` accepts.
    async fn until(&mut self, mut f: impl FnMut(&pb::WatchQueueResponse) -> bool) {
        loop {
            let snap = self.next().await;
            if f(&snap) {
                return;
            }
        }
    }
}

fn agent_in<'a>(s: &'a pb::WatchQueueResponse, id: &str) -> Option<&'a pb::AgentState> {
    s.agents.iter().find(|a| a.agent_id == id)
}

fn waits(s: &pb::WatchQueueResponse, conv: &str) -> bool {
    s.chats
        .iter()
        .any(|c| c.conversation.as_ref().is_some_and(|c| c.id == conv))
}

/// A visitor of `t` named `name` starts a chat through `app`; returns its conversation id.
async fn visitor_chat(app: &TestApp, t: &TenantFixture, name: &str) -> String {
    let (_, key) = widget_key(app, t, &[ORIGIN]).await;
    let mut w = Widget::new(&key);
    w.init(app, init_req(&session(name), name))
        .await
        .expect("InitVisitor");
    w.start(app, "hello")
        .await
        .expect("StartChat")
        .conversation
        .expect("a conversation")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_sees_a_chat_wait_then_go_to_the_agent_who_came_online() {
    let app = TestApp::spawn().await;
    let t = app.tenant("watch").await;
    let (ana, ana_token) = agent(&app, &t, "ana", 2, &[]).await;

    let mut watch = Watch::open(&app, &t.admin_token).await.expect("WatchQueue");
    let first = watch.next().await;
    assert!(first.chats.is_empty());
    assert_eq!(first.total, 0);
    let a = agent_in(&first, &ana).expect("ana in the first snapshot");
    assert_eq!((a.display_name.as_str(), a.online), ("ana", false));
    assert_eq!((a.open_chats, a.capacity), (0, 2));
    assert!(
        agent_in(&first, &t.admin_id).is_some(),
        "the admin is an agent"
    );

    // Nobody can take it: it waits, and the screen says who and since when.
    let conv = visitor_chat(&app, &t, "Vera").await;
    watch.until(|s| waits(s, &conv)).await;
    let snap = watch.seen.last().unwrap();
    assert_eq!(snap.total, 1);
    let chat = &snap.chats[0];
    assert_eq!((chat.position, chat.visitor_name.as_str()), (1, "Vera"));
    assert!(chat.enqueue_time.is_some());
    assert!(chat.auto_assign);

    // Ana comes online and available: the dispatcher gives her the chat.
    let _ana_stream = online(&app, &ana_token).await;
    watch
        .until(|s| s.chats.is_empty() && agent_in(s, &ana).is_some_and(|a| a.open_chats == 1))
        .await;
    let snap = watch.seen.last().unwrap();
    assert_eq!(snap.total, 0);
    let a = agent_in(snap, &ana).unwrap();
    assert!(a.online);
    assert_eq!(a.status, pb::AgentStatus::Available as i32);
    assert_eq!((a.open_chats, a.capacity), (1, 2));
    assert!(a.last_assign_time.is_some());

    // Her capacity rises: the screen shows 1/5.
    set_capacity(&app, &t, &ana, 5).await;
    watch
        .until(|s| agent_in(s, &ana).is_some_and(|a| a.capacity == 5))
        .await;
    let a = agent_in(watch.seen.last().unwrap(), &ana).unwrap();
    assert_eq!((a.open_chats, a.capacity), (1, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_on_one_node_follows_changes_made_on_another() {
    // No NATS: the watching node learns of the other's commits from PostgreSQL alone.
    let node1 = TestApp::spawn().await;
    let node2 = TestApp::spawn_with(node1.same_db()).await;
    let t = node1.tenant("watch2").await;
    let (ana, _) = agent(&node1, &t, "ana", 2, &[]).await;
    let mut watch = Watch::open(&node1, &t.admin_token)
        .await
        .expect("WatchQueue");
    watch.until(|s| agent_in(s, &ana).is_some()).await;

    let conv = visitor_chat(&node2, &t, "Otto").await;
    watch.until(|s| waits(s, &conv)).await;
    set_capacity(&node2, &t, &ana, 4).await;
    watch
        .until(|s| agent_in(s, &ana).is_some_and(|a| a.capacity == 4))
        .await;
    assert!(waits(watch.seen.last().unwrap(), &conv));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_queue_and_agents_never_show() {
    let app = TestApp::spawn().await;
    let a = app.tenant("watch-a").await;
    let b = app.tenant("watch-b").await;
    let mut watch_a = Watch::open(&app, &a.admin_token).await.expect("WatchQueue");
    let mut watch_b = Watch::open(&app, &b.admin_token).await.expect("WatchQueue");
    watch_a.next().await;
    watch_b.next().await;

    // B's changes happen (and B's own screen shows them) first, then A's.
    let (b_agent, _) = agent(&app, &b, "bea", 2, &[]).await;
    let b_conv = visitor_chat(&app, &b, "Bob").await;
    set_capacity(&app, &b, &b_agent, 3).await;
    watch_b
        .until(|s| waits(s, &b_conv) && agent_in(s, &b_agent).is_some_and(|a| a.capacity == 3))
        .await;
    let a_conv = visitor_chat(&app, &a, "Alma").await;
    watch_a.until(|s| waits(s, &a_conv)).await;

    for s in &watch_a.seen {
        assert!(!waits(s, &b_conv), "A's screen showed B's chat");
        assert!(
            agent_in(s, &b_agent).is_none(),
            "A's screen showed B's agent"
        );
        assert!(
            agent_in(s, &b.admin_id).is_none(),
            "A's screen showed B's admin"
        );
        assert!(s.total <= 1);
    }
    for s in &watch_b.seen {
        assert!(!waits(s, &a_conv), "B's screen showed A's chat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widget_cannot_watch_the_queue() {
    let app = TestApp::spawn().await;
    let t = app.tenant("watch-widget").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let mut w = Widget::new(&key);
    let queue = QueueServiceClient::new(app.channel.clone());
    // The bare key, then the key with a visitor token.
    let bare = queue
        .clone()
        .watch_queue(w.req(pb::WatchQueueRequest {}))
        .await
        .expect_err("a widget key is refused");
    assert_eq!(bare.code(), Code::PermissionDenied, "{bare:?}");
    w.init(&app, init_req(&session("nosy"), "Nosy"))
        .await
        .expect("InitVisitor");
    let visitor = queue
        .clone()
        .watch_queue(w.req(pb::WatchQueueRequest {}))
        .await
        .expect_err("a visitor token is refused");
    assert_eq!(visitor.code(), Code::PermissionDenied, "{visitor:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_ends_when_the_server_shuts_down() {
    let app = TestApp::spawn().await;
    let t = app.tenant("watch-stop").await;
    let mut watch = Watch::open(&app, &t.admin_token).await.expect("WatchQueue");
    watch.next().await;
    let stopping = tokio::spawn(app.shutdown());
    let end = watch.ended().await;
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_sessions_watch_ends_and_another_session_watches_on() {
    let app = TestApp::spawn().await;
    let t = app.tenant("watch-out").await;
    let (sam, _) = agent(&app, &t, "sam", 2, &[]).await;
    let login = || app.login(&t.slug, "sam@watch-out.example", "agent-password-123");
    let (a, b) = (login().await.unwrap(), login().await.unwrap());
    let mut watch_a = Watch::open(&app, &a.access_token)
        .await
        .expect("WatchQueue");
    let mut watch_b = Watch::open(&app, &b.access_token)
        .await
        .expect("WatchQueue");
    watch_a.next().await;
    watch_b.next().await;

    app.auth()
        .logout(pb::LogoutRequest {
            refresh_token: a.refresh_token.clone(),
        })
        .await
        .expect("Logout");
    let end = watch_a.ended().await;
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    // The other session's screen still follows changes.
    set_capacity(&app, &t, &sam, 4).await;
    watch_b
        .until(|s| agent_in(s, &sam).is_some_and(|a| a.capacity == 4))
        .await;
}
