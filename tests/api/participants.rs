//! Participants: a visitor posts into, reads and follows their own external chat through the
//! same pipeline, replay and stream as agents, and takes part in nothing else (another
//! visitor's chat, an internal group, another tenant's chat). No visitor RPC serves chat yet,
//! so the visitor acts through a second node's domain with a scope its authenticator
//! verified from a widget key and a visitor token; the agents use the API of the first node.

use std::pin::Pin;
use std::time::Duration;

use chat_engine::auth::jwt::{Claims, JwtKeys, VISITOR_AUDIENCE};
use chat_engine::domain::conversations;
use chat_engine::domain::events::EventKind;
use chat_engine::domain::participants::Participant;
use chat_engine::error::{AppError, AppResult};
use chat_engine::ids::{ConversationId, VisitorId};
use chat_engine::realtime::{Item, stream};
use chat_engine::tenancy::TenantScope;
use chat_engine_client::pb;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::{Stream, StreamExt};
use tonic::Code;

use crate::harness::{
    Events, KillableNode, TenantFixture, TestApp, bearer, group, posted_text, send,
};

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

/// A new visitor of `tenant` with an open external chat served by `agent`, written in SQL
/// until StartChat lands; returns (visitor, conversation).
async fn external_chat(app: &TestApp, tenant: &str, agent: &str) -> (VisitorId, ConversationId) {
    let (visitor, conv) = (VisitorId::new(), ConversationId::new());
    let mut conn = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO visitors (tenant_id, visitor_id) VALUES ('{tenant}', '{visitor}');
         INSERT INTO conversations (tenant_id, conversation_id, kind, status, title, visitor_id,
                                    last_seq, created_at, last_activity_at)
           VALUES ('{tenant}', '{conv}', 'external', 'open', '', '{visitor}', 0, now(), now());
         INSERT INTO conversation_members (tenant_id, conversation_id, user_id, read_seq,
                                           joined_at)
           VALUES ('{tenant}', '{conv}', '{agent}', 0, now());"
    ))
    .await
    .unwrap();
    (visitor, conv)
}

/// The scope `node` verifies for `visitor` calling with a widget key of `t` and a visitor
/// token.
async fn visitor_scope(
    app: &TestApp,
    node: &KillableNode,
    t: &TenantFixture,
    visitor: VisitorId,
) -> TenantScope {
    let key = app
        .tenants()
        .create_api_key(bearer(
            pb::admin::CreateApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                name: "widget".into(),
                allowed_domains: vec![],
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let now = chrono::Utc::now().timestamp();
    let token = JwtKeys::hmac("k1", app.jwt_secret.as_bytes(), "chat-engine")
        .unwrap()
        .sign(&Claims {
            iss: "chat-engine".into(),
            aud: VISITOR_AUDIENCE.into(),
            sub: visitor.to_string(),
            tid: t.tenant_id.clone(),
            ctx: key.api_key.unwrap().id,
            sid: None,
            iat: now,
            exp: now + 3600,
        })
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", key.secret.parse().unwrap());
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let principal = node.auth.authenticate(&headers).await.unwrap().unwrap();
    TenantScope::of(&principal).unwrap()
}

type VisitorStream = Pin<Box<dyn Stream<Item = AppResult<Item>> + Send>>;

fn open(
    node: &KillableNode,
    scope: TenantScope,
    cursors: Vec<(ConversationId, i64)>,
) -> VisitorStream {
    Box::pin(stream::subscribe(node.streams.clone(), scope, cursors))
}

async fn next(s: &mut VisitorStream) -> Item {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("no stream item in time")
        .expect("the stream ended")
        .expect("the stream failed")
}

/// The text and sender of the next posted message on a visitor's stream.
async fn next_post(s: &mut VisitorStream) -> (ConversationId, String, Participant) {
    loop {
        if let Item::Event(e) = next(s).await
            && let EventKind::MessagePosted(m) = e.kind
        {
            return (m.conversation_id, m.text, m.sender);
        }
    }
}

async fn visitor_sends(
    node: &KillableNode,
    scope: &TenantScope,
    conv: ConversationId,
    text: &str,
    request_id: Option<uuid::Uuid>,
) -> AppResult<conversations::Sent> {
    conversations::submit(&node.engine, scope, conv, text.into(), request_id)
        .await?
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_takes_part_in_their_own_chat_through_the_agents_pipeline_and_in_nothing_else() {
    let app = TestApp::spawn().await;
    let t = app.tenant("visits").await;
    let other = app.tenant("elsewhere").await;
    let (bob, bob_tok) = app.agent(&t, "bob").await;
    let team = group(&app, &t.admin_token, &[&bob]).await;
    let (vera, vera_chat) = external_chat(&app, &t.tenant_id, &t.admin_id).await;
    let (_walt, walt_chat) = external_chat(&app, &t.tenant_id, &t.admin_id).await;
    let (_, far_chat) = external_chat(&app, &other.tenant_id, &other.admin_id).await;
    let node = KillableNode::start(app.same_db()).await;
    let me = visitor_scope(&app, &node, &t, vera).await;
    let foreign = [
        ("another visitor's chat", walt_chat),
        ("an internal group", ConversationId::parse(&team).unwrap()),
        ("another tenant's chat", far_chat),
    ];

    // Subscribe: no cursor for a conversation she takes no part in.
    for (what, conv) in foreign {
        let mut s = open(&node, me, vec![(conv, 0)]);
        let r = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("an answer");
        assert!(
            matches!(r, Some(Err(AppError::NotFound(_)))),
            "{what}: {r:?}"
        );
    }
    // Her own stream: her chat, and not the tenant's agent roster.
    let mut mine = open(&node, me, vec![]);
    loop {
        match next(&mut mine).await {
            Item::CaughtUp => break,
            Item::Presence(p) => panic!("a visitor saw agent presence: {p:?}"),
            _ => {}
        }
    }
    let mut admin = Events::open(&app, &t.admin_token, &[]).await.unwrap();
    admin.caught_up().await;

    // Posting: nowhere but her own chat.
    for (what, conv) in foreign {
        let r = visitor_sends(&node, &me, conv, "psst", None).await;
        assert!(matches!(r, Err(AppError::NotFound(_))), "{what}: {r:?}");
    }
    // Agents take part through membership: bob serves no visitor.
    let st = send(&app, &bob_tok, &vera_chat.to_string(), "hi")
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    send(&app, &t.admin_token, &walt_chat.to_string(), "for walt")
        .await
        .unwrap();
    let rid = uuid::Uuid::now_v7();
    let first = visitor_sends(&node, &me, vera_chat, "hello", Some(rid))
        .await
        .unwrap();
    let retry = visitor_sends(&node, &me, vera_chat, "hello", Some(rid))
        .await
        .unwrap();
    assert_eq!(retry, first, "a retried visitor send is stored once");

    // The agent serving her sees it live on the other node, as hers.
    let posted = admin
        .until(|item| match item {
            pb::stream_item::Kind::Event(e) if posted_text(e) == Some("hello") => match &e.kind {
                Some(pb::conversation_event::Kind::MessagePosted(m)) => Some(m.clone()),
                _ => None,
            },
            _ => None,
        })
        .await;
    assert_eq!(posted.sender_type, pb::SenderType::Visitor as i32);
    assert_eq!(posted.sender_id, vera.to_string());
    assert_eq!(posted.conversation_id, vera_chat.to_string());

    // Her stream carries her chat only: walt's message and the team's never arrive, the
    // agent's answer does.
    assert_eq!(
        next_post(&mut mine).await,
        (vera_chat, "hello".into(), Participant::Visitor(vera))
    );
    send(&app, &t.admin_token, &team, "team only")
        .await
        .unwrap();
    send(&app, &t.admin_token, &vera_chat.to_string(), "hi vera")
        .await
        .unwrap();
    let admin_id = chat_engine::ids::UserId::parse(&t.admin_id).unwrap();
    assert_eq!(
        next_post(&mut mine).await,
        (vera_chat, "hi vera".into(), Participant::Agent(admin_id))
    );

    // Reading: her chat's history, nobody else's.
    let page = conversations::list_messages(&node.engine, &me, vera_chat, true, 0, 10, "")
        .await
        .unwrap();
    let texts: Vec<(&str, Participant)> = page
        .items
        .iter()
        .map(|m| (m.text.as_str(), m.sender))
        .collect();
    assert_eq!(
        texts,
        [
            ("hello", Participant::Visitor(vera)),
            ("hi vera", Participant::Agent(admin_id))
        ]
    );
    for (what, conv) in foreign {
        let r = conversations::list_messages(&node.engine, &me, conv, true, 0, 10, "").await;
        assert!(
            matches!(r, Err(AppError::NotFound(_))),
            "{what}: {:?}",
            r.map(|p| p.items)
        );
        let r = conversations::events_between(&node.engine, &me, conv, 0, 10, 10).await;
        assert!(matches!(r, Ok(None)), "{what}: {r:?}");
    }
    assert_eq!(
        node.engine
            .openings
            .memberships(me)
            .await
            .unwrap()
            .into_iter()
            .map(|(c, _)| c)
            .collect::<Vec<_>>(),
        [vera_chat]
    );
}
