//! Several nodes over one PostgreSQL and NATS, and failures: a NATS restart, a killed server,
//! a restarted database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_engine_client::pb;
use pb::stream_item::Kind as Item;
use tonic::Code;

use crate::harness::{
    Events, Nats, Options, TestApp, bearer, group, own_cluster, posted_text, send,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deliver_each_others_events_and_resync_after_losing_nats() {
    let mut nats = Nats::start().await;
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
    let t = node1.tenant("multi").await;
    let (ann, ann_tok) = node1.agent(&t, "ann").await;
    let conv = group(&node1, &t.admin_token, &[&ann]).await;

    // Ann listens on node 2; the admin writes through node 1.
    let mut ev = Events::open(&node2, &ann_tok, &[(&conv, 0)]).await.unwrap();
    ev.caught_up().await;
    send(&node1, &t.admin_token, &conv, "across nodes")
        .await
        .unwrap();
    let e = ev.event().await;
    assert_eq!(posted_text(&e), Some("across nodes"));
    let mut last = e.seq;

    // NATS goes away: node 2's stream is told to resync; sends still commit.
    nats.stop();
    let resync = ev
        .until(|i| match i {
            Item::Resync(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(resync.reason, pb::ResyncReason::BusLost as i32);
    assert_eq!(ev.next().await.unwrap_err().code(), Code::Aborted);
    for i in 0..3 {
        send(
            &node1,
            &t.admin_token,
            &conv,
            &format!("while nats is down {i}"),
        )
        .await
        .unwrap();
    }

    // NATS is back: resubscribing (once the node has reconnected) replays what was missed,
    // and live delivery across nodes works again.
    nats.restart().await;
    let mut ev = None;
    for _ in 0..100 {
        match Events::open(&node2, &ann_tok, &[(&conv, last)]).await {
            Ok(e) => {
                ev = Some(e);
                break;
            }
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let mut ev = ev.expect("node 2 never reconnected to NATS");
    let replay = ev.caught_up().await;
    let texts: Vec<_> = replay.iter().filter_map(posted_text).collect();
    assert_eq!(
        texts,
        [
            "while nats is down 0",
            "while nats is down 1",
            "while nats is down 2"
        ]
    );
    last = replay.last().unwrap().seq;
    send(&node1, &t.admin_token, &conv, "after the restart")
        .await
        .unwrap();
    let e = ev.event().await;
    assert_eq!(
        (e.seq, posted_text(&e)),
        (last + 1, Some("after the restart"))
    );
}

/// The real binary, as a child process over a given database.
pub(crate) struct Child {
    proc: std::process::Child,
    addr: String,
}

impl Child {
    async fn start(app: &TestApp) -> Self {
        Self::start_with(app, None).await
    }

    /// The binary over `app`'s database and secrets, with NATS when `nats_url` is given.
    pub(crate) async fn start_with(app: &TestApp, nats_url: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let proc = std::process::Command::new(env!("CARGO_BIN_EXE_chat-engine"))
            .args(["serve", "--listen", &addr])
            .env("CHAT_ENGINE_DATABASE_URL", &app.app_url)
            .env("CHAT_ENGINE_MIGRATION_DATABASE_URL", &app.admin_url)
            .env("CHAT_ENGINE_OPERATOR_TOKEN", &app.operator_token)
            .env("CHAT_ENGINE_JWT_SECRET", &app.jwt_secret)
            .env(
                "CHAT_ENGINE_DATA_DIR",
                std::env::temp_dir().join("chat-engine-unused"),
            )
            .envs(nats_url.map(|u| ("CHAT_ENGINE_NATS_URL", u)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = Self { proc, addr };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&child.addr).await.is_ok() {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill();
        panic!("the server binary did not start");
    }

    pub(crate) async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) fn kill(mut self) {
        self.sigkill();
    }

    fn sigkill(&mut self) {
        // SIGKILL: no shutdown code runs.
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.sigkill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_message_survives_a_killed_server() {
    let app = TestApp::spawn().await;
    let t = app.tenant("crash").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;

    let server = Child::start(&app).await;
    let mut c =
        pb::conversation_service_client::ConversationServiceClient::new(server.channel().await);
    let ack = c
        .send_message(bearer(
            pb::SendMessageRequest {
                conversation_id: conv.clone(),
                text: "acked, then kill".into(),
                request_id: String::new(),
            },
            &t.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    server.kill();

    let server = Child::start(&app).await;
    let ch = server.channel().await;
    let history = pb::conversation_service_client::ConversationServiceClient::new(ch.clone())
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv.clone(),
                ..Default::default()
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        history
            .messages
            .iter()
            .any(|m| m.id == ack.message_id && m.seq == ack.seq)
    );
    let mut ev = Events::open_on(ch, &ann_tok, &[(&conv, ack.seq - 1)])
        .await
        .unwrap();
    let replay = ev.caught_up().await;
    assert_eq!(replay.len(), 1);
    assert_eq!(
        (replay[0].seq, posted_text(&replay[0])),
        (ack.seq, Some("acked, then kill"))
    );
    server.kill();
}

/// One send as its client saw it: when it started and ended, and its ack or failure.
struct SendOutcome {
    started: Instant,
    ended: Instant,
    result: Result<(u32, String), Code>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_no_acknowledged_send_and_the_pool_recovers() {
    // More senders than pool connections, so sends queue for connections as well as run in
    // transactions when the database goes away.
    const SENDERS: usize = 8;
    const IN_FLIGHT_AT_RESTART: usize = 4;
    let (cluster, _dir, urls) = own_cluster().await;
    let app = TestApp::spawn_with(Options {
        database: Some(urls),
        pool_size: Some(4),
        ..Options::default()
    })
    .await;
    let t = app.tenant("dbrestart").await;
    let (ann, _) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let ch = app.channel.clone();
            let (tok, conv, stop) = (t.admin_token.clone(), conv.clone(), stop.clone());
            let (in_flight, acked_count) = (in_flight.clone(), acked_count.clone());
            tokio::spawn(async move {
                let mut c = pb::conversation_service_client::ConversationServiceClient::new(ch);
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.is_cancelled() && i < 5_000 {
                    i += 1;
                    let text = format!("s{n}-{i}");
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let started = Instant::now();
                    let r = c
                        .send_message(bearer(
                            pb::SendMessageRequest {
                                conversation_id: conv.clone(),
                                text: text.clone(),
                                request_id: String::new(),
                            },
                            &tok,
                        ))
                        .await;
                    let ended = Instant::now();
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let result = match r {
                        Ok(r) => {
                            acked_count.fetch_add(1, Ordering::SeqCst);
                            Ok((r.into_inner().seq, text))
                        }
                        Err(s) => Err(s.code()),
                    };
                    let failed = result.is_err();
                    out.push(SendOutcome {
                        started,
                        ended,
                        result,
                    });
                    if failed {
                        // A client backs off on UNAVAILABLE instead of spinning.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                out
            })
        })
        .collect();

    // Restart only while sends are outstanding, so the restart cannot fall between sends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked_count.load(Ordering::SeqCst) < 50
        || in_flight.load(Ordering::SeqCst) < IN_FLIGHT_AT_RESTART
    {
        assert!(Instant::now() < deadline, "the senders never got going");
        tokio::task::yield_now().await;
    }
    let restart_began = Instant::now();
    let cluster = cluster.restart().await.expect("restarting postgres");
    let restarted = Instant::now();
    // Keep sending until sends started after the restart are acknowledged again.
    let acked_before = acked_count.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked_count.load(Ordering::SeqCst) < acked_before + 50 {
        assert!(
            Instant::now() < deadline,
            "sends did not recover after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let mut outcomes = Vec::new();
    for s in senders {
        outcomes.extend(s.await.unwrap());
    }

    let straddled: Vec<&SendOutcome> = outcomes
        .iter()
        .filter(|o| o.started < restart_began && o.ended > restart_began)
        .collect();
    assert!(
        !straddled.is_empty(),
        "no send was in flight when the restart began"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| o.started > restarted && o.result.is_ok()),
        "no send started after the restart was acknowledged"
    );
    // Whatever failed, failed with a status a client retries on.
    for o in &outcomes {
        if let Err(code) = o.result {
            assert_eq!(code, Code::Unavailable, "unexpected failure");
        }
    }
    // The pool recovered: sends work again without restarting the server.
    let (_, seq) = send(&app, &t.admin_token, &conv, "after the restart")
        .await
        .expect("pool did not recover");
    // Every acknowledged message is there with its seq, the straddling ones included.
    let mut stored = std::collections::HashMap::new();
    let mut token = String::new();
    loop {
        let page = app
            .conversations()
            .list_messages(bearer(
                pb::ListMessagesRequest {
                    conversation_id: conv.clone(),
                    direction: pb::ListDirection::Forward as i32,
                    page_size: 200,
                    page_token: token,
                    ..Default::default()
                },
                &t.admin_token,
            ))
            .await
            .unwrap()
            .into_inner();
        for m in page.messages {
            stored.insert(m.seq, m.text);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for (seq, text) in outcomes.iter().filter_map(|o| o.result.as_ref().ok()) {
        assert_eq!(stored.get(seq), Some(text), "acknowledged seq {seq} lost");
    }
    assert!(stored.contains_key(&seq));
    eprintln!(
        "database restart: {} sends, {} in flight when it began ({} of them acknowledged), {} failed in all",
        outcomes.len(),
        straddled.len(),
        straddled.iter().filter(|o| o.result.is_ok()).count(),
        outcomes.iter().filter(|o| o.result.is_err()).count(),
    );
    drop(cluster);
}
