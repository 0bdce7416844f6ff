//! AnalyticsService: validate, scope, call `domain::analytics`, convert. Who may see what and
//! every figure's definition live in the domain (and `docs/analytics.md`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Streaming, convert, scope};
use crate::domain::Engine;
use crate::domain::agents::AgentStatus;
use crate::domain::analytics::buckets::{self, BucketSize};
use crate::domain::analytics::figures::Dim;
use crate::domain::analytics::live::{LiveStats, LiveWatch};
use crate::domain::analytics::{self, GroupBy, Query, RatingFilter, Report};
use crate::domain::paging::page_size;
use crate::domain::validate;
use crate::error::{AppError, Violations};
use crate::ids::UserId;
use crate::pb;
use crate::pb::analytics_service_server::AnalyticsService;

/// Handler of AnalyticsService.
pub struct AnalyticsApi {
    engine: Arc<Engine>,
    live: Arc<LiveWatch>,
    shutdown: CancellationToken,
}

impl AnalyticsApi {
    /// A handler over the engine, streaming live figures through `live` until `shutdown`.
    pub fn new(engine: Arc<Engine>, live: Arc<LiveWatch>, shutdown: CancellationToken) -> Self {
        Self {
            engine,
            live,
            shutdown,
        }
    }
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn live_out(s: &LiveStats) -> pb::LiveStats {
    let by = |st: AgentStatus| count(s.agents.iter().filter(|a| a.status == st).count() as i64);
    let (open, seats) = s.agents.iter().fold((0u64, 0u64), |(o, c), a| {
        (o + u64::from(a.open_chats), c + u64::from(a.capacity))
    });
    pb::LiveStats {
        waiting_chats: s.waiting,
        active_chats: s.active,
        agents_available: count(
            s.agents
                .iter()
                .filter(|a| a.online && a.status == AgentStatus::Available)
                .count() as i64,
        ),
        agents_online: count(s.agents.iter().filter(|a| a.online).count() as i64),
        longest_wait_seconds: s.longest_wait_seconds,
        offered_chats: s.offered,
        unique_visitors_today: s.visitors_today,
        chats_started_today: s.chats_today,
        agents_busy: by(AgentStatus::Busy),
        agents_away: by(AgentStatus::Away),
        agents_offline: by(AgentStatus::Offline),
        load: if seats > 0 {
            open as f64 / seats as f64
        } else {
            0.0
        },
        agents: s
            .agents
            .iter()
            .map(|a| pb::LiveAgent {
                agent_id: a.agent.to_string(),
                display_name: a.name.clone(),
                status: convert::status_out(a.status) as i32,
                online: a.online,
                open_chats: a.open_chats,
                capacity: a.capacity,
            })
            .collect(),
        day_start_time: Some(convert::ts(s.day_start)),
        read_time: Some(convert::ts(s.at)),
    }
}

fn bucket_out(r: &Report) -> pb::StatsBucket {
    let f = &r.sums;
    let p = |v: Option<i64>| v.map_or(0, count);
    pb::StatsBucket {
        start_time: Some(convert::ts(r.start)),
        end_time: Some(convert::ts(r.end)),
        chats_started: count(f.started),
        chats_answered: count(f.answered),
        chats_missed: count(f.missed),
        chats_abandoned: count(f.abandoned),
        median_wait_seconds: p(r.wait_p(0.5)),
        p90_wait_seconds: p(r.wait_p(0.9)),
        mean_wait_seconds: r.wait_mean(),
        median_first_response_seconds: p(r.frt_p(0.5)),
        p90_first_response_seconds: p(r.frt_p(0.9)),
        mean_first_response_seconds: r.frt_mean(),
        first_responses: count(f.frt_n),
        mean_response_seconds: r.resp_mean(),
        responses: count(f.resp_n),
        mean_duration_seconds: r.dur_mean(),
        average_rating: r.csat_mean(),
        ratings: count(f.csat_n),
        rating_distribution: (0..5)
            .map(|i| count(f.csat_h.get(i).copied().unwrap_or(0)))
            .collect(),
        utilisation: r.utilisation(),
        occupied_seconds: f.occupied_ms as f64 / 1000.0,
        available_seat_seconds: f.available_ms as f64 / 1000.0,
        online_seconds: f.online_ms as f64 / 1000.0,
    }
}

/// The requested zone; None (the tenant's own) when empty or invalid (then a violation).
fn zone_in(v: &mut Violations, raw: &str) -> Option<chrono_tz::Tz> {
    if raw.is_empty() {
        return None;
    }
    v.check(buckets::zone("time_zone", raw))
}

fn agent_in(v: &mut Violations, raw: &str) -> Option<UserId> {
    if raw.is_empty() {
        return None;
    }
    v.check(validate::id("agent_id", raw, UserId::parse))
}

/// A historical query from the wire.
pub fn query_in(r: pb::GetHistoricalStatsRequest) -> Result<Query, AppError> {
    let mut v = Violations::new();
    let start = convert::instant(&mut v, "start_time", r.start_time, true);
    let end = convert::instant(&mut v, "end_time", r.end_time, true);
    let size = match pb::BucketSize::try_from(r.bucket_size) {
        Ok(pb::BucketSize::Hour) => BucketSize::Hour,
        Ok(pb::BucketSize::Unspecified | pb::BucketSize::Day) => BucketSize::Day,
        Ok(pb::BucketSize::Week) => BucketSize::Week,
        Err(_) => {
            v.add("bucket_size", "unknown bucket size");
            BucketSize::Day
        }
    };
    let zone = zone_in(&mut v, &r.time_zone);
    let agent = agent_in(&mut v, &r.agent_id);
    let group = match pb::StatsGroup::try_from(r.group_by) {
        Ok(pb::StatsGroup::Unspecified | pb::StatsGroup::Tenant) => GroupBy::Tenant,
        Ok(pb::StatsGroup::Agent) => GroupBy::Agent(agent),
        Ok(pb::StatsGroup::Workflow) => GroupBy::Workflow,
        Err(_) => {
            v.add("group_by", "unknown grouping");
            GroupBy::Tenant
        }
    };
    if agent.is_some() && !matches!(group, GroupBy::Agent(_)) {
        v.add("agent_id", "only with group_by STATS_GROUP_AGENT");
    }
    // With the tenant's own zone the domain checks the range once it has read the zone.
    if let (Some(s), Some(e), Some(zone)) = (start, end, zone)
        && let Err(bad) = buckets::bounds(s, e, size, zone)
    {
        v.add(&bad.field, bad.description);
    }
    v.finish()?;
    Ok(Query {
        start: start.unwrap_or_default(),
        end: end.unwrap_or_default(),
        size,
        zone,
        group,
    })
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn get_live_stats(
        &self,
        req: Request<pb::GetLiveStatsRequest>,
    ) -> Result<Response<pb::GetLiveStatsResponse>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let zone = zone_in(&mut v, &req.get_ref().time_zone);
        v.finish()?;
        let stats = analytics::live::get(&self.engine, &s, zone).await?;
        Ok(Response::new(pb::GetLiveStatsResponse {
            stats: Some(live_out(&stats)),
        }))
    }

    type WatchLiveStatsStream = Streaming<pb::WatchLiveStatsResponse>;

    async fn watch_live_stats(
        &self,
        req: Request<pb::WatchLiveStatsRequest>,
    ) -> Result<Response<Self::WatchLiveStatsStream>, Status> {
        let s = scope::agent(&req)?;
        let mut v = Violations::new();
        let zone = zone_in(&mut v, &req.get_ref().time_zone);
        v.finish()?;
        let mut rx = self.live.watch(&s, zone)?;
        let shutdown = self.shutdown.clone();
        let items = async_stream::try_stream! {
            loop {
                let latest = rx.borrow_and_update().clone();
                if let Some(stats) = latest {
                    yield pb::WatchLiveStatsResponse {
                        stats: Some(live_out(&stats)),
                    };
                }
                let ended = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    r = rx.changed() => r.is_err(),
                };
                if ended {
                    Err(Status::aborted("the server is shutting down; watch again"))?;
                }
            }
        };
        Ok(Response::new(Box::pin(items)))
    }

    async fn get_historical_stats(
        &self,
        req: Request<pb::GetHistoricalStatsRequest>,
    ) -> Result<Response<pb::GetHistoricalStatsResponse>, Status> {
        let s = scope::agent(&req)?;
        let q = query_in(req.into_inner())?;
        let (zone, series) = analytics::historical(&self.engine, &s, &q).await?;
        Ok(Response::new(pb::GetHistoricalStatsResponse {
            series: series
                .iter()
                .map(|x| {
                    let (agent_id, workflow_id) = match x.dim {
                        Dim::Tenant => (String::new(), String::new()),
                        Dim::Agent(a) => (a.to_string(), String::new()),
                        Dim::Workflow(w) => {
                            (String::new(), w.map(|w| w.to_string()).unwrap_or_default())
                        }
                    };
                    pb::StatsSeries {
                        agent_id,
                        workflow_id,
                        buckets: x.buckets.iter().map(bucket_out).collect(),
                        total: Some(bucket_out(&x.total)),
                    }
                })
                .collect(),
            time_zone: zone.name().to_owned(),
        }))
    }

    async fn list_ratings(
        &self,
        req: Request<pb::ListRatingsRequest>,
    ) -> Result<Response<pb::ListRatingsResponse>, Status> {
        let s = scope::agent(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let size = page_size(r.page_size)?;
        let agent = agent_in(&mut v, &r.agent_id);
        let score = |v: &mut Violations, field: &str, raw: u32, default: u8| match raw {
            0 => default,
            1..=5 => raw as u8,
            _ => {
                v.add(field, "must be from 1 to 5");
                default
            }
        };
        let min = score(&mut v, "min_score", r.min_score, 1);
        let max = score(&mut v, "max_score", r.max_score, 5);
        if min > max {
            v.add("max_score", "must not be below min_score");
        }
        let from = convert::instant(&mut v, "start_time", r.start_time, false);
        let to = convert::instant(&mut v, "end_time", r.end_time, false);
        if let (Some(f), Some(t)) = (from, to)
            && t <= f
        {
            v.add("end_time", "must be after start_time");
        }
        v.finish()?;
        let filter = RatingFilter {
            agent,
            scores: (min, max),
            from,
            to,
        };
        let page = analytics::ratings(&self.engine, &s, filter, size, &r.page_token).await?;
        Ok(Response::new(pb::ListRatingsResponse {
            ratings: page
                .items
                .into_iter()
                .map(|r| pb::Rating {
                    conversation_id: r.conversation_id.to_string(),
                    score: u32::from(r.score),
                    comment: r.comment,
                    agent_id: r.agent.map(|a| a.to_string()).unwrap_or_default(),
                    create_time: Some(convert::ts(r.created_at)),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
