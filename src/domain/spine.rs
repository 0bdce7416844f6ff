//! The event spine: what a committing transaction records about the domain events it made,
//! so that every node learns of them even when the committing node dies right after its
//! commit, and so that in-process consumers ([`super::reactors`]) see each of them at least
//! once, in commit order per conversation, from a stored cursor.
//!
//! A transaction calls [`record`] before it commits. That writes one spine entry per shard
//! touched (a gapless position per tenant and shard, see the migration) and queues
//! `NOTIFY chatengine_spine` with a compact [`Notice`] naming the conversations and seqs that
//! committed, which this node's announcer sends right after the commit (never if the
//! transaction rolls back; `storage::announce` says why not inside it). Acknowledgements do
//! not wait for the notice: when this node dies between a commit and its notice, the other
//! nodes' followers (`domain::follower`) find the entry they never heard of in the spine.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::participants::Participant;
use crate::error::AppResult;
use crate::ids::{ConversationId, TenantId, UserId, VisitorId};
use crate::storage::TenantTx;
use crate::storage::spine as store;

/// The `LISTEN` channel of spine notices.
pub const CHANNEL: &str = "chatengine_spine";

/// Shards per tenant. A conversation always lives in one shard, so its events keep their
/// order there; a consumer's work on a tenant is split into this many independent shares.
/// The send path's batching loops are partitioned the same way, so a batch touches one shard.
pub const SHARDS: i16 = 4;

/// The shard of a conversation.
pub fn shard_of_conversation(conv: ConversationId) -> i16 {
    (conv.as_uuid().as_u128() % SHARDS as u128) as i16
}

/// A new conversation id in `shard`: the low bits of a UUIDv7 are random, so setting them
/// keeps the id unique and time-ordered while a loop that starts chats of one shard writes
/// one spine entry per batch.
pub fn new_conversation_in(shard: i16) -> ConversationId {
    let id = ConversationId::new().as_uuid().as_u128();
    let shards = SHARDS as u128;
    let s = u128::from(shard.unsigned_abs()) % shards;
    ConversationId::from_uuid(uuid::Uuid::from_u128(id - id % shards + s))
}

/// The shard of an agent's own events (status, capacity).
pub fn shard_of_agent(agent: UserId) -> i16 {
    (agent.as_uuid().as_u128() % SHARDS as u128) as i16
}

/// What a spine entry records: a fact about committed rows, not the rows themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum SpineEvent {
    /// Seqs `from..=to` of a conversation committed (messages and conversation events).
    Conversation {
        /// Conversation.
        c: ConversationId,
        /// First seq.
        from: i64,
        /// Last seq.
        to: i64,
        /// Every seq of the range is a posted message (the writer's batches): reactors that
        /// only care about other events skip the entry without reading it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        posts: bool,
        /// No event of the range can queue a chat or free a seat (none is a status change
        /// or a member leaving): the dispatcher, which wakes on the others without reading
        /// them, skips it. An entry from before the field existed reads as not quiet, which
        /// costs at most a pass; the writer's ranges of posts only leave it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
    },
    /// An agent's routing state changed (status, capacity, active flag or role).
    AgentChanged {
        /// The agent.
        agent: UserId,
    },
    /// A waiting chat's needs changed with time (its max wait passed, a skill was relaxed):
    /// the dispatcher looks at the queue again.
    QueueChanged {
        /// The waiting chat.
        c: ConversationId,
    },
    /// A visitor rated an ended chat (analytics counts the rating).
    Rated {
        /// The chat.
        c: ConversationId,
    },
    /// A participant became a member of a conversation at `seq` (or, for a visitor, its
    /// owner): their streams on other nodes are not following it yet.
    Joined {
        /// Conversation.
        c: ConversationId,
        /// The seq of the event that made them a member.
        seq: i64,
        /// Who.
        who: Joiner,
    },
}

/// Who joined a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", content = "id", rename_all = "snake_case")]
pub enum Joiner {
    /// An agent.
    Agent(UserId),
    /// A visitor.
    Visitor(VisitorId),
}

impl Joiner {
    /// The participant this is.
    pub fn participant(self) -> Participant {
        match self {
            Self::Agent(a) => Participant::Agent(a),
            Self::Visitor(v) => Participant::Visitor(v),
        }
    }
}

impl SpineEvent {
    fn shard(&self) -> i16 {
        match self {
            Self::Conversation { c, .. }
            | Self::Joined { c, .. }
            | Self::QueueChanged { c }
            | Self::Rated { c } => shard_of_conversation(*c),
            Self::AgentChanged { agent } => shard_of_agent(*agent),
        }
    }
}

/// Records `events` in the spine of the transaction's tenant, to become visible with its
/// commit. Call it once per transaction, after the rows it names were written.
pub async fn record(tx: &TenantTx, events: &[SpineEvent], at: DateTime<Utc>) -> AppResult<()> {
    record_entries(tx, &Entry::by_shard(events), at).await
}

/// Records entries made with [`Entry::by_shard`] (or what is left of them after the caller
/// wrote one in a statement of its own, see [`Entry::announce`]).
pub async fn record_entries(tx: &TenantTx, entries: &[Entry], at: DateTime<Utc>) -> AppResult<()> {
    // All sent at once, in that order: the server takes them one after the other, and a
    // COMMIT joined after this (`TenantTx::commit_pipelined`) reaches it after all of them.
    let appends = entries
        .iter()
        .map(|e| Ok(store::append(tx, e.shard, e.json()?, at)))
        .collect::<AppResult<Vec<_>>>()?;
    let positions = futures_util::future::try_join_all(appends).await?;
    for (e, pos) in entries.iter().zip(positions) {
        e.announce(tx, pos);
    }
    Ok(())
}

/// A transaction's events of one shard: what one spine entry holds.
pub struct Entry {
    shard: i16,
    events: Vec<SpineEvent>,
}

impl Entry {
    /// `events` grouped by shard, in shard order: head rows are locked in that order, so two
    /// transactions never wait on each other.
    pub fn by_shard(events: &[SpineEvent]) -> Vec<Self> {
        let mut entries: Vec<Self> = Vec::new();
        for ev in events {
            let s = ev.shard();
            match entries.iter_mut().find(|e| e.shard == s) {
                Some(e) => e.events.push(ev.clone()),
                None => entries.push(Self {
                    shard: s,
                    events: vec![ev.clone()],
                }),
            }
        }
        entries.sort_by_key(|e| e.shard);
        entries
    }

    /// Its shard.
    pub fn shard(&self) -> i16 {
        self.shard
    }

    /// Its events as stored.
    pub fn json(&self) -> AppResult<serde_json::Value> {
        serde_json::to_value(&self.events)
            .map_err(|e| crate::error::AppError::Internal(e.to_string()))
    }

    /// Queues the notice of this entry, stored at `pos` by this transaction, to be sent
    /// after its commit.
    pub fn announce(&self, tx: &TenantTx, pos: i64) {
        let notice = Notice::of_entry(tx.tenant_id(), self.shard, pos, &self.events);
        tx.announce(CHANNEL, notice.encode());
    }
}

/// Queues notices of seqs that committed earlier (`(conversation, seq)`), to be sent again
/// after the transaction's commit, without a new spine entry.
pub fn announce_again(tx: &TenantTx, seqs: &[(ConversationId, i64)]) {
    for &(c, seq) in seqs {
        let notice = Notice {
            tenant: tx.tenant_id(),
            shard: shard_of_conversation(c),
            pos: None,
            committed: vec![(c, seq)],
            joined: Vec::new(),
            agents: Vec::new(),
            posts_only: true,
        };
        tx.announce(CHANNEL, notice.encode());
    }
}

/// The payload of a spine notice: which tenant and shard has a new entry at which position,
/// the highest committed seq of each conversation it touched (enough for a stream to fetch
/// what it lacks), and the agents whose routing state changed (so that the queue watch,
/// `realtime::queue`, reads the agents' states again without reading the spine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Tenant.
    pub tenant: TenantId,
    /// Shard.
    pub shard: i16,
    /// The entry's position; None when seqs committed earlier are announced again.
    pub pos: Option<i64>,
    /// Conversations and their last committed seq.
    pub committed: Vec<(ConversationId, i64)>,
    /// Who joined which conversation, at which seq.
    pub joined: Vec<(ConversationId, i64, Joiner)>,
    /// Agents whose status, capacity, presence, active flag or role changed.
    pub agents: Vec<UserId>,
    /// The entry holds posted messages only (a writer batch, or seqs announced again):
    /// consumers that ignore posts need not wake for it.
    pub posts_only: bool,
}

/// PostgreSQL refuses notice payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

impl Notice {
    /// The notice of the entry at `pos` holding `events`.
    pub fn of_entry(tenant: TenantId, shard: i16, pos: i64, events: &[SpineEvent]) -> Self {
        Self {
            tenant,
            shard,
            pos: Some(pos),
            committed: events
                .iter()
                .filter_map(|e| match e {
                    SpineEvent::Conversation { c, to, .. } => Some((*c, *to)),
                    SpineEvent::AgentChanged { .. }
                    | SpineEvent::Joined { .. }
                    | SpineEvent::QueueChanged { .. }
                    | SpineEvent::Rated { .. } => None,
                })
                .collect(),
            joined: events
                .iter()
                .filter_map(|e| match e {
                    SpineEvent::Joined { c, seq, who } => Some((*c, *seq, *who)),
                    _ => None,
                })
                .collect(),
            agents: events
                .iter()
                .filter_map(|e| match e {
                    SpineEvent::AgentChanged { agent } => Some(*agent),
                    _ => None,
                })
                .collect(),
            posts_only: !events.is_empty()
                && events
                    .iter()
                    .all(|e| matches!(e, SpineEvent::Conversation { posts: true, .. })),
        }
    }

    /// One or more payloads (`<tenant> <shard> <pos or -> [<conv>:<seq> | +<conv>:<seq>:a<agent>
    /// | +<conv>:<seq>:v<visitor> | @<agent> ...]`, with ` ~` after the position when the
    /// entry holds posts only), each under the limit.
    pub fn encode(&self) -> Vec<String> {
        let pos = self.pos.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let posts = if self.posts_only { " ~" } else { "" };
        let head = format!("{} {} {pos}{posts}", self.tenant, self.shard);
        let parts = self
            .committed
            .iter()
            .map(|(c, seq)| format!(" {c}:{seq}"))
            .chain(self.joined.iter().map(|(c, seq, who)| match who {
                Joiner::Agent(a) => format!(" +{c}:{seq}:a{a}"),
                Joiner::Visitor(v) => format!(" +{c}:{seq}:v{v}"),
            }))
            .chain(self.agents.iter().map(|a| format!(" @{a}")));
        let mut out = vec![head.clone()];
        for part in parts {
            let last = out.last_mut().expect("never empty");
            if last.len() + part.len() > MAX_PAYLOAD {
                out.push(head.clone() + &part);
            } else {
                last.push_str(&part);
            }
        }
        out
    }

    /// Parses a payload; None for anything malformed.
    pub fn decode(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let tenant = TenantId::parse(parts.next()?)?;
        let shard = parts.next()?.parse().ok()?;
        let pos = match parts.next()? {
            "-" => None,
            p => Some(p.parse().ok()?),
        };
        let (mut committed, mut joined, mut agents) = (Vec::new(), Vec::new(), Vec::new());
        let mut posts_only = false;
        for p in parts {
            if p == "~" {
                posts_only = true;
            } else if let Some(a) = p.strip_prefix('@') {
                agents.push(UserId::parse(a)?);
            } else if let Some(j) = p.strip_prefix('+') {
                let mut f = j.splitn(3, ':');
                let c = ConversationId::parse(f.next()?)?;
                let seq = f.next()?.parse().ok()?;
                let who = f.next()?;
                let who = match who.split_at_checked(1)? {
                    ("a", id) => Joiner::Agent(UserId::parse(id)?),
                    ("v", id) => Joiner::Visitor(VisitorId::parse(id)?),
                    _ => return None,
                };
                joined.push((c, seq, who));
            } else {
                let (c, seq) = p.split_once(':')?;
                committed.push((ConversationId::parse(c)?, seq.parse().ok()?));
            }
        }
        Some(Self {
            tenant,
            shard,
            pos,
            committed,
            joined,
            agents,
            posts_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::conversations::Status;
    use crate::domain::events::EventKind;

    #[test]
    fn a_range_says_whether_it_is_quiet_for_routing_and_an_older_entry_reads_as_not() {
        let routing = |kind: EventKind| kind.concerns_routing();
        let (a, c) = (UserId::new(), ConversationId::new());
        assert!(routing(EventKind::StatusChanged {
            status: Status::Closed,
            assigned: Some(a),
            assigned_name: None,
            visitor: None,
        }));
        assert!(routing(EventKind::MemberRemoved {
            agents: vec![a],
            actor: None,
        }));
        assert!(!routing(EventKind::MembersAdded {
            agents: vec![a],
            actor: None,
        }));

        let quiet = SpineEvent::Conversation {
            c,
            from: 1,
            to: 2,
            posts: false,
            quiet: true,
        };
        let json = serde_json::to_value(&quiet).unwrap();
        assert_eq!(json["quiet"], true);
        assert_eq!(serde_json::from_value::<SpineEvent>(json).unwrap(), quiet);
        let loud = SpineEvent::Conversation {
            c,
            from: 3,
            to: 3,
            posts: false,
            quiet: false,
        };
        assert!(serde_json::to_value(&loud).unwrap().get("quiet").is_none());
        // As an entry written before the field existed.
        let old = serde_json::json!({ "t": "conversation", "c": c, "from": 3, "to": 3 });
        assert_eq!(serde_json::from_value::<SpineEvent>(old).unwrap(), loud);
    }

    #[test]
    fn a_conversation_drawn_in_a_shard_lives_there_and_stays_unique() {
        for shard in 0..SHARDS {
            let ids: Vec<ConversationId> = (0..50).map(|_| new_conversation_in(shard)).collect();
            assert!(ids.iter().all(|c| shard_of_conversation(*c) == shard));
            assert!(ids.iter().all(|c| c.as_uuid().get_version_num() == 7));
            let distinct: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(distinct.len(), ids.len());
        }
    }

    #[test]
    fn notices_round_trip_and_split_below_the_payload_limit() {
        let n = Notice {
            tenant: TenantId::new(),
            shard: 3,
            pos: Some(17),
            committed: (0..500).map(|i| (ConversationId::new(), i)).collect(),
            joined: vec![
                (ConversationId::new(), 3, Joiner::Agent(UserId::new())),
                (ConversationId::new(), 1, Joiner::Visitor(VisitorId::new())),
            ],
            agents: vec![UserId::new(), UserId::new()],
            posts_only: true,
        };
        let payloads = n.encode();
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let (mut back, mut joins, mut agents) = (Vec::new(), Vec::new(), Vec::new());
        for p in &payloads {
            let d = Notice::decode(p).unwrap();
            assert_eq!((d.tenant, d.shard, d.pos), (n.tenant, n.shard, n.pos));
            back.extend(d.committed);
            joins.extend(d.joined);
            agents.extend(d.agents);
        }
        assert_eq!(back, n.committed);
        assert_eq!(joins, n.joined);
        assert_eq!(agents, n.agents);
    }

    #[test]
    fn malformed_notices_are_refused() {
        let t = TenantId::new();
        assert!(Notice::decode("").is_none());
        assert!(Notice::decode(&format!("{t}")).is_none());
        assert!(Notice::decode(&format!("{t} x")).is_none());
        assert!(Notice::decode(&format!("{t} 1")).is_none());
        assert!(Notice::decode(&format!("{t} 1 x")).is_none());
        assert!(Notice::decode(&format!("{t} 1 4 nope:3")).is_none());
        assert!(Notice::decode(&format!("{t} 1 4 {}:x", ConversationId::new())).is_none());
        let c = ConversationId::new();
        assert!(Notice::decode(&format!("{t} 1 4 +{c}:2:x{}", UserId::new())).is_none());
        assert!(Notice::decode(&format!("{t} 1 4 +{c}:2:a")).is_none());
        assert!(Notice::decode(&format!("{t} 1 4 @nope")).is_none());
        let empty = Notice::decode(&format!("{t} 2 -")).unwrap();
        assert_eq!((empty.pos, empty.committed), (None, Vec::new()));
    }

    #[test]
    fn entries_group_a_transactions_events_by_shard_in_shard_order() {
        // Conversations of every shard, named in an order that is not the shards'.
        let mut convs: Vec<ConversationId> = Vec::new();
        while (0..SHARDS).any(|s| !convs.iter().any(|c| shard_of_conversation(*c) == s)) {
            convs.push(ConversationId::new());
        }
        convs.sort_by_key(|c| std::cmp::Reverse(shard_of_conversation(*c)));
        let events: Vec<SpineEvent> = convs
            .iter()
            .flat_map(|&c| [SpineEvent::QueueChanged { c }, SpineEvent::Rated { c }])
            .collect();
        let entries = Entry::by_shard(&events);
        let shards: Vec<i16> = entries.iter().map(Entry::shard).collect();
        assert_eq!(shards, (0..SHARDS).collect::<Vec<_>>());
        let mut seen = 0;
        for e in &entries {
            assert!(e.events.iter().all(|ev| ev.shard() == e.shard));
            // Within an entry, the transaction's order is kept.
            let order: Vec<usize> = e
                .events
                .iter()
                .map(|ev| events.iter().position(|x| x == ev).unwrap())
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]));
            seen += e.events.len();
        }
        assert_eq!(seen, events.len());
        assert!(Entry::by_shard(&[]).is_empty());
    }

    #[test]
    fn a_conversation_always_maps_to_the_same_shard_in_range() {
        for _ in 0..100 {
            let c = ConversationId::new();
            let s = shard_of_conversation(c);
            assert!((0..SHARDS).contains(&s));
            assert_eq!(s, shard_of_conversation(c));
        }
    }
}
