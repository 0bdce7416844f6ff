//! AnalyticsService against a scripted evening with a controlled clock, in a tenant whose
//! day is America/New_York's: visitors arrive, wait, are answered, missed (the max wait
//! closes the chat), abandoned, transferred and rate; agents change status; a chat runs
//! across local midnight into the day the clocks go forward. Every figure is compared with
//! a value computed by hand from docs/analytics.md. Then: the rebuild from raw rows equals the
//! incrementally kept aggregates, the CSV export, agent vs admin visibility, tenant isolation
//! for every call and the stream, and field violations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_engine::app::Consumers;
use chat_engine::domain::Clock;
use chat_engine::domain::analytics;
use chat_engine::tenancy::TenantScope;
use chat_engine_client::pb;
use chrono::{DateTime, TimeZone, Utc};
use pb::analytics_service_client::AnalyticsServiceClient;
use pb::queue_service_client::QueueServiceClient;
use pb::workflow_service_client::WorkflowServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{KillableNode, Options, TenantFixture, TestApp, bearer, violated_fields};
use crate::visitors::{ORIGIN, Widget, init_req, session, widget_key};

/// A guard against a hang; not a timing goal.
const WAIT: Duration = Duration::from_secs(30);
const ZONE: &str = "America/New_York";

/// The node's clock: the test sets it.
struct Manual(Mutex<DateTime<Utc>>);

impl Clock for Manual {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl Manual {
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

/// 2027-03-13 (a Saturday, EST = UTC-5) at h:m:s local; hours from 24 on are the next day,
/// still before the clocks go forward at 02:00.
fn local(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 14, 1, 0, 0).unwrap()
        + chrono::Duration::seconds((i64::from(h) - 20) * 3600 + i64::from(m * 60 + s))
}

fn analytics_client(app: &TestApp) -> AnalyticsServiceClient<Channel> {
    AnalyticsServiceClient::new(app.channel.clone())
}

fn queue(app: &TestApp) -> QueueServiceClient<Channel> {
    QueueServiceClient::new(app.channel.clone())
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_status(app: &TestApp, token: &str, status: pb::AgentStatus) {
    app.agents()
        .set_my_status(bearer(
            pb::SetMyStatusRequest {
                status: status as i32,
            },
            token,
        ))
        .await
        .unwrap();
}

async fn accept(app: &TestApp, token: &str, conv: &str) {
    queue(app)
        .accept_chat(bearer(
            pb::AcceptChatRequest {
                conversation_id: conv.into(),
            },
            token,
        ))
        .await
        .unwrap();
}

async fn reply(app: &TestApp, token: &str, conv: &str) {
    crate::harness::send(app, token, conv, "how can I help?")
        .await
        .unwrap();
}

async fn workflow(app: &TestApp, t: &TenantFixture, req: pb::CreateWorkflowRequest) -> String {
    WorkflowServiceClient::new(app.channel.clone())
        .create_workflow(bearer(req, &t.admin_token))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap()
        .id
}

fn day_query(group: pb::StatsGroup, agent: &str) -> pb::GetHistoricalStatsRequest {
    pb::GetHistoricalStatsRequest {
        start_time: Some(ts(local(12, 0, 0) - chrono::Duration::hours(8))),
        end_time: Some(ts(local(12, 0, 0) + chrono::Duration::hours(16))),
        bucket_size: pb::BucketSize::Day as i32,
        time_zone: ZONE.into(),
        group_by: group as i32,
        agent_id: agent.into(),
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

async fn stats(
    app: &TestApp,
    token: &str,
    req: pb::GetHistoricalStatsRequest,
) -> Result<Vec<pb::StatsSeries>, tonic::Status> {
    Ok(analytics_client(app)
        .get_historical_stats(bearer(req, token))
        .await?
        .into_inner()
        .series)
}

/// Sets the tenant's own time zone (the operator's UpdateTenant).
async fn set_zone(app: &TestApp, t: &TenantFixture, zone: &str) {
    let updated = app
        .tenants()
        .update_tenant(bearer(
            pb::admin::UpdateTenantRequest {
                tenant_id: t.tenant_id.clone(),
                time_zone: Some(zone.into()),
                ..Default::default()
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(updated.time_zone, zone);
}

/// The additive counts of a bucket (those that sum across buckets).
fn counts(b: &pb::StatsBucket) -> [f64; 8] {
    [
        b.chats_started.into(),
        b.chats_answered.into(),
        b.chats_missed.into(),
        b.chats_abandoned.into(),
        b.ratings.into(),
        b.first_responses.into(),
        b.responses.into(),
        (b.online_seconds * 1000.0).round(),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_evening_gives_every_figure_as_computed_by_hand() {
    let clock = Arc::new(Manual(Mutex::new(local(19, 0, 0))));
    let consumers = Consumers {
        clock: Some(clock.clone()),
        ..Consumers::default()
    };
    let app = TestApp::spawn_with(Options {
        consumers: Some(consumers.clone()),
        ..Options::default()
    })
    .await;
    let t = app.tenant("evening").await;
    // A New York tenant: its "today" and its daily aggregates are New York's.
    set_zone(&app, &t, ZONE).await;
    let (_, key) = widget_key(&app, &t, &[ORIGIN]).await;
    // "slow" first: visitors with tier=slow wait at most 10 minutes, then the chat closes.
    let slow = workflow(
        &app,
        &t,
        pb::CreateWorkflowRequest {
            name: "slow".into(),
            enabled: true,
            trigger: Some(pb::WorkflowTrigger {
                attributes: vec![pb::AttributeCondition {
                    key: "tier".into(),
                    test: Some(pb::attribute_condition::Test::Equals("slow".into())),
                }],
                ..Default::default()
            }),
            actions: Some(pb::WorkflowActions {
                auto_assign: true,
                max_wait_seconds: 600,
                max_wait_action: pb::MaxWaitAction::Close as i32,
                offline_grace_seconds: 86_400,
                ..Default::default()
            }),
            is_default: false,
        },
    )
    .await;
    // Everyone else: a welcome message (a system message, never a reply), an hour's max wait
    // that only keeps waiting (its timer wakes the timer loop at every start).
    let main = workflow(
        &app,
        &t,
        pb::CreateWorkflowRequest {
            name: "main".into(),
            enabled: true,
            trigger: None,
            actions: Some(pb::WorkflowActions {
                auto_assign: true,
                welcome_message: "Welcome! Someone will be with you shortly.".into(),
                max_wait_seconds: 3600,
                max_wait_action: pb::MaxWaitAction::KeepWaiting as i32,
                offline_grace_seconds: 86_400,
                ..Default::default()
            }),
            is_default: false,
        },
    )
    .await;
    // Agents never open a stream: the dispatcher leaves the chats to AcceptChat.
    let (ann, ann_t) = app.agent(&t, "ann").await;
    let (bob, bob_t) = app.agent(&t, "bob").await;
    let visitor = |tag: &str, tier: Option<&str>| {
        let key = key.clone();
        let tag = tag.to_owned();
        let tier = tier.map(str::to_owned);
        let app = &app;
        async move {
            let mut w = Widget::new(&key);
            let mut req = init_req(&session(&tag), &format!("Visitor {tag}"));
            if let Some(tier) = tier {
                req.attributes.insert("tier".into(), tier);
            }
            w.init(app, req).await.unwrap();
            w
        }
    };

    clock.set(local(20, 0, 0));
    set_status(&app, &ann_t, pb::AgentStatus::Available).await;
    set_status(&app, &bob_t, pb::AgentStatus::Available).await;

    // C1: answered by Ann after 60 s, first reply 30 s later, three responses, rated 5.
    let v1 = visitor("one", None).await;
    let c1 = v1.start(&app, "hi").await.unwrap().conversation.unwrap().id;
    clock.set(local(20, 1, 0));
    accept(&app, &ann_t, &c1).await;
    clock.set(local(20, 1, 30));
    reply(&app, &ann_t, &c1).await;
    clock.set(local(20, 2, 0));
    v1.send(&app, &c1, "my order", "").await.unwrap();
    clock.set(local(20, 2, 40));
    reply(&app, &ann_t, &c1).await;
    clock.set(local(20, 3, 0));
    v1.send(&app, &c1, "it is late", "").await.unwrap();
    clock.set(local(20, 3, 10));
    v1.send(&app, &c1, "very late", "").await.unwrap();
    clock.set(local(20, 4, 0));
    reply(&app, &ann_t, &c1).await;
    clock.set(local(20, 10, 0));
    queue(&app)
        .close_chat(bearer(
            pb::CloseChatRequest {
                conversation_id: c1.clone(),
            },
            &ann_t,
        ))
        .await
        .unwrap();
    clock.set(local(20, 11, 0));
    v1.rate(&app, &c1, 5, "great").await.unwrap();

    // C2: the visitor gives up after 5 minutes in the queue.
    clock.set(local(20, 20, 0));
    let v2 = visitor("two", None).await;
    let c2 = v2
        .start(&app, "hello?")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    clock.set(local(20, 25, 0));
    v2.end(&app, &c2).await.unwrap();

    // C3 (workflow slow): nobody takes it; its max wait (20:40) closes it when the timer
    // loop next looks, which C4's start makes happen at 21:00.
    clock.set(local(20, 30, 0));
    let v3 = visitor("three", Some("slow")).await;
    let c3 = v3
        .start(&app, "anyone")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    // Live, at 20:30:30: C3 waits 30 s; three chats and three visitors today.
    clock.set(local(20, 30, 30));
    // "Today" in the tenant's own zone, asked with no zone.
    let live = analytics_client(&app)
        .get_live_stats(bearer(pb::GetLiveStatsRequest::default(), &t.admin_token))
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(
        (
            live.waiting_chats,
            live.active_chats,
            live.longest_wait_seconds,
            live.chats_started_today,
            live.unique_visitors_today
        ),
        (1, 0, 30, 3, 3)
    );
    // Today began at Saturday's midnight in New York (05:00Z).
    assert_eq!(
        live.day_start_time.unwrap().seconds,
        Utc.with_ymd_and_hms(2027, 3, 13, 5, 0, 0)
            .unwrap()
            .timestamp()
    );
    // Ann and Bob available, not online; the admin offline.
    assert_eq!(
        (live.agents_busy, live.agents_away, live.agents_offline),
        (0, 0, 1)
    );
    assert_eq!(live.agents.len(), 3);

    // C4: Bob answers after 20 s, replies after 100 s (a response of 60 s), the admin hands
    // the chat to Ann, who answers the next message after 60 s; the visitor ends it and
    // rates 3 (kept with Ann).
    clock.set(local(21, 0, 0));
    let v4 = visitor("four", None).await;
    let c4 = v4
        .start(&app, "question")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    wait_until("C3 closed by its max wait", || {
        let (app, v3, c3) = (&app, &v3, &c3);
        async move {
            v3.status(app, c3)
                .await
                .is_ok_and(|s| s.status == pb::ConversationStatus::Closed as i32)
        }
    })
    .await;
    clock.set(local(21, 0, 20));
    accept(&app, &bob_t, &c4).await;
    clock.set(local(21, 1, 0));
    v4.send(&app, &c4, "details", "").await.unwrap();
    clock.set(local(21, 2, 0));
    reply(&app, &bob_t, &c4).await;
    clock.set(local(21, 5, 0));
    queue(&app)
        .transfer_chat(bearer(
            pb::TransferChatRequest {
                conversation_id: c4.clone(),
                target: Some(pb::transfer_chat_request::Target::AgentId(ann.clone())),
            },
            &t.admin_token,
        ))
        .await
        .unwrap();
    clock.set(local(21, 6, 0));
    v4.send(&app, &c4, "more", "").await.unwrap();
    clock.set(local(21, 7, 0));
    reply(&app, &ann_t, &c4).await;
    clock.set(local(21, 10, 0));
    v4.end(&app, &c4).await.unwrap();
    clock.set(local(21, 11, 0));
    v4.rate(&app, &c4, 3, "ok").await.unwrap();

    // Bob away for half an hour; Ann leaves at 22:30.
    clock.set(local(21, 30, 0));
    set_status(&app, &bob_t, pb::AgentStatus::Away).await;
    clock.set(local(22, 0, 0));
    set_status(&app, &bob_t, pb::AgentStatus::Available).await;
    clock.set(local(22, 30, 0));
    set_status(&app, &ann_t, pb::AgentStatus::Offline).await;

    // C5 across midnight: Bob answers at 23:52, replies at 23:53, closes at 00:10; rated 4.
    clock.set(local(23, 50, 0));
    let v5 = visitor("five", None).await;
    let c5 = v5
        .start(&app, "late question")
        .await
        .unwrap()
        .conversation
        .unwrap()
        .id;
    clock.set(local(23, 52, 0));
    accept(&app, &bob_t, &c5).await;
    clock.set(local(23, 53, 0));
    reply(&app, &bob_t, &c5).await;
    clock.set(local(24, 10, 0));
    queue(&app)
        .close_chat(bearer(
            pb::CloseChatRequest {
                conversation_id: c5.clone(),
            },
            &bob_t,
        ))
        .await
        .unwrap();
    clock.set(local(24, 11, 0));
    v5.rate(&app, &c5, 4, "thanks").await.unwrap();
    clock.set(local(24, 30, 0));
    set_status(&app, &bob_t, pb::AgentStatus::Offline).await;

    // The reactor has caught up once Bob's last period and the last rating are in.
    let admin = t.admin_token.clone();
    wait_until("the aggregates to catch up", || {
        let (app, admin) = (&app, &admin);
        async move {
            let s = stats(app, admin, day_query(pb::StatsGroup::Tenant, ""))
                .await
                .unwrap();
            let b = &s[0].buckets;
            b.len() == 2 && b[1].online_seconds == 1800.0 && b[0].ratings == 3
        }
    })
    .await;

    // The tenant, by local day. Saturday 13 March is 05:00Z to 05:00Z; Sunday 14 March is 23
    // hours long (the clocks go forward at 02:00).
    let s = stats(&app, &admin, day_query(pb::StatsGroup::Tenant, ""))
        .await
        .unwrap();
    assert_eq!(s.len(), 1);
    let sat = &s[0].buckets[0];
    let sun = &s[0].buckets[1];
    let sat_start = Utc.with_ymd_and_hms(2027, 3, 13, 5, 0, 0).unwrap();
    let sun_start = Utc.with_ymd_and_hms(2027, 3, 14, 5, 0, 0).unwrap();
    let sun_end = Utc.with_ymd_and_hms(2027, 3, 15, 4, 0, 0).unwrap();
    assert_eq!(sat.start_time.unwrap().seconds, sat_start.timestamp());
    assert_eq!(sun.start_time.unwrap().seconds, sun_start.timestamp());
    assert_eq!(sun.end_time.unwrap().seconds, sun_end.timestamp());
    // Counts: C1..C5 started (C5 at 23:50 counts on Saturday), C1, C4, C5 answered, C3
    // missed (max wait), C2 abandoned (the visitor left).
    assert_eq!(
        (
            sat.chats_started,
            sat.chats_answered,
            sat.chats_missed,
            sat.chats_abandoned
        ),
        (5, 3, 1, 1)
    );
    // Queue waits 60, 20, 120 s: mean 66.667; p50 = 2nd smallest (60 s, bucket 60-90) -> 90;
    // p90 = 3rd (120 s, bucket 120-180) -> 180.
    assert!(close(sat.mean_wait_seconds, 200.0 / 3.0));
    assert_eq!((sat.median_wait_seconds, sat.p90_wait_seconds), (90, 180));
    // First responses 30 (C1), 100 (C4), 60 (C5): welcome and max-wait notices are system
    // messages and never count. Mean 63.333; p50 60 s -> 90; p90 100 s -> 120.
    assert_eq!(sat.first_responses, 3);
    assert!(close(sat.mean_first_response_seconds, 190.0 / 3.0));
    assert_eq!(
        (
            sat.median_first_response_seconds,
            sat.p90_first_response_seconds
        ),
        (90, 120)
    );
    // Responses after the answer: C1 40, 60, 50; C4 60 (Bob), 60 (Ann): mean 54.
    assert_eq!(sat.responses, 5);
    assert!(close(sat.mean_response_seconds, 54.0));
    // Durations 600, 300, 1800 (C3 closed at 21:00), 600, 1200: mean 900.
    assert!(close(sat.mean_duration_seconds, 900.0));
    // CSAT 5, 3, 4.
    assert_eq!(sat.ratings, 3);
    assert!(close(sat.average_rating, 4.0));
    assert_eq!(sat.rating_distribution, vec![0, 0, 1, 1, 1]);
    // Seat time: Ann 540 (C1) + 300 (C4); Bob 280 (C4) + 480 (C5 to midnight) = 1600 s.
    // Available seats: Ann 2 x 9000 s; Bob 2 x (5400 + 7200) s = 43200 s. Online: Ann 9000,
    // Bob 5400 + 1800 (away) + 7200.
    assert!(close(sat.occupied_seconds, 1600.0));
    assert!(close(sat.available_seat_seconds, 43_200.0));
    assert!(close(sat.utilisation, 1600.0 / 43_200.0));
    assert!(close(sat.online_seconds, 23_400.0));
    // Sunday: no chat started, C5's last 10 minutes of seat time, Bob's last half hour.
    assert_eq!(sun.chats_started, 0);
    assert!(close(sun.occupied_seconds, 600.0));
    assert!(close(sun.available_seat_seconds, 3600.0));
    assert!(close(sun.utilisation, 600.0 / 3600.0));
    // The range total: percentiles over both days.
    let total = s[0].total.as_ref().unwrap();
    assert_eq!((total.chats_started, total.median_wait_seconds), (5, 90));
    assert!(close(total.occupied_seconds, 2200.0));

    // Per agent.
    let s = stats(&app, &admin, day_query(pb::StatsGroup::Agent, ""))
        .await
        .unwrap();
    let of = |id: &str| s.iter().find(|x| x.agent_id == id).unwrap().buckets[0].clone();
    let a = of(&ann);
    // Ann: answered C1 (wait 60, first response 30); responses C1 40+60+50 and C4 60 (mean
    // 52.5); durations C1 600 and C4 600 (she held it at its end); ratings 5 and 3.
    assert_eq!((a.chats_answered, a.median_wait_seconds), (1, 90));
    assert!(close(a.mean_first_response_seconds, 30.0));
    assert_eq!(a.responses, 4);
    assert!(close(a.mean_response_seconds, 52.5));
    assert!(close(a.mean_duration_seconds, 600.0));
    assert_eq!(a.ratings, 2);
    assert!(close(a.average_rating, 4.0));
    assert!(close(a.occupied_seconds, 840.0));
    assert!(close(a.available_seat_seconds, 18_000.0));
    assert!(close(a.online_seconds, 9000.0));
    let b = of(&bob);
    // Bob: answered C4 (20) and C5 (120): mean wait 70; first responses 100 and 60; one
    // response (C4, 60); C5's duration 1200; C5's rating 4.
    assert_eq!(b.chats_answered, 2);
    assert!(close(b.mean_wait_seconds, 70.0));
    assert!(close(b.mean_first_response_seconds, 80.0));
    assert_eq!(b.responses, 1);
    assert!(close(b.mean_duration_seconds, 1200.0));
    assert!(close(b.average_rating, 4.0));
    assert!(close(b.occupied_seconds, 760.0));
    assert!(close(b.available_seat_seconds, 25_200.0));
    assert!(close(b.online_seconds, 14_400.0));

    // Per workflow: "slow" routed C3 only; "main" the other four.
    let s = stats(&app, &admin, day_query(pb::StatsGroup::Workflow, ""))
        .await
        .unwrap();
    let wf = |id: &str| s.iter().find(|x| x.workflow_id == id).unwrap().buckets[0].clone();
    let (ws, wm) = (wf(&slow), wf(&main));
    assert_eq!(
        (ws.chats_started, ws.chats_missed, ws.chats_answered),
        (1, 1, 0)
    );
    assert_eq!(
        (wm.chats_started, wm.chats_answered, wm.chats_abandoned),
        (4, 3, 1)
    );

    // An hour bucket: C5 is the only chat started in 23:00-24:00 local.
    let mut hq = day_query(pb::StatsGroup::Tenant, "");
    hq.bucket_size = pb::BucketSize::Hour as i32;
    hq.start_time = Some(ts(local(23, 0, 0)));
    hq.end_time = Some(ts(local(24, 0, 0)));
    let h = stats(&app, &admin, hq).await.unwrap();
    assert_eq!(h[0].buckets.len(), 1);
    assert_eq!(h[0].buckets[0].chats_started, 1);
    assert!(close(h[0].buckets[0].occupied_seconds, 480.0));

    // Ratings, newest first, paged and filtered.
    let list = |req: pb::ListRatingsRequest, token: String| {
        let app = &app;
        async move {
            analytics_client(app)
                .list_ratings(bearer(req, &token))
                .await
                .map(|r| r.into_inner())
        }
    };
    let p1 = list(
        pb::ListRatingsRequest {
            page_size: 2,
            ..Default::default()
        },
        admin.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        p1.ratings.iter().map(|r| r.score).collect::<Vec<_>>(),
        vec![4, 3]
    );
    let p2 = list(
        pb::ListRatingsRequest {
            page_size: 2,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        },
        admin.clone(),
    )
    .await
    .unwrap();
    assert_eq!(p2.ratings.len(), 1);
    assert_eq!(p2.ratings[0].conversation_id, c1);
    assert!(p2.next_page_token.is_empty());
    let fours = list(
        pb::ListRatingsRequest {
            min_score: 4,
            ..Default::default()
        },
        admin.clone(),
    )
    .await
    .unwrap();
    assert_eq!(fours.ratings.len(), 2);
    let by_time = list(
        pb::ListRatingsRequest {
            start_time: Some(ts(local(21, 0, 0))),
            end_time: Some(ts(local(22, 0, 0))),
            ..Default::default()
        },
        admin.clone(),
    )
    .await
    .unwrap();
    assert_eq!(by_time.ratings.len(), 1);
    assert_eq!(by_time.ratings[0].agent_id, ann);

    // An agent sees their own figures only.
    let mine = stats(&app, &ann_t, day_query(pb::StatsGroup::Agent, ""))
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].agent_id, ann);
    for (group, agent) in [
        (pb::StatsGroup::Tenant, ""),
        (pb::StatsGroup::Workflow, ""),
        (pb::StatsGroup::Agent, bob.as_str()),
    ] {
        let e = stats(&app, &ann_t, day_query(group, agent))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{group:?}");
    }
    let own = list(pb::ListRatingsRequest::default(), ann_t.clone())
        .await
        .unwrap();
    assert_eq!(own.ratings.len(), 2);
    assert!(own.ratings.iter().all(|r| r.agent_id == ann));
    let other = list(
        pb::ListRatingsRequest {
            agent_id: bob.clone(),
            ..Default::default()
        },
        ann_t.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let live = analytics_client(&app)
        .get_live_stats(bearer(pb::GetLiveStatsRequest::default(), &ann_t))
        .await
        .unwrap_err();
    assert_eq!(live.code(), Code::PermissionDenied);

    // The rebuild from raw rows gives what the reactor kept, figure for figure; and the
    // export shows the same figures.
    let node = KillableNode::start(Options {
        consumers: Some(consumers),
        ..app.same_db()
    })
    .await;
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let p = node.auth.authenticate(&headers).await.unwrap().unwrap();
    let scope = TenantScope::of(&p).unwrap();
    let queries = [
        day_query(pb::StatsGroup::Tenant, ""),
        day_query(pb::StatsGroup::Agent, ""),
        day_query(pb::StatsGroup::Workflow, ""),
        {
            let mut q = day_query(pb::StatsGroup::Agent, "");
            q.bucket_size = pb::BucketSize::Hour as i32;
            q
        },
    ];
    let mut before = Vec::new();
    for q in &queries {
        before.push(stats(&app, &admin, q.clone()).await.unwrap());
    }
    let chats = analytics::rebuild(&node.engine, &scope).await.unwrap();
    assert_eq!(chats, 5);
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&stats(&app, &admin, q.clone()).await.unwrap(), b);
    }
    // Day reports in the tenant's own zone read the daily aggregates; asked with no zone
    // they are the same New York days.
    let mut own = queries[0].clone();
    own.time_zone.clear();
    assert_eq!(stats(&app, &admin, own.clone()).await.unwrap(), before[0]);

    // The tenant moves to UTC: New York days now come from the 15-minute slots and are the
    // same figures, and the daily aggregates were summed again in UTC (each UTC day equals
    // its 24 hours, which always come from the slots).
    set_zone(&app, &t, "UTC").await;
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&stats(&app, &admin, q.clone()).await.unwrap(), b);
    }
    for group in [pb::StatsGroup::Tenant, pb::StatsGroup::Agent] {
        let mut days = day_query(group, "");
        days.time_zone.clear();
        days.end_time = Some(ts(local(12, 0, 0) + chrono::Duration::hours(40)));
        let mut hours = days.clone();
        hours.bucket_size = pb::BucketSize::Hour as i32;
        let (days, hours) = (
            stats(&app, &admin, days).await.unwrap(),
            stats(&app, &admin, hours).await.unwrap(),
        );
        assert_eq!(days.len(), hours.len(), "{group:?}");
        let (mut started, mut any) = (0.0, 0.0);
        for (d, h) in days.iter().zip(&hours) {
            assert_eq!(d.agent_id, h.agent_id);
            assert!(d.buckets.len() >= 2, "{group:?}: {} days", d.buckets.len());
            for day in &d.buckets {
                let start = day.start_time.unwrap().seconds;
                let end = day.end_time.unwrap().seconds;
                assert_eq!(end - start, 86_400, "UTC days");
                let mut sum = [0.0; 8];
                for hour in h.buckets.iter().filter(|x| {
                    let s = x.start_time.unwrap().seconds;
                    s >= start && s < end
                }) {
                    for (acc, v) in sum.iter_mut().zip(counts(hour)) {
                        *acc += v;
                    }
                }
                assert_eq!(counts(day), sum, "{group:?} day at {start}");
                started += counts(day)[0];
                any += counts(day).iter().sum::<f64>();
            }
        }
        assert!(any > 0.0, "{group:?}: figures to compare");
        if group == pb::StatsGroup::Tenant {
            assert_eq!(started, 5.0);
        }
    }
    set_zone(&app, &t, ZONE).await;
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&stats(&app, &admin, q.clone()).await.unwrap(), b);
    }
    let q = analytics::Query {
        start: local(12, 0, 0) - chrono::Duration::hours(8),
        end: local(12, 0, 0) + chrono::Duration::hours(16),
        size: analytics::buckets::BucketSize::Day,
        zone: Some(ZONE.parse().unwrap()),
        group: analytics::GroupBy::Tenant,
    };
    let csv = analytics::export_csv(&node.engine, &scope, &q)
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("series,id,bucket_start,bucket_end,chats_started"));
    assert!(lines[1].starts_with(
        "tenant,,2027-03-13T05:00:00+00:00,2027-03-14T05:00:00+00:00,5,3,1,1,90,120,"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_figures_and_bad_requests_name_their_fields() {
    let app = TestApp::spawn().await;
    let a = app.tenant("alpha").await;
    let b = app.tenant("beta").await;
    let (_, key) = widget_key(&app, &a, &[ORIGIN]).await;
    let (ann, ann_t) = app.agent(&a, "ann").await;
    let mut w = Widget::new(&key);
    w.init(&app, init_req(&session("iso"), "Iso Visitor"))
        .await
        .unwrap();
    let c = w.start(&app, "hi").await.unwrap().conversation.unwrap().id;
    accept(&app, &ann_t, &c).await;
    reply(&app, &ann_t, &c).await;
    w.end(&app, &c).await.unwrap();
    w.rate(&app, &c, 5, "").await.unwrap();
    let now = Utc::now();
    let q = |group: pb::StatsGroup, agent: &str| pb::GetHistoricalStatsRequest {
        start_time: Some(ts(now - chrono::Duration::hours(2))),
        end_time: Some(ts(now + chrono::Duration::hours(2))),
        bucket_size: pb::BucketSize::Day as i32,
        time_zone: String::new(),
        group_by: group as i32,
        agent_id: agent.into(),
    };
    wait_until("alpha's figures", || {
        let (app, a) = (&app, &a);
        async move {
            let s = stats(app, &a.admin_token, q(pb::StatsGroup::Tenant, ""))
                .await
                .unwrap();
            s[0].total.as_ref().unwrap().ratings == 1
        }
    })
    .await;
    // Beta sees nothing of alpha's: its own (empty) figures, even naming alpha's agent.
    let s = stats(&app, &b.admin_token, q(pb::StatsGroup::Tenant, ""))
        .await
        .unwrap();
    assert_eq!(s[0].total.as_ref().unwrap().chats_started, 0);
    let s = stats(&app, &b.admin_token, q(pb::StatsGroup::Agent, &ann))
        .await
        .unwrap();
    assert_eq!(s[0].total.as_ref().unwrap().chats_answered, 0);
    for g in [pb::StatsGroup::Agent, pb::StatsGroup::Workflow] {
        assert!(
            stats(&app, &b.admin_token, q(g, ""))
                .await
                .unwrap()
                .is_empty()
        );
    }
    let r = analytics_client(&app)
        .list_ratings(bearer(pb::ListRatingsRequest::default(), &b.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.ratings.is_empty());
    let r = analytics_client(&app)
        .list_ratings(bearer(pb::ListRatingsRequest::default(), &a.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ratings.len(), 1);
    // Live figures and the stream: alpha's visitor today, none for beta.
    let live = |t: &TenantFixture| {
        let (app, token) = (&app, t.admin_token.clone());
        async move {
            analytics_client(app)
                .get_live_stats(bearer(pb::GetLiveStatsRequest::default(), &token))
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    assert_eq!(live(&a).await.chats_started_today, 1);
    assert_eq!(live(&b).await.chats_started_today, 0);
    assert_eq!(live(&b).await.agents.len(), 1);
    let watch = |t: &TenantFixture| {
        let (app, token) = (&app, t.admin_token.clone());
        async move {
            analytics_client(app)
                .watch_live_stats(bearer(pb::WatchLiveStatsRequest::default(), &token))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut wa = watch(&a).await;
    let mut wb = watch(&b).await;
    let first_a = tokio::time::timeout(WAIT, wa.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .stats
        .unwrap();
    let first_b = tokio::time::timeout(WAIT, wb.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .stats
        .unwrap();
    assert_eq!((first_a.chats_started_today, first_a.waiting_chats), (1, 0));
    assert_eq!(first_b.chats_started_today, 0);
    // A new chat in alpha reaches alpha's watcher within about a second, never beta's.
    let mut w2 = Widget::new(&key);
    w2.init(&app, init_req(&session("iso2"), "Second Visitor"))
        .await
        .unwrap();
    w2.start(&app, "hello").await.unwrap();
    let next = tokio::time::timeout(WAIT, wa.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .stats
        .unwrap();
    assert_eq!((next.chats_started_today, next.waiting_chats), (2, 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), wb.message())
            .await
            .is_err(),
        "beta's watcher saw a change of alpha's"
    );
    // Agents may not watch the tenant.
    let e = analytics_client(&app)
        .watch_live_stats(bearer(pb::WatchLiveStatsRequest::default(), &ann_t))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Field violations.
    let bad = |req: pb::GetHistoricalStatsRequest| {
        let (app, token) = (&app, a.admin_token.clone());
        async move { stats(app, &token, req).await.unwrap_err() }
    };
    let mut r = q(pb::StatsGroup::Tenant, "");
    r.time_zone = "Mars/Olympus_Mons".into();
    let e = bad(r).await;
    assert_eq!(
        (e.code(), violated_fields(&e)),
        (Code::InvalidArgument, vec!["time_zone".to_owned()])
    );
    let mut r = q(pb::StatsGroup::Tenant, "");
    r.end_time = r.start_time;
    assert_eq!(violated_fields(&bad(r).await), vec!["end_time".to_owned()]);
    let mut r = q(pb::StatsGroup::Tenant, "");
    r.bucket_size = pb::BucketSize::Hour as i32;
    r.end_time = Some(ts(now + chrono::Duration::days(90)));
    assert_eq!(violated_fields(&bad(r).await), vec!["end_time".to_owned()]);
    let e = bad(q(pb::StatsGroup::Agent, "not-a-uuid")).await;
    assert_eq!(violated_fields(&e), vec!["agent_id".to_owned()]);
    let mut r = q(pb::StatsGroup::Tenant, "");
    r.start_time = None;
    assert_eq!(
        violated_fields(&bad(r).await),
        vec!["start_time".to_owned()]
    );
    let e = analytics_client(&app)
        .list_ratings(bearer(
            pb::ListRatingsRequest {
                min_score: 7,
                ..Default::default()
            },
            &a.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), vec!["min_score".to_owned()]);
    let e = analytics_client(&app)
        .get_live_stats(bearer(
            pb::GetLiveStatsRequest {
                time_zone: "Nowhere/City".into(),
            },
            &a.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), vec!["time_zone".to_owned()]);
}
