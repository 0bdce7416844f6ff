//! Messages mode: every agent holds a stream, senders post into group conversations that
//! hold every agent, and every stream records each message's delivery latency and checks it
//! arrives exactly once. This file holds the mode, its unary senders and its `Subscribe`
//! receivers; [`super::connect`] holds the `Connect` variant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{CATCH_UP_TIMEOUT, Fixture, Pacer, authorized, connect, pause, status_text};
use super::connect::{self as connect_api, InFlight};
use super::report::{
    ErrorLog, kib_text, per_second, percentiles, percentiles_json, percentiles_text, round,
};
use super::target::{RssSource, Target};
use super::{Api, Args, Mode};
use chat_engine_client::pb;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;
use chat_engine_client::pb::stream_item::Kind as Item;

/// Reconnections per stream after a resync or an error, before it gives up.
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Locks `m` even if a task panicked holding it: the figures inside are still worth reporting.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every receiver and sender of a messages run shares.
pub(super) struct Shared {
    /// Starts the texts of this run's messages: `loadtest <run> `.
    pub(super) prefix: String,
    /// Send instants travel as nanoseconds since this instant.
    pub(super) t0: Instant,
    /// Distinct deliveries of this run's messages over all streams.
    pub(super) delivered: AtomicU64,
}

/// Message numbers seen by one stream: a bitset, since numbers are dense from 0.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) words: Vec<u64>,
    pub(super) count: u64,
}

impl Seen {
    /// Numbers beyond this are not ours (a run sends far fewer) and are ignored.
    pub(super) const LIMIT: u64 = 1 << 32;

    /// Adds `id`; false if it was already there or is out of range.
    pub(super) fn insert(&mut self, id: u64) -> bool {
        if id >= Self::LIMIT {
            return false;
        }
        let (w, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        self.count += 1;
        true
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.words
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }
}

/// What one receiving stream saw.
#[derive(Default)]
pub(super) struct RecvStats {
    pub(super) ids: Seen,
    pub(super) latencies_us: Vec<u32>,
    pub(super) duplicates: u64,
    pub(super) resyncs: u64,
    pub(super) errors: ErrorLog,
    pub(super) last_delivery: Option<Instant>,
}

impl RecvStats {
    pub(super) fn record(&mut self, shared: &Shared, text: &str) {
        let now = Instant::now();
        let Some(rest) = text.strip_prefix(&shared.prefix) else {
            return;
        };
        let mut parts = rest.split(' ');
        let (Some(id), Some(nanos)) = (
            parts.next().and_then(|s| s.parse::<u64>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            return;
        };
        if id >= Seen::LIMIT {
            return;
        }
        if !self.ids.insert(id) {
            self.duplicates += 1;
            return;
        }
        let sent = shared.t0 + Duration::from_nanos(nanos);
        let us = now.saturating_duration_since(sent).as_micros();
        self.latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
        self.last_delivery = Some(now);
        shared.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// One agent's Subscribe stream: reports `CaughtUp` through `ready`, records this run's
/// messages, and resumes from its cursors after a resync or an error, a bounded number of
/// times, until cancelled.
pub(super) async fn receive(
    shared: Arc<Shared>,
    channel: Channel,
    auth: MetadataValue<Ascii>,
    mut cursors: HashMap<String, u32>,
    ready: oneshot::Sender<Result<(), String>>,
    cancel: CancellationToken,
) -> RecvStats {
    let mut st = RecvStats::default();
    let mut ready = Some(ready);
    let mut client = ConversationServiceClient::new(channel);
    let mut reconnects = 0u32;
    'connection: loop {
        let req = pb::SubscribeRequest {
            cursors: cursors
                .iter()
                .map(|(c, s)| pb::ConversationCursor {
                    conversation_id: c.clone(),
                    last_seq: *s,
                })
                .collect(),
        };
        let opened = tokio::select! {
            _ = cancel.cancelled() => break,
            r = client.subscribe(authorized(req, &auth)) => r,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => break 'connection,
                        m = stream.message() => m,
                    };
                    match next {
                        Ok(Some(pb::SubscribeResponse {
                            item: Some(pb::StreamItem { kind: Some(item) }),
                        })) => match item {
                            Item::Event(ev) => {
                                if let Some(pb::conversation_event::Kind::MessagePosted(m)) =
                                    &ev.kind
                                {
                                    st.record(&shared, &m.text);
                                }
                                cursors.insert(ev.conversation_id, ev.seq);
                            }
                            Item::CaughtUp(_) => {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(Ok(()));
                                }
                            }
                            Item::Resync(r) => {
                                st.resyncs += 1;
                                for c in r.cursors {
                                    cursors.insert(c.conversation_id, c.last_seq);
                                }
                                break;
                            }
                            _ => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            st.errors
                                .push("Subscribe: the stream ended without a resync".into());
                            break;
                        }
                        Err(s) => {
                            st.errors.push(format!("Subscribe: {}", status_text(&s)));
                            break;
                        }
                    }
                }
            }
            Err(s) => {
                let msg = format!("Subscribe: {}", status_text(&s));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(msg.clone()));
                    st.errors.push(msg);
                    return st;
                }
                st.errors.push(msg);
            }
        }
        reconnects += 1;
        if reconnects > MAX_RECONNECTS {
            st.errors.push(format!(
                "Subscribe: gave up after {MAX_RECONNECTS} reconnections"
            ));
            break;
        }
        if !pause(&cancel, RECONNECT_PAUSE).await {
            break;
        }
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("the stream ended before it caught up".into()));
    }
    st
}

/// What the senders of a messages run share.
pub(super) struct Senders {
    pub(super) shared: Arc<Shared>,
    /// Each agent's connection and credentials.
    pub(super) agents: Vec<(Channel, MetadataValue<Ascii>)>,
    /// With `--api connect`: each agent's command queue into its Connect stream.
    pub(super) commands: Vec<tokio::sync::mpsc::Sender<pb::ConnectRequest>>,
    /// With `--api connect`: sends waiting for their ack, by message number.
    pub(super) in_flight: Mutex<HashMap<u64, InFlight>>,
    pub(super) conversations: Vec<String>,
    pub(super) acked: Mutex<Vec<u64>>,
    pub(super) latencies_us: Mutex<Vec<u32>>,
    pub(super) errors: Mutex<ErrorLog>,
}

/// Sends message number `k`: conversation `k mod M`, sender rotating so every agent posts
/// into every conversation.
pub(super) async fn send_one(s: Arc<Senders>, k: u64) {
    let m = s.conversations.len() as u64;
    let n = s.agents.len() as u64;
    let conversation_id = s.conversations[(k % m) as usize].clone();
    let (channel, auth) = &s.agents[((k / m) % n) as usize];
    let started = Instant::now();
    let nanos = started.duration_since(s.shared.t0).as_nanos();
    let req = pb::SendMessageRequest {
        conversation_id,
        text: format!("{}{k} {nanos}", s.shared.prefix),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let r = ConversationServiceClient::new(channel.clone())
        .send_message(authorized(req, auth))
        .await;
    match r {
        Ok(_) => {
            let us = started.elapsed().as_micros();
            lock(&s.latencies_us).push(u32::try_from(us).unwrap_or(u32::MAX));
            lock(&s.acked).push(k);
        }
        Err(st) => lock(&s.errors).push(format!("SendMessage: {}", status_text(&st))),
    }
}

/// Waits until every stream reported `CaughtUp`.
pub(super) async fn all_caught_up(
    readies: Vec<oneshot::Receiver<Result<(), String>>>,
) -> anyhow::Result<()> {
    let all_ready = async {
        for rx in readies {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("a stream failed to open: {e}"),
                Err(_) => bail!("a stream's task ended before it caught up"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, all_ready)
        .await
        .map_err(|_| anyhow!("the streams did not catch up within {CATCH_UP_TIMEOUT:?}"))?
}

/// Starts one receiving stream per agent over `channels` and waits until all caught up.
pub(super) async fn open_receivers(
    fx: &Fixture,
    shared: &Arc<Shared>,
    channels: &[Channel],
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<RecvStats>>> {
    let cursors: HashMap<String, u32> = fx.conversations.iter().cloned().collect();
    let mut receivers = Vec::with_capacity(channels.len());
    let mut readies = Vec::with_capacity(channels.len());
    for (a, ch) in fx.agents.iter().zip(channels) {
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        receivers.push(tokio::spawn(receive(
            shared.clone(),
            ch.clone(),
            a.auth.clone(),
            cursors.clone(),
            tx,
            cancel.clone(),
        )));
    }
    all_caught_up(readies).await?;
    Ok(receivers)
}

/// Sends for `--duration` seconds, at `--rate` or as fast as `--concurrency` calls in flight
/// allow, starting at `send_start`, then waits for the calls still in flight. Returns how
/// many were started and how long it all took.
pub(super) async fn send_for(
    args: &Args,
    senders: Arc<Senders>,
    send_start: Instant,
) -> anyhow::Result<(u64, Duration)> {
    let pacer = Pacer::new(
        args.concurrency,
        args.rate,
        Duration::from_secs(args.duration),
    );
    let mut k = 0u64;
    while let Some(permit) = pacer.next(k).await? {
        if senders.commands.is_empty() {
            let s = senders.clone();
            tokio::spawn(async move {
                send_one(s, k).await;
                drop(permit);
            });
        } else {
            connect_api::command_one(&senders, k, permit).await;
        }
        k += 1;
    }
    pacer.drain().await?;
    Ok((k, send_start.elapsed()))
}

/// Messages mode; prints the human report and returns the JSON one.
pub(super) async fn run(
    args: &Args,
    target: &Target,
    fx: &Fixture,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let needed = Duration::from_secs(args.duration + args.drain_timeout + 30);
    if let Some(first) = fx.agents.iter().filter_map(|a| a.expires).min()
        && first < SystemTime::now() + needed
    {
        bail!(
            "the agents' access tokens expire before the run would end; lower --duration or \
             raise the server's access_token_ttl_secs"
        );
    }
    let shared = Arc::new(Shared {
        prefix: format!("loadtest {} ", fx.run),
        t0: Instant::now(),
        delivered: AtomicU64::new(0),
    });
    let n = fx.agents.len();

    // One connection and one stream per agent.
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(connect(&target.url).await?);
    }
    let (commands, command_rx) = match args.api {
        Api::Connect => connect_api::command_queues(n, args.concurrency).await?,
        Api::Unary => (Vec::new(), Vec::new()),
    };
    let senders = Arc::new(Senders {
        shared: shared.clone(),
        agents: fx
            .agents
            .iter()
            .zip(&channels)
            .map(|(a, ch)| (ch.clone(), a.auth.clone()))
            .collect(),
        commands,
        in_flight: Mutex::new(HashMap::new()),
        conversations: fx.conversations.iter().map(|(c, _)| c.clone()).collect(),
        acked: Mutex::new(Vec::new()),
        latencies_us: Mutex::new(Vec::new()),
        errors: Mutex::new(ErrorLog::default()),
    });
    let receivers = match args.api {
        Api::Connect => {
            connect_api::open_streams(fx, &senders, &channels, command_rx, cancel).await?
        }
        Api::Unary => open_receivers(fx, &shared, &channels, cancel).await?,
    };
    if matches!(target.rss, RssSource::Process) {
        crate::memory::release_free_heap();
    }
    let rss_before = target.rss.sample();

    eprintln!(
        "loadtest: {n} streams caught up; sending for {} s {}",
        args.duration,
        if args.rate > 0 {
            format!("at {} msgs/s", args.rate)
        } else {
            format!("as fast as {} calls in flight allow", args.concurrency)
        }
    );
    let send_start = Instant::now();
    let (attempted, send_window) = send_for(args, senders.clone(), send_start).await?;

    let acked: HashSet<u64> = lock(&senders.acked).iter().copied().collect();
    let sent_ok = acked.len() as u64;
    let expected = sent_ok * n as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_after = target.rss.sample();
    cancel.cancel();

    let mut deliveries = 0u64;
    let mut undelivered = 0u64;
    let mut duplicates = 0u64;
    let mut resyncs = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    let mut stream_errors = ErrorLog::default();
    let mut last_delivery: Option<Instant> = None;
    for r in receivers {
        let st = match tokio::time::timeout(Duration::from_secs(10), r).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => bail!("a receiving task failed: {e}"),
            Err(_) => bail!("a receiving task did not stop"),
        };
        deliveries += st.ids.count;
        undelivered += acked.iter().filter(|id| !st.ids.contains(**id)).count() as u64;
        duplicates += st.duplicates;
        resyncs += st.resyncs;
        latencies.extend(st.latencies_us);
        stream_errors.merge(st.errors);
        last_delivery = last_delivery.max(st.last_delivery);
    }
    let delivery_window = last_delivery.map_or(send_window, |t| t.duration_since(send_start));
    let latency = percentiles(&mut latencies);
    let send_latency = percentiles(&mut lock(&senders.latencies_us));
    let send_errors = std::mem::take(&mut *lock(&senders.errors));
    let persisted_per_s = per_second(sent_ok, send_window);
    let deliveries_per_s = per_second(deliveries, delivery_window);

    println!("chat-engine loadtest: messages");
    println!("  target             {}", target.description);
    println!("  tenant             {}", fx.slug);
    println!(
        "  agents             {n}, each with one {} stream on its own HTTP/2 connection",
        match args.api {
            Api::Unary => "Subscribe",
            Api::Connect => "Connect (sends and events)",
        }
    );
    println!(
        "  conversations      {}, each holding every agent ({n} receivers per message)",
        fx.conversations.len()
    );
    println!(
        "  load               {} s, {}, at most {} calls in flight",
        args.duration,
        if args.rate > 0 {
            format!("target {} msgs/s", args.rate)
        } else {
            "unthrottled".to_owned()
        },
        args.concurrency
    );
    println!("results");
    println!(
        "  acknowledged       {sent_ok} of {attempted} sent in {:.2} s: {persisted_per_s:.1} msgs/s persisted",
        send_window.as_secs_f64()
    );
    println!("  send errors        {}", send_errors.count);
    println!(
        "  deliveries         {deliveries} in {:.2} s: {deliveries_per_s:.1} /s",
        delivery_window.as_secs_f64()
    );
    println!(
        "  undelivered        {undelivered} (acknowledged messages missing from a stream after {} s of draining)",
        args.drain_timeout
    );
    println!("  duplicates         {duplicates}");
    println!("  resyncs            {resyncs}");
    println!("  stream errors      {}", stream_errors.count);
    println!(
        "  delivery ms        {}  (send start to event on a stream)",
        percentiles_text(latency)
    );
    println!(
        "  send ms            {}  (send to its answer)",
        percentiles_text(send_latency)
    );
    println!(
        "  RSS                {} before sending, {} after, {}",
        kib_text(rss_before),
        kib_text(rss_after),
        target.rss.describe()
    );
    let shown: Vec<String> = send_errors
        .first
        .iter()
        .chain(&stream_errors.first)
        .cloned()
        .collect();
    for e in &shown {
        println!("  error: {e}");
    }

    Ok(json!({
        "mode": Mode::Messages.name(),
        "tenant": fx.slug,
        "agents": n,
        "conversations": fx.conversations.len(),
        "duration_s": args.duration,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "api": args.api.name(),
        "attempted": attempted,
        "sent_ok": sent_ok,
        "send_errors": send_errors.count,
        "persisted_per_s": round(persisted_per_s, 1),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries_per_s, 1),
        "undelivered": undelivered,
        "duplicates": duplicates,
        "resyncs": resyncs,
        "stream_errors": stream_errors.count,
        "latency_ms": percentiles_json(latency),
        "send_latency_ms": percentiles_json(send_latency),
        "rss_kib": rss_after,
        "rss_kib_before": rss_before,
        "rss_source": target.rss.name(),
        "errors": shown,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_message_once_and_ignores_foreign_texts() {
        let shared = Shared {
            prefix: "loadtest abc ".into(),
            t0: Instant::now(),
            delivered: AtomicU64::new(0),
        };
        let mut st = RecvStats::default();
        st.record(&shared, "loadtest abc 7 0");
        st.record(&shared, "loadtest abc 7 0");
        st.record(&shared, "loadtest xyz 8 0");
        st.record(&shared, "hello");
        st.record(&shared, "loadtest abc nope 0");
        assert_eq!(st.ids.count, 1);
        assert!(st.ids.contains(7) && !st.ids.contains(8) && !st.ids.contains(1 << 40));
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.latencies_us.len(), 1);
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 1);
    }
}
