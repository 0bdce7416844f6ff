//! What happens in conversations, as values: durable events (numbered by the conversation's
//! seq, stored before they are announced) and ephemeral signals (typing, read positions,
//! presence). The domain announces them through a [`Publisher`]; `realtime` delivers them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::conversations::Status;
use super::participants::Participant;
use crate::ids::{ConversationId, MessageId, TenantId, UserId, VisitorId};

/// A message as members see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Id.
    pub id: MessageId,
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Seq of the posting event.
    pub seq: i64,
    /// Who sent it.
    pub sender: Participant,
    /// Text; empty once deleted.
    pub text: String,
    /// Send time.
    pub created_at: DateTime<Utc>,
    /// Last edit.
    pub edited_at: Option<DateTime<Utc>>,
    /// Whether deleted.
    pub deleted: bool,
}

/// What a durable event records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A message was sent.
    MessagePosted(Message),
    /// A message's text changed.
    MessageEdited(Message),
    /// A message was deleted.
    MessageDeleted(Message),
    /// Agents joined.
    MembersAdded {
        /// Who joined.
        agents: Vec<UserId>,
        /// Who added them.
        actor: Option<UserId>,
    },
    /// Agents left or were removed.
    MemberRemoved {
        /// Who left.
        agents: Vec<UserId>,
        /// Who removed them.
        actor: Option<UserId>,
    },
    /// An external chat was queued, assigned (open) or ended (closed).
    StatusChanged {
        /// The new status.
        status: Status,
        /// The agent serving the chat, if any.
        assigned: Option<UserId>,
        /// Their display name when the chat was given to them, for the visitor's side (the
        /// visitor API names no agent otherwise).
        assigned_name: Option<String>,
        /// The chat's visitor, named when the chat starts so that the visitor's open
        /// streams pick the new chat up (as `MembersAdded` does for agents).
        visitor: Option<VisitorId>,
    },
}

impl EventKind {
    /// Storage spelling of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessagePosted(_) => "message_posted",
            Self::MessageEdited(_) => "message_edited",
            Self::MessageDeleted(_) => "message_deleted",
            Self::MembersAdded { .. } => "members_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::StatusChanged { .. } => "status_changed",
        }
    }

    /// Whether the event can queue a chat or free an agent's seat, so that a waiting chat may
    /// now be assignable: a status change (queued, taken back, closed) or a member leaving.
    pub fn concerns_routing(&self) -> bool {
        matches!(
            self,
            Self::StatusChanged { .. } | Self::MemberRemoved { .. }
        )
    }
}

/// A durable event of one conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationEvent {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Gapless number within the conversation.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}

/// Presence of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// Has an open stream, available or busy.
    Online,
    /// Has an open stream, away.
    Away,
    /// No open stream, or offline.
    Offline,
}

/// Presence rows older than this belong to a node that died.
pub const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(60);

/// The presence an agent shows: offline without an open stream, away when connected with
/// status away, online otherwise. Status "offline" only stops routing; a connected agent
/// is still reachable by colleagues.
pub fn presence_of(connected: bool, status: &str) -> Presence {
    match (connected, status) {
        (false, _) => Presence::Offline,
        (true, "away") => Presence::Away,
        (true, _) => Presence::Online,
    }
}

/// An agent's presence and status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceState {
    /// Agent.
    pub agent: UserId,
    /// Presence.
    pub presence: Presence,
    /// Their own status (`available`, `busy`, `away`, `offline`).
    pub status: String,
    /// Last time they had an open stream.
    pub last_seen: Option<DateTime<Utc>>,
}

/// Anything announced to open streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A committed durable event.
    Durable {
        /// Tenant.
        tenant: TenantId,
        /// The event.
        event: ConversationEvent,
    },
    /// A member's read position moved.
    Read {
        /// Tenant.
        tenant: TenantId,
        /// Conversation.
        conversation: ConversationId,
        /// Reader.
        reader: Participant,
        /// New position.
        read_seq: i64,
    },
    /// Typing started or stopped.
    Typing {
        /// Tenant.
        tenant: TenantId,
        /// Conversation.
        conversation: ConversationId,
        /// Typist.
        sender: Participant,
        /// Whether typing.
        typing: bool,
    },
    /// Seqs of a conversation up to `up_to` are committed (a spine notice). Never crosses the
    /// bus: every node hears it from PostgreSQL itself.
    Committed {
        /// Tenant.
        tenant: TenantId,
        /// Conversation.
        conversation: ConversationId,
        /// Highest committed seq.
        up_to: i64,
    },
    /// `who` became a member of a conversation at `seq` on another node, whose own
    /// announcement did not come (a spine notice). Never crosses the bus.
    Invited {
        /// Tenant.
        tenant: TenantId,
        /// Who joined.
        who: Participant,
        /// Conversation.
        conversation: ConversationId,
        /// Seq of the event that made them a member.
        seq: i64,
    },
    /// An agent's presence changed.
    Presence {
        /// Tenant.
        tenant: TenantId,
        /// New state.
        state: PresenceState,
    },
}

impl Event {
    /// The tenant the event belongs to.
    pub fn tenant(&self) -> TenantId {
        match self {
            Event::Durable { tenant, .. }
            | Event::Read { tenant, .. }
            | Event::Typing { tenant, .. }
            | Event::Committed { tenant, .. }
            | Event::Invited { tenant, .. }
            | Event::Presence { tenant, .. } => *tenant,
        }
    }
}

/// Announces events to open streams, on this node and others. Called only after the
/// transaction that made a durable event has committed.
pub trait Publisher: Send + Sync {
    /// Announces an event; delivery is best effort (streams catch up by seq).
    fn publish(&self, event: Event);
}
