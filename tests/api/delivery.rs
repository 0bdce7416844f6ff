//! The event stream: ordering under concurrency, exact resume, joins, receipts, typing,
//! presence, slow consumers, shutdown, and the bidirectional Connect stream.

use chat_engine_client::pb;
use pb::stream_item::Kind as Item;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::{Events, Options, TestApp, bearer, group, posted_text, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_one_gapless_order_that_every_subscriber_sees() {
    let app = TestApp::spawn().await;
    let t = app.tenant("order").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (bob, bob_tok) = app.agent(&t, "bob").await;
    let conv = group(&app, &t.admin_token, &[&ann, &bob]).await;
    let mut subs = Vec::new();
    for tok in [&t.admin_token, &ann_tok, &bob_tok] {
        let mut e = Events::open(&app, tok, &[(&conv, 1)]).await.unwrap();
        e.caught_up().await;
        subs.push(e);
    }
    let senders = (0..100).map(|i| {
        let tok = [&t.admin_token, &ann_tok, &bob_tok][i % 3].clone();
        let app = &app;
        let conv = conv.clone();
        async move { send(app, &tok, &conv, &format!("msg {i}")).await.unwrap().1 }
    });
    let mut acked: Vec<u32> = futures_util::future::join_all(senders).await;
    acked.sort();
    assert_eq!(
        acked,
        (2..=101).collect::<Vec<u32>>(),
        "acked seqs are gapless"
    );
    let mut orders = Vec::new();
    for s in &mut subs {
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let e = s.event().await;
            seen.push((e.seq, posted_text(&e).unwrap().to_owned()));
        }
        assert_eq!(
            seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (2..=101).collect::<Vec<u32>>()
        );
        orders.push(seen);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "subscribers disagree on the order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_exactly_the_missing_events() {
    let app = TestApp::spawn().await;
    let t = app.tenant("resume").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;
    let mut ev = Events::open(&app, &ann_tok, &[(&conv, 0)]).await.unwrap();
    assert_eq!(ev.caught_up().await.len(), 1);
    for i in 0..3 {
        send(&app, &t.admin_token, &conv, &format!("before {i}"))
            .await
            .unwrap();
    }
    let mut last = 0;
    for _ in 0..3 {
        last = ev.event().await.seq;
    }
    drop(ev);
    // Messages keep coming while the client is away, and while it resubscribes.
    for i in 0..4 {
        send(&app, &t.admin_token, &conv, &format!("away {i}"))
            .await
            .unwrap();
    }
    let background = {
        let (tok, conv, app_ch) = (t.admin_token.clone(), conv.clone(), app.channel.clone());
        tokio::spawn(async move {
            let mut c = pb::conversation_service_client::ConversationServiceClient::new(app_ch);
            for i in 0..20 {
                c.send_message(bearer(
                    pb::SendMessageRequest {
                        conversation_id: conv.clone(),
                        text: format!("during {i}"),
                        request_id: String::new(),
                    },
                    &tok,
                ))
                .await
                .unwrap();
            }
        })
    };
    let mut ev = Events::open(&app, &ann_tok, &[(&conv, last)])
        .await
        .unwrap();
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    while seqs.len() < 24 {
        let e = ev.event().await;
        seqs.push(e.seq);
        texts.push(posted_text(&e).unwrap().to_owned());
    }
    background.await.unwrap();
    assert_eq!(
        seqs,
        ((last + 1)..=(last + 24)).collect::<Vec<u32>>(),
        "no gap, no duplicate"
    );
    assert_eq!(texts[0], "away 0");
    assert_eq!(texts[23], "during 19");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_across_a_server_restart() {
    let app = TestApp::spawn().await;
    let t = app.tenant("restart").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;
    let mut ev = Events::open(&app, &ann_tok, &[(&conv, 0)]).await.unwrap();
    ev.caught_up().await;
    send(&app, &t.admin_token, &conv, "one").await.unwrap();
    let seen = ev.event().await.seq;
    send(&app, &t.admin_token, &conv, "two").await.unwrap();
    let opts = app.same_db();
    // The server goes away with the stream open: the stream is told where to resume.
    let stopping = tokio::spawn(app.shutdown());
    let resync = ev
        .until(|i| match i {
            Item::Resync(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(resync.reason, pb::ResyncReason::Shutdown as i32);
    let cursor = resync
        .cursors
        .iter()
        .find(|c| c.conversation_id == conv)
        .unwrap()
        .last_seq;
    assert!(cursor >= seen);
    let end = ev.next().await.unwrap_err();
    assert_eq!(end.code(), Code::Aborted);
    stopping.await.unwrap().unwrap();

    let app = TestApp::spawn_with(opts).await;
    send(&app, &t.admin_token, &conv, "three").await.unwrap();
    let mut ev = Events::open(&app, &ann_tok, &[(&conv, cursor)])
        .await
        .unwrap();
    let replay = ev.caught_up().await;
    let texts: Vec<_> = replay.iter().filter_map(posted_text).collect();
    let expected: Vec<&str> = if cursor > seen {
        vec!["three"]
    } else {
        vec!["two", "three"]
    };
    assert_eq!(texts, expected);
    assert_eq!(replay.first().unwrap().seq, cursor + 1);
}

/// A stream opening while messages commit: a message that commits after the stream read its
/// conversations' positions but before it followed them must still arrive, not wait for a
/// later event to expose the gap (seen: lost while another stream on the node followed the
/// conversation, so the spine's notice looked delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opening_while_messages_commit_gets_each_of_them() {
    let app = TestApp::spawn().await;
    let t = app.tenant("opening").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let mut convs = Vec::new();
    for _ in 0..12 {
        convs.push(group(&app, &t.admin_token, &[&ann]).await);
    }
    // The sender's own stream follows every conversation on this node.
    let mut admin_ev = Events::open(&app, &t.admin_token, &[]).await.unwrap();
    admin_ev.caught_up().await;
    for round in 0..20u32 {
        // Each conversation gets one message this round, at seq round + 2, one after the
        // other while Ann's stream opens from the seq before.
        let cursors: Vec<(&str, u32)> = convs.iter().map(|c| (c.as_str(), round + 1)).collect();
        let sends = async {
            for c in &convs {
                send(&app, &t.admin_token, c, &format!("round {round}"))
                    .await
                    .unwrap();
            }
        };
        let (ev, ()) = tokio::join!(Events::open(&app, &ann_tok, &cursors), sends);
        let mut ev = ev.unwrap();
        let mut got: Vec<(String, u32)> = Vec::new();
        while got.len() < convs.len() {
            let e = ev.event().await;
            got.push((e.conversation_id.clone(), e.seq));
        }
        got.sort();
        let mut want: Vec<(String, u32)> = convs.iter().map(|c| (c.clone(), round + 2)).collect();
        want.sort();
        assert_eq!(got, want, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_conversations_receipts_typing_and_presence_reach_open_streams() {
    let app = TestApp::spawn().await;
    let t = app.tenant("live").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (bob, bob_tok) = app.agent(&t, "bob").await;
    let mut ann_ev = Events::open(&app, &ann_tok, &[]).await.unwrap();
    // The snapshot names every agent; Ann is online (her own stream), Bob is not.
    let mut presence = Vec::new();
    loop {
        match ann_ev.next().await.unwrap().unwrap() {
            Item::Presence(p) => presence.push(p),
            Item::CaughtUp(_) => break,
            _ => {}
        }
    }
    assert_eq!(presence.len(), 3);
    let of = |id: &str| presence.iter().find(|p| p.agent_id == id).unwrap().presence;
    assert_eq!(of(&ann), pb::Presence::Online as i32);
    assert_eq!(of(&bob), pb::Presence::Offline as i32);

    // Bob opens a stream: Ann sees him come online.
    let mut bob_ev = Events::open(&app, &bob_tok, &[]).await.unwrap();
    bob_ev.caught_up().await;
    ann_ev
        .until(|i| match i {
            Item::Presence(p) if p.agent_id == bob && p.presence == pb::Presence::Online as i32 => {
                Some(())
            }
            _ => None,
        })
        .await;

    // Bob steps away: his presence follows his status.
    app.agents()
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: pb::AgentStatus::Away as i32,
            },
            &bob_tok,
        ))
        .await
        .unwrap();
    ann_ev
        .until(|i| match i {
            Item::Presence(p) if p.agent_id == bob && p.presence == pb::Presence::Away as i32 => {
                Some(())
            }
            _ => None,
        })
        .await;

    // Bob starts a conversation with Ann: it appears on her open stream.
    let conv = group(&app, &bob_tok, &[&ann]).await;
    let joined = ann_ev
        .until(|i| match i {
            Item::Joined(j) => Some(j.conversation.clone().unwrap()),
            _ => None,
        })
        .await;
    assert_eq!(joined.id, conv);
    assert_eq!(ann_ev.event().await.seq, 1);

    let mut c = app.conversations();
    c.set_typing(bearer(
        pb::SetTypingRequest {
            conversation_id: conv.clone(),
            typing: true,
        },
        &bob_tok,
    ))
    .await
    .unwrap();
    let typing = ann_ev
        .until(|i| match i {
            Item::Typing(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (typing.sender_id.as_str(), typing.typing),
        (bob.as_str(), true)
    );
    // A stream that starts now learns that Bob is typing, before the replay ends.
    let mut late = Events::open(&app, &ann_tok, &[]).await.unwrap();
    let mut typing_at_start = Vec::new();
    loop {
        match late.next().await.unwrap().unwrap() {
            Item::Typing(t) => typing_at_start.push(t),
            Item::CaughtUp(_) => break,
            _ => {}
        }
    }
    assert_eq!(typing_at_start.len(), 1);
    assert_eq!(typing_at_start[0].sender_id, bob);
    drop(late);

    let (_, seq) = send(&app, &bob_tok, &conv, "read me").await.unwrap();
    assert_eq!(posted_text(&ann_ev.event().await), Some("read me"));
    c.mark_read(bearer(
        pb::MarkReadRequest {
            conversation_id: conv.clone(),
            seq,
        },
        &ann_tok,
    ))
    .await
    .unwrap();
    let receipt = bob_ev
        .until(|i| match i {
            Item::ReadReceipt(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (receipt.reader_id.as_str(), receipt.read_seq),
        (ann.as_str(), seq)
    );

    // Bob leaves the stream: Ann sees him go offline.
    drop(bob_ev);
    ann_ev
        .until(|i| match i {
            Item::Presence(p)
                if p.agent_id == bob && p.presence == pb::Presence::Offline as i32 =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_cut_off_while_others_keep_receiving() {
    let app = TestApp::spawn_with(Options {
        subscriber_buffer: Some(8),
        ..Options::default()
    })
    .await;
    let t = app.tenant("slow").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (bob, bob_tok) = app.agent(&t, "bob").await;
    let conv = group(&app, &t.admin_token, &[&ann, &bob]).await;
    // Each subscriber on its own connection, as separate clients would be.
    let mut slow = Events::open_on(app.new_channel().await, &ann_tok, &[(&conv, 1)])
        .await
        .unwrap();
    slow.caught_up().await;
    let mut fast = Events::open_on(app.new_channel().await, &bob_tok, &[(&conv, 1)])
        .await
        .unwrap();
    fast.caught_up().await;
    // Large messages fill the HTTP/2 window quickly, so the slow reader's queue fills.
    let text = "x".repeat(7000);
    let total = 300;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let e = fast.event().await;
            assert_eq!(e.seq, 2 + n as u32);
            n += 1;
        }
        n
    });
    for _ in 0..total {
        send(&app, &t.admin_token, &conv, &text).await.unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        total,
        "the fast subscriber got everything"
    );
    // The slow one reads at last: what was already on the wire, then the resync notice.
    let mut last = 1;
    let resync = loop {
        match slow.next().await {
            Ok(Some(Item::Event(e))) => {
                assert_eq!(e.seq, last + 1);
                last = e.seq;
            }
            Ok(Some(Item::Resync(r))) => break r,
            Ok(Some(_)) => {}
            other => panic!("expected a resync notice, got {other:?}"),
        }
    };
    assert_eq!(resync.reason, pb::ResyncReason::SlowConsumer as i32);
    assert!(last < 301, "the slow subscriber was not cut off");
    let status = slow.next().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    use tonic_types::StatusExt;
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "RESYNC_REQUIRED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_carries_commands_up_and_events_down() {
    let app = TestApp::spawn().await;
    let t = app.tenant("bidi").await;
    let (ann, _) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;
    let (tx, mut down) = open_connect(&app, &t.admin_token, 8).await;
    tx.send(pb::ConnectRequest {
        client_id: "c1".into(),
        command: Some(pb::connect_request::Command::SendMessage(
            pb::SendMessageRequest {
                conversation_id: conv.clone(),
                text: "over the bidi stream".into(),
                request_id: String::new(),
            },
        )),
    })
    .await
    .unwrap();
    tx.send(pb::ConnectRequest {
        client_id: "c2".into(),
        command: Some(pb::connect_request::Command::MarkRead(
            pb::MarkReadRequest {
                conversation_id: "junk".into(),
                seq: 1,
            },
        )),
    })
    .await
    .unwrap();
    let (mut acks, mut event) = (Vec::new(), None);
    while acks.len() < 2 || event.is_none() {
        match next_connect(&mut down).await {
            pb::connect_response::Kind::Ack(a) => acks.push(a),
            pb::connect_response::Kind::Item(e) => {
                if let Some(Item::Event(ev)) = e.kind {
                    event = Some(ev);
                }
            }
        }
    }
    let sent = acks.iter().find(|a| a.client_id == "c1").unwrap();
    assert_eq!(ack_code(sent), Code::Ok as i32);
    let Some(pb::command_ack::Result::SendMessage(answer)) = &sent.result else {
        panic!("no send answer in {sent:?}");
    };
    let seq = answer.seq;
    let ev = event.unwrap();
    assert_eq!(
        (ev.seq, posted_text(&ev)),
        (seq, Some("over the bidi stream"))
    );
    let bad = acks.iter().find(|a| a.client_id == "c2").unwrap();
    assert_eq!(ack_code(bad), Code::InvalidArgument as i32);
    assert!(bad.result.is_none(), "{bad:?}");
    use tonic_types::RpcStatusExt;
    // The field violation travels in the ack as it would in a unary call's status.
    let violations = bad
        .status
        .as_ref()
        .and_then(|s| s.get_details_bad_request())
        .expect("BadRequest details in the ack")
        .field_violations;
    assert_eq!(
        violations
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>(),
        ["conversation_id"]
    );
}

/// The status code of an ack (its status is always set).
fn ack_code(ack: &pb::CommandAck) -> i32 {
    ack.status.as_ref().expect("ack status").code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pipelines_sends_and_keeps_their_order() {
    let app = TestApp::spawn().await;
    let t = app.tenant("pipeline").await;
    let (ann, _) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;
    const N: usize = 40;
    let (tx, mut down) = open_connect(&app, &t.admin_token, N).await;
    // Every send is written before any answer is read.
    for i in 0..N {
        tx.send(pb::ConnectRequest {
            client_id: format!("c{i}"),
            command: Some(pb::connect_request::Command::SendMessage(
                pb::SendMessageRequest {
                    conversation_id: conv.clone(),
                    text: format!("pipelined {i}"),
                    request_id: String::new(),
                },
            )),
        })
        .await
        .unwrap();
    }
    let (mut acks, mut events) = (Vec::new(), Vec::new());
    while acks.len() < N || events.len() < N {
        match next_connect(&mut down).await {
            pb::connect_response::Kind::Ack(a) => acks.push(a),
            pb::connect_response::Kind::Item(e) => {
                if let Some(Item::Event(ev)) = e.kind
                    && let Some(text) = posted_text(&ev)
                {
                    events.push((ev.seq, text.to_owned()));
                }
            }
        }
    }
    // Acks come in command order, each send got the next seq, and the stream shows the
    // messages in that same order.
    let ids: Vec<String> = acks.iter().map(|a| a.client_id.clone()).collect();
    assert_eq!(ids, (0..N).map(|i| format!("c{i}")).collect::<Vec<_>>());
    assert!(
        acks.iter().all(|a| ack_code(a) == Code::Ok as i32),
        "{acks:?}"
    );
    let seqs: Vec<u32> = acks
        .iter()
        .map(|a| match &a.result {
            Some(pb::command_ack::Result::SendMessage(r)) => r.seq,
            other => panic!("not a send answer: {other:?}"),
        })
        .collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + N as u32).collect::<Vec<_>>());
    let expected: Vec<(u32, String)> = (0..N)
        .map(|i| (first + i as u32, format!("pipelined {i}")))
        .collect();
    assert_eq!(events, expected);
}

/// The next item or ack of a Connect stream; fails the test if none comes within 20 s.
async fn next_connect(
    down: &mut tonic::Streaming<pb::ConnectResponse>,
) -> pb::connect_response::Kind {
    tokio::time::timeout(std::time::Duration::from_secs(20), down.next())
        .await
        .expect("connect stream stalled")
        .unwrap()
        .unwrap()
        .kind
        .unwrap()
}

/// Opens a Connect stream whose first command subscribes with no cursors; the sender takes
/// `room` more commands before the server reads any.
pub(crate) async fn open_connect(
    app: &TestApp,
    token: &str,
    room: usize,
) -> (
    tokio::sync::mpsc::Sender<pb::ConnectRequest>,
    tonic::Streaming<pb::ConnectResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConnectRequest>(room + 1);
    tx.send(pb::ConnectRequest {
        client_id: "sub".into(),
        command: Some(pb::connect_request::Command::Subscribe(
            pb::SubscribeRequest { cursors: vec![] },
        )),
    })
    .await
    .unwrap();
    let down = app
        .conversations()
        .connect(bearer(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    (tx, down)
}
