//! Idle mode: many `Subscribe` streams that only stay open (optionally replaying some events
//! as they open), and the resident memory each one costs.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{CATCH_UP_TIMEOUT, Fixture, authorized, connect, pause, status_text};
use super::report::{ErrorLog, kib_text, round};
use super::target::{Target, settled_rss};
use super::{Args, Mode};
use chat_engine_client::pb;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;
use chat_engine_client::pb::stream_item::Kind as Item;

/// Idle streams being opened at once.
const OPEN_CONCURRENCY: usize = 64;
/// Pause after the idle streams are open, so presence broadcasts and buffers settle.
const SETTLE: Duration = Duration::from_millis(500);

/// One idle stream: what it saw once open.
#[derive(Default)]
pub(super) struct IdleStats {
    pub(super) ended: bool,
    pub(super) errors: ErrorLog,
}

/// Opens a Subscribe stream and waits for `CaughtUp`; then reads (and drops) whatever comes
/// until cancelled, so the server never waits on this client.
pub(super) async fn open_idle(
    channel: Channel,
    auth: MetadataValue<Ascii>,
    replay: Option<&Replay>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<IdleStats>> {
    let cursors = replay
        .map(|r| pb::ConversationCursor {
            conversation_id: r.conversation_id.clone(),
            last_seq: r.after_seq,
        })
        .into_iter()
        .collect();
    let mut stream = ConversationServiceClient::new(channel)
        .subscribe(authorized(pb::SubscribeRequest { cursors }, &auth))
        .await
        .map_err(|s| anyhow!("Subscribe: {}", status_text(&s)))?
        .into_inner();
    let expected = replay.map_or(0, |r| r.messages);
    let caught_up = async {
        let mut replayed = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(pb::SubscribeResponse {
                    item:
                        Some(pb::StreamItem {
                            kind: Some(Item::CaughtUp(_)),
                        }),
                })) => {
                    if replayed < expected {
                        bail!(
                            "Subscribe: caught up after replaying {replayed} of {expected} events"
                        );
                    }
                    return Ok(());
                }
                Ok(Some(pb::SubscribeResponse {
                    item:
                        Some(pb::StreamItem {
                            kind: Some(Item::Event(_)),
                        }),
                })) => replayed += 1,
                Ok(Some(_)) => {}
                Ok(None) => bail!("Subscribe: the stream ended before it caught up"),
                Err(s) => bail!("Subscribe: {}", status_text(&s)),
            }
        }
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
        .await
        .map_err(|_| anyhow!("Subscribe: no CaughtUp within {CATCH_UP_TIMEOUT:?}"))??;
    Ok(tokio::spawn(async move {
        let mut st = IdleStats::default();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                m = stream.message() => m,
            };
            match next {
                Ok(Some(pb::SubscribeResponse {
                    item:
                        Some(pb::StreamItem {
                            kind: Some(Item::Resync(_)),
                        }),
                })) => {
                    st.errors.push("Subscribe: resync while idle".into());
                    st.ended = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    st.errors.push("Subscribe: the stream ended".into());
                    st.ended = true;
                    break;
                }
                Err(s) => {
                    st.errors.push(format!("Subscribe: {}", status_text(&s)));
                    st.ended = true;
                    break;
                }
            }
        }
        st
    }))
}

/// Messages every idle stream replays as it opens.
pub(super) struct Replay {
    pub(super) conversation_id: String,
    /// The conversation's last seq before the messages were posted.
    pub(super) after_seq: u32,
    pub(super) messages: u64,
}

/// Posts `n` messages into the first conversation for the idle streams to replay.
pub(super) async fn post_for_replay(
    target: &Target,
    fx: &Fixture,
    n: u64,
) -> anyhow::Result<Replay> {
    let (conversation_id, after_seq) = fx.conversations[0].clone();
    let channel = connect(&target.url).await?;
    let auth = &fx.agents[0].auth;
    eprintln!("loadtest: posting {n} messages for the idle streams to replay");
    let posted: Vec<Result<(), tonic::Status>> = futures_util::stream::iter(0..n)
        .map(|k| {
            let req = pb::SendMessageRequest {
                conversation_id: conversation_id.clone(),
                text: format!("loadtest {} replay {k}", fx.run),
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            let mut client = ConversationServiceClient::new(channel.clone());
            async move { client.send_message(authorized(req, auth)).await.map(drop) }
        })
        .buffer_unordered(REPLAY_POST_CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(st)) = posted.into_iter().find(Result::is_err) {
        bail!("SendMessage: {}", status_text(&st));
    }
    Ok(Replay {
        conversation_id,
        after_seq,
        messages: n,
    })
}

/// Sends in flight while posting the messages to replay.
const REPLAY_POST_CONCURRENCY: usize = 32;

/// Idle mode; prints the human report and returns the JSON one.
pub(super) async fn run(
    args: &Args,
    target: &Target,
    fx: &Fixture,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let replay = match args.replay {
        0 => None,
        n => Some(post_for_replay(target, fx, n).await?),
    };
    let rss_before = settled_rss(target.rss).await;
    let connections = args.streams.div_ceil(args.streams_per_connection);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&target.url).await?);
    }
    eprintln!(
        "loadtest: opening {} idle streams over {connections} connections",
        args.streams
    );
    let started = Instant::now();
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<IdleStats>>> =
        futures_util::stream::iter(0..args.streams)
            .map(|i| {
                open_idle(
                    channels[i / args.streams_per_connection].clone(),
                    fx.agents[i % fx.agents.len()].auth.clone(),
                    replay.as_ref(),
                    cancel.clone(),
                )
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect()
            .await;
    let open_time = started.elapsed();
    let mut tasks = Vec::with_capacity(opened.len());
    let mut open_errors = ErrorLog::default();
    for r in opened {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    let open = tasks.len();
    tokio::time::sleep(SETTLE).await;
    let rss_after = settled_rss(target.rss).await;
    let per_stream = match (rss_before, rss_after) {
        (Some(b), Some(a)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
        _ => None,
    };
    let rss_after_hold = if args.hold > 0 {
        eprintln!("loadtest: holding the streams open for {} s", args.hold);
        pause(cancel, Duration::from_secs(args.hold)).await;
        target.rss.sample()
    } else {
        rss_after
    };
    cancel.cancel();
    let mut ended = 0u64;
    let mut stream_errors = open_errors;
    for t in tasks {
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            ended += u64::from(st.ended);
            stream_errors.merge(st.errors);
        }
    }

    println!("chat-engine loadtest: idle");
    println!("  target             {}", target.description);
    println!("  tenant             {}", fx.slug);
    println!(
        "  streams            {open} of {} open (caught up) in {:.2} s, over {connections} HTTP/2 connections, {} agents",
        args.streams,
        open_time.as_secs_f64(),
        fx.agents.len()
    );
    println!(
        "  replayed           {} events per stream as it opened",
        args.replay
    );
    println!("  ended early        {ended}");
    println!("  stream errors      {}", stream_errors.count);
    println!(
        "  RSS                {} before opening, {} with the streams open{}",
        kib_text(rss_before),
        kib_text(rss_after),
        if args.hold > 0 {
            format!(
                ", {} after holding {} s",
                kib_text(rss_after_hold),
                args.hold
            )
        } else {
            String::new()
        }
    );
    println!(
        "  RSS per stream     {}  ({}; connections included)",
        per_stream.map_or_else(|| "unknown".to_owned(), |v| format!("{v:.2} KiB")),
        target.rss.describe()
    );
    for e in &stream_errors.first {
        println!("  error: {e}");
    }
    Ok(json!({
        "mode": Mode::Idle.name(),
        "tenant": fx.slug,
        "agents": fx.agents.len(),
        "conversations": fx.conversations.len(),
        "streams": args.streams,
        "streams_open": open,
        "connections": connections,
        "open_s": round(open_time.as_secs_f64(), 3),
        "replayed_per_stream": args.replay,
        "ended_early": ended,
        "stream_errors": stream_errors.count,
        "rss_kib_before": rss_before,
        "rss_kib": rss_after,
        "rss_kib_after_hold": rss_after_hold,
        "rss_per_stream_kib": per_stream.map(|v| round(v, 2)),
        "rss_source": target.rss.name(),
        "errors": stream_errors.first,
    }))
}
