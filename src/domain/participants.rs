//! Who takes part in conversations: the typed [`Participant`] (an agent, a visitor, the engine
//! itself; later a bot), its storage spelling, and the one rule, [`admits`], that decides who
//! may post into, read and follow a conversation. The rule is a pure function over what
//! storage found out about the conversation, so the writer's batches, replays, typing and
//! streams all ask the same question and a new kind of participant cannot skip it: the match
//! on the participant is exhaustive.

use serde::{Deserialize, Serialize};

use super::conversations::Kind;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId, VisitorId};
use crate::tenancy::{Actor, TenantScope};

/// A member of a conversation or the sender of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Participant {
    /// An agent of the tenant.
    Agent(UserId),
    /// A website visitor.
    Visitor(VisitorId),
    /// The engine itself (notices, welcome messages).
    System,
}

impl Participant {
    /// The participant a scope acts as. A widget caller without a visitor token and the
    /// operator take no part in conversations.
    pub fn of(scope: &TenantScope) -> AppResult<Self> {
        match scope.actor() {
            Actor::Agent { user_id, .. } => Ok(Self::Agent(user_id)),
            Actor::Visitor {
                visitor_id: Some(v),
            } => Ok(Self::Visitor(v)),
            Actor::Visitor { visitor_id: None } => {
                Err(AppError::PermissionDenied("a visitor token is required"))
            }
            Actor::System => Ok(Self::System),
            Actor::Operator => Err(AppError::PermissionDenied(
                "the operator takes no part in conversations",
            )),
        }
    }

    /// The agent, if this is one. Only for looking up agent facts (memberships, presence):
    /// whether a participant may act is [`admits`]'s decision.
    pub fn agent(&self) -> Option<UserId> {
        match self {
            Self::Agent(u) => Some(*u),
            Self::Visitor(_) | Self::System => None,
        }
    }

    /// Storage spelling of the kind (`messages.sender_type`).
    pub fn kind_str(&self) -> &'static str {
        match self {
            Self::Agent(_) => "agent",
            Self::Visitor(_) => "visitor",
            Self::System => "system",
        }
    }

    /// The id stored beside the kind (`messages.sender_id`); the engine has none.
    pub fn id(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Agent(u) => Some(u.as_uuid()),
            Self::Visitor(v) => Some(v.as_uuid()),
            Self::System => None,
        }
    }

    /// The participant stored as `kind` and `id`. Anything else than what [`kind_str`] and
    /// [`id`] write is corrupt data and an internal error, never read as some default.
    ///
    /// [`kind_str`]: Self::kind_str
    /// [`id`]: Self::id
    pub fn from_stored(kind: &str, id: Option<uuid::Uuid>) -> AppResult<Self> {
        match (kind, id) {
            ("agent", Some(u)) => Ok(Self::Agent(UserId::from_uuid(u))),
            ("visitor", Some(v)) => Ok(Self::Visitor(VisitorId::from_uuid(v))),
            ("system", None) => Ok(Self::System),
            (kind, id) => Err(AppError::Internal(format!(
                "stored participant {kind:?} with{} id",
                if id.is_some() { "" } else { "out an" }
            ))),
        }
    }
}

/// What storage knows about one conversation that decides who may take part in it.
#[derive(Clone, Copy, Debug)]
pub struct ConversationAccess<'a> {
    /// The tenant the conversation belongs to.
    pub tenant: TenantId,
    /// Its kind.
    pub kind: Kind,
    /// The visitor whose external chat it is.
    pub visitor: Option<VisitorId>,
    /// Agents known to be members (at least every agent asked about who is one).
    pub agents: &'a [UserId],
}

/// Whether `who`, acting in `tenant`, may post into, read and follow the conversation: an
/// agent through membership, a visitor in their own external chat only, the engine anywhere
/// in its tenant; nobody across tenants.
pub fn admits(tenant: TenantId, who: &Participant, conv: &ConversationAccess<'_>) -> bool {
    if conv.tenant != tenant {
        return false;
    }
    match who {
        Participant::Agent(u) => conv.agents.contains(u),
        Participant::Visitor(v) => conv.kind == Kind::External && conv.visitor == Some(*v),
        Participant::System => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        tenant: TenantId,
        other_tenant: TenantId,
        ann: UserId,
        bob: UserId,
        vera: VisitorId,
        walt: VisitorId,
    }

    fn world() -> World {
        World {
            tenant: TenantId::new(),
            other_tenant: TenantId::new(),
            ann: UserId::new(),
            bob: UserId::new(),
            vera: VisitorId::new(),
            walt: VisitorId::new(),
        }
    }

    fn external<'a>(
        tenant: TenantId,
        visitor: VisitorId,
        agents: &'a [UserId],
    ) -> ConversationAccess<'a> {
        ConversationAccess {
            tenant,
            kind: Kind::External,
            visitor: Some(visitor),
            agents,
        }
    }

    #[test]
    fn a_visitor_takes_part_in_their_own_chat_only() {
        let w = world();
        let agents = [w.ann];
        let own = external(w.tenant, w.vera, &agents);
        let anothers = external(w.tenant, w.walt, &agents);
        let vera = Participant::Visitor(w.vera);
        assert!(admits(w.tenant, &vera, &own));
        assert!(
            !admits(w.tenant, &vera, &anothers),
            "another visitor's chat"
        );
    }

    #[test]
    fn a_visitor_never_takes_part_in_internal_chats() {
        let w = world();
        let agents = [w.ann, w.bob];
        let vera = Participant::Visitor(w.vera);
        for kind in [Kind::Direct, Kind::Group] {
            let internal = ConversationAccess {
                tenant: w.tenant,
                kind,
                visitor: None,
                agents: &agents,
            };
            assert!(!admits(w.tenant, &vera, &internal), "{kind:?}");
            // Even a stray visitor id on an internal conversation lets nobody in.
            let stray = ConversationAccess {
                visitor: Some(w.vera),
                ..internal
            };
            assert!(
                !admits(w.tenant, &vera, &stray),
                "{kind:?} with a visitor id"
            );
        }
    }

    #[test]
    fn nobody_takes_part_across_tenants() {
        let w = world();
        let agents = [w.ann];
        let theirs = external(w.other_tenant, w.vera, &agents);
        for who in [
            Participant::Visitor(w.vera),
            Participant::Agent(w.ann),
            Participant::System,
        ] {
            assert!(!admits(w.tenant, &who, &theirs), "{who:?}");
        }
        assert!(admits(
            w.other_tenant,
            &Participant::Visitor(w.vera),
            &theirs
        ));
    }

    #[test]
    fn agents_take_part_through_membership_and_the_engine_anywhere_in_its_tenant() {
        let w = world();
        let agents = [w.ann];
        let group = ConversationAccess {
            tenant: w.tenant,
            kind: Kind::Group,
            visitor: None,
            agents: &agents,
        };
        assert!(admits(w.tenant, &Participant::Agent(w.ann), &group));
        assert!(!admits(w.tenant, &Participant::Agent(w.bob), &group));
        let chat = external(w.tenant, w.vera, &agents);
        assert!(admits(w.tenant, &Participant::Agent(w.ann), &chat));
        assert!(
            !admits(w.tenant, &Participant::Agent(w.bob), &chat),
            "not assigned"
        );
        assert!(admits(w.tenant, &Participant::System, &group));
        assert!(admits(w.tenant, &Participant::System, &chat));
    }

    #[test]
    fn stored_participants_round_trip_and_corrupt_ones_are_errors() {
        let w = world();
        for p in [
            Participant::Agent(w.ann),
            Participant::Visitor(w.vera),
            Participant::System,
        ] {
            assert_eq!(Participant::from_stored(p.kind_str(), p.id()).unwrap(), p);
        }
        let id = Some(w.ann.as_uuid());
        for (kind, id) in [
            ("bot", id),
            ("Agent", id),
            ("", None),
            ("agent", None),
            ("visitor", None),
            ("system", id),
        ] {
            assert!(
                matches!(
                    Participant::from_stored(kind, id),
                    Err(AppError::Internal(_))
                ),
                "{kind:?} {id:?}"
            );
        }
    }

    #[test]
    fn only_agents_visitors_with_a_token_and_the_engine_are_participants() {
        use crate::ids::ApiKeyId;
        use crate::tenancy::{OperatorScope, Principal, Role, Verified};
        let w = world();
        let widget = |visitor_id| Principal::Visitor {
            tenant_id: w.tenant,
            api_key_id: ApiKeyId::new(),
            visitor_id,
            verified: Verified::mint(),
        };
        let of = |p: &Principal| TenantScope::of(p).map(|s| Participant::of(&s));
        let agent = Principal::Agent {
            tenant_id: w.tenant,
            user_id: w.ann,
            role: Role::Admin,
            session: crate::ids::TokenFamilyId::new(),
            verified: Verified::mint(),
        };
        assert_eq!(of(&agent).unwrap().unwrap(), Participant::Agent(w.ann));
        assert_eq!(
            of(&widget(Some(w.vera))).unwrap().unwrap(),
            Participant::Visitor(w.vera)
        );
        assert!(matches!(
            of(&widget(None)).unwrap(),
            Err(AppError::PermissionDenied(_))
        ));
        let sys = crate::app::SystemCap::for_tests();
        let operator = TenantScope::operator(&OperatorScope::system(&sys), w.tenant);
        assert!(matches!(
            Participant::of(&operator),
            Err(AppError::PermissionDenied(_))
        ));
        assert_eq!(
            Participant::of(&TenantScope::system(&sys, w.tenant)).unwrap(),
            Participant::System
        );
    }
}
