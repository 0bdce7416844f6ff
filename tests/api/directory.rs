//! Authorization follows the directory on every node: a demotion, a deactivation or a
//! revoked session made through node 1 holds on node 2 within a second, for access tokens
//! issued before the change and for streams opened before it (a deactivated agent's, or a
//! signed-out session's). Two nodes share one database
//! and no NATS: the change reaches node 2 through PostgreSQL alone.

use std::future::Future;
use std::time::{Duration, Instant};

use chat_engine_client::pb;
use pb::stream_item::Kind as Item;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::delivery::open_connect;
use crate::harness::{Events, TestApp, bearer, group, posted_text, send};

/// The bound for a directory change to hold on every node.
const WITHIN: Duration = Duration::from_secs(1);

const PASSWORD: &str = "agent-password-123";

/// Two nodes over one database, and a tenant made through node 1.
async fn two_nodes(slug: &str) -> (TestApp, TestApp, crate::harness::TenantFixture) {
    let node1 = TestApp::spawn().await;
    let node2 = TestApp::spawn_with(node1.same_db()).await;
    let t = node1.tenant(slug).await;
    (node1, node2, t)
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

/// Any agent may list agents: the status of that call says whether the token still works.
async fn list(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.agents()
        .list_agents(bearer(pb::ListAgentsRequest::default(), token))
        .await
        .map(|_| ())
}

/// Signs the session of `tokens` out through `app`.
async fn sign_out(app: &TestApp, tokens: &pb::TokenPair) {
    app.auth()
        .logout(pb::LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap();
}

async fn refused(app: &TestApp, token: &str) -> bool {
    matches!(list(app, token).await, Err(s) if s.code() == Code::Unauthenticated)
}

async fn update(
    app: &TestApp,
    token: &str,
    req: pb::UpdateAgentRequest,
) -> Result<pb::Agent, tonic::Status> {
    Ok(app
        .agents()
        .update_agent(bearer(req, token))
        .await?
        .into_inner()
        .agent
        .expect("agent"))
}

fn rename(id: &str, name: &str) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent_id: id.into(),
        display_name: Some(name.into()),
        ..Default::default()
    }
}

fn set_role(id: &str, role: pb::AgentRole) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent_id: id.into(),
        role: Some(role as i32),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_cannot_promote_themselves_back_on_another_node() {
    let (node1, node2, t) = two_nodes("demote").await;
    let bob = node1
        .agents()
        .create_agent(bearer(
            pb::CreateAgentRequest {
                email: "bob@demote.example".into(),
                display_name: "Bob".into(),
                role: pb::AgentRole::Admin as i32,
                password: PASSWORD.into(),
                max_concurrent_chats: 2,
                skills: vec![],
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap()
        .id;
    let bob_token = node1
        .login("demote", "bob@demote.example", PASSWORD)
        .await
        .unwrap()
        .access_token;
    // Node 2 has seen Bob act as an admin with this token.
    update(&node2, &bob_token, rename(&bob, "Bob A."))
        .await
        .unwrap();

    update(&node1, &t.admin_token, set_role(&bob, pb::AgentRole::Agent))
        .await
        .unwrap();
    let demoted = Instant::now();

    // Renaming is for admins only: once node 2 refuses it, the old token carries the agent
    // role there.
    let lost_admin = holds_within(demoted, || async {
        matches!(
            update(&node2, &bob_token, rename(&bob, "Bob B.")).await,
            Err(s) if s.code() == Code::PermissionDenied
        )
    })
    .await;
    assert!(
        lost_admin,
        "node 2 still let the demoted admin act as one after {WITHIN:?}"
    );
    let err = update(&node2, &bob_token, set_role(&bob, pb::AgentRole::Admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The token still works for what agents may do, and Bob is still an agent.
    let me = node2
        .agents()
        .get_agent(bearer(
            pb::GetAgentRequest {
                agent_id: bob.clone(),
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(me.role, pb::AgentRole::Agent as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_agent_is_refused_and_their_open_streams_end_on_another_node() {
    let (node1, node2, t) = two_nodes("deact").await;
    let (ann, ann_token) = node1.agent(&t, "ann").await;
    let mut subscribe = Events::open(&node2, &ann_token, &[]).await.unwrap();
    subscribe.caught_up().await;
    let (_commands, mut connect) = connect_live(&node2, &ann_token).await;
    list(&node2, &ann_token).await.unwrap();

    node1
        .agents()
        .deactivate_agent(bearer(
            pb::DeactivateAgentRequest {
                agent_id: ann.clone(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
    let deactivated = Instant::now();

    // Both streams are told to resync, then end with ABORTED; the reconnect they ask for is
    // refused below.
    let resync = tokio::time::timeout_at(
        (deactivated + WITHIN).into(),
        subscribe.until(|i| match i {
            Item::Resync(r) => Some(r.clone()),
            _ => None,
        }),
    )
    .await
    .expect("the Subscribe stream on node 2 stayed open");
    assert_eq!(resync.reason, pb::ResyncReason::Deactivated as i32);
    assert_eq!(subscribe.next().await.unwrap_err().code(), Code::Aborted);
    let ended = tokio::time::timeout_at((deactivated + WITHIN).into(), async {
        loop {
            match next_connect(&mut connect).await {
                Ok(pb::connect_response::Kind::Item(pb::StreamItem {
                    kind: Some(Item::Resync(r)),
                })) => break r.reason,
                Ok(_) => continue,
                Err(s) => panic!("Connect ended without a resync: {s:?}"),
            }
        }
    })
    .await
    .expect("the Connect stream on node 2 stayed open");
    assert_eq!(ended, pb::ResyncReason::Deactivated as i32);
    assert_eq!(
        next_connect(&mut connect).await.unwrap_err().code(),
        Code::Aborted
    );

    assert!(
        holds_within(deactivated, || refused(&node2, &ann_token)).await,
        "node 2 still accepted the deactivated agent's token after {WITHIN:?}"
    );
    let again = Events::open(&node2, &ann_token, &[]).await.err();
    assert_eq!(again.map(|s| s.code()), Some(Code::Unauthenticated));
    let login = node1
        .login("deact", "ann@deact.example", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_refused_on_another_node_while_other_sessions_work() {
    let (node1, node2, t) = two_nodes("signout").await;
    node1.agent(&t, "ann").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let pair = node1
            .login("signout", "ann@signout.example", PASSWORD)
            .await
            .unwrap();
        list(&node2, &pair.access_token).await.unwrap();
        sessions.push(pair);
    }
    let (a, b, c) = (&sessions[0], &sessions[1], &sessions[2]);

    // Logout on node 1 ends session A on node 2.
    sign_out(&node1, a).await;
    let signed_out = Instant::now();
    assert!(
        holds_within(signed_out, || refused(&node2, &a.access_token)).await,
        "node 2 still accepted a signed-out session's token after {WITHIN:?}"
    );
    list(&node2, &b.access_token).await.unwrap();

    // B's refresh token is used twice, as a leaked one would be: reuse detection revokes
    // session B, the access token its first use returned included.
    let b2 = node1
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: b.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    list(&node2, &b2.access_token).await.unwrap();
    let reuse = node1
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: b.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let reused = Instant::now();
    assert!(
        holds_within(reused, || async {
            refused(&node2, &b2.access_token).await && refused(&node2, &b.access_token).await
        })
        .await,
        "node 2 still accepted a revoked session's tokens after {WITHIN:?}"
    );

    // Session C was never touched and works on both nodes.
    list(&node2, &c.access_token).await.unwrap();
    list(&node1, &c.access_token).await.unwrap();
    assert!(refused(&node1, &a.access_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_sessions_streams_end_on_another_node_while_another_session_streams_on() {
    let (node1, node2, t) = two_nodes("streamout").await;
    let (ann, _) = node1.agent(&t, "ann").await;
    let login = || node1.login("streamout", "ann@streamout.example", PASSWORD);
    let (a, b) = (login().await.unwrap(), login().await.unwrap());
    let mut a_subscribe = Events::open(&node2, &a.access_token, &[]).await.unwrap();
    a_subscribe.caught_up().await;
    let (_commands, mut a_connect) = connect_live(&node2, &a.access_token).await;
    let mut b_subscribe = Events::open(&node2, &b.access_token, &[]).await.unwrap();
    b_subscribe.caught_up().await;

    sign_out(&node1, &a).await;
    let signed_out = Instant::now();

    // No resync: reconnecting with session A's tokens is refused, so the client is told to
    // sign in again.
    let ended = tokio::time::timeout_at((signed_out + WITHIN).into(), async {
        loop {
            match a_subscribe.next().await {
                Ok(Some(Item::Resync(r))) => {
                    panic!("a signed-out stream was told to resync: {r:?}")
                }
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the Subscribe stream ended without a status"),
                Err(s) => break s,
            }
        }
    })
    .await
    .expect("session A's Subscribe stream on node 2 stayed open");
    assert_session_ended(&ended);
    let ended = tokio::time::timeout_at((signed_out + WITHIN).into(), async {
        loop {
            match next_connect(&mut a_connect).await {
                Ok(pb::connect_response::Kind::Item(pb::StreamItem {
                    kind: Some(Item::Resync(r)),
                })) => panic!("a signed-out stream was told to resync: {r:?}"),
                Ok(_) => continue,
                Err(s) => break s,
            }
        }
    })
    .await
    .expect("session A's Connect stream on node 2 stayed open");
    assert_session_ended(&ended);

    // Session B's stream on node 2 is still live: a message to Ann reaches it.
    let conv = group(&node1, &t.admin_token, &[&ann]).await;
    send(&node1, &t.admin_token, &conv, "still there?")
        .await
        .unwrap();
    let text = b_subscribe
        .until(|i| match i {
            Item::Event(e) => posted_text(e).map(str::to_owned),
            _ => None,
        })
        .await;
    assert_eq!(text, "still there?");
    let again = Events::open(&node2, &a.access_token, &[]).await.err();
    assert_eq!(again.map(|s| s.code()), Some(Code::Unauthenticated));
}

fn assert_session_ended(s: &tonic::Status) {
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), "this session has ended");
}

/// A Connect stream on `app` that has caught up: the server runs its commands from here on.
async fn connect_live(
    app: &TestApp,
    token: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::ConnectRequest>,
    tonic::Streaming<pb::ConnectResponse>,
) {
    let (commands, mut down) = open_connect(app, token, 1).await;
    loop {
        if let pb::connect_response::Kind::Item(pb::StreamItem {
            kind: Some(Item::CaughtUp(_)),
        }) = next_connect(&mut down).await.unwrap()
        {
            return (commands, down);
        }
    }
}

/// The next Connect item, or the status the stream ended with; fails the test if nothing
/// comes within 20 s.
async fn next_connect(
    down: &mut tonic::Streaming<pb::ConnectResponse>,
) -> Result<pb::connect_response::Kind, tonic::Status> {
    let next = tokio::time::timeout(Duration::from_secs(20), down.next())
        .await
        .expect("connect stream stalled")
        .expect("connect stream ended without a status")?;
    Ok(next.kind.expect("item or ack"))
}
