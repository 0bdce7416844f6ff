//! Messages mode over `--api connect`: one bidirectional `Connect` stream per agent carries
//! that agent's sends, pipelined, and its events; acks free the sender's in-flight slots.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{Fixture, authorized, status_text};
use super::messages::{RecvStats, Senders, all_caught_up, lock};
use chat_engine_client::pb;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;
use chat_engine_client::pb::stream_item::Kind as Item;

/// A send on a Connect stream waiting for its ack: when it started, and the slot it holds.
pub(super) type InFlight = (Instant, tokio::sync::OwnedSemaphorePermit);

/// Each agent's command queue into its Connect stream, with the opening Subscribe queued, and
/// the receiving ends the streams read; a queue holds `concurrency` sends and the Subscribe.
pub(super) async fn command_queues(
    agents: usize,
    concurrency: usize,
) -> anyhow::Result<(
    Vec<mpsc::Sender<pb::ConnectRequest>>,
    Vec<mpsc::Receiver<pb::ConnectRequest>>,
)> {
    let mut senders = Vec::with_capacity(agents);
    let mut receivers = Vec::with_capacity(agents);
    for _ in 0..agents {
        let (tx, rx) = mpsc::channel(concurrency + 1);
        tx.send(pb::ConnectRequest {
            client_id: "subscribe".into(),
            command: Some(pb::connect_request::Command::Subscribe(
                pb::SubscribeRequest { cursors: vec![] },
            )),
        })
        .await?;
        senders.push(tx);
        receivers.push(rx);
    }
    Ok((senders, receivers))
}

/// Opens one Connect stream per agent over its channel, carrying its queue of commands, and
/// waits until all caught up.
pub(super) async fn open_streams(
    fx: &Fixture,
    senders: &Arc<Senders>,
    channels: &[Channel],
    queues: Vec<mpsc::Receiver<pb::ConnectRequest>>,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<RecvStats>>> {
    let mut tasks = Vec::with_capacity(channels.len());
    let mut readies = Vec::with_capacity(channels.len());
    for ((a, ch), rx) in fx.agents.iter().zip(channels).zip(queues) {
        let (tx, ready) = oneshot::channel();
        readies.push(ready);
        tasks.push(tokio::spawn(connect_stream(
            senders.clone(),
            ch.clone(),
            a.auth.clone(),
            rx,
            tx,
            cancel.clone(),
        )));
    }
    all_caught_up(readies).await?;
    Ok(tasks)
}

/// Sends message number `k` up its sender's Connect stream; the stream's reader records the
/// ack and frees `permit`.
pub(super) async fn command_one(s: &Senders, k: u64, permit: tokio::sync::OwnedSemaphorePermit) {
    let m = s.conversations.len() as u64;
    let n = s.commands.len() as u64;
    let started = Instant::now();
    let nanos = started.duration_since(s.shared.t0).as_nanos();
    let req = pb::ConnectRequest {
        client_id: k.to_string(),
        command: Some(pb::connect_request::Command::SendMessage(
            pb::SendMessageRequest {
                conversation_id: s.conversations[(k % m) as usize].clone(),
                text: format!("{}{k} {nanos}", s.shared.prefix),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
        )),
    };
    lock(&s.in_flight).insert(k, (started, permit));
    if s.commands[((k / m) % n) as usize].send(req).await.is_err() {
        lock(&s.in_flight).remove(&k);
        lock(&s.errors).push("Connect: the stream is closed".into());
    }
}

/// One agent's Connect stream: subscribes, reports `CaughtUp` through `ready`, then records
/// this run's messages and the acks of the sends `commands` carries up, until cancelled or
/// the stream ends (it does not reconnect).
pub(super) async fn connect_stream(
    senders: Arc<Senders>,
    channel: Channel,
    auth: MetadataValue<Ascii>,
    commands: mpsc::Receiver<pb::ConnectRequest>,
    ready: oneshot::Sender<Result<(), String>>,
    cancel: CancellationToken,
) -> RecvStats {
    use pb::connect_response::Kind as Up;
    let mut st = RecvStats::default();
    let mut ready = Some(ready);
    let shared = senders.shared.clone();
    let opened = ConversationServiceClient::new(channel)
        .connect(authorized(
            tokio_stream::wrappers::ReceiverStream::new(commands),
            &auth,
        ))
        .await;
    let mut stream = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let msg = format!("Connect: {}", status_text(&s));
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(msg.clone()));
            }
            st.errors.push(msg);
            return st;
        }
    };
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            m = stream.message() => m,
        };
        match next {
            Ok(Some(pb::ConnectResponse {
                kind: Some(Up::Ack(a)),
            })) => {
                let Ok(k) = a.client_id.parse::<u64>() else {
                    continue;
                };
                let Some((started, permit)) = lock(&senders.in_flight).remove(&k) else {
                    continue;
                };
                let code = a.status.as_ref().map_or(0, |s| s.code);
                if code == 0 {
                    let us = started.elapsed().as_micros();
                    lock(&senders.latencies_us).push(u32::try_from(us).unwrap_or(u32::MAX));
                    lock(&senders.acked).push(k);
                } else {
                    lock(&senders.errors).push(format!("SendMessage: code {code}"));
                }
                // Only once the answer is recorded: the last free slot ends the run.
                drop(permit);
            }
            Ok(Some(pb::ConnectResponse {
                kind: Some(Up::Item(e)),
            })) => match e.kind {
                Some(Item::Event(ev)) => {
                    if let Some(pb::conversation_event::Kind::MessagePosted(m)) = &ev.kind {
                        st.record(&shared, &m.text);
                    }
                }
                Some(Item::CaughtUp(_)) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Some(Item::Resync(_)) => {
                    st.resyncs += 1;
                    st.errors
                        .push("Connect: resync (this mode does not reconnect)".into());
                    break;
                }
                _ => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => {
                st.errors.push("Connect: the stream ended".into());
                break;
            }
            Err(s) => {
                st.errors.push(format!("Connect: {}", status_text(&s)));
                break;
            }
        }
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("the stream ended before it caught up".into()));
    }
    st
}
