//! The figures themselves, as pure functions: what one chat contributes to the aggregates
//! (from its events alone), what one period of an agent's state contributes, and how
//! percentiles are read from the fixed-bucket histograms. `docs/analytics.md` defines every
//! figure in words; this is the one place that computes them, for the live reactor and for
//! `chat-engine analytics rebuild` alike, so the two cannot disagree.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::conversations::Status;
use crate::ids::{ConversationId, UserId, WorkflowId};

/// Width of a stored slot. Every IANA zone's UTC offset is a multiple of 15 minutes, so a
/// local hour, day or week is always a whole number of slots.
pub const SLOT_MINUTES: i64 = 15;

/// Upper bounds (seconds, exclusive) of the wait and first-response histograms' buckets; a
/// last bucket holds everything from the last bound on.
pub const BOUNDS_SECS: [i64; 19] = [
    5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600,
];
/// The last bound: a percentile reported as this may be any value from it on.
pub const LAST_BOUND: i64 = BOUNDS_SECS[BOUNDS_SECS.len() - 1];
/// Buckets per duration histogram.
pub const HIST_LEN: usize = BOUNDS_SECS.len() + 1;
/// Buckets of the CSAT distribution (scores 1 to 5).
pub const CSAT_LEN: usize = 5;

/// The slot holding `t`.
pub fn slot_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::minutes(SLOT_MINUTES))
        .unwrap_or(t)
}

/// The histogram bucket of a duration in milliseconds.
pub fn bucket_of(ms: i64) -> usize {
    BOUNDS_SECS
        .iter()
        .position(|b| ms < b * 1000)
        .unwrap_or(BOUNDS_SECS.len())
}

/// The `p`-th percentile (0 < p <= 1) of a histogram, in seconds: the upper bound of the
/// bucket holding the ⌈p·n⌉-th smallest value (the true value lies below it and at or above
/// the bucket's lower bound); the last bound when that value is in the open last bucket;
/// None without values.
pub fn percentile(hist: &[i64], p: f64) -> Option<i64> {
    let n: i64 = hist.iter().sum();
    if n <= 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as i64).clamp(1, n);
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(BOUNDS_SECS.get(i).copied().unwrap_or(LAST_BOUND));
        }
    }
    Some(LAST_BOUND)
}

fn zero(v: &i64) -> bool {
    *v == 0
}

fn zeros(v: &[i64]) -> bool {
    v.iter().all(|x| *x == 0)
}

/// Sums of one slot and dimension. Counts, sums in milliseconds, and histograms (empty
/// means all zero). Zero fields are left out of stored JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Chats started (queued by StartChat).
    #[serde(default, skip_serializing_if = "zero")]
    pub started: i64,
    /// Chats that got their first agent.
    #[serde(default, skip_serializing_if = "zero")]
    pub answered: i64,
    /// Chats that ended while waiting, never answered, not by the visitor.
    #[serde(default, skip_serializing_if = "zero")]
    pub missed: i64,
    /// Chats the visitor ended while waiting, never answered.
    #[serde(default, skip_serializing_if = "zero")]
    pub abandoned: i64,
    /// Queue waits measured.
    #[serde(default, skip_serializing_if = "zero")]
    pub wait_n: i64,
    /// Their sum.
    #[serde(default, skip_serializing_if = "zero")]
    pub wait_ms: i64,
    /// Their histogram.
    #[serde(default, skip_serializing_if = "zeros")]
    pub wait_h: Vec<i64>,
    /// First responses measured.
    #[serde(default, skip_serializing_if = "zero")]
    pub frt_n: i64,
    /// Their sum.
    #[serde(default, skip_serializing_if = "zero")]
    pub frt_ms: i64,
    /// Their histogram.
    #[serde(default, skip_serializing_if = "zeros")]
    pub frt_h: Vec<i64>,
    /// Responses (visitor message to the next agent reply) measured.
    #[serde(default, skip_serializing_if = "zero")]
    pub resp_n: i64,
    /// Their sum.
    #[serde(default, skip_serializing_if = "zero")]
    pub resp_ms: i64,
    /// Ended chats' durations measured.
    #[serde(default, skip_serializing_if = "zero")]
    pub dur_n: i64,
    /// Their sum.
    #[serde(default, skip_serializing_if = "zero")]
    pub dur_ms: i64,
    /// Ratings.
    #[serde(default, skip_serializing_if = "zero")]
    pub csat_n: i64,
    /// Sum of their scores.
    #[serde(default, skip_serializing_if = "zero")]
    pub csat_sum: i64,
    /// Ratings per score 1..=5.
    #[serde(default, skip_serializing_if = "zeros")]
    pub csat_h: Vec<i64>,
    /// Seat time occupied by assigned chats.
    #[serde(default, skip_serializing_if = "zero")]
    pub occupied_ms: i64,
    /// Seat time offered: capacity times time in status available.
    #[serde(default, skip_serializing_if = "zero")]
    pub available_ms: i64,
    /// Time in any status but offline.
    #[serde(default, skip_serializing_if = "zero")]
    pub online_ms: i64,
}

fn add_vec(a: &mut Vec<i64>, b: &[i64], sign: i64) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += sign * y;
    }
}

macro_rules! each_scalar {
    ($m:ident, $a:expr, $b:expr, $sign:expr) => {
        $m!(
            $a,
            $b,
            $sign,
            started,
            answered,
            missed,
            abandoned,
            wait_n,
            wait_ms,
            frt_n,
            frt_ms,
            resp_n,
            resp_ms,
            dur_n,
            dur_ms,
            csat_n,
            csat_sum,
            occupied_ms,
            available_ms,
            online_ms
        )
    };
}

macro_rules! add_fields {
    ($a:expr, $b:expr, $sign:expr, $($f:ident),*) => {
        $( $a.$f += $sign * $b.$f; )*
    };
}

impl Figures {
    /// Adds `other` times `sign` (1 or -1).
    pub fn add(&mut self, other: &Figures, sign: i64) {
        each_scalar!(add_fields, self, other, sign);
        add_vec(&mut self.wait_h, &other.wait_h, sign);
        add_vec(&mut self.frt_h, &other.frt_h, sign);
        add_vec(&mut self.csat_h, &other.csat_h, sign);
    }

    /// Whether every figure is zero (nothing to store).
    pub fn is_zero(&self) -> bool {
        let mut z = true;
        macro_rules! check {
            ($a:expr, $b:expr, $sign:expr, $($f:ident),*) => {
                $( z &= $a.$f == 0; )*
            };
        }
        each_scalar!(check, self, self, 1);
        z && zeros(&self.wait_h) && zeros(&self.frt_h) && zeros(&self.csat_h)
    }

    fn wait(&mut self, ms: i64) {
        self.wait_n += 1;
        self.wait_ms += ms;
        self.wait_h.resize(HIST_LEN, 0);
        self.wait_h[bucket_of(ms)] += 1;
    }

    fn first_response(&mut self, ms: i64) {
        self.frt_n += 1;
        self.frt_ms += ms;
        self.frt_h.resize(HIST_LEN, 0);
        self.frt_h[bucket_of(ms)] += 1;
    }

    fn rating(&mut self, score: u8) {
        self.csat_n += 1;
        self.csat_sum += i64::from(score);
        self.csat_h.resize(CSAT_LEN, 0);
        if (1..=5).contains(&score) {
            self.csat_h[usize::from(score) - 1] += 1;
        }
    }
}

/// The dimension a row of figures belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// The whole tenant.
    Tenant,
    /// One agent.
    Agent(UserId),
    /// One workflow; None for chats routed by the built-in defaults.
    Workflow(Option<WorkflowId>),
}

impl Dim {
    /// Storage code of the kind (0 tenant, 1 agent, 2 workflow).
    pub fn code(&self) -> i16 {
        match self {
            Dim::Tenant => 0,
            Dim::Agent(_) => 1,
            Dim::Workflow(_) => 2,
        }
    }

    /// Storage id (the nil UUID for the tenant and the built-in defaults).
    pub fn id(&self) -> uuid::Uuid {
        match self {
            Dim::Tenant | Dim::Workflow(None) => uuid::Uuid::nil(),
            Dim::Agent(a) => a.as_uuid(),
            Dim::Workflow(Some(w)) => w.as_uuid(),
        }
    }
}

/// Key of a stored row: slot start and dimension.
pub type Key = (DateTime<Utc>, Dim);

/// Figures by row; what a chat or a state period contributes, or a batch of changes.
pub type Contributions = BTreeMap<Key, Figures>;

/// Adds `b` times `sign` into `a`, dropping rows that end at zero.
pub fn merge(a: &mut Contributions, b: &Contributions, sign: i64) {
    for (k, f) in b {
        let e = a.entry(*k).or_default();
        e.add(f, sign);
        if e.is_zero() {
            a.remove(k);
        }
    }
}

/// Who sent a message, as the figures see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// An agent: their messages are replies.
    Agent(UserId),
    /// The chat's visitor.
    Visitor,
    /// The engine (welcome, queue and max-wait notices) or a bot: never a reply.
    Other,
}

/// One thing that happened in an external chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its status changed.
    Status {
        /// New status.
        status: Status,
        /// Assignee (for `queued`, an agent it is offered to).
        assigned: Option<UserId>,
        /// Whether its visitor made the change (ending it).
        by_visitor: bool,
    },
    /// A message was posted.
    Post(Sender),
}

/// An external chat's history as the figures need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// The chat.
    pub conversation: ConversationId,
    /// The workflow that routed it.
    pub workflow: Option<WorkflowId>,
    /// What happened, in seq order.
    pub steps: Vec<(DateTime<Utc>, Step)>,
    /// Its rating: score and the agent it is kept with.
    pub rating: Option<(u8, Option<UserId>)>,
}

/// Splits `[from, to)` at slot boundaries: each slot with the milliseconds of it covered.
pub fn split(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, i64)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let slot = slot_of(t);
        let next = (slot + Duration::minutes(SLOT_MINUTES)).min(to);
        out.push((slot, (next - t).num_milliseconds()));
        t = next;
    }
    out
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0)
}

/// What one chat contributes: every figure of the chat in the slot of its start (for the
/// tenant, its workflow and the agents named below), and each agent's occupied seat time in
/// the slots it was spent in. See `docs/analytics.md` for each rule.
pub fn chat_contributions(t: &Timeline) -> Contributions {
    let mut out = Contributions::new();
    let Some(start) = t.steps.iter().find_map(|(at, s)| match s {
        Step::Status {
            status: Status::Queued,
            ..
        } => Some(*at),
        _ => None,
    }) else {
        return out;
    };
    let slot = slot_of(start);
    let mut chat = Figures {
        started: 1,
        ..Figures::default()
    };
    let mut first_agent: Option<UserId> = None;
    let mut answered_at: Option<DateTime<Utc>> = None;
    let mut first_reply = false;
    // Visitor messages since the last agent reply (only once answered).
    let mut unanswered: Vec<DateTime<Utc>> = Vec::new();
    let mut replies: BTreeMap<UserId, (i64, i64)> = BTreeMap::new();
    // The agent serving now and since when.
    let mut serving: Option<(UserId, DateTime<Utc>)> = None;
    let mut occupied: Vec<(UserId, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut holder_at_end: Option<UserId> = None;
    let mut ended = false;
    for (at, step) in &t.steps {
        if ended {
            break;
        }
        match step {
            Step::Status {
                status,
                assigned,
                by_visitor,
            } => {
                let now_serving = match status {
                    Status::Open => *assigned,
                    _ => None,
                };
                if let Some((a, since)) = serving
                    && now_serving != Some(a)
                {
                    occupied.push((a, since, *at));
                    serving = None;
                }
                if let Some(a) = now_serving {
                    if serving.is_none() {
                        serving = Some((a, *at));
                    }
                    if answered_at.is_none() {
                        answered_at = Some(*at);
                        first_agent = Some(a);
                        chat.answered = 1;
                        chat.wait(ms(start, *at));
                    }
                }
                if *status == Status::Closed {
                    ended = true;
                    holder_at_end = *assigned;
                    chat.dur_n = 1;
                    chat.dur_ms = ms(start, *at);
                    if answered_at.is_none() {
                        if *by_visitor {
                            chat.abandoned = 1;
                        } else {
                            chat.missed = 1;
                        }
                    }
                }
            }
            Step::Post(Sender::Visitor) => {
                if answered_at.is_some() {
                    unanswered.push(*at);
                }
            }
            Step::Post(Sender::Agent(a)) => {
                if let Some(assigned) = answered_at {
                    if !first_reply {
                        first_reply = true;
                        chat.first_response(ms(assigned, *at));
                    }
                    let r = replies.entry(*a).or_default();
                    for v in unanswered.drain(..) {
                        r.0 += 1;
                        r.1 += ms(v, *at);
                    }
                }
            }
            Step::Post(Sender::Other) => {}
        }
    }
    for (n, total) in replies.values() {
        chat.resp_n += n;
        chat.resp_ms += total;
    }
    if let Some((score, _)) = t.rating {
        chat.rating(score);
    }
    let mut put = |dim: Dim, f: &Figures| {
        let e = out.entry((slot, dim)).or_default();
        e.add(f, 1);
    };
    put(Dim::Tenant, &chat);
    put(Dim::Workflow(t.workflow), &chat);
    // The first agent: answered, wait and first response.
    if let Some(a) = first_agent {
        let f = Figures {
            answered: 1,
            wait_n: chat.wait_n,
            wait_ms: chat.wait_ms,
            wait_h: chat.wait_h.clone(),
            frt_n: chat.frt_n,
            frt_ms: chat.frt_ms,
            frt_h: chat.frt_h.clone(),
            ..Figures::default()
        };
        put(Dim::Agent(a), &f);
    }
    // Each replying agent: the responses they gave.
    for (a, (n, total)) in &replies {
        let f = Figures {
            resp_n: *n,
            resp_ms: *total,
            ..Figures::default()
        };
        put(Dim::Agent(*a), &f);
    }
    // The agent holding the chat at its end: its duration; the rating's agent: the rating.
    if let Some(a) = holder_at_end {
        let f = Figures {
            dur_n: chat.dur_n,
            dur_ms: chat.dur_ms,
            ..Figures::default()
        };
        put(Dim::Agent(a), &f);
    }
    if let Some((score, Some(a))) = t.rating {
        let mut f = Figures::default();
        f.rating(score);
        put(Dim::Agent(a), &f);
    }
    // Occupied seat time where it was spent; a seat still held counts once it ends.
    for (a, from, to) in occupied {
        for (s, covered) in split(from, to) {
            let f = Figures {
                occupied_ms: covered,
                ..Figures::default()
            };
            out.entry((s, Dim::Agent(a))).or_default().add(&f, 1);
            out.entry((s, Dim::Tenant)).or_default().add(&f, 1);
        }
    }
    out.retain(|_, f| !f.is_zero());
    out
}

/// An agent's routing state from some moment on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState {
    /// `available`, `busy`, `away` or `offline`.
    pub status: String,
    /// Concurrent chats they take.
    pub capacity: i32,
    /// Whether the account is active.
    pub active: bool,
}

/// What an agent's state over `[from, to)` contributes: online time while active and not
/// offline, available seat time (capacity times time) while active and available, split at
/// slot boundaries; for the agent and the tenant.
pub fn state_contributions(
    agent: UserId,
    state: &AgentState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Contributions {
    let mut out = Contributions::new();
    let online = state.active && state.status != "offline";
    let available = state.active && state.status == "available";
    if !online {
        return out;
    }
    for (slot, covered) in split(from, to) {
        let f = Figures {
            online_ms: covered,
            available_ms: if available {
                covered * i64::from(state.capacity.max(0))
            } else {
                0
            },
            ..Figures::default()
        };
        out.insert((slot, Dim::Tenant), f.clone());
        out.insert((slot, Dim::Agent(agent)), f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap()
    }

    fn status(status: Status, assigned: Option<UserId>, by_visitor: bool) -> Step {
        Step::Status {
            status,
            assigned,
            by_visitor,
        }
    }

    #[test]
    fn percentiles_are_the_upper_bound_of_the_bucket_of_the_rank() {
        let mut h = vec![0; HIST_LEN];
        for ms in [1_000, 7_000, 7_500, 100_000] {
            h[bucket_of(ms)] += 1;
        }
        // ranks: p50 -> 2nd smallest (7 s, bucket 5-10 s), p90 -> 4th (100 s, 90-120 s).
        assert_eq!(percentile(&h, 0.5), Some(10));
        assert_eq!(percentile(&h, 0.9), Some(120));
        assert_eq!(percentile(&[0; HIST_LEN], 0.5), None);
        assert_eq!(bucket_of(4_999), 0);
        assert_eq!(bucket_of(5_000), 1);
        assert_eq!(bucket_of(10_000_000), HIST_LEN - 1);
    }

    #[test]
    fn a_transferred_chat_counts_once_with_each_agent_for_their_own_part() {
        let (a, b) = (UserId::new(), UserId::new());
        let tl = Timeline {
            conversation: ConversationId::new(),
            workflow: None,
            steps: vec![
                (t(23, 50, 0), status(Status::Queued, None, false)),
                (t(23, 50, 5), Step::Post(Sender::Other)),
                (t(23, 50, 10), Step::Post(Sender::Visitor)),
                (t(23, 51, 0), status(Status::Open, Some(a), false)),
                (t(23, 51, 30), Step::Post(Sender::Agent(a))),
                (t(23, 52, 0), Step::Post(Sender::Visitor)),
                (t(23, 55, 0), status(Status::Open, Some(b), false)),
                (t(23, 56, 0), Step::Post(Sender::Agent(b))),
                (t(23, 59, 0), status(Status::Closed, Some(b), true)),
            ],
            rating: Some((4, Some(b))),
        };
        let c = chat_contributions(&tl);
        let slot = t(23, 45, 0);
        let all = &c[&(slot, Dim::Tenant)];
        assert_eq!(
            (all.started, all.answered, all.missed, all.abandoned),
            (1, 1, 0, 0)
        );
        assert_eq!((all.wait_n, all.wait_ms), (1, 60_000));
        assert_eq!((all.frt_n, all.frt_ms), (1, 30_000));
        // Only the visitor message after the answer: 23:52 -> 23:56.
        assert_eq!((all.resp_n, all.resp_ms), (1, 240_000));
        assert_eq!((all.dur_n, all.dur_ms), (1, 540_000));
        assert_eq!((all.csat_n, all.csat_sum), (1, 4));
        let fa = &c[&(slot, Dim::Agent(a))];
        assert_eq!((fa.answered, fa.frt_ms, fa.resp_n), (1, 30_000, 0));
        assert_eq!(fa.occupied_ms, 240_000);
        let fb = &c[&(slot, Dim::Agent(b))];
        assert_eq!((fb.answered, fb.resp_n, fb.dur_n, fb.csat_n), (0, 1, 1, 1));
        assert_eq!(fb.occupied_ms, 240_000);
    }

    #[test]
    fn unanswered_chats_are_missed_or_abandoned_and_a_seat_time_crosses_slots() {
        let tl = |by_visitor| Timeline {
            conversation: ConversationId::new(),
            workflow: None,
            steps: vec![
                (t(10, 0, 0), status(Status::Queued, None, false)),
                (t(10, 20, 0), status(Status::Closed, None, by_visitor)),
            ],
            rating: None,
        };
        let slot = t(10, 0, 0);
        assert_eq!(
            chat_contributions(&tl(true))[&(slot, Dim::Tenant)].abandoned,
            1
        );
        assert_eq!(
            chat_contributions(&tl(false))[&(slot, Dim::Tenant)].missed,
            1
        );
        let s = split(t(10, 10, 0), t(10, 40, 0));
        assert_eq!(
            s,
            vec![
                (t(10, 0, 0), 300_000),
                (t(10, 15, 0), 900_000),
                (t(10, 30, 0), 600_000)
            ]
        );
    }

    #[test]
    fn contributions_merge_to_nothing_when_taken_back() {
        let a = UserId::new();
        let st = AgentState {
            status: "available".into(),
            capacity: 3,
            active: true,
        };
        let c = state_contributions(a, &st, t(9, 0, 0), t(9, 20, 0));
        assert_eq!(c[&(t(9, 15, 0), Dim::Agent(a))].available_ms, 3 * 300_000);
        let mut sum = c.clone();
        merge(&mut sum, &c, -1);
        assert!(sum.is_empty());
    }
}
