//! Routing mode: visitors start chats through the widget API and the dispatcher routes them to
//! agents who close each chat after a think time. This file owns the mode: the agents'
//! streams and closes, the visitors' arrivals and streams, and the figures measured from
//! what both sides see.
//!
//! Setup goes through the public API only: a widget key of the run's tenant allowed on
//! [`ORIGIN`], and `--agents` agents of `--capacity` seats, each holding a `Subscribe` stream
//! (online) and set AVAILABLE. Visitors then arrive at `--rate` (or as fast as
//! `--concurrency` arrivals in flight allow) until `--visitors` started or `--duration`
//! passed: InitVisitor, StartChat, then a `SubscribeVisitor` stream held until the chat
//! closes. An agent's stream shows a `joined` item for each chat the dispatcher gives them;
//! `--think-ms` later the agent closes it with `QueueService.CloseChat`, which frees the seat;
//! with `--replies N` the agent first sends N replies (`SendMessage`) spread over that time.
//! With `--queue-first` the agents become available only once arrivals end, so the run
//! shows a full queue draining.
//!
//! What is measured, all on this process's clock:
//!
//! - assignment latency: for each join seen on an agent's stream, the time since the chat
//!   became assignable, the later of its StartChat answer and the answer of the agent's last
//!   CloseChat sent before the join (the close that freed the seat, for a chat that waited),
//!   and with `--queue-first` of the moment the agents became available;
//! - over-capacity: an agent holding more chats than their seats at a join, counted from
//!   their stream's joins and the closes sent (a close counts from the moment it is sent,
//!   before the server can reuse the seat, so this never blames the server for our timing);
//! - queue-position staleness, with a model of the queue: one priority, served oldest first,
//!   newcomers behind, so every assignment seen while a visitor waits is of a chat ahead of
//!   them and moves them up one place. A visitor's place shown at StartChat (or by a later
//!   `queue_position` item that moved them back) is their baseline; the k-th assignment seen
//!   after it should bring them to baseline − k. Each `queue_position` item that shows a
//!   newer place is stale by the time since the oldest assignment it newly reflects; a
//!   visitor whose place still misses an assignment when their own chat is assigned or the
//!   run ends counts the time since that assignment too. Assignments are timed when an agent
//!   stream shows them, so stream latency on both sides roughly cancels out;
//! - with `--replies`, the analytics lag: twice a second the tenant's first responses as the
//!   aggregates count them (GetHistoricalStats, as the tenant's admin) against the chats'
//!   first replies answered so far; the lag is the age of the oldest answered first reply not
//!   counted yet (each chat's later replies reach the aggregates through the same reactor, in
//!   the same order, so they trail no less). After the run, the time from its end until
//!   every first reply is counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{Fixture, Pacer, authorized, bearer_value, connect, pause, status_text};
use super::messages::{all_caught_up, lock};
use super::report::{ErrorLog, per_second, percentiles, percentiles_json, percentiles_text, round};
use super::target::Target;
use super::{Args, Mode};
use chat_engine_client::pb;
use chat_engine_client::pb::admin::tenant_service_client::TenantServiceClient;
use chat_engine_client::pb::agent_service_client::AgentServiceClient;
use chat_engine_client::pb::analytics_service_client::AnalyticsServiceClient;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;
use chat_engine_client::pb::queue_service_client::QueueServiceClient;
use chat_engine_client::pb::stream_item::Kind as Item;
use chat_engine_client::pb::visitor_service_client::VisitorServiceClient;

/// The page the run's visitors are on; the widget key allows exactly this origin.
pub(super) const ORIGIN: &str = "https://loadtest.example";
/// Reconnections of an agent's stream after a resync or an error, before it gives up.
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// How often the number of waiting chats is sampled.
const WAITING_SAMPLE: Duration = Duration::from_millis(100);
/// Connections the visitors' calls and streams are spread over, at most.
const MAX_VISITOR_CONNECTIONS: usize = 1000;

/// One agent's seats as this process sees them.
struct Seats {
    capacity: i64,
    /// Joins seen minus closes sent.
    open: AtomicI64,
    /// Each CloseChat: when it was sent and when it was answered (None until then, or if it
    /// failed).
    closes: Mutex<Vec<(Instant, Option<Instant>)>>,
}

/// A join seen on an agent's stream.
struct Join {
    conversation: String,
    at: Instant,
    agent: usize,
    /// The agent's last close sent before the join, by index into its `closes`.
    last_close: Option<usize>,
}

/// What every task of a routing run shares.
struct Shared {
    /// When each assignment was seen on an agent stream, in order: the queue's departures.
    departures: Mutex<Vec<Instant>>,
    /// Each started chat's StartChat answer.
    started: Mutex<HashMap<String, Instant>>,
    joins: Mutex<Vec<Join>>,
    seats: Vec<Seats>,
    started_ok: AtomicU64,
    closed: AtomicU64,
    over_capacity: AtomicU64,
    start_latencies_us: Mutex<Vec<u32>>,
    staleness_us: Mutex<Vec<u32>>,
    start_errors: Mutex<ErrorLog>,
    close_errors: Mutex<ErrorLog>,
    stream_errors: Mutex<ErrorLog>,
    /// With --replies: when each chat's first reply was answered, in that order.
    first_replies: Mutex<Vec<Instant>>,
    replies_ok: AtomicU64,
    reply_errors: Mutex<ErrorLog>,
}

impl Shared {
    /// Assignments seen up to `t`.
    fn departed_by(&self, t: Instant) -> usize {
        lock(&self.departures).partition_point(|d| *d <= t)
    }

    /// When assignment number `k` (from 0) was seen, if it was.
    fn departure(&self, k: usize) -> Option<Instant> {
        lock(&self.departures).get(k).copied()
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One waiting visitor's place: the model of the module doc.
struct Place {
    /// The place last shown, and how many assignments (seen anywhere) it reflects.
    shown: u32,
    reflected: usize,
}

impl Place {
    /// The visitor was shown `position` at `at`; a sample of staleness when it reflects
    /// assignments the last place did not.
    fn shown(&mut self, shared: &Shared, position: u32, at: Instant) -> Option<u32> {
        if position > self.shown || position == 0 {
            // Moved back (a chat started at the same moment queued ahead): a new baseline.
            *self = Place {
                shown: position,
                reflected: shared.departed_by(at),
            };
            return None;
        }
        let newly = (self.shown - position) as usize;
        if newly == 0 {
            return None; // only the estimate changed
        }
        let oldest = shared.departure(self.reflected);
        self.shown = position;
        self.reflected += newly;
        // An item can reflect an assignment an agent stream has not shown yet: not stale.
        Some(oldest.map_or(0, |d| micros(at.saturating_duration_since(d))))
    }

    /// The visitor stops watching their place at `at` (their chat was assigned, or the run
    /// ended); the age of the oldest assignment their place still misses, if any. `own`
    /// discounts the visitor's own assignment, which is not a change of place.
    fn last(&self, shared: &Shared, at: Instant, own: bool) -> Option<u32> {
        let seen = shared.departed_by(at).saturating_sub(usize::from(own));
        if seen <= self.reflected {
            return None;
        }
        shared
            .departure(self.reflected)
            .map(|d| micros(at.saturating_duration_since(d)))
    }
}

fn widget_request<T>(
    msg: T,
    key: &MetadataValue<Ascii>,
    origin: &MetadataValue<Ascii>,
    token: Option<&MetadataValue<Ascii>>,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    md.insert("x-api-key", key.clone());
    md.insert("origin", origin.clone());
    if let Some(t) = token {
        md.insert("authorization", t.clone());
    }
    r
}

/// Creates the run's widget key, allowed on [`ORIGIN`]; returns its secret.
async fn widget_key(target: &Target, fx: &Fixture, ctl: &Channel) -> anyhow::Result<String> {
    let op = bearer_value(&target.operator_token)?;
    let k = TenantServiceClient::new(ctl.clone())
        .create_api_key(authorized(
            pb::admin::CreateApiKeyRequest {
                tenant_id: fx.tenant_id.clone(),
                name: format!("loadtest {}", fx.run),
                allowed_domains: vec![ORIGIN.to_owned()],
            },
            &op,
        ))
        .await
        .map_err(|s| anyhow!("CreateApiKey: {}", status_text(&s)))?
        .into_inner();
    Ok(k.secret)
}

/// One agent's stream: reports `CaughtUp` through `ready`, then handles every external chat
/// it joins (closed `think` later), and reopens after a resync or an error, a bounded number
/// of times, until cancelled.
async fn agent_stream(
    shared: Arc<Shared>,
    agent: usize,
    channel: Channel,
    auth: MetadataValue<Ascii>,
    handling: Handling,
    ready: oneshot::Sender<Result<(), String>>,
    cancel: CancellationToken,
) {
    let mut ready = Some(ready);
    let mut client = ConversationServiceClient::new(channel.clone());
    let mut seen: HashSet<String> = HashSet::new();
    let mut reconnects = 0u32;
    'connection: loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => break,
            r = client.subscribe(authorized(pb::SubscribeRequest { cursors: vec![] }, &auth)) => r,
        };
        let problem = match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => break 'connection,
                        m = stream.message() => m,
                    };
                    let item = match next {
                        Ok(Some(pb::SubscribeResponse {
                            item: Some(pb::StreamItem { kind: Some(item) }),
                        })) => item,
                        Ok(Some(_)) => continue,
                        Ok(None) => break "Subscribe: the stream ended without a resync".into(),
                        Err(s) => break format!("Subscribe: {}", status_text(&s)),
                    };
                    match item {
                        Item::Joined(j) => {
                            let Some(c) = j.conversation else { continue };
                            if c.kind != pb::ConversationKind::External as i32
                                || !seen.insert(c.id.clone())
                            {
                                continue;
                            }
                            joined(&shared, agent, c.id, &channel, &auth, handling, &cancel);
                        }
                        Item::CaughtUp(_) => {
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(Ok(()));
                            }
                        }
                        Item::Resync(_) => break "Subscribe: resync".into(),
                        _ => {}
                    }
                }
            }
            Err(s) => {
                let msg = format!("Subscribe: {}", status_text(&s));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(msg.clone()));
                    lock(&shared.stream_errors).push(msg);
                    return;
                }
                msg
            }
        };
        lock(&shared.stream_errors).push(problem);
        reconnects += 1;
        if reconnects > MAX_RECONNECTS {
            lock(&shared.stream_errors).push(format!(
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
}

/// How an agent handles a chat it joins: `replies` replies spread evenly over `think`,
/// then the close.
#[derive(Clone, Copy)]
struct Handling {
    think: Duration,
    replies: u32,
}

/// Sends `h.replies` replies into `conversation` as `auth`, one every `think / (replies +
/// 1)`; false when the run was cancelled meanwhile.
async fn reply(
    shared: &Shared,
    client: &mut ConversationServiceClient<Channel>,
    conversation: &str,
    auth: &MetadataValue<Ascii>,
    h: Handling,
    cancel: &CancellationToken,
) -> bool {
    let step = h.think / (h.replies + 1);
    for i in 0..h.replies {
        if !pause(cancel, step).await {
            return false;
        }
        let r = client
            .send_message(authorized(
                pb::SendMessageRequest {
                    conversation_id: conversation.to_owned(),
                    text: format!("reply {i}"),
                    request_id: uuid::Uuid::new_v4().to_string(),
                },
                auth,
            ))
            .await;
        match r {
            Ok(_) => {
                shared.replies_ok.fetch_add(1, Ordering::Relaxed);
                if i == 0 {
                    // Stamped under the lock, so the list stays in answer order.
                    let mut first = lock(&shared.first_replies);
                    first.push(Instant::now());
                }
            }
            Err(s) => lock(&shared.reply_errors).push(format!("SendMessage: {}", status_text(&s))),
        }
    }
    pause(cancel, step).await
}

/// Records a join of `conversation` by `agent`, replies, and closes the chat `think` later.
fn joined(
    shared: &Arc<Shared>,
    agent: usize,
    conversation: String,
    channel: &Channel,
    auth: &MetadataValue<Ascii>,
    handling: Handling,
    cancel: &CancellationToken,
) {
    let seats = &shared.seats[agent];
    if seats.open.fetch_add(1, Ordering::SeqCst) + 1 > seats.capacity {
        shared.over_capacity.fetch_add(1, Ordering::Relaxed);
    }
    let last_close = lock(&seats.closes).len().checked_sub(1);
    let at = {
        let mut d = lock(&shared.departures);
        let now = Instant::now();
        d.push(now);
        now
    };
    lock(&shared.joins).push(Join {
        conversation: conversation.clone(),
        at,
        agent,
        last_close,
    });
    let (shared, channel, auth, cancel) = (
        shared.clone(),
        channel.clone(),
        auth.clone(),
        cancel.clone(),
    );
    tokio::spawn(async move {
        let mut client = ConversationServiceClient::new(channel.clone());
        if !reply(
            &shared,
            &mut client,
            &conversation,
            &auth,
            handling,
            &cancel,
        )
        .await
        {
            return;
        }
        let seats = &shared.seats[agent];
        // Counted free from the moment it is sent: the server cannot reuse the seat before.
        seats.open.fetch_sub(1, Ordering::SeqCst);
        let k = {
            let mut closes = lock(&seats.closes);
            closes.push((Instant::now(), None));
            closes.len() - 1
        };
        let r = QueueServiceClient::new(channel)
            .close_chat(authorized(
                pb::CloseChatRequest {
                    conversation_id: conversation,
                },
                &auth,
            ))
            .await;
        match r {
            Ok(_) => {
                lock(&seats.closes)[k].1 = Some(Instant::now());
                shared.closed.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => {
                // The seat stays taken.
                seats.open.fetch_add(1, Ordering::SeqCst);
                lock(&shared.close_errors).push(format!("CloseChat: {}", status_text(&s)));
            }
        }
    });
}

/// How often the analytics lag is sampled (with --replies).
const LAG_SAMPLE: Duration = Duration::from_millis(500);
/// How long after the run the aggregates may take to count every reply before the run
/// reports that they never caught up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// The first responses the tenant's analytics aggregates have counted so far (its UTC days
/// around the run, as the admin sees them).
async fn counted_first_responses(
    client: &mut AnalyticsServiceClient<Channel>,
    admin: &MetadataValue<Ascii>,
) -> Result<u64, tonic::Status> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let r = client
        .get_historical_stats(authorized(
            pb::GetHistoricalStatsRequest {
                start_time: Some(at(now - 86_400)),
                end_time: Some(at(now + 3_600)),
                bucket_size: pb::BucketSize::Day as i32,
                time_zone: "UTC".into(),
                ..Default::default()
            },
            admin,
        ))
        .await?
        .into_inner();
    Ok(r.series
        .first()
        .and_then(|s| s.total.as_ref())
        .map_or(0, |t| u64::from(t.first_responses)))
}

/// One lag sample: when it was taken, and how long the oldest first reply that the
/// aggregates had not counted yet had been answered (zero when they had counted all).
#[derive(Clone, Copy)]
struct Lag {
    at: Instant,
    behind: Duration,
}

/// How far the aggregates trail the answered first replies at `at`, given that they count
/// `counted` of them: the answers are in order, so the uncounted ones are the newest.
fn lag_at(first_replies: &[Instant], counted: u64, at: Instant) -> Duration {
    let answered = first_replies.partition_point(|t| *t <= at);
    usize::try_from(counted)
        .ok()
        .filter(|c| *c < answered)
        .map_or(Duration::ZERO, |c| {
            at.saturating_duration_since(first_replies[c])
        })
}

/// Samples the analytics lag every [`LAG_SAMPLE`] until `stop`.
async fn sample_lag(
    shared: Arc<Shared>,
    channel: Channel,
    admin: MetadataValue<Ascii>,
    stop: CancellationToken,
) -> Vec<Lag> {
    let mut client = AnalyticsServiceClient::new(channel);
    let mut samples = Vec::new();
    while pause(&stop, LAG_SAMPLE).await {
        let at = Instant::now();
        match counted_first_responses(&mut client, &admin).await {
            Ok(counted) => samples.push(Lag {
                at,
                behind: lag_at(&lock(&shared.first_replies), counted, at),
            }),
            Err(s) => {
                lock(&shared.reply_errors).push(format!("GetHistoricalStats: {}", status_text(&s)))
            }
        }
    }
    samples
}

/// Sets every agent AVAILABLE (they are online already).
async fn available(fx: &Fixture, channels: &[Channel]) -> anyhow::Result<()> {
    for (a, ch) in fx.agents.iter().zip(channels) {
        AgentServiceClient::new(ch.clone())
            .set_my_status(authorized(
                pb::SetMyStatusRequest {
                    status: pb::AgentStatus::Available as i32,
                },
                &a.auth,
            ))
            .await
            .map_err(|s| anyhow!("SetMyStatus: {}", status_text(&s)))?;
    }
    Ok(())
}

/// What one visitor needs to reach the server.
struct Visitor {
    shared: Arc<Shared>,
    n: u64,
    run: String,
    channel: Channel,
    key: MetadataValue<Ascii>,
    origin: MetadataValue<Ascii>,
}

/// One visitor: InitVisitor, StartChat, SubscribeVisitor (then `permit` goes back), and
/// the stream read until the chat closes or the run ends, watching the visitor's place.
async fn visitor(v: Visitor, permit: OwnedSemaphorePermit, cancel: CancellationToken) {
    let shared = v.shared.clone();
    let began = Instant::now();
    let mut client = VisitorServiceClient::new(v.channel.clone());
    let init = client
        .init_visitor(widget_request(
            pb::InitVisitorRequest {
                session_id: format!("loadtest-{}-{:010}", v.run, v.n),
                name: format!("Visitor {}", v.n),
                ..Default::default()
            },
            &v.key,
            &v.origin,
            None,
        ))
        .await;
    let token = match init.map(|r| bearer_value(&r.into_inner().visitor_token)) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return lock(&shared.start_errors).push(format!("InitVisitor: {e}")),
        Err(s) => {
            return lock(&shared.start_errors).push(format!("InitVisitor: {}", status_text(&s)));
        }
    };
    let started = client
        .start_chat(widget_request(
            pb::StartChatRequest::default(),
            &v.key,
            &v.origin,
            Some(&token),
        ))
        .await;
    let answered = Instant::now();
    let started = match started {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return lock(&shared.start_errors).push(format!("StartChat: {}", status_text(&s)));
        }
    };
    let Some(chat) = started.conversation else {
        return lock(&shared.start_errors).push("StartChat answered without the chat".into());
    };
    lock(&shared.started).insert(chat.id.clone(), answered);
    shared.started_ok.fetch_add(1, Ordering::Relaxed);
    lock(&shared.start_latencies_us).push(micros(answered - began));
    let waiting = started
        .queue_status
        .filter(|q| q.status == pb::ConversationStatus::Queued as i32 && q.position > 0);
    let mut place = waiting.map(|q| Place {
        shown: q.position,
        reflected: shared.departed_by(answered),
    });

    let opened = client
        .subscribe_visitor(widget_request(
            pb::SubscribeVisitorRequest {
                cursors: vec![pb::ConversationCursor {
                    conversation_id: chat.id.clone(),
                    last_seq: chat.last_seq,
                }],
            },
            &v.key,
            &v.origin,
            Some(&token),
        ))
        .await;
    drop(permit);
    let mut stream = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return lock(&shared.stream_errors)
                .push(format!("SubscribeVisitor: {}", status_text(&s)));
        }
    };
    let mut samples = Vec::new();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                if let Some(p) = &place {
                    samples.extend(p.last(&shared, Instant::now(), false));
                }
                break;
            }
            m = stream.message() => m,
        };
        let item = match next {
            Ok(Some(pb::SubscribeVisitorResponse {
                item: Some(pb::StreamItem { kind: Some(item) }),
            })) => item,
            Ok(Some(_)) => continue,
            Ok(None) => {
                lock(&shared.stream_errors).push("SubscribeVisitor: the stream ended".into());
                break;
            }
            Err(s) => {
                lock(&shared.stream_errors).push(format!("SubscribeVisitor: {}", status_text(&s)));
                break;
            }
        };
        let now = Instant::now();
        match item {
            Item::QueuePosition(q) if q.conversation_id == chat.id => {
                if let Some(p) = &mut place {
                    samples.extend(p.shown(&shared, q.position, now));
                }
            }
            Item::Event(ev) if ev.conversation_id == chat.id => {
                if let Some(pb::conversation_event::Kind::StatusChanged(s)) = ev.kind {
                    if s.status != pb::ConversationStatus::Queued as i32
                        && let Some(p) = place.take()
                    {
                        samples.extend(p.last(&shared, now, true));
                    }
                    if s.status == pb::ConversationStatus::Closed as i32 {
                        break;
                    }
                }
            }
            Item::Resync(_) => {
                lock(&shared.stream_errors).push("SubscribeVisitor: resync".into());
                break;
            }
            _ => {}
        }
    }
    lock(&shared.staleness_us).extend(samples);
}

/// Routing mode; prints the human report and returns the JSON one.
pub(super) async fn run(
    args: &Args,
    target: &Target,
    fx: &Fixture,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let drain = Duration::from_secs(if args.hold > 0 {
        args.hold
    } else {
        args.drain_timeout
    });
    let needed = Duration::from_secs(args.duration) + drain + Duration::from_secs(30);
    if let Some(first) = fx.agents.iter().filter_map(|a| a.expires).min()
        && first < SystemTime::now() + needed
    {
        bail!(
            "the agents' access tokens expire before the run would end; lower --duration or \
             raise the server's access_token_ttl_secs"
        );
    }
    let ctl = connect(&target.url).await?;
    let key = MetadataValue::try_from(widget_key(target, fx, &ctl).await?)
        .map_err(|_| anyhow!("the widget key holds characters not allowed in a header"))?;
    let origin = MetadataValue::from_static(ORIGIN);
    let n = fx.agents.len();
    let shared = Arc::new(Shared {
        departures: Mutex::new(Vec::new()),
        started: Mutex::new(HashMap::new()),
        joins: Mutex::new(Vec::new()),
        seats: (0..n)
            .map(|_| Seats {
                capacity: i64::from(args.capacity),
                open: AtomicI64::new(0),
                closes: Mutex::new(Vec::new()),
            })
            .collect(),
        started_ok: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        over_capacity: AtomicU64::new(0),
        start_latencies_us: Mutex::new(Vec::new()),
        staleness_us: Mutex::new(Vec::new()),
        start_errors: Mutex::new(ErrorLog::default()),
        close_errors: Mutex::new(ErrorLog::default()),
        stream_errors: Mutex::new(ErrorLog::default()),
        first_replies: Mutex::new(Vec::new()),
        replies_ok: AtomicU64::new(0),
        reply_errors: Mutex::new(ErrorLog::default()),
    });

    // Agents: a stream each on its own connection (online), then available.
    let handling = Handling {
        think: Duration::from_millis(args.think_ms),
        replies: args.replies,
    };
    let mut readies = Vec::with_capacity(n);
    let mut agent_channels = Vec::with_capacity(n);
    for (i, a) in fx.agents.iter().enumerate() {
        let ch = connect(&target.url).await?;
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        tokio::spawn(agent_stream(
            shared.clone(),
            i,
            ch.clone(),
            a.auth.clone(),
            handling,
            tx,
            cancel.clone(),
        ));
        agent_channels.push(ch);
    }
    all_caught_up(readies).await?;
    let mut available_at = None;
    if !args.queue_first {
        available(fx, &agent_channels).await?;
    }

    // Visitors: their calls and streams spread over connections of at most
    // --streams-per-connection streams each.
    let pool = (args.visitors as usize)
        .div_ceil(args.streams_per_connection)
        .clamp(1, MAX_VISITOR_CONNECTIONS);
    let mut channels = Vec::with_capacity(pool);
    for _ in 0..pool {
        channels.push(connect(&target.url).await?);
    }
    eprintln!(
        "loadtest: {n} agents of {} seats online{}; up to {} visitors over {pool} connections",
        args.capacity,
        if args.queue_first {
            ", available once arrivals end"
        } else {
            " and available"
        },
        args.visitors
    );

    // How many wait, sampled as it runs.
    let waiting_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (shared, waiting_max, cancel) = (shared.clone(), waiting_max.clone(), cancel.clone());
        tokio::spawn(async move {
            while pause(&cancel, WAITING_SAMPLE).await {
                let assigned = lock(&shared.departures).len() as u64;
                let started = shared.started_ok.load(Ordering::Relaxed);
                waiting_max.fetch_max(started.saturating_sub(assigned), Ordering::Relaxed);
            }
        })
    };

    // With replies, how far the analytics aggregates trail them, sampled as it runs.
    let lag_stop = CancellationToken::new();
    let lag = (args.replies > 0).then(|| {
        tokio::spawn(sample_lag(
            shared.clone(),
            ctl.clone(),
            fx.admin.clone(),
            lag_stop.clone(),
        ))
    });

    let visitors_cancel = cancel.child_token();
    let pacer = Pacer::new(
        args.concurrency,
        args.rate,
        Duration::from_secs(args.duration),
    );
    let start = pacer.start();
    let mut attempted = 0u64;
    while attempted < args.visitors {
        let Some(permit) = pacer.next(attempted).await? else {
            break;
        };
        let v = Visitor {
            shared: shared.clone(),
            n: attempted,
            run: fx.run.clone(),
            channel: channels[(attempted as usize) % pool].clone(),
            key: key.clone(),
            origin: origin.clone(),
        };
        tokio::spawn(visitor(v, permit, visitors_cancel.clone()));
        attempted += 1;
    }
    // Arrivals still in flight end within their calls' timeouts.
    pacer.drain().await?;
    let arrival_window = start.elapsed();
    let started_ok = shared.started_ok.load(Ordering::Relaxed);
    eprintln!(
        "loadtest: {started_ok} chats started in {:.1} s; {}",
        arrival_window.as_secs_f64(),
        if args.hold > 0 {
            format!("agents keep handling for {} s", args.hold)
        } else {
            "waiting for every chat to be routed and closed".to_owned()
        }
    );

    if args.queue_first {
        available_at = Some(Instant::now());
        available(fx, &agent_channels).await?;
    }
    // Then agents keep handling: for --hold seconds, or until every started chat was
    // assigned and closed (at most --drain-timeout).
    let drain_end = Instant::now() + drain;
    if args.hold > 0 {
        pause(cancel, drain).await;
    } else {
        while Instant::now() < drain_end {
            let assigned = lock(&shared.departures).len() as u64;
            let closed = shared.closed.load(Ordering::Relaxed);
            if assigned >= started_ok && closed >= assigned {
                break;
            }
            if !pause(cancel, Duration::from_millis(20)).await {
                break;
            }
        }
    }
    let end = Instant::now();
    // Visitors still waiting take their last staleness sample now.
    visitors_cancel.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let _ = sampler.await;
    // The replies are all answered now: the time the aggregates take to count them all.
    let catch_up = if lag.is_some() {
        let mut client = AnalyticsServiceClient::new(ctl.clone());
        let total = lock(&shared.first_replies).len() as u64;
        let mut caught = None;
        while end.elapsed() < CATCH_UP_LIMIT {
            match counted_first_responses(&mut client, &fx.admin).await {
                Ok(c) if c >= total => {
                    caught = Some(end.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(s) => lock(&shared.reply_errors)
                    .push(format!("GetHistoricalStats: {}", status_text(&s))),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        caught
    } else {
        None
    };
    lag_stop.cancel();
    let lags = match lag {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };

    // Figures.
    let assigned = lock(&shared.departures).len() as u64;
    let last_join = lock(&shared.departures).last().copied();
    let routed_from = available_at.unwrap_or(start);
    let routed_window =
        last_join.map_or(Duration::ZERO, |t| t.saturating_duration_since(routed_from));
    let mut assign_us = {
        let started = lock(&shared.started);
        let joins = lock(&shared.joins);
        joins
            .iter()
            .filter_map(|j| {
                let arrived = *started.get(&j.conversation)?;
                let freed = j
                    .last_close
                    .and_then(|k| lock(&shared.seats[j.agent].closes)[k].1);
                // With --queue-first nothing is assignable before the agents are available.
                let assignable = freed
                    .into_iter()
                    .chain(available_at)
                    .fold(arrived, Instant::max);
                Some(micros(j.at.saturating_duration_since(assignable)))
            })
            .collect::<Vec<u32>>()
    };
    let assign_latency = percentiles(&mut assign_us);
    let start_latency = percentiles(&mut lock(&shared.start_latencies_us));
    let mut stale = std::mem::take(&mut *lock(&shared.staleness_us));
    let staleness_samples = stale.len();
    let staleness = percentiles(&mut stale);
    let closed = shared.closed.load(Ordering::Relaxed);
    let over = shared.over_capacity.load(Ordering::Relaxed);
    let waiting_end = started_ok.saturating_sub(assigned);
    let waiting_max = waiting_max.load(Ordering::Relaxed).max(waiting_end);
    let start_errors = std::mem::take(&mut *lock(&shared.start_errors));
    let close_errors = std::mem::take(&mut *lock(&shared.close_errors));
    let stream_errors = std::mem::take(&mut *lock(&shared.stream_errors));
    let started_per_s = per_second(started_ok, arrival_window);
    let routed_per_s = per_second(assigned, routed_window);
    let reply_errors = std::mem::take(&mut *lock(&shared.reply_errors));
    let replies_ok = shared.replies_ok.load(Ordering::Relaxed);
    let replies_per_s = per_second(replies_ok, end.duration_since(start));
    let lag_all = percentiles(&mut lags.iter().map(|l| micros(l.behind)).collect::<Vec<_>>());
    // Growth: the worst lag in the first and in the last quarter of the run's samples.
    let in_run: Vec<&Lag> = lags.iter().filter(|l| l.at <= end).collect();
    let quarter = in_run.len() / 4;
    let worst = |part: &[&Lag]| {
        part.iter()
            .map(|l| l.behind.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max)
    };
    let (lag_first, lag_last) = (
        worst(&in_run[..quarter]),
        worst(&in_run[in_run.len() - quarter..]),
    );
    let errors = start_errors.count + close_errors.count + stream_errors.count + reply_errors.count;
    let shown: Vec<String> = start_errors
        .first
        .iter()
        .chain(&close_errors.first)
        .chain(&stream_errors.first)
        .chain(&reply_errors.first)
        .cloned()
        .collect();

    println!("chat-engine loadtest: routing");
    println!("  target             {}", target.description);
    println!("  tenant             {}", fx.slug);
    println!(
        "  agents             {n} of {} seats, each closing a chat {} ms after joining it",
        args.capacity, args.think_ms
    );
    println!(
        "  arrivals           up to {} visitors in {} s, {}, at most {} in flight, over {pool} connections",
        args.visitors,
        args.duration,
        if args.rate > 0 {
            format!("target {} /s", args.rate)
        } else {
            "unthrottled".to_owned()
        },
        args.concurrency
    );
    println!("results");
    println!(
        "  started            {started_ok} of {attempted} in {:.2} s: {started_per_s:.1} chats/s",
        arrival_window.as_secs_f64()
    );
    println!(
        "  routed             {assigned} in {:.2} s: {routed_per_s:.1} /s; {closed} closed",
        routed_window.as_secs_f64()
    );
    println!(
        "  waiting            {waiting_end} at the end ({:.1} s after the first arrival), at most {waiting_max}",
        end.duration_since(start).as_secs_f64()
    );
    println!(
        "  assignment ms      {}  (from assignable to the join on the agent's stream)",
        percentiles_text(assign_latency)
    );
    println!(
        "  start ms           {}  (InitVisitor + StartChat)",
        percentiles_text(start_latency)
    );
    println!(
        "  position stale ms  {}  ({staleness_samples} samples)",
        percentiles_text(staleness)
    );
    println!("  over capacity      {over}");
    if args.replies > 0 {
        println!(
            "  replies            {replies_ok}: {replies_per_s:.1} /s ({} per chat)",
            args.replies
        );
        println!(
            "  analytics lag ms   {}  ({} samples; worst in the first quarter {lag_first:.0}, in the last {lag_last:.0})",
            percentiles_text(lag_all),
            lags.len()
        );
        println!(
            "  analytics caught up {}",
            match catch_up {
                Some(d) => format!(
                    "{:.2} s after the last first reply was answered",
                    d.as_secs_f64()
                ),
                None => format!("never within {} s of the end", CATCH_UP_LIMIT.as_secs()),
            }
        );
    }
    println!(
        "  errors             {errors} (start {}, close {}, stream {}, replies {})",
        start_errors.count, close_errors.count, stream_errors.count, reply_errors.count
    );
    for e in &shown {
        println!("  error: {e}");
    }

    Ok(json!({
        "mode": Mode::Routing.name(),
        "tenant": fx.slug,
        "agents": n,
        "capacity": args.capacity,
        "think_ms": args.think_ms,
        "visitors": args.visitors,
        "duration_s": args.duration,
        "hold_s": args.hold,
        "queue_first": args.queue_first,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "connections": pool,
        "attempted": attempted,
        "started": started_ok,
        "started_per_s": round(started_per_s, 1),
        "assigned": assigned,
        "routed_per_s": round(routed_per_s, 1),
        "closed": closed,
        "waiting_at_end": waiting_end,
        "waiting_max": waiting_max,
        "assign_latency_ms": percentiles_json(assign_latency),
        "start_latency_ms": percentiles_json(start_latency),
        "staleness_ms": percentiles_json(staleness),
        "staleness_samples": staleness_samples,
        "over_capacity": over,
        "start_errors": start_errors.count,
        "close_errors": close_errors.count,
        "stream_errors": stream_errors.count,
        "replies": args.replies,
        "replies_ok": replies_ok,
        "replies_per_s": round(replies_per_s, 1),
        "reply_errors": reply_errors.count,
        "analytics_lag_ms": percentiles_json(lag_all),
        "analytics_lag_samples": lags.len(),
        "analytics_lag_first_quarter_max_ms": round(lag_first, 1),
        "analytics_lag_last_quarter_max_ms": round(lag_last, 1),
        "analytics_caught_up_s": catch_up.map(|d| round(d.as_secs_f64(), 3)),
        "errors": shown,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_with(departures: Vec<Instant>) -> Shared {
        Shared {
            departures: Mutex::new(departures),
            started: Mutex::new(HashMap::new()),
            joins: Mutex::new(Vec::new()),
            seats: Vec::new(),
            started_ok: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            over_capacity: AtomicU64::new(0),
            start_latencies_us: Mutex::new(Vec::new()),
            staleness_us: Mutex::new(Vec::new()),
            start_errors: Mutex::new(ErrorLog::default()),
            close_errors: Mutex::new(ErrorLog::default()),
            stream_errors: Mutex::new(ErrorLog::default()),
            first_replies: Mutex::new(Vec::new()),
            replies_ok: AtomicU64::new(0),
            reply_errors: Mutex::new(ErrorLog::default()),
        }
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_answered_reply_not_counted_yet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let answered = [t0, t0 + ms(100), t0 + ms(300)];
        // All answered by 400 ms are counted: no lag.
        assert_eq!(lag_at(&answered, 3, t0 + ms(400)), Duration::ZERO);
        // One counted: the second, answered at 100 ms, is 300 ms behind.
        assert_eq!(lag_at(&answered, 1, t0 + ms(400)), ms(300));
        // At 200 ms only two were answered and both are counted; the third is in the future.
        assert_eq!(lag_at(&answered, 2, t0 + ms(200)), Duration::ZERO);
        // Counted beyond what this process saw answered (an answer still on its way).
        assert_eq!(lag_at(&answered, 5, t0 + ms(50)), Duration::ZERO);
    }

    #[test]
    fn a_place_is_stale_from_the_oldest_assignment_it_newly_shows() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // One assignment before the visitor arrived, three while they wait.
        let shared = shared_with(vec![t0, t0 + ms(100), t0 + ms(200), t0 + ms(300)]);
        let mut p = Place {
            shown: 5,
            reflected: shared.departed_by(t0 + ms(50)),
        };
        // Only the estimate changed.
        assert_eq!(p.shown(&shared, 5, t0 + ms(150)), None);
        // 4 shows the assignment at 100 ms, 150 ms after it.
        assert_eq!(p.shown(&shared, 4, t0 + ms(250)), Some(150_000));
        // 2 shows those at 200 and 300 ms; the older one counts.
        assert_eq!(p.shown(&shared, 2, t0 + ms(400)), Some(200_000));
        assert_eq!(p.last(&shared, t0 + ms(500), false), None);
        // A place newer than any assignment seen is not stale.
        assert_eq!(p.shown(&shared, 1, t0 + ms(450)), Some(0));
        // Moved back: a new baseline, no sample.
        let mut q = Place {
            shown: 3,
            reflected: 1,
        };
        assert_eq!(q.shown(&shared, 4, t0 + ms(150)), None);
        assert_eq!((q.shown, q.reflected), (4, 2));
        // Two assignments it never showed: stale since the first of them.
        assert_eq!(q.last(&shared, t0 + ms(1000), false), Some(800_000));
        // Its own assignment is the later one: still stale since the first.
        assert_eq!(q.last(&shared, t0 + ms(1000), true), Some(800_000));
        let r = Place {
            shown: 1,
            reflected: 3,
        };
        assert_eq!(r.last(&shared, t0 + ms(1000), true), None, "only its own");
    }
}
