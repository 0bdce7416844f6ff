//! The visitor API, as a website's widget uses it: InitVisitor (created, resumed by session
//! id, found again by a verified identity), StartChat, messages both ways, typing, the queue
//! status, the visitor stream, the end of the chat and its rating; and the walls around it
//! (widget key and Origin, other tenants, other visitors' chats, revoked keys on two nodes,
//! identity proofs). Through the generated Rust client and through raw gRPC-web frames.
//!
//! No RPC assigns a chat yet (the dispatcher comes later), so the agent is given the chat
//! through `domain::assignment::assign` on a second node over the same database, with a scope
//! that node's authenticator verified from the admin's token.

use std::future::Future;
use std::time::{Duration, Instant};

use chat_engine::domain::{assignment, visitors};
use chat_engine::ids::{ConversationId, UserId};
use chat_engine::tenancy::TenantScope;
use chat_engine_client::pb;
use pb::stream_item::Kind as Item;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::harness::{Events, KillableNode, TenantFixture, TestApp, bearer, violated_fields};
use crate::web::{frames, http1, trailers};

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);
/// The bound for a revoked key to be refused on every node.
const WITHIN: Duration = Duration::from_secs(1);

pub(crate) const ORIGIN: &str = "https://shop.example";

/// Creates a widget key of `t` allowed on `domains`; returns its secret.
pub(crate) async fn widget_key(
    app: &TestApp,
    t: &TenantFixture,
    domains: &[&str],
) -> (String, String) {
    let k = app
        .tenants()
        .create_api_key(bearer(
            pb::admin::CreateApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                name: "widget".into(),
                allowed_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner();
    (k.api_key.unwrap().id, k.secret)
}

/// A widget on a page: its key, the page's origin and, after InitVisitor, the visitor token.
#[derive(Clone)]
pub(crate) struct Widget {
    key: String,
    origin: Option<String>,
    token: Option<String>,
    visitor: Option<String>,
}

impl Widget {
    pub(crate) fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            origin: Some(ORIGIN.to_owned()),
            token: None,
            visitor: None,
        }
    }

    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        md.insert("x-api-key", MetadataValue::try_from(&self.key).unwrap());
        if let Some(o) = &self.origin {
            md.insert("origin", MetadataValue::try_from(o).unwrap());
        }
        if let Some(t) = &self.token {
            md.insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
            );
        }
        r
    }

    pub(crate) async fn init(
        &mut self,
        app: &TestApp,
        req: pb::InitVisitorRequest,
    ) -> Result<pb::InitVisitorResponse, tonic::Status> {
        let r = app
            .visitors()
            .init_visitor(self.req(req))
            .await?
            .into_inner();
        self.token = Some(r.visitor_token.clone());
        self.visitor = r.visitor.as_ref().map(|v| v.id.clone());
        Ok(r)
    }

    pub(crate) async fn start(
        &self,
        app: &TestApp,
        initial: &str,
    ) -> Result<pb::StartChatResponse, tonic::Status> {
        Ok(app
            .visitors()
            .start_chat(self.req(pb::StartChatRequest {
                initial_message: initial.into(),
                request_id: String::new(),
            }))
            .await?
            .into_inner())
    }

    pub(crate) async fn send(
        &self,
        app: &TestApp,
        conv: &str,
        text: &str,
        request_id: &str,
    ) -> Result<pb::SendVisitorMessageResponse, tonic::Status> {
        Ok(app
            .visitors()
            .send_visitor_message(self.req(pb::SendVisitorMessageRequest {
                conversation_id: conv.into(),
                r#type: pb::MessageType::Text as i32,
                text: text.into(),
                request_id: request_id.into(),
            }))
            .await?
            .into_inner())
    }

    pub(crate) async fn typing(
        &self,
        app: &TestApp,
        conv: &str,
        typing: bool,
    ) -> Result<(), tonic::Status> {
        app.visitors()
            .set_visitor_typing(self.req(pb::SetVisitorTypingRequest {
                conversation_id: conv.into(),
                typing,
            }))
            .await?;
        Ok(())
    }

    /// The visitor's id (after `init`).
    pub(crate) fn visitor_id(&self) -> String {
        self.visitor.clone().expect("init first")
    }

    pub(crate) async fn status(
        &self,
        app: &TestApp,
        conv: &str,
    ) -> Result<pb::QueueStatus, tonic::Status> {
        Ok(app
            .visitors()
            .get_queue_status(self.req(pb::GetQueueStatusRequest {
                conversation_id: conv.into(),
            }))
            .await?
            .into_inner()
            .queue_status
            .unwrap())
    }

    pub(crate) async fn end(
        &self,
        app: &TestApp,
        conv: &str,
    ) -> Result<pb::Conversation, tonic::Status> {
        Ok(app
            .visitors()
            .end_chat(self.req(pb::EndChatRequest {
                conversation_id: conv.into(),
            }))
            .await?
            .into_inner()
            .conversation
            .unwrap())
    }

    pub(crate) async fn rate(
        &self,
        app: &TestApp,
        conv: &str,
        score: u32,
        comment: &str,
    ) -> Result<pb::SubmitRatingResponse, tonic::Status> {
        Ok(app
            .visitors()
            .submit_rating(self.req(pb::SubmitRatingRequest {
                conversation_id: conv.into(),
                score,
                comment: comment.into(),
            }))
            .await?
            .into_inner())
    }

    pub(crate) async fn subscribe(
        &self,
        app: &TestApp,
        cursors: &[(&str, u32)],
    ) -> Result<VisitorEvents, tonic::Status> {
        let req = pb::SubscribeVisitorRequest {
            cursors: cursors
                .iter()
                .map(|(c, s)| pb::ConversationCursor {
                    conversation_id: (*c).to_owned(),
                    last_seq: *s,
                })
                .collect(),
        };
        let inner = app
            .visitors()
            .subscribe_visitor(self.req(req))
            .await?
            .into_inner();
        Ok(VisitorEvents { inner })
    }
}

pub(crate) fn session(tag: &str) -> String {
    format!("session-{tag}-0123456789abcdef")
}

pub(crate) fn init_req(session_id: &str, name: &str) -> pb::InitVisitorRequest {
    pb::InitVisitorRequest {
        session_id: session_id.into(),
        name: name.into(),
        email: format!(
            "{}@customer.example",
            name.split_whitespace().next().unwrap_or("x").to_lowercase()
        ),
        page_url: "https://shop.example/pricing".into(),
        referrer: "https://search.example/?q=shop".into(),
        language: "de-DE".into(),
        country: "de".into(),
        attributes: [("plan".to_owned(), "pro".to_owned())].into(),
        ..Default::default()
    }
}

/// A visitor stream with helpers to wait for items.
pub(crate) struct VisitorEvents {
    inner: tonic::Streaming<pb::SubscribeVisitorResponse>,
}

impl VisitorEvents {
    pub(crate) async fn next(&mut self) -> Item {
        match tokio::time::timeout(WAIT, self.inner.message()).await {
            Ok(Ok(Some(r))) => r.item.and_then(|i| i.kind).expect("an item"),
            Ok(Ok(None)) => panic!("the visitor stream ended"),
            Ok(Err(s)) => panic!("the visitor stream failed: {s:?}"),
            Err(_) => panic!("no visitor stream item within {WAIT:?}"),
        }
    }

    pub(crate) async fn caught_up(&mut self) -> Vec<pb::ConversationEvent> {
        let mut out = Vec::new();
        loop {
            match self.next().await {
                Item::CaughtUp(_) => return out,
                Item::Event(e) => out.push(e),
                Item::Presence(p) => panic!("a visitor saw agent presence: {p:?}"),
                _ => {}
            }
        }
    }

    pub(crate) async fn until<T>(&mut self, mut f: impl FnMut(&Item) -> Option<T>) -> T {
        loop {
            let item = self.next().await;
            if let Some(v) = f(&item) {
                return v;
            }
        }
    }
}

pub(crate) fn posted(item: &Item) -> Option<pb::Message> {
    match item {
        Item::Event(pb::ConversationEvent {
            kind: Some(pb::conversation_event::Kind::MessagePosted(m)),
            ..
        }) => Some(m.clone()),
        _ => None,
    }
}

pub(crate) fn status_changed(item: &Item) -> Option<pb::StatusChanged> {
    match item {
        Item::Event(pb::ConversationEvent {
            kind: Some(pb::conversation_event::Kind::StatusChanged(s)),
            ..
        }) => Some(s.clone()),
        _ => None,
    }
}

/// The scope `node` verifies for the bearer of an agent token.
async fn agent_scope(node: &KillableNode, token: &str) -> TenantScope {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let p = node.auth.authenticate(&headers).await.unwrap().unwrap();
    TenantScope::of(&p).unwrap()
}

async fn assign(node: &KillableNode, t: &TenantFixture, conv: &str, agent: &str) {
    let admin = agent_scope(node, &t.admin_token).await;
    assignment::assign(
        &node.engine,
        &admin,
        ConversationId::parse(conv).unwrap(),
        UserId::parse(agent).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_chats_with_an_agent_from_init_to_rating() {
    let app = TestApp::spawn().await;
    let t = app.tenant("chatty").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let node = KillableNode::start(app.same_db()).await;
    let mut w = Widget::new(&key);

    // InitVisitor: a new visitor, then the same one again from the same session.
    let first = w
        .init(&app, init_req(&session("vera"), "Vera"))
        .await
        .unwrap();
    let vera = first.visitor.clone().unwrap();
    assert_eq!(vera.visitor_type, pb::VisitorType::New as i32);
    assert_eq!(vera.country, "DE");
    assert_eq!(vera.attributes.get("plan").map(String::as_str), Some("pro"));
    assert!(first.conversations.is_empty());
    let again = w
        .init(&app, init_req(&session("vera"), "Vera V."))
        .await
        .unwrap();
    let back = again.visitor.unwrap();
    assert_eq!(back.id, vera.id, "the same session is the same visitor");
    assert_eq!(back.visitor_type, pb::VisitorType::Returning as i32);
    assert_eq!(back.name, "Vera V.");

    // StartChat: queued, first in line, with her first message; starting again resumes it.
    let started = w.start(&app, "hello, anyone there?").await.unwrap();
    let chat = started.conversation.clone().unwrap();
    assert_eq!(chat.kind, pb::ConversationKind::External as i32);
    assert_eq!(chat.status, pb::ConversationStatus::Queued as i32);
    assert_eq!(chat.visitor_id, vera.id);
    assert!(!started.resumed);
    let q = started.queue_status.unwrap();
    assert_eq!((q.position, q.queue_length), (1, 1));
    assert!(q.enqueue_time.is_some());
    let hello = started.initial_message.unwrap();
    assert_eq!(hello.text, "hello, anyone there?");
    assert_eq!(hello.sender_type, pb::SenderType::Visitor as i32);
    let resumed = w.start(&app, "").await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.conversation.unwrap().id, chat.id);

    // Her stream replays the chat from the start, then goes live.
    let mut mine = w.subscribe(&app, &[(&chat.id, 0)]).await.unwrap();
    let replay = mine.caught_up().await;
    let texts: Vec<Option<&str>> = replay
        .iter()
        .map(|e| match &e.kind {
            Some(pb::conversation_event::Kind::MessagePosted(m)) => Some(m.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [None, Some("hello, anyone there?")]);
    assert!(matches!(
        &replay[0].kind,
        Some(pb::conversation_event::Kind::StatusChanged(s))
            if s.status == pb::ConversationStatus::Queued as i32
    ));

    // An agent is given the chat (on the other node): the visitor sees it live, and the chat
    // is the agent's, with its whole story, when their stream opens.
    assign(&node, &t, &chat.id, &t.admin_id).await;
    let listed = app
        .conversations()
        .list_conversations(bearer(
            pb::ListConversationsRequest::default(),
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversations;
    let theirs = listed
        .iter()
        .filter_map(|s| s.conversation.as_ref())
        .find(|c| c.id == chat.id)
        .expect("the assigned chat is among the agent's conversations");
    assert_eq!(theirs.visitor_id, vera.id);
    assert_eq!(theirs.member_agent_ids, std::slice::from_ref(&t.admin_id));
    let mut agent = Events::open(&app, &t.admin_token, &[(&chat.id, 0)])
        .await
        .unwrap();
    let story: Vec<String> = agent
        .caught_up()
        .await
        .iter()
        .map(|e| match &e.kind {
            Some(pb::conversation_event::Kind::MessagePosted(m)) => m.text.clone(),
            Some(pb::conversation_event::Kind::MembersAdded(m)) => {
                format!("joined: {}", m.agent_ids.join(","))
            }
            Some(pb::conversation_event::Kind::StatusChanged(s)) => format!("status {}", s.status),
            other => format!("{other:?}"),
        })
        .collect();
    let (queued, open) = (
        pb::ConversationStatus::Queued as i32,
        pb::ConversationStatus::Open as i32,
    );
    assert_eq!(
        story,
        [
            format!("status {queued}"),
            "hello, anyone there?".into(),
            format!("joined: {}", t.admin_id),
            format!("status {open}"),
        ]
    );
    let opened = mine.until(status_changed).await;
    assert_eq!(opened.status, pb::ConversationStatus::Open as i32);
    assert_eq!(opened.assigned_agent_id, t.admin_id);
    let q = w.status(&app, &chat.id).await.unwrap();
    assert_eq!(q.status, pb::ConversationStatus::Open as i32);
    assert_eq!(
        (
            q.position,
            q.assigned_agent_id.as_str(),
            q.assigned_agent_name.as_str()
        ),
        (0, t.admin_id.as_str(), "Admin")
    );

    // Messages both ways; a retried visitor send is stored once.
    crate::harness::send(&app, &t.admin_token, &chat.id, "hi Vera, how can I help?")
        .await
        .unwrap();
    let reply = mine.until(posted).await;
    assert_eq!(reply.text, "hi Vera, how can I help?");
    assert_eq!(reply.sender_type, pb::SenderType::Agent as i32);
    assert_eq!(reply.sender_id, t.admin_id);
    let rid = uuid::Uuid::now_v7().to_string();
    let sent = w
        .send(&app, &chat.id, "my order is late", &rid)
        .await
        .unwrap();
    let retry = w
        .send(&app, &chat.id, "my order is late", &rid)
        .await
        .unwrap();
    assert_eq!(
        (retry.message_id.as_str(), retry.seq),
        (sent.message_id.as_str(), sent.seq)
    );
    let reused = w
        .send(&app, &chat.id, "something else", &rid)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    let own = mine.until(posted).await;
    assert_eq!((own.text.as_str(), own.seq), ("my order is late", sent.seq));
    let seen = agent
        .until(|i| posted(i).filter(|m| m.text == "my order is late"))
        .await;
    assert_eq!(seen.sender_type, pb::SenderType::Visitor as i32);
    assert_eq!(seen.sender_id, vera.id);

    // Typing both ways.
    app.visitors()
        .set_visitor_typing(w.req(pb::SetVisitorTypingRequest {
            conversation_id: chat.id.clone(),
            typing: true,
        }))
        .await
        .unwrap();
    let typing = agent
        .until(|i| match i {
            Item::Typing(ty) => Some(ty.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (typing.sender_id.as_str(), typing.typing),
        (vera.id.as_str(), true)
    );
    app.conversations()
        .set_typing(bearer(
            pb::SetTypingRequest {
                conversation_id: chat.id.clone(),
                typing: true,
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
    let typing = mine
        .until(|i| match i {
            Item::Typing(ty) => Some(ty.clone()),
            _ => None,
        })
        .await;
    assert_eq!(typing.sender_id, t.admin_id);

    // Her history, in order.
    let page = app
        .visitors()
        .list_visitor_messages(w.req(pb::ListVisitorMessagesRequest {
            conversation_id: chat.id.clone(),
            direction: pb::ListDirection::Forward as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let history: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        history,
        [
            "hello, anyone there?",
            "hi Vera, how can I help?",
            "my order is late"
        ]
    );

    // Only text for now; an unknown type names the field.
    let odd = app
        .visitors()
        .send_visitor_message(w.req(pb::SendVisitorMessageRequest {
            conversation_id: chat.id.clone(),
            r#type: 7,
            text: "a picture".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(odd.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&odd), ["type"]);

    // No rating before the end; the end reaches both sides; then one rating, not two.
    let early = w.rate(&app, &chat.id, 5, "").await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    let ended = w.end(&app, &chat.id).await.unwrap();
    assert_eq!(ended.status, pb::ConversationStatus::Closed as i32);
    let closed = mine.until(status_changed).await;
    assert_eq!(closed.status, pb::ConversationStatus::Closed as i32);
    let closed = agent
        .until(|i| match i {
            Item::Event(pb::ConversationEvent {
                kind: Some(pb::conversation_event::Kind::StatusChanged(s)),
                ..
            }) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(closed.status, pb::ConversationStatus::Closed as i32);
    assert_eq!(
        w.end(&app, &chat.id).await.unwrap().status,
        pb::ConversationStatus::Closed as i32,
        "ending twice changes nothing"
    );
    let late = w
        .send(&app, &chat.id, "one more thing", "")
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    let bad = w.rate(&app, &chat.id, 0, "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["score"]);
    let rating = w.rate(&app, &chat.id, 5, "quick and kind").await.unwrap();
    assert_eq!(rating.score, 5);
    assert_eq!(
        rating.agent_id, t.admin_id,
        "kept with the agent who served"
    );
    let twice = w
        .rate(&app, &chat.id, 1, "changed my mind")
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // Coming back: her past chat is listed, and a new chat is a new conversation.
    let later = w
        .init(&app, init_req(&session("vera"), "Vera"))
        .await
        .unwrap();
    let listed: Vec<&str> = later.conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(listed, [chat.id.as_str()]);
    let next = w.start(&app, "").await.unwrap();
    assert!(!next.resumed);
    assert_ne!(next.conversation.unwrap().id, chat.id);
    assert!(next.initial_message.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_positions_follow_arrivals_and_departures() {
    let app = TestApp::spawn().await;
    let t = app.tenant("queue").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let mut chats = Vec::new();
    for name in ["ann", "ben", "cy"] {
        let mut w = Widget::new(&key);
        w.init(&app, init_req(&session(name), name)).await.unwrap();
        let s = w.start(&app, "").await.unwrap();
        chats.push((w, s.conversation.unwrap().id));
    }
    let positions = |chats: &[(Widget, String)]| {
        let chats = chats.to_vec();
        let app = &app;
        async move {
            let mut out = Vec::new();
            for (w, c) in &chats {
                out.push(w.status(app, c).await.unwrap().position);
            }
            out
        }
    };
    assert_eq!(positions(&chats).await, [1, 2, 3]);
    let (ann, ann_chat) = &chats[0];
    ann.end(&app, ann_chat).await.unwrap();
    let ann_status = ann.status(&app, ann_chat).await.unwrap();
    assert_eq!(
        (ann_status.status, ann_status.position),
        (pb::ConversationStatus::Closed as i32, 0)
    );
    assert_eq!(positions(&chats[1..]).await, [1, 2]);
    let q = chats[2].0.status(&app, &chats[2].1).await.unwrap();
    assert_eq!(q.queue_length, 2);
}

/// `n` visitors, each initialized on their own session.
async fn visitors_on(app: &TestApp, key: &str, n: usize) -> Vec<Widget> {
    let mut widgets = Vec::new();
    for i in 0..n {
        let name = format!("v{i}");
        let mut w = Widget::new(key);
        w.init(app, init_req(&session(&name), &name)).await.unwrap();
        widgets.push(w);
    }
    widgets
}

/// Starts arriving together share commits: a visitor who starts twice at once gets one
/// chat, every other visitor their own, each queued once behind those before it, each with
/// its initial message and one `queued` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_started_all_at_once_make_one_chat_per_visitor() {
    let app = TestApp::spawn().await;
    let t = app.tenant("starts").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let widgets = visitors_on(&app, &key, 16).await;
    let starts = widgets.iter().map(|w| {
        let app = &app;
        async move {
            let (a, b) = tokio::join!(w.start(app, "hello"), w.start(app, "hello"));
            (a.unwrap(), b.unwrap())
        }
    });
    let mut chats = Vec::new();
    let mut answered = Vec::new();
    for (w, (a, b)) in widgets
        .iter()
        .zip(futures_util::future::join_all(starts).await)
    {
        let made = if a.resumed { &b } else { &a };
        answered.push(made.queue_status.clone().unwrap().position);
        let (ca, cb) = (a.conversation.unwrap(), b.conversation.unwrap());
        assert_eq!(ca.id, cb.id, "two starts of one visitor make one chat");
        assert_eq!(ca.visitor_id, w.visitor_id());
        assert!(
            a.resumed != b.resumed,
            "one start makes it, the other resumes it"
        );
        assert!(!chats.contains(&ca.id));
        chats.push(ca.id);
    }
    let mut positions = Vec::new();
    for (w, c) in widgets.iter().zip(&chats) {
        let mut replay = w.subscribe(&app, &[(c.as_str(), 0)]).await.unwrap();
        let events = replay.caught_up().await;
        let queued = events
            .iter()
            .filter_map(|e| status_changed(&Item::Event(e.clone())))
            .filter(|s| s.status == pb::ConversationStatus::Queued as i32)
            .count();
        let hellos = events
            .iter()
            .filter_map(|e| posted(&Item::Event(e.clone())))
            .filter(|m| m.text == "hello")
            .count();
        assert_eq!(
            (queued, hellos),
            (1, 2),
            "one queued event; each start's message"
        );
        positions.push(w.status(&app, c).await.unwrap().position);
    }
    positions.sort();
    assert_eq!(positions, (1..=16).collect::<Vec<u32>>());
    // StartChat's own answer places each new chat too, batches or not: no place twice.
    answered.sort();
    assert_eq!(answered, positions, "the places StartChat answered");
}

/// InitVisitor calls arriving together share commits: the calls of one session at once
/// resume one visitor (one call makes them, the others find them), and every other session
/// gets a visitor of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_arriving_all_at_once_make_one_visitor_per_session() {
    let app = TestApp::spawn().await;
    let t = app.tenant("arrivals").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let shared = session("shared");
    let calls = (0..24).map(|i| {
        let (app, key) = (&app, key.clone());
        let sid = match i % 3 {
            0 => shared.clone(),
            _ => session(&format!("own-{i}")),
        };
        async move {
            let mut w = Widget::new(&key);
            let r = w
                .init(app, init_req(&sid, &format!("V {i}")))
                .await
                .unwrap();
            (sid, r.visitor.unwrap())
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let (same, own): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(s, _)| *s == shared);
    assert_eq!(same.len(), 8);
    assert!(
        same.iter().all(|(_, v)| v.id == same[0].1.id),
        "one session, one visitor"
    );
    let made = same
        .iter()
        .filter(|(_, v)| v.visitor_type == pb::VisitorType::New as i32)
        .count();
    assert_eq!(made, 1, "one call made them; the others resumed them");
    let mut ids: Vec<&str> = own.iter().map(|(_, v)| v.id.as_str()).collect();
    ids.push(same[0].1.id.as_str());
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        17,
        "every other session has a visitor of its own"
    );
    assert!(
        own.iter()
            .all(|(_, v)| v.visitor_type == pb::VisitorType::New as i32)
    );
}

/// Ends arriving together share commits: each chat still ends exactly once, with one
/// closing event its visitor sees, a repeated end answers the ended chat, and a visitor who
/// names another's chat in the same moment is refused without harming anybody's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_ended_all_at_once_each_end_once_and_strangers_are_refused() {
    let app = TestApp::spawn().await;
    let t = app.tenant("ends").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let mut chats = Vec::new();
    for w in visitors_on(&app, &key, 16).await {
        let s = w.start(&app, "").await.unwrap();
        chats.push((w, s.conversation.unwrap().id));
    }
    // Every visitor ends their chat twice at once, and also names the next visitor's chat.
    let ends = chats.iter().enumerate().map(|(i, (w, c))| {
        let app = &app;
        let (_, next) = &chats[(i + 1) % chats.len()];
        async move {
            let (a, b, stranger) = tokio::join!(w.end(app, c), w.end(app, c), w.end(app, next));
            (a, b, stranger)
        }
    });
    for (a, b, stranger) in futures_util::future::join_all(ends).await {
        for answer in [a, b] {
            assert_eq!(
                answer.unwrap().status,
                pb::ConversationStatus::Closed as i32
            );
        }
        assert_eq!(stranger.unwrap_err().code(), Code::NotFound);
    }
    for (w, c) in &chats {
        let mut replay = w.subscribe(&app, &[(c.as_str(), 0)]).await.unwrap();
        let closes = replay
            .caught_up()
            .await
            .into_iter()
            .filter_map(|e| status_changed(&Item::Event(e)))
            .filter(|s| s.status == pb::ConversationStatus::Closed as i32)
            .count();
        assert_eq!(closes, 1, "closing events of {c}");
        assert_eq!(
            w.status(&app, c).await.unwrap().status,
            pb::ConversationStatus::Closed as i32
        );
    }
}

/// Whether `check` holds at some try before `WITHIN` has passed since `since`.
async fn holds_within<F, Fut>(since: Instant, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if check().await {
            return true;
        }
        if since.elapsed() >= WITHIN {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_key_the_origin_and_the_visitor_token_wall_each_chat_off() {
    let app = TestApp::spawn().await;
    let t = app.tenant("walls").await;
    let other = app.tenant("beyond").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN, "https://*.shop.example"]).await;
    let (_, other_key) = widget_key(&app, &other, &[ORIGIN]).await;

    // Origins: exact host or a subdomain of a wildcard; anything else is refused.
    for (origin, ok) in [
        (ORIGIN, true),
        ("https://eu.shop.example", true),
        ("https://shop.example.evil.example", false),
        ("http://shop.example", false),
        ("https://evil.example", false),
    ] {
        let mut w = Widget::new(&key);
        w.origin = Some(origin.into());
        let r = w.init(&app, init_req(&session("origin"), "O")).await;
        match ok {
            true => assert!(r.is_ok(), "{origin}: {r:?}"),
            false => assert_eq!(r.unwrap_err().code(), Code::PermissionDenied, "{origin}"),
        }
    }

    // A request naming another tenant than the key's.
    let mut w = Widget::new(&key);
    let mut req = init_req(&session("named"), "N");
    req.tenant_id = other.tenant_id.clone();
    assert_eq!(
        w.init(&app, req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut req = init_req(&session("named"), "N");
    req.tenant_id = t.tenant_id.clone();
    w.init(&app, req).await.unwrap();

    // Chat calls need a visitor token, not just the key.
    let keyless = Widget::new(&key);
    assert_eq!(
        keyless.start(&app, "hi").await.unwrap_err().code(),
        Code::PermissionDenied
    );

    let mut vera = Widget::new(&key);
    vera.init(&app, init_req(&session("vera"), "Vera"))
        .await
        .unwrap();
    let vera_chat = vera
        .start(&app, "mine")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    let mut walt = Widget::new(&key);
    walt.init(&app, init_req(&session("walt"), "Walt"))
        .await
        .unwrap();
    walt.start(&app, "his").await.unwrap();
    let mut far = Widget::new(&other_key);
    far.init(&app, init_req(&session("far"), "Far"))
        .await
        .unwrap();
    let far_chat = far
        .start(&app, "theirs")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;

    // Another visitor's chat, another tenant's chat, a made-up id: all NOT_FOUND.
    for (what, conv) in [
        ("vera's chat", vera_chat.clone()),
        ("another tenant's chat", far_chat.clone()),
        ("no chat", ConversationId::new().to_string()),
    ] {
        let codes = [
            walt.send(&app, &conv, "psst", "").await.map(|_| ()),
            walt.status(&app, &conv).await.map(|_| ()),
            walt.end(&app, &conv).await.map(|_| ()),
            walt.rate(&app, &conv, 3, "").await.map(|_| ()),
            app.visitors()
                .set_visitor_typing(walt.req(pb::SetVisitorTypingRequest {
                    conversation_id: conv.clone(),
                    typing: true,
                }))
                .await
                .map(|_| ()),
            app.visitors()
                .list_visitor_messages(walt.req(pb::ListVisitorMessagesRequest {
                    conversation_id: conv.clone(),
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
        ]
        .map(|r| r.unwrap_err().code());
        assert_eq!(codes, [Code::NotFound; 6], "{what}");
        let mut s = walt.subscribe(&app, &[(&conv, 0)]).await.unwrap();
        let r = tokio::time::timeout(WAIT, s.inner.message()).await.unwrap();
        assert_eq!(r.unwrap_err().code(), Code::NotFound, "{what}");
    }
    // Vera's chat is untouched by all that.
    let q = vera.status(&app, &vera_chat).await.unwrap();
    assert_eq!(q.status, pb::ConversationStatus::Queued as i32);

    // Her token with another tenant's key.
    let mut crossed = vera.clone();
    crossed.key = other_key.clone();
    assert_eq!(
        crossed.status(&app, &vera_chat).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // An agent's token is no visitor token.
    let mut posing = vera.clone();
    posing.token = Some(t.admin_token.clone());
    assert_eq!(
        posing.status(&app, &vera_chat).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_widget_key_is_refused_on_every_node_within_a_second() {
    let node1 = TestApp::spawn().await;
    let node2 = TestApp::spawn_with(node1.same_db()).await;
    let t = node1.tenant("revoke").await;
    let (key_id, key) = widget_key(&node1, &t, &[ORIGIN]).await;
    let mut w = Widget::new(&key);
    w.init(&node2, init_req(&session("vera"), "Vera"))
        .await
        .unwrap();
    let chat = w.start(&node2, "").await.unwrap().conversation.unwrap().id;
    // Both nodes have the key cached now.
    w.status(&node1, &chat).await.unwrap();
    w.status(&node2, &chat).await.unwrap();

    node1
        .tenants()
        .revoke_api_key(bearer(
            pb::admin::RevokeApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                api_key_id: key_id,
            },
            &node1.operator_token,
        ))
        .await
        .unwrap();
    let revoked = Instant::now();
    assert_eq!(
        w.status(&node1, &chat).await.unwrap_err().code(),
        Code::Unauthenticated,
        "the node that revoked it refuses it at once"
    );
    let refused = holds_within(revoked, || async {
        matches!(w.status(&node2, &chat).await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    assert!(
        refused,
        "node 2 still took the revoked key after {WITHIN:?}"
    );
}

async fn set_identity(app: &TestApp, t: &TenantFixture, required: bool, rotate: bool) -> String {
    app.tenants()
        .set_identity_verification(bearer(
            pb::admin::SetIdentityVerificationRequest {
                tenant_id: t.tenant_id.clone(),
                required,
                rotate_secret: rotate,
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret
}

fn identified(session_id: &str, user: &str, proof: String) -> pb::InitVisitorRequest {
    pb::InitVisitorRequest {
        identity: Some(pb::VisitorIdentity {
            external_user_id: user.into(),
            proof,
        }),
        ..init_req(session_id, "Ida")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_proofs_find_a_visitor_on_any_device_and_wrong_ones_are_refused() {
    let app = TestApp::spawn().await;
    let t = app.tenant("ident").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;

    // Without a secret, a proof cannot be checked and is refused, not ignored; nor can a
    // tenant require what it cannot check.
    let mut w = Widget::new(&key);
    let r = w
        .init(
            &app,
            identified(&session("laptop"), "user-1", "0".repeat(64)),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), Code::FailedPrecondition);
    let st = app
        .tenants()
        .set_identity_verification(bearer(
            pb::admin::SetIdentityVerificationRequest {
                tenant_id: t.tenant_id.clone(),
                required: true,
                rotate_secret: false,
            },
            &app.operator_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);

    let secret = set_identity(&app, &t, false, true).await;
    assert_eq!(secret.len(), 64);
    let proof = |user: &str| visitors::identity_proof(secret.as_bytes(), user);

    // An anonymous visitor on the laptop logs in on the site: the same visitor, identified.
    let anon = w
        .init(&app, init_req(&session("laptop"), "Ida"))
        .await
        .unwrap();
    let anon_id = anon.visitor.unwrap().id;
    let chat = w
        .start(&app, "question")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    let ida = w
        .init(
            &app,
            identified(&session("laptop"), "user-1", proof("user-1")),
        )
        .await
        .unwrap()
        .visitor
        .unwrap();
    assert_eq!(ida.id, anon_id);
    assert_eq!(ida.visitor_type, pb::VisitorType::Identified as i32);
    assert_eq!(ida.external_user_id, "user-1");

    // Her phone: another session, the same user, the same visitor and her chat.
    let mut phone = Widget::new(&key);
    let on_phone = phone
        .init(
            &app,
            identified(&session("phone"), "user-1", proof("user-1")),
        )
        .await
        .unwrap();
    assert_eq!(on_phone.visitor.unwrap().id, ida.id);
    let listed: Vec<&str> = on_phone
        .conversations
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(listed, [chat.as_str()]);
    phone.send(&app, &chat, "from my phone", "").await.unwrap();
    // Upper-case hex is the same proof.
    phone
        .init(
            &app,
            identified(&session("phone"), "user-1", proof("user-1").to_uppercase()),
        )
        .await
        .unwrap();

    // Without a proof, her phone's session shows nothing of hers: a new anonymous visitor.
    let mut shared = Widget::new(&key);
    let anon_again = shared
        .init(&app, init_req(&session("phone"), "Someone"))
        .await
        .unwrap();
    let someone = anon_again.visitor.unwrap();
    assert_ne!(someone.id, ida.id);
    assert_eq!(someone.external_user_id, "");
    assert!(anon_again.conversations.is_empty());
    assert_eq!(
        shared.status(&app, &chat).await.unwrap_err().code(),
        Code::NotFound
    );

    // Wrong proofs: another user's, or one made with another secret.
    let mut mallory = Widget::new(&key);
    for wrong in [
        proof("user-2"),
        visitors::identity_proof(b"guessed", "user-1"),
    ] {
        let r = mallory
            .init(&app, identified(&session("mallory"), "user-1", wrong))
            .await;
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    }
    // A malformed proof names its field.
    let r = mallory
        .init(
            &app,
            identified(&session("mallory"), "user-1", "xyz".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&r), ["identity.proof"]);

    // Required: an anonymous visitor is refused, an identified one is let in.
    set_identity(&app, &t, true, false).await;
    let r = mallory.init(&app, init_req(&session("mallory"), "M")).await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    mallory
        .init(
            &app,
            identified(&session("mallory"), "user-3", proof("user-3")),
        )
        .await
        .unwrap();

    // Rotating the secret: proofs made with the old one stop working.
    let fresh = set_identity(&app, &t, true, true).await;
    assert_ne!(fresh, secret);
    let r = phone
        .init(
            &app,
            identified(&session("phone"), "user-1", proof("user-1")),
        )
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
}

/// A gRPC-web request of the widget: one frame, the key, the page's origin and maybe a token.
fn widget_post(
    method: &str,
    key: &str,
    origin: &str,
    token: Option<&str>,
    payload: &[u8],
) -> (String, Vec<u8>) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /chatengine.v1.VisitorService/{method} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nOrigin: {origin}\r\n\
         X-Api-Key: {key}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    );
    (head, frame)
}

/// Calls a VisitorService method over gRPC-web; the decoded answer, or the grpc-status.
async fn web_call<R: prost::Message + Default>(
    app: &TestApp,
    method: &str,
    key: &str,
    origin: &str,
    token: Option<&str>,
    req: &impl prost::Message,
) -> Result<R, String> {
    let (head, body) = widget_post(method, key, origin, token, &req.encode_to_vec());
    let r = http1(app, &head, &body).await;
    assert_eq!(r.status, 200);
    let f = frames(&r.body);
    let status = r
        .header("grpc-status")
        .map(|s| format!("grpc-status:{s}"))
        .unwrap_or_else(|| trailers(&f));
    match f.iter().find(|(flag, _)| *flag == 0) {
        Some((_, data)) if status.contains("grpc-status:0") => {
            Ok(R::decode(&data[..]).expect("a decodable answer"))
        }
        _ => Err(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_flow_works_over_grpc_web_from_an_allowed_origin_only() {
    let app = TestApp::spawn().await;
    let t = app.tenant("webchat").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;

    let init: pb::InitVisitorResponse = web_call(
        &app,
        "InitVisitor",
        &key,
        ORIGIN,
        None,
        &init_req(&session("web"), "Wendy"),
    )
    .await
    .unwrap();
    let token = init.visitor_token;
    let started: pb::StartChatResponse = web_call(
        &app,
        "StartChat",
        &key,
        ORIGIN,
        Some(&token),
        &pb::StartChatRequest {
            initial_message: "hello from the browser".into(),
            request_id: String::new(),
        },
    )
    .await
    .unwrap();
    let chat = started.conversation.unwrap().id;
    let sent: pb::SendVisitorMessageResponse = web_call(
        &app,
        "SendVisitorMessage",
        &key,
        ORIGIN,
        Some(&token),
        &pb::SendVisitorMessageRequest {
            conversation_id: chat.clone(),
            r#type: pb::MessageType::Text as i32,
            text: "and a follow-up".into(),
            request_id: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(sent.seq, 3);
    let page: pb::ListVisitorMessagesResponse = web_call(
        &app,
        "ListVisitorMessages",
        &key,
        ORIGIN,
        Some(&token),
        &pb::ListVisitorMessagesRequest {
            conversation_id: chat.clone(),
            direction: pb::ListDirection::Forward as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hello from the browser", "and a follow-up"]);

    // The same call from a page the key is not for: PERMISSION_DENIED (7).
    let denied = web_call::<pb::GetQueueStatusResponse>(
        &app,
        "GetQueueStatus",
        &key,
        "https://evil.example",
        Some(&token),
        &pb::GetQueueStatusRequest {
            conversation_id: chat,
        },
    )
    .await
    .unwrap_err();
    assert!(denied.contains("grpc-status:7"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_stream_opened_before_the_chat_picks_the_chat_up() {
    let app = TestApp::spawn().await;
    let t = app.tenant("early").await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    let mut w = Widget::new(&key);
    w.init(&app, init_req(&session("early"), "Eve"))
        .await
        .unwrap();
    let mut s = w.subscribe(&app, &[]).await.unwrap();
    assert!(s.caught_up().await.is_empty());

    let chat = w
        .start(&app, "I opened the widget first")
        .await
        .unwrap()
        .conversation
        .unwrap();
    let joined = s
        .until(|i| match i {
            Item::Joined(j) => j.conversation.clone(),
            _ => None,
        })
        .await;
    assert_eq!(joined.id, chat.id);
    let queued = s.until(status_changed).await;
    assert_eq!(queued.status, pb::ConversationStatus::Queued as i32);
    let first = s.until(posted).await;
    assert_eq!(first.text, "I opened the widget first");
    assert_eq!(first.conversation_id, chat.id);

    // Another visitor's new chat never shows up on her stream.
    let mut other = Widget::new(&key);
    other
        .init(&app, init_req(&session("other"), "Otto"))
        .await
        .unwrap();
    other.start(&app, "not for Eve").await.unwrap();
    w.send(&app, &chat.id, "still here", "").await.unwrap();
    let next = s.until(posted).await;
    assert_eq!(next.text, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_flood_is_rate_limited_with_retry_info_and_other_tenants_chat_on() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    let flood = app.tenant("vflood").await;
    let calm = app.tenant("vcalm").await;
    let (_, flood_key) = widget_key(&app, &flood, &[ORIGIN]).await;
    let (_, calm_key) = widget_key(&app, &calm, &[ORIGIN]).await;
    let mut w = Widget::new(&flood_key);
    w.init(&app, init_req(&session("flood"), "Fay"))
        .await
        .unwrap();
    // The defaults let one visitor make 60 calls at once, then 2 a second.
    let mut limited = None;
    for attempt in 1..=200 {
        let r = app
            .visitors()
            .get_widget_config(w.req(pb::GetWidgetConfigRequest {}))
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                limited = Some((attempt, s));
                break;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let (attempt, status) = limited.expect("200 calls in a row were never limited");
    assert!(attempt >= 50, "limited after {attempt} calls");
    let delay = status
        .get_details_retry_info()
        .and_then(|i| i.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(delay > std::time::Duration::ZERO);
    // The same visitor's chat calls are held back too (a slow machine may have refilled a
    // token or two since, at 2 a second, but not ten).
    let mut held = None;
    for _ in 0..10 {
        if let Err(e) = w.start(&app, "let me in").await {
            held = Some(e.code());
            break;
        }
    }
    assert_eq!(held, Some(tonic::Code::ResourceExhausted));
    // Another tenant's visitor, from the same address, is not affected.
    let mut c = Widget::new(&calm_key);
    c.init(&app, init_req(&session("calm"), "Cal"))
        .await
        .unwrap();
    c.start(&app, "hello").await.unwrap();
}
