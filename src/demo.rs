//! `chat-engine demo`: seeds (or refreshes) a demo tenant with an admin, two agents with
//! skills, a routing workflow and a widget key for the demo's own pages, with fresh
//! passwords on every run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand::RngExt;

use crate::domain::Engine;
use crate::domain::agents::{self, NewAgent};
use crate::domain::tenants::{self, WidgetSettings};
use crate::domain::workflows::{self, model as wf};
use crate::error::AppResult;
use crate::tenancy::{OperatorScope, Role, SystemCap, TenantScope};

/// Slug of the demo tenant.
pub const DEMO_SLUG: &str = "demo";

/// What the demo prints.
pub struct DemoSeed {
    /// Tenant slug.
    pub slug: String,
    /// (email, password, role, skills) of each agent.
    pub agents: Vec<(String, String, &'static str, &'static str)>,
    /// A fresh widget API key.
    pub api_key: String,
}

fn fresh_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Where a browser on this machine reaches a server listening on `addr`: an unspecified
/// address (`0.0.0.0`, `::`) is reached as 127.0.0.1.
pub fn browser_host(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// The origins a browser may show for the demo's own pages served on `addr`: the address
/// itself and, on loopback, both `localhost` and `127.0.0.1`, with the port.
pub fn page_origins(addr: SocketAddr) -> Vec<String> {
    let host = browser_host(addr);
    let port = host.port();
    let mut out = vec![match host.ip() {
        IpAddr::V4(ip) => format!("http://{ip}:{port}"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
    }];
    if host.ip().is_loopback() {
        for o in [
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
        ] {
            if !out.contains(&o) {
                out.push(o);
            }
        }
    }
    out
}

/// Creates the demo tenant if missing and sets new passwords for its agents, as the engine
/// itself (`sys`, from the node the CLI built); the new widget key is allowed from the
/// origins of the server's own pages on `addr` ([`page_origins`]).
pub async fn seed(e: &Engine, sys: &SystemCap, addr: SocketAddr) -> AppResult<DemoSeed> {
    let op = OperatorScope::system(sys);
    let existing = tenants::find_by_slug(e, &op, DEMO_SLUG).await?;
    let tenant = match existing {
        Some(t) => t,
        None => {
            let widget = WidgetSettings {
                primary_color: "#2f6fed".into(),
                secondary_color: "#ffffff".into(),
                font_family: "Inter".into(),
                position: "bottom_right".into(),
                // Follows the visitor's system setting, so the demo shows both themes.
                theme: "auto".into(),
                languages: vec!["en".into(), "es".into(), "fr".into()],
                title: "Demo support".into(),
                greeting: "Hi! How can we help?".into(),
                ..Default::default()
            };
            let zone = chrono_tz::Tz::UTC;
            tenants::create(
                e,
                &op,
                "Demo Company".into(),
                DEMO_SLUG.into(),
                widget,
                zone,
            )
            .await?
            .id
        }
    };

    let people = [
        (
            "admin@demo.example",
            "Demo Admin",
            Role::Admin,
            "admin",
            vec![],
            "-",
        ),
        (
            "ana@demo.example",
            "Ana Agent",
            Role::Agent,
            "agent",
            vec![("billing".to_owned(), 8), ("english".to_owned(), 9)],
            "billing:8 english:9",
        ),
        (
            "ben@demo.example",
            "Ben Agent",
            Role::Agent,
            "agent",
            vec![("technical".to_owned(), 7), ("german".to_owned(), 9)],
            "technical:7 german:9",
        ),
    ];
    let system = TenantScope::system(sys, tenant);
    let mut printed = Vec::new();
    for (email, name, role, role_name, skills, skills_text) in people {
        let pass = fresh_password();
        if !agents::reset_password(e, &system, email, pass.clone()).await? {
            agents::create(
                e,
                &system,
                NewAgent {
                    email: email.into(),
                    display_name: name.into(),
                    role,
                    password: pass.clone(),
                    max_concurrent_chats: 3,
                    skills,
                },
            )
            .await?;
        }
        printed.push((email.to_owned(), pass, role_name, skills_text));
    }

    workflows::seed_first(
        e,
        &system,
        "Billing pages go to billing experts",
        demo_workflow(),
    )
    .await?;

    let (_, api_key) =
        tenants::create_api_key(e, &op, tenant, "demo widget".into(), page_origins(addr)).await?;
    Ok(DemoSeed {
        slug: DEMO_SLUG.into(),
        agents: printed,
        api_key,
    })
}

/// Billing pages go to an agent with the billing skill (level 5 or more, relaxed after two
/// minutes), skill-based; after five minutes the visitor may leave a message.
fn demo_workflow() -> wf::Definition {
    wf::Definition {
        trigger: wf::Trigger {
            page_urls: vec!["/billing".into()],
            ..Default::default()
        },
        actions: wf::Actions {
            auto_assign: true,
            strategy: wf::Strategy::SkillBased,
            required_skills: vec![wf::SkillNeed {
                skill: "billing".into(),
                min_level: Some(5),
                relax_after_seconds: Some(120),
            }],
            welcome_message: "Welcome! A billing expert will be with you shortly.".into(),
            queue_message: "All billing experts are busy; you are in the queue.".into(),
            max_wait_seconds: Some(300),
            on_max_wait: wf::OnMaxWait::OfflineMessage,
            max_wait_message: "Sorry for the wait. Leave us a message and your email address \
                               and we will answer soon."
                .into(),
            priority: 0,
            reroute_after_seconds: Some(180),
            offline_grace_seconds: wf::DEFAULT_OFFLINE_GRACE_SECONDS,
            offer_timeout_seconds: None,
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_origins_follow_the_listen_address() {
        let on = |s: &str| page_origins(s.parse().unwrap());
        assert_eq!(
            on("127.0.0.1:8080"),
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        assert_eq!(
            on("0.0.0.0:50051"),
            ["http://127.0.0.1:50051", "http://localhost:50051"]
        );
        assert_eq!(
            on("[::1]:7"),
            ["http://[::1]:7", "http://localhost:7", "http://127.0.0.1:7"]
        );
        assert_eq!(on("10.1.2.3:9"), ["http://10.1.2.3:9"]);
    }
}
