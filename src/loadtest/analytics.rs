//! Analytics mode (`--mode analytics`): a year of one tenant's history generated inside
//! PostgreSQL (`storage::analytics::generate`: set-based inserts, no API calls), the
//! aggregates rebuilt from it (`chat-engine analytics rebuild`'s code), then the historical
//! queries timed as the service runs them (the domain call: the SQL over the aggregates and
//! the buckets' assembly; the gRPC conversion on top is small): a 90-day report by day for
//! the tenant, the same per agent (every agent's series), and for one agent; each in the
//! tenant's own zone (the daily aggregates) and in another zone (the 15-minute slots).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use super::Args;
use crate::app;
use crate::config::Config;
use crate::domain::analytics::{self, GroupBy, Query, buckets::BucketSize};
use crate::domain::tenants;
use crate::ids::UserId;
use crate::storage::analytics as store;
use crate::tenancy::{OperatorScope, TenantScope};

/// The generated tenant's own zone.
const OWN_ZONE: chrono_tz::Tz = chrono_tz::Tz::Europe__Berlin;
/// A zone of other reports: its days are not the tenant's.
const OTHER_ZONE: chrono_tz::Tz = chrono_tz::Tz::America__New_York;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Generates, rebuilds, measures and prints.
pub(super) async fn run(
    args: &Args,
    cfg: &Config,
    db: &app::Database,
    where_: String,
) -> anyhow::Result<()> {
    let node = app::build(cfg, db).await?;
    let engine = node.engine.clone();
    let op = OperatorScope::system(&node.system);
    let slug = format!(
        "analytics-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let tenant = tenants::create(
        &engine,
        &op,
        "Analytics load".into(),
        slug.clone(),
        Default::default(),
        OWN_ZONE,
    )
    .await
    .context("creating the tenant")?;
    let scope = TenantScope::system(&node.system, tenant.id);
    let end = Utc::now();
    let g = store::Generate {
        chats: args.chats as i64,
        messages_per_chat: args.messages_per_chat as i32,
        days: args.days as i32,
        agents: args.agents as i32,
        end,
    };
    eprintln!(
        "loadtest: generating {} chats over {} days for {} agents ({where_})",
        g.chats, g.days, g.agents
    );
    let started = Instant::now();
    let mut tx = engine.db.tenant_tx(&scope).await?;
    let messages = store::generate(&mut tx, g).await?;
    tx.commit().await?;
    let generated = started.elapsed();
    eprintln!(
        "loadtest: {messages} messages in {:.1} s; rebuilding",
        generated.as_secs_f64()
    );
    let started = Instant::now();
    let chats = analytics::rebuild(&engine, &scope).await?;
    let rebuilt = started.elapsed();
    eprintln!(
        "loadtest: rebuilt {chats} chats in {:.1} s",
        rebuilt.as_secs_f64()
    );

    let query = |group, zone| Query {
        start: end - chrono::Duration::days(90),
        end,
        size: BucketSize::Day,
        zone,
        group,
    };
    let some_agent = analytics::historical(&engine, &scope, &query(GroupBy::Agent(None), None))
        .await?
        .1
        .first()
        .and_then(|s| match s.dim {
            analytics::figures::Dim::Agent(a) => Some(a),
            _ => None,
        });
    let one_agent = GroupBy::Agent(Some(some_agent.unwrap_or_else(UserId::new)));
    // In the tenant's own zone (daily aggregates), then in another zone (15-minute slots).
    let other = Some(OTHER_ZONE);
    let mut results = Vec::new();
    for (name, group, zone) in [
        ("tenant_by_day_90d", GroupBy::Tenant, None),
        ("per_agent_by_day_90d", GroupBy::Agent(None), None),
        ("one_agent_by_day_90d", one_agent, None),
        ("tenant_by_day_90d_other_zone", GroupBy::Tenant, other),
        (
            "per_agent_by_day_90d_other_zone",
            GroupBy::Agent(None),
            other,
        ),
        ("one_agent_by_day_90d_other_zone", one_agent, other),
    ] {
        let q = query(group, zone);
        let mut times = Vec::with_capacity(args.queries);
        let mut series = 0;
        for _ in 0..args.queries {
            let t = Instant::now();
            let (_, s) = analytics::historical(&engine, &scope, &q).await?;
            times.push(t.elapsed());
            series = s.len();
        }
        times.sort();
        results.push((name, series, times));
    }
    println!(
        "analytics: {chats} chats, {messages} messages over {} days, {} agents; generated in {:.1} s, rebuilt in {:.1} s",
        g.days,
        g.agents,
        generated.as_secs_f64(),
        rebuilt.as_secs_f64()
    );
    let mut json = serde_json::json!({
        "mode": "analytics",
        "chats": chats,
        "messages": messages,
        "days": g.days,
        "agents": g.agents,
        "generate_s": generated.as_secs_f64(),
        "rebuild_s": rebuilt.as_secs_f64(),
        "queries": args.queries,
    });
    for (name, series, times) in &results {
        let (p50, p99, max) = (
            quantile(times, 0.5),
            quantile(times, 0.99),
            quantile(times, 1.0),
        );
        println!(
            "  {name}: {series} series x 90 buckets, {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            times.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
        json[*name] = serde_json::json!({
            "series": series,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "max_ms": ms(max),
        });
    }
    if args.json {
        println!("{json}");
    }
    Ok(())
}
