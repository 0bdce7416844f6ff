//! Conversions between wire types (`pb`) and domain types, and request field checks that
//! turn wire values into validated domain input.

use chrono::{DateTime, Utc};

use crate::domain::agents::{Agent, AgentStatus};
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
pub fn tenant(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        id: t.id.to_string(),
        name: t.name,
        slug: t.slug,
        widget: Some(widget_out(t.widget)),
        create_time: Some(ts(t.created_at)),
        update_time: Some(ts(t.updated_at)),
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
pub fn api_key(k: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
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
