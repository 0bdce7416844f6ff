//! Conversions between wire types (`pb`) and domain types, and request field checks that
//! turn wire values into validated domain input.

use chrono::{DateTime, Utc};

use crate::domain::agents::{Agent, AgentStatus};
use crate::domain::participants::Participant;
use crate::domain::tenants::{ApiKey, Tenant, WidgetSettings};
use crate::domain::validate;
use crate::error::{FieldViolation, Violations};
use crate::pb;
use crate::tenancy::Role;

/// A protobuf timestamp.
pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Wire form of a tenant.
pub fn tenant(t: Tenant) -> pb::admin::Tenant {
    pb::admin::Tenant {
        id: t.id.to_string(),
        name: t.name,
        slug: t.slug,
        widget: Some(widget_out(t.widget)),
        create_time: Some(ts(t.created_at)),
        update_time: Some(ts(t.updated_at)),
        time_zone: t.time_zone.name().to_owned(),
    }
}

/// Wire form of widget settings.
pub fn widget_out(w: WidgetSettings) -> pb::WidgetSettings {
    pb::WidgetSettings {
        primary_color: w.primary_color,
        secondary_color: w.secondary_color,
        font_family: w.font_family,
        logo_url: w.logo_url,
        position: match w.position.as_str() {
            "bottom_left" => pb::WidgetPosition::BottomLeft,
            _ => pb::WidgetPosition::BottomRight,
        } as i32,
        theme: match w.theme.as_str() {
            "dark" => pb::WidgetTheme::Dark,
            "auto" => pb::WidgetTheme::Auto,
            _ => pb::WidgetTheme::Light,
        } as i32,
        avatar_url: w.avatar_url,
        file_upload_enabled: w.file_upload_enabled,
        languages: w.languages,
        title: w.title,
        greeting: w.greeting,
    }
}

/// Validated widget settings from the wire; field paths are prefixed with `field`.
pub fn widget_in(v: &mut Violations, field: &str, w: pb::WidgetSettings) -> WidgetSettings {
    let f = |name: &str| format!("{field}.{name}");
    let position = match pb::WidgetPosition::try_from(w.position) {
        Ok(pb::WidgetPosition::BottomLeft) => "bottom_left",
        Ok(_) => "bottom_right",
        Err(_) => {
            v.add(&f("position"), "unknown position");
            "bottom_right"
        }
    };
    let theme = match pb::WidgetTheme::try_from(w.theme) {
        Ok(pb::WidgetTheme::Dark) => "dark",
        Ok(pb::WidgetTheme::Auto) => "auto",
        Ok(_) => "light",
        Err(_) => {
            v.add(&f("theme"), "unknown theme");
            "light"
        }
    };
    if w.languages.len() > 50 {
        v.add(&f("languages"), "at most 50 languages");
    }
    let languages = w
        .languages
        .iter()
        .take(50)
        .filter_map(|l| {
            let ok = !l.is_empty()
                && l.len() <= 35
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                v.add(
                    &f("languages"),
                    format!("'{}' is not a BCP 47 tag", l.escape_debug()),
                );
            }
            ok.then(|| l.clone())
        })
        .collect();
    WidgetSettings {
        primary_color: v
            .check(validate::color(&f("primary_color"), &w.primary_color))
            .unwrap_or_default(),
        secondary_color: v
            .check(validate::color(&f("secondary_color"), &w.secondary_color))
            .unwrap_or_default(),
        font_family: v
            .check(validate::optional_text(
                &f("font_family"),
                &w.font_family,
                100,
            ))
            .unwrap_or_default(),
        logo_url: v
            .check(validate::https_url(&f("logo_url"), &w.logo_url))
            .unwrap_or_default(),
        position: position.into(),
        theme: theme.into(),
        avatar_url: v
            .check(validate::https_url(&f("avatar_url"), &w.avatar_url))
            .unwrap_or_default(),
        file_upload_enabled: w.file_upload_enabled,
        languages,
        title: v
            .check(validate::optional_text(&f("title"), &w.title, 200))
            .unwrap_or_default(),
        greeting: v
            .check(validate::optional_text(&f("greeting"), &w.greeting, 1000))
            .unwrap_or_default(),
    }
}

/// Wire form of an API key.
pub fn api_key(k: ApiKey) -> pb::admin::ApiKey {
    pb::admin::ApiKey {
        id: k.id.to_string(),
        tenant_id: k.tenant_id.to_string(),
        name: k.name,
        prefix: k.prefix,
        allowed_domains: k.allowed_domains,
        create_time: Some(ts(k.created_at)),
        revoke_time: k.revoked_at.map(ts),
    }
}

/// Validated list of allowed origins.
pub fn origins(v: &mut Violations, field: &str, list: &[String]) -> Vec<String> {
    if list.len() > 50 {
        v.add(field, "at most 50 domains");
        return Vec::new();
    }
    let mut out: Vec<String> = list
        .iter()
        .enumerate()
        .filter_map(|(i, d)| v.check(validate::origin(&format!("{field}[{i}]"), d)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Wire form of a role.
pub fn role_out(r: Role) -> pb::AgentRole {
    match r {
        Role::Admin => pb::AgentRole::Admin,
        Role::Agent => pb::AgentRole::Agent,
    }
}

/// Domain role from the wire; `unspecified_as` applies to UNSPECIFIED.
pub fn role_in(
    field: &str,
    raw: i32,
    unspecified_as: Option<Role>,
) -> Result<Role, FieldViolation> {
    match pb::AgentRole::try_from(raw) {
        Ok(pb::AgentRole::Admin) => Ok(Role::Admin),
        Ok(pb::AgentRole::Agent) => Ok(Role::Agent),
        Ok(pb::AgentRole::Unspecified) if unspecified_as.is_some() => {
            Ok(unspecified_as.unwrap_or(Role::Agent))
        }
        _ => Err(FieldViolation::new(
            field,
            "must be AGENT_ROLE_AGENT or AGENT_ROLE_ADMIN",
        )),
    }
}

/// Wire form of a status.
pub fn status_out(s: AgentStatus) -> pb::AgentStatus {
    match s {
        AgentStatus::Available => pb::AgentStatus::Available,
        AgentStatus::Busy => pb::AgentStatus::Busy,
        AgentStatus::Away => pb::AgentStatus::Away,
        AgentStatus::Offline => pb::AgentStatus::Offline,
    }
}

/// Domain status from the wire.
pub fn status_in(field: &str, raw: i32) -> Result<AgentStatus, FieldViolation> {
    match pb::AgentStatus::try_from(raw) {
        Ok(pb::AgentStatus::Available) => Ok(AgentStatus::Available),
        Ok(pb::AgentStatus::Busy) => Ok(AgentStatus::Busy),
        Ok(pb::AgentStatus::Away) => Ok(AgentStatus::Away),
        Ok(pb::AgentStatus::Offline) => Ok(AgentStatus::Offline),
        _ => Err(FieldViolation::new(
            field,
            "must be a specified agent status",
        )),
    }
}

/// Validated skills, names unique.
pub fn skills(v: &mut Violations, field: &str, list: &[pb::Skill]) -> Vec<(String, i16)> {
    if list.len() > 50 {
        v.add(field, "at most 50 skills");
        return Vec::new();
    }
    let mut out: Vec<(String, i16)> = list
        .iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(validate::skill(&format!("{field}[{i}]"), &s.name, s.level)))
        .collect();
    out.sort();
    let before = out.len();
    out.dedup_by(|a, b| a.0 == b.0);
    if out.len() != before {
        v.add(field, "skill names must be unique");
    }
    out
}

/// Wire form of an agent.
pub fn agent(a: Agent) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        email: a.email,
        display_name: a.display_name,
        role: role_out(a.role) as i32,
        status: status_out(a.status) as i32,
        max_concurrent_chats: a.max_concurrent_chats,
        skills: a
            .skills
            .into_iter()
            .map(|(name, level)| pb::Skill {
                name,
                level: u32::try_from(level).unwrap_or(0),
            })
            .collect(),
        active: a.active,
        create_time: Some(ts(a.created_at)),
    }
}

/// Wire form of a conversation status.
pub fn conversation_status(s: crate::domain::conversations::Status) -> pb::ConversationStatus {
    use crate::domain::conversations::Status;
    match s {
        Status::Open => pb::ConversationStatus::Open,
        Status::Queued => pb::ConversationStatus::Queued,
        Status::Closed => pb::ConversationStatus::Closed,
    }
}

/// Wire form of a conversation.
pub fn conversation(c: crate::domain::conversations::Conversation) -> pb::Conversation {
    use crate::domain::conversations::Kind;
    pb::Conversation {
        id: c.id.to_string(),
        kind: match c.kind {
            Kind::Direct => pb::ConversationKind::Direct,
            Kind::Group => pb::ConversationKind::Group,
            Kind::External => pb::ConversationKind::External,
        } as i32,
        status: conversation_status(c.status) as i32,
        title: c.title,
        member_agent_ids: c.members.iter().map(ToString::to_string).collect(),
        visitor_id: c.visitor_id.map(|v| v.to_string()).unwrap_or_default(),
        last_seq: seq_out(c.last_seq),
        create_time: Some(ts(c.created_at)),
        last_activity_time: Some(ts(c.last_activity_at)),
        assigned_agent_id: c.assigned.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// A stored seq on the wire (32-bit there, see `common.proto`; never negative).
pub fn seq_out(seq: i64) -> u32 {
    u32::try_from(seq.max(0)).unwrap_or(u32::MAX)
}

/// The wire's id of a participant: empty for the engine.
fn participant_id(p: Participant) -> String {
    p.id().map(|id| id.to_string()).unwrap_or_default()
}

/// A stored count on the wire: never negative, and saturating rather than wrapping in the
/// 32 bits that keep it a plain number in TypeScript.
pub fn count_out(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Wire form of a stream's end reason. The reasons are the server's `EndReason`s; one added
/// there without a wire value here reaches clients as UNSPECIFIED, which they treat as any
/// other resync.
pub fn resync_reason(reason: crate::realtime::hub::EndReason) -> pb::ResyncReason {
    use crate::realtime::{hub, stream};
    match reason {
        stream::SHUTDOWN => pb::ResyncReason::Shutdown,
        hub::SLOW_CONSUMER => pb::ResyncReason::SlowConsumer,
        hub::BUS_LOST => pb::ResyncReason::BusLost,
        hub::DEACTIVATED => pb::ResyncReason::Deactivated,
        _ => pb::ResyncReason::Unspecified,
    }
}

/// A visitor on the wire.
pub fn visitor(v: crate::domain::visitors::Visitor) -> pb::Visitor {
    use crate::domain::visitors::VisitorType;
    pb::Visitor {
        id: v.id.to_string(),
        name: v.name,
        email: v.email,
        visitor_type: match v.visitor_type {
            VisitorType::New => pb::VisitorType::New,
            VisitorType::Returning => pb::VisitorType::Returning,
            VisitorType::Identified => pb::VisitorType::Identified,
        } as i32,
        country: v.country,
        language: v.language,
        page_url: v.page_url,
        referrer: v.referrer,
        attributes: v.attributes.into_iter().collect(),
        external_user_id: v.external_user_id.unwrap_or_default(),
        create_time: Some(ts(v.created_at)),
        last_seen_time: Some(ts(v.last_seen_at)),
    }
}

/// Wire form of a message.
pub fn message(m: crate::domain::events::Message) -> pb::Message {
    pb::Message {
        id: m.id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        seq: seq_out(m.seq),
        sender_type: match m.sender {
            Participant::Agent(_) => pb::SenderType::Agent,
            Participant::Visitor(_) => pb::SenderType::Visitor,
            Participant::System => pb::SenderType::System,
        } as i32,
        sender_id: participant_id(m.sender),
        text: m.text,
        create_time: Some(ts(m.created_at)),
        edit_time: m.edited_at.map(ts),
        deleted: m.deleted,
    }
}

/// Wire form of a conversation summary.
pub fn summary(s: crate::domain::conversations::Summary) -> pb::ConversationSummary {
    pb::ConversationSummary {
        conversation: Some(conversation(s.conversation)),
        unread_count: count_out(s.unread),
        last_message: s.last_message.map(message),
        read_seq: seq_out(s.read_seq),
    }
}

/// Wire form of a durable event.
pub fn event(e: crate::domain::events::ConversationEvent) -> pb::ConversationEvent {
    use crate::domain::events::EventKind;
    use pb::conversation_event::Kind as K;
    let members =
        |agents: Vec<crate::ids::UserId>, actor: Option<crate::ids::UserId>| pb::MembersChanged {
            agent_ids: agents.iter().map(ToString::to_string).collect(),
            actor_agent_id: actor.map(|a| a.to_string()).unwrap_or_default(),
        };
    pb::ConversationEvent {
        conversation_id: e.conversation_id.to_string(),
        seq: seq_out(e.seq),
        create_time: Some(ts(e.at)),
        kind: Some(match e.kind {
            EventKind::MessagePosted(m) => K::MessagePosted(message(m)),
            EventKind::MessageEdited(m) => K::MessageEdited(message(m)),
            EventKind::MessageDeleted(m) => K::MessageDeleted(message(m)),
            EventKind::MembersAdded { agents, actor } => K::MembersAdded(members(agents, actor)),
            EventKind::MemberRemoved { agents, actor } => K::MemberRemoved(members(agents, actor)),
            EventKind::StatusChanged {
                status,
                assigned,
                assigned_name,
                ..
            } => K::StatusChanged(pb::StatusChanged {
                status: conversation_status(status) as i32,
                assigned_agent_id: assigned.map(|a| a.to_string()).unwrap_or_default(),
                assigned_agent_name: assigned_name.clone().unwrap_or_default(),
            }),
        }),
    }
}

/// Wire form of a stream item, the one shape every stream carries.
pub fn stream_item(item: crate::realtime::Item) -> pb::StreamItem {
    use crate::domain::events::Presence;
    use crate::realtime::Item;
    use pb::stream_item::Kind as P;
    let cursor = |(c, s): (crate::ids::ConversationId, i64)| pb::ConversationCursor {
        conversation_id: c.to_string(),
        last_seq: seq_out(s),
    };
    pb::StreamItem {
        kind: Some(match item {
            Item::Event(e) => P::Event(event(e)),
            Item::Read {
                conversation,
                reader,
                read_seq,
            } => P::ReadReceipt(pb::ReadReceipt {
                conversation_id: conversation.to_string(),
                reader_id: participant_id(reader),
                read_seq: seq_out(read_seq),
            }),
            Item::Typing {
                conversation,
                sender,
                typing,
            } => P::Typing(pb::TypingState {
                conversation_id: conversation.to_string(),
                sender_id: participant_id(sender),
                typing,
            }),
            Item::Presence(p) => P::Presence(pb::PresenceState {
                agent_id: p.agent.to_string(),
                presence: match p.presence {
                    Presence::Online => pb::Presence::Online,
                    Presence::Away => pb::Presence::Away,
                    Presence::Offline => pb::Presence::Offline,
                } as i32,
                status: crate::domain::agents::AgentStatus::parse(&p.status)
                    .map_or(pb::AgentStatus::Unspecified, status_out)
                    as i32,
                last_seen_time: p.last_seen.map(ts),
            }),
            Item::Joined(c, v) => P::Joined(pb::ConversationJoined {
                conversation: Some(conversation(c)),
                visitor: v.map(|v| visitor(*v)),
            }),
            Item::CaughtUp => P::CaughtUp(pb::CaughtUp {}),
            Item::QueuePosition {
                conversation,
                position,
                estimated_wait_seconds,
            } => P::QueuePosition(pb::QueuePosition {
                conversation_id: conversation.to_string(),
                position,
                estimated_wait_seconds,
            }),
            Item::Resync { reason, cursors } => P::Resync(pb::Resync {
                reason: resync_reason(reason) as i32,
                cursors: cursors.into_iter().map(cursor).collect(),
            }),
        }),
    }
}

/// A timestamp of a request, or a violation of `field` (absent while `required`, or out of
/// range); None when absent or bad.
pub fn instant(
    v: &mut Violations,
    field: &str,
    t: Option<prost_types::Timestamp>,
    required: bool,
) -> Option<DateTime<Utc>> {
    let Some(t) = t else {
        if required {
            v.add(field, "is required");
        }
        return None;
    };
    let out = u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n));
    if out.is_none() {
        v.add(field, "must be a valid timestamp");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::{hub, stream};

    #[test]
    fn every_end_reason_has_its_own_wire_value() {
        let reasons = [
            (stream::SHUTDOWN, pb::ResyncReason::Shutdown),
            (hub::SLOW_CONSUMER, pb::ResyncReason::SlowConsumer),
            (hub::BUS_LOST, pb::ResyncReason::BusLost),
            (hub::DEACTIVATED, pb::ResyncReason::Deactivated),
        ];
        for (reason, wire) in reasons {
            assert_eq!(resync_reason(reason), wire, "{reason}");
        }
        assert_eq!(resync_reason("later"), pb::ResyncReason::Unspecified);
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        assert_eq!(count_out(-1), 0);
        assert_eq!(count_out(7), 7);
        assert_eq!(count_out(i64::from(u32::MAX) + 1), u32::MAX);
    }
}
