//! The Rust client crate (`chat-engine-client`) against a real server: the README's
//! quickstart, and its resuming subscriber through a connection that is cut and a server
//! that restarts (nothing lost, nothing twice, in order).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_engine_client::pb;
use chat_engine_client::pb::stream_item::Kind;
use chat_engine_client::{Auth, Backoff, ResumingSubscriber};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::harness::{TestApp, bearer, group, send};

#[allow(dead_code)] // the example's own main()
#[path = "../../clients/rust/examples/quickstart.rs"]
mod quickstart;

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "agent-password-123";

/// A TCP proxy in front of a server: `cut` drops every open connection (as a network
/// failure would) and refuses new ones until `restore`, which may point it elsewhere.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    refusing: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = Arc::new(Mutex::new(upstream));
        let refusing = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (up, refuse, held) = (upstream.clone(), refusing.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let target = *up.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            upstream,
            refusing,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self, upstream: Option<SocketAddr>) {
        if let Some(u) = upstream {
            *self.upstream.lock().unwrap() = u;
        }
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The subscriber's next item, bounded.
async fn next<R: chat_engine_client::StreamResponse>(sub: &mut ResumingSubscriber<R>) -> Kind {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no stream item in time")
        .expect("stream failed")
        .kind
        .expect("an item")
}

/// The next `n` posted texts, collecting every event's seq into `seqs`.
async fn posted<R: chat_engine_client::StreamResponse>(
    sub: &mut ResumingSubscriber<R>,
    n: usize,
    seqs: &mut Vec<u32>,
) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Kind::Event(e) = next(sub).await {
            seqs.push(e.seq);
            if let Some(pb::conversation_event::Kind::MessagePosted(m)) = e.kind {
                out.push(m.text);
            }
        }
    }
    out
}

fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

fn quick() -> Backoff {
    Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resuming_subscriber_survives_a_cut_connection() {
    let app = TestApp::spawn().await;
    let t = app.tenant("resume-cut").await;
    let (_, sender) = app.agent(&t, "ann").await;
    let (reader_id, reader) = app.agent(&t, "ben").await;
    let conv = group(&app, &sender, &[&reader_id]).await;
    let proxy = Proxy::start(app.addr).await;
    let ch = chat_engine_client::channel(&format!("http://{}", proxy.addr)).unwrap();
    let mut sub =
        ResumingSubscriber::agent(ch, Auth::bearer(&reader).unwrap(), [(conv.clone(), 0)])
            .with_backoff(quick());
    while !matches!(next(&mut sub).await, Kind::CaughtUp(_)) {}

    let mut seqs = Vec::new();
    for m in texts(0..5) {
        send(&app, &sender, &conv, &m).await.unwrap();
    }
    assert_eq!(posted(&mut sub, 5, &mut seqs).await, texts(0..5));

    // The network fails; messages are sent while the reader cannot reconnect.
    proxy.cut();
    for m in texts(5..12) {
        send(&app, &sender, &conv, &m).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore(None);
    for m in texts(12..15) {
        send(&app, &sender, &conv, &m).await.unwrap();
    }
    assert_eq!(posted(&mut sub, 10, &mut seqs).await, texts(5..15));
    assert!(sub.reconnects() >= 1);
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u32).collect::<Vec<_>>());
    assert_eq!(sub.cursors()[&conv], *seqs.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resuming_subscriber_follows_a_server_restart() {
    let app = TestApp::spawn().await;
    let t = app.tenant("resume-restart").await;
    let (_, sender) = app.agent(&t, "ann").await;
    let (reader_id, reader) = app.agent(&t, "ben").await;
    let conv = group(&app, &sender, &[&reader_id]).await;
    let proxy = Proxy::start(app.addr).await;
    let ch = chat_engine_client::channel(&format!("http://{}", proxy.addr)).unwrap();
    let mut sub =
        ResumingSubscriber::agent(ch, Auth::bearer(&reader).unwrap(), [(conv.clone(), 0)])
            .with_backoff(quick());
    while !matches!(next(&mut sub).await, Kind::CaughtUp(_)) {}
    let mut seqs = Vec::new();
    for m in texts(0..3) {
        send(&app, &sender, &conv, &m).await.unwrap();
    }
    assert_eq!(posted(&mut sub, 3, &mut seqs).await, texts(0..3));
    // Two more the reader has not read when the server goes down.
    for m in texts(3..5) {
        send(&app, &sender, &conv, &m).await.unwrap();
    }

    let opts = app.same_db();
    app.shutdown().await.expect("clean shutdown");
    let again = TestApp::spawn_with(opts).await;
    proxy.restore(Some(again.addr));
    for m in texts(5..8) {
        send(&again, &sender, &conv, &m).await.unwrap();
    }
    assert_eq!(posted(&mut sub, 5, &mut seqs).await, texts(3..8));
    assert!(sub.reconnects() >= 1);
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u32).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_runs() {
    // The README shows the example's snippet, line for line.
    let example = include_str!("../../clients/rust/examples/quickstart.rs");
    let snippet: String = example
        .split("// snippet:start\n")
        .nth(1)
        .and_then(|s| s.split("    // snippet:end").next())
        .expect("snippet markers")
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&snippet),
        "README.md must show clients/rust/examples/quickstart.rs's snippet:\n{snippet}"
    );

    let app = TestApp::spawn().await;
    let t = app.tenant("quickstart").await;
    let (_, key) = crate::visitors::widget_key(&app, &t, &["https://shop.example"]).await;
    let (_, agent) = app.agent(&t, "ana").await;
    let email = format!("ana@{}.example", t.slug);
    let url = format!("http://{}", app.addr);
    let run = quickstart::quickstart(&url, &key, &t.slug, &email, PASSWORD);
    let chat = tokio::time::timeout(WAIT, run)
        .await
        .expect("the quickstart finishes")
        .expect("the quickstart succeeds");
    let messages = app
        .conversations()
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: chat,
                direction: pb::ListDirection::Forward.into(),
                ..Default::default()
            },
            &agent,
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    let said: Vec<_> = messages.iter().map(|m| m.text.as_str()).collect();
    let q = said.iter().position(|m| *m == "Hi, do you ship to Spain?");
    let a = said.iter().position(|m| *m == "Hello Ada! Yes, we do.");
    assert!(q.is_some() && q < a, "{said:?}");
}
