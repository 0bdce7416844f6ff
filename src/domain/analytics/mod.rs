//! Analytics (issue 10): live and historical figures per tenant, each defined once
//! (`docs/analytics.md`; computed in [`figures`]).
//!
//! Historical figures come from aggregates per tenant and UTC 15-minute slot (for the
//! tenant, per agent and per workflow), kept by the [`Analytics`] reactor: every committed
//! event of an external chat makes it recompute that chat's contributions from the chat's
//! own events and add the difference to what it contributed before, and every agent state
//! change adds the period that it ended. Redelivered events therefore change nothing, and
//! [`rebuild`] (the same functions over every chat) gives the same aggregates. Reports sum
//! slots into hour, day or week buckets of an IANA zone ([`buckets`]); nothing scans
//! messages per request. Live figures are read from the live tables ([`live`]).
//!
//! Visibility: admins see the tenant's figures; an agent sees only their own (their
//! per-agent series and ratings), and anything else is PERMISSION_DENIED.

pub mod buckets;
pub mod figures;
pub mod live;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use self::buckets::BucketSize;
use self::figures::{
    AgentState, Contributions, Dim, Figures, Sender, Step, Timeline, chat_contributions, merge,
    percentile, state_contributions,
};
use super::conversations::Status;
use super::events::EventKind;
use super::paging::{Page, split_page};
use super::reactors::{Delivery, DomainEvent, Reactor};
use super::{Engine, require_agent};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, UserId, WorkflowId};
use crate::storage::TenantTx;
use crate::storage::analytics as store;
use crate::tenancy::{Actor, Role, SystemCap, TenantScope};

/// Chats whose contributions are recomputed per round trip.
const CHUNK: usize = 500;
/// Spine entries the reactor takes at once.
const ANALYTICS_BATCH: i64 = 2000;
/// The least time between two of the reactor's rounds; historical figures may be this late.
const LINGER: Duration = Duration::from_millis(1000);

/// One stored row of figures, as JSON (the aggregates' upsert input and a chat's stored
/// contributions).
#[derive(Serialize, Deserialize)]
struct Row {
    slot: DateTime<Utc>,
    dim: i16,
    dim_id: uuid::Uuid,
    #[serde(flatten)]
    f: Figures,
}

fn to_json(c: &Contributions) -> serde_json::Value {
    let rows: Vec<Row> = c
        .iter()
        .map(|((slot, dim), f)| Row {
            slot: *slot,
            dim: dim.code(),
            dim_id: dim.id(),
            f: f.clone(),
        })
        .collect();
    serde_json::to_value(rows).unwrap_or_default()
}

fn from_json(v: serde_json::Value) -> AppResult<Contributions> {
    let rows: Vec<Row> = serde_json::from_value(v)
        .map_err(|e| AppError::Internal(format!("stored contributions: {e}")))?;
    let mut out = Contributions::new();
    for r in rows {
        let dim = match r.dim {
            0 => Dim::Tenant,
            1 => Dim::Agent(UserId::from_uuid(r.dim_id)),
            _ if r.dim_id.is_nil() => Dim::Workflow(None),
            _ => Dim::Workflow(Some(WorkflowId::from_uuid(r.dim_id))),
        };
        out.insert((r.slot, dim), r.f);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct StatusPayload {
    status: Status,
    assigned: Option<UserId>,
}

/// Reads the histories of `ids` and makes their timelines.
async fn timelines(tx: &mut TenantTx, ids: &[ConversationId]) -> AppResult<Vec<Timeline>> {
    let (chats, statuses, posts, scores) = store::histories(tx, ids).await?;
    let mut steps: HashMap<ConversationId, Vec<(i64, DateTime<Utc>, Step)>> = HashMap::new();
    let visitor_of: HashMap<ConversationId, Option<uuid::Uuid>> = chats
        .iter()
        .map(|c| (c.conversation_id, c.visitor_id.map(|v| v.as_uuid())))
        .collect();
    for s in statuses {
        let p: StatusPayload = serde_json::from_value(s.payload)
            .map_err(|e| AppError::Internal(format!("status payload: {e}")))?;
        let visitor = visitor_of.get(&s.conversation_id).copied().flatten();
        let by_visitor = s.actor_id.is_some() && s.actor_id == visitor;
        steps.entry(s.conversation_id).or_default().push((
            s.seq,
            s.created_at,
            Step::Status {
                status: p.status,
                assigned: p.assigned,
                by_visitor,
            },
        ));
    }
    for m in posts {
        let sender = match (m.sender_type.as_str(), m.sender_id) {
            ("agent", Some(a)) => Sender::Agent(UserId::from_uuid(a)),
            ("visitor", _) => Sender::Visitor,
            _ => Sender::Other,
        };
        steps
            .entry(m.conversation_id)
            .or_default()
            .push((m.seq, m.created_at, Step::Post(sender)));
    }
    let ratings: HashMap<ConversationId, (u8, Option<UserId>)> = scores
        .into_iter()
        .map(|r| {
            (
                r.conversation_id,
                (u8::try_from(r.score).unwrap_or(0), r.agent_id),
            )
        })
        .collect();
    Ok(chats
        .into_iter()
        .map(|c| {
            let mut s = steps.remove(&c.conversation_id).unwrap_or_default();
            s.sort_by_key(|(seq, ..)| *seq);
            Timeline {
                conversation: c.conversation_id,
                workflow: c.workflow_id,
                steps: s.into_iter().map(|(_, at, step)| (at, step)).collect(),
                rating: ratings.get(&c.conversation_id).copied(),
            }
        })
        .collect())
}

/// Recomputes the contributions of the external chats `ids` and adds the difference to
/// `delta`; stores the new contributions.
async fn recompute_chats(
    tx: &mut TenantTx,
    ids: &[ConversationId],
    delta: &mut Contributions,
) -> AppResult<()> {
    for chunk in ids.chunks(CHUNK) {
        let before: HashMap<ConversationId, serde_json::Value> = store::contributions_of(tx, chunk)
            .await?
            .into_iter()
            .collect();
        let mut stored = Vec::new();
        for tl in timelines(tx, chunk).await? {
            let now = chat_contributions(&tl);
            let old = match before.get(&tl.conversation) {
                Some(v) => from_json(v.clone())?,
                None => Contributions::new(),
            };
            if now == old {
                continue;
            }
            merge(delta, &now, 1);
            merge(delta, &old, -1);
            stored.push((tl.conversation, to_json(&now)));
        }
        store::store_contributions(tx, stored).await?;
    }
    Ok(())
}

/// Adds the state periods of `agents` that have ended since last time to `delta`.
async fn count_states(
    tx: &mut TenantTx,
    agents: &[UserId],
    delta: &mut Contributions,
) -> AppResult<()> {
    if agents.is_empty() {
        return Ok(());
    }
    let rows = store::uncounted_states(tx, agents).await?;
    let mut done = Vec::new();
    for pair in rows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.user_id != b.user_id {
            continue;
        }
        let state = AgentState {
            status: a.status.clone(),
            capacity: a.capacity,
            active: a.active,
        };
        merge(
            delta,
            &state_contributions(a.user_id, &state, a.at, b.at),
            1,
        );
        done.push((a.user_id, a.at));
    }
    store::mark_counted(tx, &done).await
}

async fn write(tx: &mut TenantTx, delta: &Contributions) -> AppResult<()> {
    if delta.is_empty() {
        return Ok(());
    }
    store::add(tx, to_json(delta)).await
}

/// Records an agent's routing state in the transaction that changed it (the history that
/// online time and utilisation come from).
pub async fn record_agent_state(
    tx: &mut TenantTx,
    agent: UserId,
    at: DateTime<Utc>,
) -> AppResult<()> {
    store::log_state(tx, agent, at).await
}

/// The reactor that keeps the aggregates.
pub struct Analytics {
    engine: Arc<Engine>,
    system: SystemCap,
    /// Conversations known to be internal (their posts need no look-up); bounded.
    internal: std::sync::Mutex<lru::LruCache<ConversationId, ()>>,
}

impl Analytics {
    /// The reactor.
    pub fn new(engine: Arc<Engine>, system: SystemCap) -> Arc<Self> {
        Arc::new(Self {
            engine,
            system,
            internal: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(65_536).expect("non-zero"),
            )),
        })
    }

    async fn apply(&self, batch: &[Delivery]) -> AppResult<()> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let mut convs: Vec<ConversationId> = Vec::new();
        let mut agents: Vec<UserId> = Vec::new();
        {
            let mut internal = self.internal.lock().unwrap_or_else(|p| p.into_inner());
            for d in batch {
                match &d.event {
                    DomainEvent::Conversation(ev) => {
                        // Edits and deletes change no figure.
                        let counts = !matches!(
                            ev.kind,
                            EventKind::MessageEdited(_) | EventKind::MessageDeleted(_)
                        );
                        if counts && internal.get(&ev.conversation_id).is_none() {
                            convs.push(ev.conversation_id);
                        }
                    }
                    DomainEvent::Posted { conversation } => {
                        if internal.get(conversation).is_none() {
                            convs.push(*conversation);
                        }
                    }
                    DomainEvent::Rated { conversation } => convs.push(*conversation),
                    DomainEvent::AgentChanged { agent } => agents.push(*agent),
                    DomainEvent::QueueChanged { .. } | DomainEvent::RoutingChanged { .. } => {}
                }
            }
        }
        convs.sort();
        convs.dedup();
        agents.sort();
        agents.dedup();
        if convs.is_empty() && agents.is_empty() {
            return Ok(());
        }
        let began = std::time::Instant::now();
        let scope = TenantScope::system(&self.system, first.tenant);
        let mut tx = self.engine.db.tenant_tx(&scope).await?;
        store::lock(&mut tx, false).await?;
        let external = if convs.is_empty() {
            Vec::new()
        } else {
            store::external_among(&mut tx, &convs).await?
        };
        {
            let mut internal = self.internal.lock().unwrap_or_else(|p| p.into_inner());
            for c in convs.iter().filter(|c| !external.contains(c)) {
                internal.put(*c, ());
            }
        }
        let mut delta = Contributions::new();
        recompute_chats(&mut tx, &external, &mut delta).await?;
        count_states(&mut tx, &agents, &mut delta).await?;
        write(&mut tx, &delta).await?;
        tx.commit().await?;
        tracing::debug!(
            tenant.id = %first.tenant,
            entries = batch.len(),
            chats = external.len(),
            agents = agents.len(),
            rows = delta.len(),
            ms = began.elapsed().as_millis() as u64,
            "analytics batch counted"
        );
        Ok(())
    }
}

impl Reactor for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    // Where posts went is enough (the chat's timeline is read again), and a second late is
    // fine: the send path then wakes no reactor per batch, and reads nothing back for it.
    fn wants_posts(&self) -> bool {
        false
    }

    fn wants_post_notices(&self) -> bool {
        true
    }

    // Each chat of a batch is recomputed once, however many of its entries hold posts: with
    // a thousand open chats replying every second, 100 entries a batch read every chat's
    // timeline again several times a second and fell behind (BENCHMARKS.md, issue 10).
    fn batch_size(&self) -> i64 {
        ANALYTICS_BATCH
    }

    // A chat's start, assignment and close usually fall within a second: taken together,
    // the chat is recomputed and the slots are written once instead of after every commit.
    fn linger(&self) -> Duration {
        LINGER
    }

    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(self.apply(batch))
    }
}

/// Recomputes every aggregate of the tenant from the raw rows (chats' events, ratings,
/// agents' state history), in one transaction: the reactor's work on the tenant waits for
/// it. Returns the number of chats.
pub async fn rebuild(e: &Engine, scope: &TenantScope) -> AppResult<u64> {
    super::require_admin_or_system(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    store::no_statement_timeout(&mut tx).await?;
    store::lock(&mut tx, true).await?;
    store::clear(&mut tx).await?;
    let mut delta = Contributions::new();
    let mut after = None;
    let mut chats = 0u64;
    loop {
        let ids = store::chats_after(&mut tx, after, 2000).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        chats += ids.len() as u64;
        recompute_chats(&mut tx, &ids, &mut delta).await?;
        after = Some(last);
        // Bounded memory: the sums go out every so often.
        if delta.len() > 50_000 {
            write(&mut tx, &delta).await?;
            delta.clear();
        }
    }
    let agents = store::agents_with_states(&mut tx).await?;
    count_states(&mut tx, &agents, &mut delta).await?;
    write(&mut tx, &delta).await?;
    tx.commit().await?;
    Ok(chats)
}

/// What a report groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// The tenant as a whole.
    Tenant,
    /// Each agent (or one).
    Agent(Option<UserId>),
    /// Each workflow.
    Workflow,
}

/// A report request, validated.
#[derive(Clone, Debug)]
pub struct Query {
    /// Range start (extended down to its bucket's start).
    pub start: DateTime<Utc>,
    /// Range end (extended up to a bucket's end).
    pub end: DateTime<Utc>,
    /// Bucket size.
    pub size: BucketSize,
    /// Zone of the buckets; None: the tenant's own.
    pub zone: Option<Tz>,
    /// Grouping.
    pub group: GroupBy,
}

/// The figures of one bucket, as reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Bucket start (for a total, the range start).
    pub start: DateTime<Utc>,
    /// Bucket end.
    pub end: DateTime<Utc>,
    /// The raw sums.
    pub sums: Figures,
}

/// Seconds, rounded to milliseconds.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Report {
    /// Mean of `sum_ms` over `n`, in seconds; 0 without values.
    fn mean(sum_ms: i64, n: i64) -> f64 {
        if n > 0 { secs(sum_ms) / n as f64 } else { 0.0 }
    }
    /// Mean queue wait, seconds.
    pub fn wait_mean(&self) -> f64 {
        Self::mean(self.sums.wait_ms, self.sums.wait_n)
    }
    /// Queue wait percentile, seconds (see [`figures::percentile`]).
    pub fn wait_p(&self, p: f64) -> Option<i64> {
        percentile(&self.sums.wait_h, p)
    }
    /// Mean first response time, seconds.
    pub fn frt_mean(&self) -> f64 {
        Self::mean(self.sums.frt_ms, self.sums.frt_n)
    }
    /// First response percentile, seconds.
    pub fn frt_p(&self, p: f64) -> Option<i64> {
        percentile(&self.sums.frt_h, p)
    }
    /// Average response time, seconds.
    pub fn resp_mean(&self) -> f64 {
        Self::mean(self.sums.resp_ms, self.sums.resp_n)
    }
    /// Average chat duration, seconds.
    pub fn dur_mean(&self) -> f64 {
        Self::mean(self.sums.dur_ms, self.sums.dur_n)
    }
    /// Average rating; 0 without ratings.
    pub fn csat_mean(&self) -> f64 {
        if self.sums.csat_n > 0 {
            self.sums.csat_sum as f64 / self.sums.csat_n as f64
        } else {
            0.0
        }
    }
    /// Occupied over available seat time; 0 when no seat time was available.
    pub fn utilisation(&self) -> f64 {
        if self.sums.available_ms > 0 {
            self.sums.occupied_ms as f64 / self.sums.available_ms as f64
        } else {
            0.0
        }
    }
}

/// One series of a report: the tenant, an agent or a workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Whose figures.
    pub dim: Dim,
    /// Every bucket of the range, empty ones included.
    pub buckets: Vec<Report>,
    /// The whole range.
    pub total: Report,
}

/// Checks who may see which figures: admins everything, agents only their own per-agent
/// figures (a report grouped by agent without naming one becomes theirs).
fn visible(scope: &TenantScope, group: GroupBy) -> AppResult<GroupBy> {
    // The engine itself (the CLI's export) sees what an admin sees.
    if let Actor::System | Actor::Operator = scope.actor() {
        return Ok(group);
    }
    let (me, role) = require_agent(scope)?;
    match (role, group) {
        (Role::Admin, g) => Ok(g),
        (_, GroupBy::Agent(None)) => Ok(GroupBy::Agent(Some(me))),
        (_, GroupBy::Agent(Some(a))) if a == me => Ok(group),
        _ => Err(AppError::PermissionDenied(
            "agents see only their own figures (group by agent)",
        )),
    }
}

fn figures_of(r: &store::BucketRow) -> Figures {
    let s = |i: usize| r.sums.get(i).copied().unwrap_or(0);
    Figures {
        started: s(0),
        answered: s(1),
        missed: s(2),
        abandoned: s(3),
        wait_n: s(4),
        frt_n: s(5),
        resp_n: s(6),
        dur_n: s(7),
        csat_n: s(8),
        csat_sum: s(9),
        wait_ms: s(10),
        frt_ms: s(11),
        resp_ms: s(12),
        dur_ms: s(13),
        occupied_ms: s(14),
        available_ms: s(15),
        online_ms: s(16),
        wait_h: r.wait_h.clone(),
        frt_h: r.frt_h.clone(),
        csat_h: r.csat_h.clone(),
    }
}

/// The historical figures of `q`, from the aggregates, and the zone of their buckets. Day
/// and week buckets in the tenant's own zone read the daily aggregates; anything else the
/// 15-minute slots (the same sums, 96 rows a day instead of one).
pub async fn historical(
    e: &Engine,
    scope: &TenantScope,
    q: &Query,
) -> AppResult<(Tz, Vec<Series>)> {
    let group = visible(scope, q.group)?;
    let (dim, only) = match group {
        GroupBy::Tenant => (0, None),
        GroupBy::Agent(a) => (1, a.map(|a| a.as_uuid())),
        GroupBy::Workflow => (2, None),
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    let own = tenant_zone(&mut tx).await?;
    let zone = q.zone.unwrap_or(own);
    let bounds = buckets::bounds(q.start, q.end, q.size, zone)
        .map_err(|v| AppError::InvalidArgument(vec![v]))?;
    let (starts, end) = (&bounds[..bounds.len() - 1], bounds[bounds.len() - 1]);
    let grain = if zone == own && q.size != BucketSize::Hour {
        store::Grain::Days
    } else {
        store::Grain::Slots
    };
    let rows = store::report(&mut tx, grain, dim, only, starts, end, zone).await?;
    tx.commit().await?;
    let mut by_id: BTreeMap<uuid::Uuid, Vec<Figures>> = BTreeMap::new();
    if let GroupBy::Tenant | GroupBy::Agent(Some(_)) = group {
        // A single series is there even when empty.
        by_id.insert(
            only.unwrap_or_default(),
            vec![Figures::default(); starts.len()],
        );
    }
    for r in &rows {
        let list = by_id
            .entry(r.dim_id)
            .or_insert_with(|| vec![Figures::default(); starts.len()]);
        if let Some(slot) = usize::try_from(r.b - 1).ok().and_then(|i| list.get_mut(i)) {
            *slot = figures_of(r);
        }
    }
    let series = by_id
        .into_iter()
        .map(|(id, list)| {
            let dim = match group {
                GroupBy::Tenant => Dim::Tenant,
                GroupBy::Agent(_) => Dim::Agent(UserId::from_uuid(id)),
                GroupBy::Workflow if id.is_nil() => Dim::Workflow(None),
                GroupBy::Workflow => Dim::Workflow(Some(WorkflowId::from_uuid(id))),
            };
            let mut total = Figures::default();
            let buckets: Vec<Report> = list
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    total.add(&f, 1);
                    Report {
                        start: bounds[i],
                        end: bounds[i + 1],
                        sums: f,
                    }
                })
                .collect();
            Series {
                dim,
                buckets,
                total: Report {
                    start: bounds[0],
                    end,
                    sums: total,
                },
            }
        })
        .collect();
    Ok((zone, series))
}

/// The scope's tenant's own time zone.
pub async fn tenant_zone(tx: &mut TenantTx) -> AppResult<Tz> {
    let name = crate::storage::tenants::time_zone(tx).await?;
    Ok(crate::domain::tenants::zone_of(&name))
}

/// Filters of ListRatings.
#[derive(Clone, Debug, Default)]
pub struct RatingFilter {
    /// Only ratings kept with this agent.
    pub agent: Option<UserId>,
    /// Lowest and highest score (1..=5).
    pub scores: (u8, u8),
    /// Given at or after.
    pub from: Option<DateTime<Utc>>,
    /// Given before.
    pub to: Option<DateTime<Utc>>,
}

/// Ratings newest first, paged; an agent sees only those kept with them.
pub async fn ratings(
    e: &Engine,
    scope: &TenantScope,
    mut filter: RatingFilter,
    page_size: i64,
    page_token: &str,
) -> AppResult<Page<super::visitors::Rating>> {
    let (me, role) = require_agent(scope)?;
    if role != Role::Admin {
        match filter.agent {
            None => filter.agent = Some(me),
            Some(a) if a == me => {}
            Some(_) => {
                return Err(AppError::PermissionDenied(
                    "agents see only their own ratings",
                ));
            }
        }
    }
    let binding = format!(
        "ratings:{}:{:?}:{:?}:{:?}:{:?}",
        scope.tenant_id(),
        filter.agent,
        filter.scores,
        filter.from,
        filter.to
    );
    let before: Option<(DateTime<Utc>, ConversationId)> = e.pages.open(&binding, page_token)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let rows = store::ratings(
        &mut tx,
        filter.agent,
        (i16::from(filter.scores.0), i16::from(filter.scores.1)),
        filter.from,
        filter.to,
        before,
        page_size + 1,
    )
    .await?;
    tx.commit().await?;
    let (rows, more) = split_page(rows, page_size);
    let next_page_token = match (more, rows.last()) {
        (true, Some(r)) => e.pages.seal(&binding, &(r.created_at, r.conversation_id)),
        _ => String::new(),
    };
    Ok(Page {
        items: rows
            .into_iter()
            .map(|r| super::visitors::Rating {
                conversation_id: r.conversation_id,
                score: u8::try_from(r.score).unwrap_or(0),
                comment: r.comment,
                agent: r.agent_id,
                created_at: r.created_at,
            })
            .collect(),
        next_page_token,
    })
}

/// The historical figures of `q` as CSV: one line per series and bucket, with a header.
pub async fn export_csv(e: &Engine, scope: &TenantScope, q: &Query) -> AppResult<String> {
    let (_, series) = historical(e, scope, q).await?;
    let mut out = String::from(
        "series,id,bucket_start,bucket_end,chats_started,chats_answered,chats_missed,\
         chats_abandoned,first_response_p50_s,first_response_p90_s,first_response_mean_s,\
         response_mean_s,queue_wait_p50_s,queue_wait_p90_s,queue_wait_mean_s,duration_mean_s,\
         csat_mean,csat_count,csat_1,csat_2,csat_3,csat_4,csat_5,utilisation,occupied_s,\
         available_seat_s,online_s\n",
    );
    for s in &series {
        let (kind, id) = match s.dim {
            Dim::Tenant => ("tenant", String::new()),
            Dim::Agent(a) => ("agent", a.to_string()),
            Dim::Workflow(w) => ("workflow", w.map(|w| w.to_string()).unwrap_or_default()),
        };
        for b in &s.buckets {
            let f = &b.sums;
            let p = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            let h = |i: usize| f.csat_h.get(i).copied().unwrap_or(0);
            out.push_str(&format!(
                "{kind},{id},{},{},{},{},{},{},{},{},{:.3},{:.3},{},{},{:.3},{:.3},{:.3},{},{},{},{},{},{},{:.4},{:.3},{:.3},{:.3}\n",
                b.start.to_rfc3339(),
                b.end.to_rfc3339(),
                f.started,
                f.answered,
                f.missed,
                f.abandoned,
                p(b.frt_p(0.5)),
                p(b.frt_p(0.9)),
                b.frt_mean(),
                b.resp_mean(),
                p(b.wait_p(0.5)),
                p(b.wait_p(0.9)),
                b.wait_mean(),
                b.dur_mean(),
                b.csat_mean(),
                f.csat_n,
                h(0),
                h(1),
                h(2),
                h(3),
                h(4),
                b.utilisation(),
                secs(f.occupied_ms),
                secs(f.available_ms),
                secs(f.online_ms),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_histogram_lengths_match_the_bounds() {
        assert_eq!(
            store::HISTS,
            [
                ("wait_h", figures::HIST_LEN),
                ("frt_h", figures::HIST_LEN),
                ("csat_h", figures::CSAT_LEN)
            ]
        );
        assert_eq!(store::COUNTS.len() + store::MILLIS.len(), 17);
    }

    #[test]
    fn stored_contributions_round_trip() {
        let mut c = Contributions::new();
        let slot = figures::slot_of(Utc::now());
        c.insert(
            (slot, Dim::Agent(UserId::new())),
            Figures {
                answered: 1,
                wait_h: vec![0, 1],
                ..Figures::default()
            },
        );
        c.insert(
            (slot, Dim::Workflow(None)),
            Figures {
                started: 1,
                ..Figures::default()
            },
        );
        c.insert(
            (slot, Dim::Workflow(Some(WorkflowId::new()))),
            Figures {
                missed: 1,
                ..Figures::default()
            },
        );
        assert_eq!(from_json(to_json(&c)).unwrap(), c);
    }
}
